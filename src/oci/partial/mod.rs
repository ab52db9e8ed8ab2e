//! Partial pulls: fetch only the files the repository lacks.
//!
//! For a zstd:chunked layer (either form) on a registry:
//!
//! 1. **TOC**: one request fetches the TOC (and the tar-split, in the newer form). The
//!    TOC's sha256 must equal the manifest's annotation (the manifest itself was verified
//!    by digest); the tar-split's must equal the TOC's `tarSplitDigest`.
//! 2. **Plan** ([`plan`]): every file whose sha256 names an object (or, for files of at
//!    most 64 bytes, an inline content of a layer already stored) is reused; a content
//!    needed by several entries, or by several layers of the same pull, is fetched once.
//!    What is left becomes byte ranges: the missing files' frames and, without a
//!    tar-split, the frames between files (they hold every header and padding byte). If
//!    that is more than [`FULL_PULL_SHARE`] of the blob, one streamed full pull is
//!    cheaper and is done instead. Before planning, the layer announces its contents
//!    beside its blob claim ([`crate::repo::announce`]): contents an earlier concurrent
//!    pull announced (a different blob with the same files) are left to it and waited
//!    for, so two pulls of, say, a squashed image and its layered original fetch each
//!    shared file once.
//! 3. **Fetch** ([`fetch`]): ranges are coalesced into multi-range requests. A `200` to
//!    one of them is the whole blob: it is used for a full pull, not fetched again; a `400`
//!    or `416` halves the ranges per request. Every fetched file is decompressed, its
//!    sha256 checked against the TOC, stored as an object and indexed.
//! 4. **Rebuild** ([`rebuild`]): the uncompressed tar is re-serialised (headers from the
//!    tar-split or the fetched frames, contents from objects) through the same importer a
//!    full pull uses, so the splitstream is the same bytes; its sha256 must equal the
//!    config's diff_id. Any mismatch fails the pull, naming the layer (and the file, for a
//!    file's contents); nothing is tagged.

pub mod fetch;
pub mod plan;
pub mod rebuild;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;

use super::source::LayerDesc;
use super::splitstream::{self, ImportedLayer};
use super::toc::{self, chunked, LayerToc, Sha256Sum, TocError};
use crate::fsverity::Digest;
use crate::registry::{BlobStream, ImageClient, RegistryError};
use crate::repo::claims::ClaimGuard;
use crate::repo::{RepoError, Repository};

/// Above this share of the blob to fetch, a full pull is done instead.
pub const FULL_PULL_SHARE: f64 = 0.5;
/// ...unless the files left to other pulls (see [`plan`]) are at least a twentieth of the
/// blob: a full pull would fetch them a second time, so the partial pull is done anyway.
pub const DEFERRED_SHARE_DIVISOR: u64 = 20;

/// What a partial pull did for one layer.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PartialStats {
    /// The layer format (`zstd:chunked`, `zstd:chunked with tar-split`).
    pub format: String,
    /// Blob size.
    pub blob_bytes: u64,
    /// Compressed bytes fetched: TOC, tar-split, header frames, files (including the small
    /// gaps bridged between ranges).
    pub bytes_fetched: u64,
    pub toc_bytes: u64,
    pub tar_split_bytes: u64,
    pub header_bytes: u64,
    /// Files whose contents were fetched, and their compressed bytes.
    pub files_fetched: u64,
    pub file_bytes_fetched: u64,
    /// Files whose contents were already in the repository (or fetched by another layer
    /// of the same pull), and their uncompressed size. Files from other pulls are not
    /// counted here but in `files_from_other_pulls`.
    pub files_reused: u64,
    pub bytes_reused: u64,
    /// Range requests made.
    pub requests: u64,
    /// Files whose contents another pull (process) fetched while this one waited, and
    /// their uncompressed size.
    pub files_from_other_pulls: u64,
    pub bytes_from_other_pulls: u64,
}

/// Why a partial pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    #[error("layer {layer}: {source}")]
    Toc {
        layer: String,
        #[source]
        source: TocError,
    },
    #[error("layer {layer}: file {file}: contents have sha256 {got}, the TOC says {want}")]
    FileDigest {
        layer: String,
        file: String,
        want: String,
        got: String,
    },
    #[error("layer {layer}: file {file}: {why}")]
    File {
        layer: String,
        file: String,
        why: String,
    },
    #[error(
        "layer {layer}: the layer rebuilt from its TOC has sha256 {got}, its diff_id is {want}"
    )]
    DiffId {
        layer: String,
        want: String,
        got: String,
    },
    #[error("layer {layer}: {why}")]
    Rebuild { layer: String, why: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// How a layer was obtained.
pub enum Outcome {
    /// Rebuilt from reused and fetched contents.
    Imported(ImportedLayer, PartialStats),
    /// Not worth it or not possible: pull the blob fully (`why` says so once).
    Full { why: Option<String> },
    /// The registry answered a range request with the whole blob: use this stream.
    Whole {
        stream: Box<BlobStream>,
        why: String,
    },
}

/// A content being fetched by one layer of a pull while others wait for it.
#[derive(Default)]
pub struct Slot {
    done: Mutex<Option<bool>>,
    cv: Condvar,
}

/// Shared by the layers (and images) of one pull: which contents are being fetched, and
/// what the registry taught about multi-range requests.
#[derive(Default, Clone)]
pub struct Shared {
    inflight: Arc<Mutex<HashMap<Sha256Sum, Arc<Slot>>>>,
    /// Ranges per request that the registry accepted (0: not known yet).
    pub max_ranges: Arc<std::sync::atomic::AtomicUsize>,
    /// Small contents (not objects) fetched by a layer, for the others.
    small: Arc<Mutex<HashMap<Sha256Sum, Arc<Vec<u8>>>>>,
}

/// A claim on a content: released (with the outcome) when dropped or finished.
pub struct ContentClaim {
    shared: Shared,
    sha: Sha256Sum,
    slot: Arc<Slot>,
    finished: bool,
}

impl ContentClaim {
    pub fn finish(mut self, ok: bool) {
        self.release(ok);
    }

    fn release(&mut self, ok: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        *self.slot.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(ok);
        self.slot.cv.notify_all();
        self.shared
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.sha);
    }
}

