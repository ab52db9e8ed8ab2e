//! The import pipeline: OCI image → objects + splitstreams + one composefs image.
//!
//! Layers are fetched, verified, decompressed, split and stored in parallel
//! (each layer: blob digest and size checked while reading, the uncompressed
//! stream checked against its diff_id); a layer already in the repository
//! (same diff_id) is not read again: its entries come from its splitstream.
//! Nothing is tagged until every layer verified, every object is flushed, and
//! the image is committed.

use std::io::Read;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::error::SourceError;
pub use super::fetch_progress::waiting_line;
use super::manifest::{self, PlatformSpec, ResolvedImage};
use super::source::{self as src_mod, ImageSource};
use super::{fetch, fetch_progress, splitstream, ImageRef, LayerEntry, LayerError};
use crate::fsverity::Digest;
use crate::repo::{Record, RepoError, Repository};
use crate::tree::layers::LayeredTree;

pub use super::pull_error::PullError;

/// One layer as recorded with an imported image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    /// The splitstream object (fs-verity digest, hex).
    pub splitstream: String,
}

/// OCI facts stored in an image's [`Record`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciInfo {
    pub source: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<LayerRecord>,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub image_id: String,
    pub manifest_digest: String,
    pub name: Option<String>,
    /// The image was already in the repository; only the name was set.
    pub already_present: bool,
    pub layers_imported: usize,
    pub layers_reused: usize,
    pub objects_written: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// Layers this pull did not fetch because another pull (another process, or another
    /// image of the same command) fetched them meanwhile, and their blob bytes plus the
    /// bytes of partial downloads taken over from pulls that died.
    pub layers_from_other_pulls: usize,
    pub bytes_from_other_pulls: u64,
    /// Network figures for registry sources: requests, bytes fetched, retries, resumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::registry::StatsSnapshot>,
    /// Layers pulled partially (zstd:chunked): what each fetched and reused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<PartialLayer>,
    /// Layers that could have been pulled partially but were pulled fully, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub full_pulls: Vec<FullPull>,
}

/// One partially pulled layer in a [`PullReport`].
#[derive(Debug, Clone, Serialize)]
pub struct PartialLayer {
    pub digest: String,
    #[serde(flatten)]
    pub stats: super::partial::PartialStats,
}

/// A layer pulled fully for a reason worth telling.
#[derive(Debug, Clone, Serialize)]
pub struct FullPull {
    pub digest: String,
    pub why: String,
}

/// Options for [`pull`].
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub platform: Option<PlatformSpec>,
    /// The registry client for `docker://` sources (one is made with defaults if none).
    pub registry: Option<crate::registry::Client>,
    /// Layers fetched and imported at once [default: 4].
    pub jobs: Option<usize>,
    /// Where to draw one progress bar per layer (bytes and files); none: quiet.
    pub progress: Option<indicatif::MultiProgress>,
    /// Never pull partially: fetch every layer blob whole.
    pub full: bool,
    /// Shared by the layers of the pull (and of several pulls in one process): contents
    /// being fetched, what the registry accepts.
    pub shared: super::partial::Shared,
    /// Told when a layer waits for another pull's claim (digest, holder's pid).
    pub on_wait: Option<WaitHook>,
}

pub use super::fetch_progress::{WaitFn, WaitHook};

/// Counts the (compressed) bytes read through it into a layer's bar and the total.
struct Counted<R> {
    inner: R,
    bar: indicatif::ProgressBar,
    total: indicatif::ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        self.total.inc(n as u64);
        Ok(n)
    }
}

/// The bar summing every layer to fetch (hidden without a terminal).
fn total_bar(
    progress: Option<&indicatif::MultiProgress>,
    bytes: u64,
    layers: usize,
) -> indicatif::ProgressBar {
    let Some(mp) = progress else {
        return indicatif::ProgressBar::hidden();
    };
    let pb = mp.add(indicatif::ProgressBar::new(bytes));
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "  {prefix} {bar:24} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(format!("total ({layers} layers)"));
    pb
}