impl Drop for ContentClaim {
    fn drop(&mut self) {
        self.release(false);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn publish_small(&self, sha: Sha256Sum, data: Arc<Vec<u8>>) {
        self.small
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha, data);
    }

    fn small(&self, sha: &Sha256Sum) -> Option<Arc<Vec<u8>>> {
        self.small
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
            .cloned()
    }

    /// Claims `sha` for fetching: `Ok(claim)` if nobody else is fetching it, else the
    /// slot to wait on.
    fn claim(&self, sha: &Sha256Sum) -> Result<ContentClaim, Arc<Slot>> {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(sha) {
            return Err(s.clone());
        }
        let slot = Arc::new(Slot::default());
        m.insert(*sha, slot.clone());
        Ok(ContentClaim {
            shared: self.clone(),
            sha: *sha,
            slot,
            finished: false,
        })
    }
}

/// Waits until another layer's fetch of a content ends; whether it succeeded.
fn wait(slot: &Slot) -> bool {
    let mut g = slot.done.lock().unwrap_or_else(|p| p.into_inner());
    while g.is_none() {
        g = slot.cv.wait(g).unwrap_or_else(|p| p.into_inner());
    }
    g.unwrap_or(false)
}

/// Where a file's contents come from when the layer is rebuilt.
#[derive(Debug, Clone)]
pub enum Content {
    Object(Digest),
    Inline(Arc<Vec<u8>>),
}

/// Progress of one layer, in compressed bytes fetched.
pub trait Progress: Sync {
    fn planned(&self, bytes: u64);
    fn fetched(&self, bytes: u64);
    /// Waiting for another pull (process `pid`, pulling blob `key`) to store contents
    /// this layer needs; called again at every look.
    fn waiting(&self, _key: &str, _pid: Option<u32>) {}
    /// The wait is over.
    fn waited(&self) {}
}

/// Pulls `layer` partially if it is seekable and enough of it is already here.
pub fn pull_layer(
    repo: &Repository,
    image: &ImageClient,
    layer: &LayerDesc,
    claim: &ClaimGuard,
    shared: &Shared,
    progress: &dyn Progress,
) -> Result<Outcome, PartialError> {
    let t0 = std::time::Instant::now();
    let trace = std::env::var_os("STRATA_TRACE").is_some();
    let stage = |what: &str| {
        if trace {
            eprintln!(
                "strata: trace: layer {}: {:>8.3} s {what}",
                &layer.digest[..19.min(layer.digest.len())],
                t0.elapsed().as_secs_f64()
            );
        }
    };
    let toc_err = |source| PartialError::Toc {
        layer: layer.digest.clone(),
        source,
    };
    let Some(loc) = chunked::locate(&layer.annotations, layer.size) else {
        if toc::estargz::is_estargz(&layer.annotations) {
            return Ok(Outcome::Full {
                why: Some(
                    "eStargz: each file's tar header shares a gzip member with its contents, \
                     so the layer is pulled fully"
                        .into(),
                ),
            });
        }
        return Ok(Outcome::Full { why: None });
    };
    let loc = loc.map_err(toc_err)?;
    let mut stats = PartialStats {
        format: loc.format.to_string(),
        blob_bytes: layer.size,
        ..Default::default()
    };
    // 1. TOC and tar-split, in one request.
    let meta = match fetch::fetch_meta(image, layer, &loc, &mut stats)? {
        fetch::Meta::Whole(stream) => {
            return Ok(Outcome::Whole {
                stream,
                why: "the registry answered a range request with the whole blob".into(),
            })
        }
        fetch::Meta::Bytes { toc, tar_split } => (toc, tar_split),
    };
    let toc: LayerToc = chunked::parse(&loc, &meta.0).map_err(toc_err)?;
    let tar_split = match (&toc.headers, meta.1) {
        (toc::Headers::TarSplit { digest, .. }, Some(ts)) => {
            use sha2::{Digest as _, Sha256};
            let got: Sha256Sum = Sha256::digest(&ts).into();
            if &got != digest {
                return Err(toc_err(TocError::TarSplitChecksum {
                    want: format!("sha256:{}", hex::encode(digest)),
                    got: format!("sha256:{}", hex::encode(got)),
                }));
            }
            Some(ts)
        }
        _ => None,
    };
    stage("TOC fetched and parsed");
    // 2. Announce this layer's contents (other pulls may leave them to this one), learn
    //    which contents earlier pulls announced, and plan.
    let announced = {
        let mut seen = std::collections::HashSet::new();
        let list: Vec<(Sha256Sum, u64)> = toc
            .files
            .iter()
            .filter(|f| f.size > crate::oci::tar::INLINE_MAX && seen.insert(f.sha256))
            .map(|f| (f.sha256, f.size))
            .collect();
        // An optimisation only: when announcements cannot be read or written (an I/O
        // error in `claims/`), plan without (at worst a file crosses the network twice).
        claim.announce(&repo.claims(), &list).unwrap_or_default()
    };
    let plan = plan::make(repo, &toc, shared, announced)?;
    stage("planned");
    let planned = plan.fetch_bytes() + stats.toc_bytes + stats.tar_split_bytes;
    // A full pull would fetch again what other pulls are fetching: worth it only when
    // that is a small part of the blob.
    let duplicate_small = plan.deferred_bytes.saturating_mul(DEFERRED_SHARE_DIVISOR) < layer.size;
    if planned as f64 > FULL_PULL_SHARE * layer.size as f64 && duplicate_small {
        return Ok(Outcome::Full {
            why: Some(format!(
                "{} of {} bytes would be fetched: a full pull is faster",
                planned, layer.size
            )),
        });
    }
    let mut planned_here = plan.fetch_bytes();
    progress.planned(planned_here);
    // 3. Fetch.
    let fetched = match fetch::fetch_plan(
        repo, image, layer, &toc, &plan, shared, progress, &mut stats,
    )? {
        fetch::Fetched::Whole(stream) => {
            return Ok(Outcome::Whole {
                stream,
                why: "the registry answered a multi-range request with the whole blob".into(),
            })
        }
        fetched @ fetch::Fetched::Done { .. } => fetched,
    };
    let fetch::Fetched::Done { contents, gaps } = fetched else {
        unreachable!("matched above")
    };
    stage("fetched");
    // Contents other layers of this pull were fetching.
    let Some(mut contents) = plan::settle(repo, &toc, plan, contents, shared, progress) else {
        return Ok(Outcome::Full {
            why: Some("another layer of this pull failed to fetch shared contents".into()),
        });
    };
    if !contents.missing.is_empty() {
        // The pull these files were left to did not store them: fetch them here.
        let again = plan::Plan::refetch(std::mem::take(&mut contents.missing));
        planned_here += again.fetch_bytes();
        progress.planned(planned_here);
        match fetch::fetch_plan(
            repo, image, layer, &toc, &again, shared, progress, &mut stats,
        )? {
            fetch::Fetched::Whole(stream) => {
                return Ok(Outcome::Whole {
                    stream,
                    why: "the registry answered a multi-range request with the whole blob".into(),
                })
            }
            fetch::Fetched::Done { contents: got, .. } => {
                contents.fetched_here.extend(got.keys().copied());
                contents.map.extend(got);
            }
        }
    }
    // Every TOC entry not fetched here counts once, as from another pull or reused
    // (`files_fetched` counts distinct contents fetched: with repeated contents in one
    // TOC, the three do not add up to the entries).
    for f in &toc.files {
        if contents.fetched_here.contains(&f.sha256) {
            continue;
        }
        if contents.from_other_pulls.contains(&f.sha256) {
            stats.files_from_other_pulls += 1;
            stats.bytes_from_other_pulls += f.size;
        } else {
            stats.files_reused += 1;
            stats.bytes_reused += f.size;
        }
    }
    // 4. Rebuild through the importer; check the diff_id.
    let mut stream = rebuild::Rebuild::new(
        layer,
        &toc,
        &contents.map,
        repo.objects(),
        gaps,
        tar_split.as_deref(),
    )
    .map_err(|why| PartialError::Rebuild {
        layer: layer.digest.clone(),
        why,
    })?;
    let imported = splitstream::import_layer_from(&mut stream, repo.objects());
    if let Some(e) = stream.take_error() {
        return Err(e);
    }
    let imported = imported.map_err(|e| PartialError::Rebuild {
        layer: layer.digest.clone(),
        why: e.to_string(),
    })?;
    stage("rebuilt");
    let got = stream.finish().map_err(|why| PartialError::Rebuild {
        layer: layer.digest.clone(),
        why,
    })?;
    let want = layer
        .diff_id
        .strip_prefix("sha256:")
        .unwrap_or(&layer.diff_id);
    if hex::encode(got) != want {
        return Err(PartialError::DiffId {
            layer: layer.digest.clone(),
            want: layer.diff_id.clone(),
            got: format!("sha256:{}", hex::encode(got)),
        });
    }
    Ok(Outcome::Imported(imported, stats))
}