fn layer_bar(
    progress: Option<&indicatif::MultiProgress>,
    layer: &super::LayerDesc,
) -> indicatif::ProgressBar {
    let Some(mp) = progress else {
        return indicatif::ProgressBar::hidden();
    };
    let pb = mp.add(indicatif::ProgressBar::new(layer.size));
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {prefix} {bar:24} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    let short = hex_of(&layer.digest);
    pb.set_prefix(format!("layer {}", &short[..short.len().min(12)]));
    pb
}

fn hex_of(oci_digest: &str) -> &str {
    oci_digest.strip_prefix("sha256:").unwrap_or(oci_digest)
}

struct LayerResult {
    splitstream: Digest,
    entries: Vec<LayerEntry>,
    imported: bool,
    partial: Option<super::partial::PartialStats>,
    full_why: Option<String>,
}

/// A source opened for a pull, with the canonical name recorded for it.
pub struct OpenedSource {
    pub source: Box<dyn ImageSource>,
    /// `docker://registry/repository:tag` normalised, or the layout reference as given.
    pub canonical: String,
    client: Option<crate::registry::Client>,
}

/// Opens the source a pull names: `docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]`,
/// `oci:PATH[:TAG|@DIGEST]`, `oci-archive:FILE[:TAG]`,
/// `containers-storage:[DRIVER@ROOT+RUNROOT]IMAGE`.
pub fn open_source(source: &str, opts: &PullOptions) -> Result<OpenedSource, PullError> {
    if let Some(spec) = source.strip_prefix("containers-storage:") {
        let src = super::containers_storage::StorageSource::open(spec)?;
        return Ok(OpenedSource {
            canonical: src.canonical(),
            source: Box::new(src),
            client: None,
        });
    }
    if source.starts_with("docker:") {
        let reference = crate::registry::Reference::parse(source)
            .map_err(|e| SourceError::from(crate::registry::RegistryError::from(e)))?;
        let client = match &opts.registry {
            Some(c) => c.clone(),
            None => crate::registry::Client::new(Default::default()).map_err(SourceError::from)?,
        };
        let src = super::registry::RegistrySource::new(&client, &reference)?;
        return Ok(OpenedSource {
            source: Box::new(src),
            canonical: format!("docker://{reference}"),
            client: Some(client),
        });
    }
    let r = ImageRef::parse(source)?;
    let reference = r.reference().cloned();
    Ok(OpenedSource {
        source: Box::new(super::OciSource::open(&r)?.named(reference)),
        canonical: source.to_string(),
        client: None,
    })
}

/// Imports `source` (`oci:PATH[:TAG|@DIGEST]`, `oci-archive:FILE[:TAG]`)
/// into `repo`, tagging it `name` if given.
pub fn pull(
    repo: &Repository,
    source: &str,
    name: Option<&str>,
    opts: &PullOptions,
) -> Result<PullReport, PullError> {
    let t0 = Instant::now();
    if let Some(n) = name {
        crate::repo::check_name(n)?;
    }
    let opened = open_source(source, opts)?;
    let src = &*opened.source;
    let before = opened.client.as_ref().map(|c| c.stats());
    let network = || -> Option<crate::registry::StatsSnapshot> {
        let (c, b) = (opened.client.as_ref()?, before?);
        let a = c.stats();
        Some(crate::registry::StatsSnapshot {
            requests: a.requests - b.requests,
            bytes_fetched: a.bytes_fetched - b.bytes_fetched,
            bytes_sent: a.bytes_sent - b.bytes_sent,
            retries: a.retries - b.retries,
            resumes: a.resumes - b.resumes,
        })
    };
    let known = |digest: &str| -> Option<Vec<u8>> {
        let obj = repo.get_ref("blobs", hex_of(digest))?;
        repo.read_object(&obj).ok()
    };
    let choice = manifest::resolve_manifest(src, opts.platform.as_ref(), &known)?;

    // Already imported: just (re)tag it.
    if let Some(record) = repo.get_ref("manifests", hex_of(&choice.manifest_digest)) {
        if let Some(id) = repo
            .read_object(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .and_then(|rec| Digest::from_hex(repo.algorithm(), &rec.image).ok())
            .filter(|id| repo.objects().contains(id))
        {
            if let Some(n) = name {
                repo.name_record(n, &record)?;
            }
            // Re-linking images/<id> costs nothing and repairs a half-written tag.
            repo.commit_image_link(&id, name)?;
            return Ok(PullReport {
                image_id: id.to_hex(),
                manifest_digest: choice.manifest_digest,
                name: name.map(str::to_string),
                already_present: true,
                layers_imported: 0,
                layers_reused: 0,
                objects_written: 0,
                bytes_written: 0,
                seconds: t0.elapsed().as_secs_f64(),
                layers_from_other_pulls: 0,
                bytes_from_other_pulls: 0,
                network: network(),
                partial: Vec::new(),
                full_pulls: Vec::new(),
            });
        }
    }

    // A registry's config is fetched once across concurrent pulls, like its layers.
    let config = match (src.registry_image(), choice.config_descriptor()) {
        (Some(_), Some((digest, size))) => {
            fetch::config_once(repo, src, &digest, size, opts.on_wait.as_ref())?
        }
        _ => None,
    };
    let img = manifest::load_image_with(src, choice, config)?;
    let trace = std::env::var_os("STRATA_TRACE").is_some();
    let stage = |what: &str| {
        if trace {
            eprintln!(
                "strata: trace: {:>8.3} s {what}",
                t0.elapsed().as_secs_f64()
            );
        }
    };
    stage("resolved");
    let (results, from_others) = import_layers(repo, src, &img, opts)?;
    stage("layers imported");
    let mut tree = LayeredTree::new();
    for (layer, res) in img.layers.iter().zip(&results) {
        tree.apply(&res.entries)
            .map_err(|source| PullError::Apply {
                layer: layer.digest.clone(),
                source,
            })?;
    }
    let tree = tree.into_tree();
    stage("layers applied");
    let image = erofs::write_image(&tree, &erofs::WriteOptions::default())?;
    stage("image written");

    // Manifest and config bytes, so the image can be inspected and exported.
    let (manifest_obj, _) = repo
        .objects()
        .add_bytes(&img.manifest.raw)
        .map_err(RepoError::from)?;
    let (config_obj, _) = repo
        .objects()
        .add_bytes(&img.config.raw)
        .map_err(RepoError::from)?;
    let mut index_objs = Vec::with_capacity(img.indexes.len());
    for (digest, raw) in &img.indexes {
        let (obj, _) = repo.objects().add_bytes(raw).map_err(RepoError::from)?;
        index_objs.push((digest.clone(), obj));
    }
    let (image_id, _) = repo.objects().add_bytes(&image).map_err(RepoError::from)?;
    let info = OciInfo {
        source: opened.canonical.clone(),
        manifest_digest: img.manifest_digest.clone(),
        config_digest: img.config_digest.clone(),
        layers: img
            .layers
            .iter()
            .zip(&results)
            .map(|(l, r)| LayerRecord {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: l.diff_id.clone(),
                splitstream: r.splitstream.to_hex(),
            })
            .collect(),
    };
    let mut keeps = vec![manifest_obj.object_path(), config_obj.object_path()];
    keeps.extend(index_objs.iter().map(|(_, o)| o.object_path()));
    let mut refs: Vec<(String, String)> = index_objs
        .iter()
        .map(|(d, _)| ("blobs".to_string(), hex_of(d).to_string()))
        .collect();
    refs.extend([
        (
            "blobs".to_string(),
            hex_of(&img.manifest_digest).to_string(),
        ),
        ("blobs".to_string(), hex_of(&img.config_digest).to_string()),
        (
            "manifests".to_string(),
            hex_of(&img.manifest_digest).to_string(),
        ),
    ]);
    for (l, r) in img.layers.iter().zip(&results) {
        keeps.push(r.splitstream.object_path());
        refs.push(("layers".to_string(), hex_of(&l.diff_id).to_string()));
        for e in &r.entries {
            if let Some(super::EntryData::Object(d)) = &e.data {
                keeps.push(d.object_path());
            }
        }
    }
    keeps.sort();
    keeps.dedup();
    let mut extra = serde_json::Map::new();
    extra.insert(
        "oci".into(),
        serde_json::to_value(&info).expect("serializes"),
    );
    let record = Record {
        image: image_id.to_hex(),
        keeps,
        refs,
        extra,
    };
    let record_obj = repo.store_record(&record)?;

    stage("record stored");
    // Everything is an object now; flush once, then link.
    let committed = repo.commit_image(&image, None)?;
    stage("committed");
    debug_assert_eq!(committed, image_id);
    for (l, r) in img.layers.iter().zip(&results) {
        if r.imported {
            repo.set_ref("layers", hex_of(&l.diff_id), &r.splitstream)?;
        }
    }
    repo.set_ref("blobs", hex_of(&img.manifest_digest), &manifest_obj)?;
    repo.set_ref("blobs", hex_of(&img.config_digest), &config_obj)?;
    for (digest, obj) in &index_objs {
        repo.set_ref("blobs", hex_of(digest), obj)?;
    }
    repo.set_ref("records", &image_id.to_hex(), &record_obj)?;
    repo.set_ref("manifests", hex_of(&img.manifest_digest), &record_obj)?;
    if let Some(n) = name {
        repo.name_record(n, &record_obj)?;
        repo.tag_image(&image_id, n)?;
    }
    let (objects_written, bytes_written) = repo.objects().written();
    Ok(PullReport {
        image_id: image_id.to_hex(),
        manifest_digest: img.manifest_digest,
        name: name.map(str::to_string),
        already_present: false,
        layers_imported: results.iter().filter(|r| r.imported).count(),
        layers_reused: results.iter().filter(|r| !r.imported).count(),
        objects_written,
        bytes_written,
        seconds: t0.elapsed().as_secs_f64(),
        layers_from_other_pulls: from_others.0,
        bytes_from_other_pulls: from_others.1,
        network: network(),
        partial: img
            .layers
            .iter()
            .zip(&results)
            .filter_map(|(l, r)| {
                r.partial.clone().map(|stats| PartialLayer {
                    digest: l.digest.clone(),
                    stats,
                })
            })
            .collect(),
        full_pulls: img
            .layers
            .iter()
            .zip(&results)
            .filter_map(|(l, r)| {
                r.full_why.clone().map(|why| FullPull {
                    digest: l.digest.clone(),
                    why,
                })
            })
            .collect(),
    })
}

/// Imports (or reuses) every layer, in parallel. Layers that appear twice
/// are processed once; layers another pull is fetching are set aside until it is done
/// (see `fetch.rs`). Also returns the layers and bytes obtained from other pulls.
fn import_layers(
    repo: &Repository,
    src: &dyn ImageSource,
    img: &ResolvedImage,
    opts: &PullOptions,
) -> Result<(Vec<LayerResult>, (usize, u64)), PullError> {
    let progress = opts.progress.as_ref();
    let mut unique: Vec<usize> = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        if !img.layers[..i].iter().any(|o| o.diff_id == l.diff_id) {
            unique.push(i);
        }
    }
    // Plain threads, not rayon: layer import blocks on its own worker
    // queues, and the workers use the rayon pool for hashing; blocking rayon
    // threads on them would deadlock. A few layers at a time bound memory.
    let to_fetch: Vec<usize> = unique
        .iter()
        .copied()
        .filter(|&i| {
            repo.get_ref("layers", hex_of(&img.layers[i].diff_id))
                .is_none()
        })
        .collect();
    let total = total_bar(
        progress,
        to_fetch.iter().map(|&i| img.layers[i].size).sum(),
        to_fetch.len(),
    );
    let lanes = unique.len().min(opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4)
    }));
    let coop = fetch::Coop::default();
    let waiting = fetch_progress::Waiting::new(progress, opts.on_wait.clone());
    let results = fetch::run_queue(
        &unique,
        lanes,
        |i| {
            let r = import_one(repo, src, &img.layers[i], opts, &total, &coop);
            if !matches!(r, Ok(fetch::Outcome::Busy { .. })) {
                waiting.done(i);
            }
            r
        },
        |i, pid| waiting.busy(i, &img.layers[i], pid),
    );
    total.finish();
    let mut done: Vec<(usize, LayerResult)> = Vec::new();
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    for (i, r) in results {
        done.push((i, r?));
    }
    let mut out = Vec::with_capacity(img.layers.len());
    for l in &img.layers {
        let (_, r) = done
            .iter()
            .find(|(i, _)| img.layers[*i].diff_id == l.diff_id)
            .expect("every diff_id imported");
        out.push(LayerResult {
            splitstream: r.splitstream,
            entries: r.entries.clone(),
            imported: r.imported,
            partial: r.partial.clone(),
            full_why: r.full_why.clone(),
        });
    }
    // Layers missing at the start that this pull did not import: another pull did.
    let others: Vec<&LayerResult> = to_fetch
        .iter()
        .filter_map(|&i| done.iter().find(|(j, _)| *j == i).map(|(_, r)| r))
        .filter(|r| !r.imported)
        .collect();
    let bytes = to_fetch
        .iter()
        .filter(|&&i| done.iter().any(|(j, r)| *j == i && !r.imported))
        .map(|&i| img.layers[i].size)
        .sum::<u64>()
        + coop
            .resumed_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
    Ok((out, (others.len(), bytes)))
}

fn import_one(
    repo: &Repository,
    src: &dyn ImageSource,
    layer: &super::LayerDesc,
    opts: &PullOptions,
    total: &indicatif::ProgressBar,
    coop: &fetch::Coop,
) -> Result<fetch::Outcome<LayerResult>, PullError> {
    use fetch::Outcome::Done;
    let progress = opts.progress.as_ref();
    let diff = hex_of(&layer.diff_id);
    if let Some(ss) = repo.get_ref("layers", diff) {
        return stored_layer(repo, layer, ss).map(Done);
    }
    if let Some(local) = src.open_local_layer(layer)? {
        let imported = splitstream::import_layer_from(local, repo.objects())
            .map_err(|e| layer_error(layer, e))?;
        let (ss, _) = repo
            .objects()
            .add_bytes(&imported.splitstream)
            .map_err(RepoError::from)?;
        return Ok(Done(LayerResult {
            splitstream: ss,
            entries: imported.entries,
            imported: true,
            partial: None,
            full_why: None,
        }));
    }
    let claim = match fetch::claim(repo, &layer.digest)? {
        crate::repo::claims::Claimed::Mine(g) => g,
        crate::repo::claims::Claimed::Busy { pid } => return Ok(fetch::Outcome::Busy { pid }),
    };
    if let Some(ss) = repo.get_ref("layers", diff) {
        return stored_layer(repo, layer, ss).map(Done);
    }
    let bar = layer_bar(progress, layer);
    let mut full_why = None;
    let mut whole = None;
    if let (false, Some(image)) = (opts.full, src.registry_image()) {
        let p = BarProgress {
            bar: bar.clone(),
            total: total.clone(),
            on_wait: opts.on_wait.clone(),
            told: Default::default(),
        };
        match super::partial::pull_layer(repo, image, layer, &claim, &opts.shared, &p)? {
            super::partial::Outcome::Imported(imported, stats) => {
                let (ss, _) = repo
                    .objects()
                    .add_bytes(&imported.splitstream)
                    .map_err(RepoError::from)?;
                // The bytes not fetched count as done in the total.
                total.inc(layer.size.saturating_sub(stats.bytes_fetched));
                fetch::publish_layer(repo, diff, &ss, &claim)?;
                drop(claim);
                bar.finish_with_message(partial_message(&stats));
                return Ok(Done(LayerResult {
                    splitstream: ss,
                    entries: imported.entries,
                    imported: true,
                    partial: Some(stats),
                    full_why: None,
                }));
            }
            super::partial::Outcome::Full { why } => full_why = why,
            super::partial::Outcome::Whole { stream, why } => {
                full_why = Some(why);
                whole = Some(stream);
            }
        }
        bar.set_length(layer.size);
        bar.set_position(0);
    }
    let raw: Box<dyn Read + Send> = match whole {
        Some(stream) => Box::new(stream),
        None => fetch::open_claimed(src, &layer.digest, layer.size, &claim, coop)?,
    };
    let raw = Counted {
        inner: raw,
        bar: bar.clone(),
        total: total.clone(),
    };
    let blob = super::source::VerifiedReader::new(
        Box::new(raw) as Box<dyn Read + Send>,
        &layer.digest,
        layer.size,
    )?;
    let mut reader = super::source::LayerReader::new(blob, layer.compression, &layer.diff_id)?;
    let imported = splitstream::import_layer(&mut reader, repo.objects()).map_err(|e| {
        // A corrupt blob usually shows first as a tar or decompression error.
        match blob_error(src, layer) {
            Some(blob) => PullError::Source(blob),
            None => layer_error(layer, e),
        }
    })?;
    // Drain anything left (verification completes at EOF).
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .map_err(SourceError::from_io)?;
    let (ss, _) = repo
        .objects()
        .add_bytes(&imported.splitstream)
        .map_err(RepoError::from)?;
    fetch::publish_layer(repo, diff, &ss, &claim)?;
    drop(claim);
    bar.finish_with_message(format!(
        "{} files, {} new objects",
        imported.stats.entries, imported.stats.objects_written
    ));
    Ok(Done(LayerResult {
        splitstream: ss,
        entries: imported.entries,
        imported: true,
        partial: None,
        full_why,
    }))
}

/// A layer already in the repository: its entries from its splitstream.
fn stored_layer(
    repo: &Repository,
    layer: &super::LayerDesc,
    ss: Digest,
) -> Result<LayerResult, PullError> {
    let bytes = repo.read_object(&ss)?;
    let entries = splitstream::read_entries(&bytes).map_err(|source| PullError::Splitstream {
        layer: layer.diff_id.clone(),
        source: Box::new(source),
    })?;
    Ok(LayerResult {
        splitstream: ss,
        entries,
        imported: false,
        partial: None,
        full_why: None,
    })
}

/// "fetched X of Y (Z %), reused N files".
pub fn partial_message(s: &super::partial::PartialStats) -> String {
    format!(
        "fetched {} of {} ({:.1} %), reused {} files",
        indicatif::HumanBytes(s.bytes_fetched),
        indicatif::HumanBytes(s.blob_bytes),
        if s.blob_bytes == 0 {
            0.0
        } else {
            100.0 * s.bytes_fetched as f64 / s.blob_bytes as f64
        },
        s.files_reused
    )
}

/// A partial pull's progress on a layer's bar and the total.
struct BarProgress {
    bar: indicatif::ProgressBar,
    total: indicatif::ProgressBar,
    on_wait: Option<WaitHook>,
    /// The pulls this layer's hook was told about (once each).
    told: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl super::partial::Progress for BarProgress {
    fn planned(&self, bytes: u64) {
        self.bar.set_length(bytes);
        self.bar.set_message("partial");
    }
    fn fetched(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.total.inc(bytes);
    }
    fn waiting(&self, key: &str, pid: Option<u32>) {
        self.bar.set_message(waiting_line(key, pid));
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(h), true) = (&self.on_wait, told.insert(key.to_string())) {
            (h.0)(key, pid);
        }
    }
    fn waited(&self) {
        self.bar.set_message("partial");
    }
}

/// After a layer failed to decode: a corrupt blob (wrong digest or size)
/// usually shows first as a tar or decompression error; read the blob by
/// itself so that the error names the real cause.
fn blob_error(src: &dyn ImageSource, layer: &super::LayerDesc) -> Option<SourceError> {
    if !src.cheap_to_reread() {
        return None;
    }
    src_mod::open_blob(src, &layer.digest, layer.size)
        .and_then(|mut b| {
            std::io::copy(&mut b, &mut std::io::sink())
                .map(drop)
                .map_err(SourceError::from_io)
        })
        .err()
}

fn layer_error(layer: &super::LayerDesc, e: LayerError) -> PullError {
    match e {
        // Verification failures (digest, size, diff_id) travel through the
        // tar reader as I/O errors carrying the source's own error.
        LayerError::Io { source, .. } if SourceError::is_ours(&source) => {
            PullError::Source(SourceError::from_io(source))
        }
        e => PullError::Layer {
            layer: layer.digest.clone(),
            source: Box::new(e),
        },
    }
}
