//! OCI commands: pull, inspect, layer cat, export.

use std::io::{self, Write};

use anyhow::{bail, Context, Result};

use super::registry::RegistryArgs;
use super::repo::Global;
use crate::fsverity::Digest;
use crate::oci::import::{pull as do_pull, OciInfo, PullOptions, PullReport, WaitHook};
use crate::oci::{splitstream, Compression, ImageRef, PlatformSpec, Reference};
use crate::repo::{LockMode, Repository};

/// Transport prefixes a pull source starts with (a second argument without one is a name).
const TRANSPORTS: [&str; 4] = ["docker:", "oci:", "oci-archive:", "containers-storage:"];

/// `pull SOURCE…`: one image as before (`pull SOURCE [NAME]`, `--name`), or several at
/// once, sharing the repository's fetch claims so that shared layers are fetched once.
pub fn pull(
    g: &Global,
    args: &[String],
    name_opt: Option<&str>,
    platform: Option<&str>,
    full: bool,
    reg: &RegistryArgs,
) -> Result<()> {
    let (sources, name) = split_pull_args(args, name_opt)?;
    let repo = g.open_repo(LockMode::Shared)?;
    use std::io::IsTerminal;
    let progress =
        (!g.quiet && !g.json && io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let platform = platform.map(PlatformSpec::parse).transpose()?;
    if let [source] = sources.as_slice() {
        let opts = pull_options(g, source, platform, full, progress, reg)?;
        let r = do_pull(&repo, source, name.as_deref(), &opts)
            .with_context(|| format!("pull {source}"))?;
        if g.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!("{}", r.image_id);
            print_summary(g, &r);
        }
        return Ok(());
    }
    let names: Vec<String> = sources.iter().map(|s| name_of_source(s)).collect();
    for n in &names {
        crate::repo::check_name(n).with_context(|| "naming an image after its reference")?;
    }
    // One table of contents being fetched for all the images: a file two of them need
    // crosses the network once.
    let shared = crate::oci::partial::Shared::default();
    let results: Vec<Result<PullReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .zip(&names)
            .map(|(source, name)| {
                let (repo, progress, platform) = (&repo, progress.clone(), platform.clone());
                let shared = shared.clone();
                s.spawn(move || -> Result<PullReport> {
                    let mut opts = pull_options(g, source, platform, full, progress, reg)?;
                    opts.shared = shared;
                    do_pull(repo, source, Some(name), &opts)
                        .with_context(|| format!("pull {source}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pull thread"))
            .collect()
    });
    let mut reports = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(r) => reports.push(r),
            Err(e) if first_err.is_none() => first_err = Some(e),
            Err(e) => super::report("strata", &e),
        }
    }
    if g.json {
        let sum = |f: &dyn Fn(&PullReport) -> u64| reports.iter().map(f).sum::<u64>();
        let v = serde_json::json!({
            "images": reports,
            "layers_from_other_pulls": sum(&|r| r.layers_from_other_pulls as u64),
            "bytes_from_other_pulls": sum(&|r| r.bytes_from_other_pulls),
            "network": {
                "bytes_fetched": sum(&|r| r.network.as_ref().map_or(0, |n| n.bytes_fetched)),
                "requests": sum(&|r| r.network.as_ref().map_or(0, |n| n.requests)),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            println!("{} {}", r.image_id, r.name.as_deref().unwrap_or(""));
            print_summary(g, r);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The sources of `pull`, and the name: `pull SOURCE NAME` when the second argument has
/// no transport prefix, else `--name` (with one source only).
fn split_pull_args(
    args: &[String],
    name_opt: Option<&str>,
) -> Result<(Vec<String>, Option<String>)> {
    let has_transport = |a: &str| TRANSPORTS.iter().any(|t| a.starts_with(t));
    if let [source, name] = args {
        if !has_transport(name) {
            if name_opt.is_some() {
                bail!("pull: the name is given twice ({name:?} and --name)");
            }
            return Ok((vec![source.clone()], Some(name.clone())));
        }
    }
    if args.len() > 1 && name_opt.is_some() {
        bail!(
            "pull: --name names one image, but {} sources were given (each is named after its reference)",
            args.len()
        );
    }
    Ok((args.to_vec(), name_opt.map(str::to_string)))
}

/// The name an image of a several-source pull gets: its reference's last path component
/// with its tag or digest (`docker://host/ns/app:v1` → `app:v1`).
fn name_of_source(source: &str) -> String {
    let rest = TRANSPORTS
        .iter()
        .find_map(|t| source.strip_prefix(t))
        .unwrap_or(source)
        .trim_start_matches('/');
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let last = last.rsplit(['+', ']']).next().unwrap_or(last);
    if last.is_empty() {
        rest.to_string()
    } else {
        last.to_string()
    }
}

fn pull_options(
    g: &Global,
    source: &str,
    platform: Option<PlatformSpec>,
    full: bool,
    progress: Option<indicatif::MultiProgress>,
    reg: &RegistryArgs,
) -> Result<PullOptions> {
    let registry = if source.starts_with("docker:") {
        Some(reg.client(g, progress.as_ref())?)
    } else {
        None
    };
    let on_wait = (g.verbose && !g.quiet).then(|| {
        let (mp, source) = (progress.clone(), source.to_string());
        WaitHook(std::sync::Arc::new(
            move |digest: &str, pid: Option<u32>| {
                let line = format!(
                    "strata: {source}: {}",
                    crate::oci::import::waiting_line(digest, pid)
                );
                match &mp {
                    Some(mp) => {
                        let _ = mp.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            },
        ))
    });
    Ok(PullOptions {
        platform,
        progress,
        registry,
        jobs: reg.jobs.map(|j| j as usize),
        full,
        shared: Default::default(),
        on_wait,
    })
}

fn print_summary(g: &Global, r: &PullReport) {
    if !g.quiet {
        for p in &r.partial {
            eprintln!(
                "strata: layer {}: {}",
                p.digest,
                crate::oci::import::partial_message(&p.stats)
            );
        }
        for f in &r.full_pulls {
            eprintln!("strata: layer {}: pulled fully: {}", f.digest, f.why);
        }
    }
    if !(g.verbose || (!g.quiet && r.already_present)) {
        return;
    }
    eprintln!(
        "strata: {}: {} layers imported, {} reused, {} new objects ({} bytes) in {:.2} s{}",
        r.manifest_digest,
        r.layers_imported,
        r.layers_reused,
        r.objects_written,
        r.bytes_written,
        r.seconds,
        if r.already_present {
            " (already present)"
        } else {
            ""
        }
    );
    if r.layers_from_other_pulls > 0 || r.bytes_from_other_pulls > 0 {
        eprintln!(
            "strata: {} layers ({} bytes) obtained from other pulls",
            r.layers_from_other_pulls, r.bytes_from_other_pulls
        );
    }
    if let Some(n) = &r.network {
        eprintln!(
            "strata: {} bytes fetched in {} requests ({} retries, {} resumed transfers)",
            n.bytes_fetched, n.requests, n.retries, n.resumes
        );
    }
}

fn oci_info(repo: &Repository, name: &str) -> Result<(Digest, OciInfo)> {
    let id = repo.resolve(name)?;
    let rec = repo
        .record_named(name, &id)
        .with_context(|| format!("{name}: not an imported OCI image (no record)"))?;
    let info: OciInfo = serde_json::from_value(
        rec.extra
            .get("oci")
            .cloned()
            .with_context(|| format!("{name}: not an imported OCI image"))?,
    )
    .with_context(|| format!("{name}: corrupt record"))?;
    Ok((id, info))
}

fn blob(repo: &Repository, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let obj = repo
        .get_ref("blobs", hex)
        .with_context(|| format!("blob {digest} is not in the repository"))?;
    Ok(repo.read_object(&obj)?)
}

pub fn inspect(g: &Global, name: &str) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let (id, info) = oci_info(&repo, name)?;
    let config: serde_json::Value = serde_json::from_slice(&blob(&repo, &info.config_digest)?)?;
    let image_info = repo.image_info(Some(name.to_string()), &id)?;
    let v = serde_json::json!({
        "name": name,
        "image_id": id.to_hex(),
        "source": info.source,
        "manifest_digest": info.manifest_digest,
        "config_digest": info.config_digest,
        "image_size": image_info.image_size,
        "objects": image_info.objects,
        "data_size": image_info.data_size,
        "layers": info.layers,
        "config": config,
    });
    if g.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(out, "Name:      {name}")?;
    writeln!(out, "Image ID:  {}", id.to_hex())?;
    writeln!(out, "Source:    {}", info.source)?;
    writeln!(out, "Manifest:  {}", info.manifest_digest)?;
    writeln!(out, "Config:    {}", info.config_digest)?;
    if let Some(p) = config.get("architecture").and_then(|a| a.as_str()) {
        writeln!(
            out,
            "Platform:  {}/{p}",
            config.get("os").and_then(|o| o.as_str()).unwrap_or("?")
        )?;
    }
    writeln!(
        out,
        "Size:      image {}, {} objects ({})",
        super::repo::human(image_info.image_size),
        image_info.objects,
        super::repo::human(image_info.data_size)
    )?;
    writeln!(out, "Layers:")?;
    for l in &info.layers {
        writeln!(
            out,
            "  {}  {:>10}  {}",
            l.digest,
            super::repo::human(l.size),
            l.media_type
        )?;
        writeln!(out, "    diff_id {}", l.diff_id)?;
    }
    Ok(())
}

pub fn layer_cat(g: &Global, diff_id: &str) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
    let ss = repo
        .get_ref("layers", hex)
        .with_context(|| format!("layer {diff_id} is not in the repository"))?;
    let bytes = repo.read_object(&ss)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    splitstream::cat(&bytes, repo.objects(), &mut out)
        .with_context(|| format!("layer {diff_id}"))?;
    out.flush()?;
    Ok(())
}

pub fn export(
    g: &Global,
    name: &str,
    dest: &str,
    compress: &str,
    reg: &RegistryArgs,
) -> Result<()> {
    let compression = match compress {
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        "none" => Compression::None,
        other => bail!("unknown compression {other:?} (zstd, gzip or none)"),
    };
    if dest.starts_with("docker:") {
        return export_registry(g, name, dest, compression, reg);
    }
    let (path, tag) = match ImageRef::parse(dest)? {
        ImageRef::Layout {
            path,
            reference: Some(Reference::Tag(t)),
        } => (path, t),
        _ => bail!(
            "export destination must be oci:PATH:TAG or docker://HOST/REPO[:TAG], got {dest:?}"
        ),
    };
    let digest = export_layout(g, name, &path, &tag, compression)?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"manifest_digest": digest, "path": path.display().to_string(), "tag": tag})
        );
    } else {
        println!("{digest}");
    }
    Ok(())
}

/// Write the image as an OCI layout at `path` under `tag`; returns the manifest digest.
fn export_layout(
    g: &Global,
    name: &str,
    path: &std::path::Path,
    tag: &str,
    compression: Compression,
) -> Result<String> {
    let repo = g.open_existing(LockMode::Shared)?;
    let (_, info) = oci_info(&repo, name)?;
    let config = blob(&repo, &info.config_digest)?;
    let objects = repo.objects();
    std::thread::scope(|s| -> Result<String> {
        let mut layers = Vec::new();
        let mut feeders = Vec::new();
        for l in &info.layers {
            let ss = Digest::from_hex(repo.algorithm(), &l.splitstream)?;
            let bytes = repo.read_object(&ss)?;
            let (reader, mut writer) = io::pipe()?;
            let diff = l.diff_id.clone();
            feeders.push(s.spawn(move || {
                let r = splitstream::cat(&bytes, objects, &mut writer);
                drop(writer);
                r.with_context(|| format!("layer {diff}"))
            }));
            layers.push((l.diff_id.clone(), reader));
        }
        let res = crate::oci::write_layout(path, tag, &config, layers, compression);
        for f in feeders {
            f.join().expect("layer writer thread")?;
        }
        Ok(res?)
    })
}

/// `export NAME docker://…`: the layout in a temporary directory, then its blobs and
/// manifest to the registry.
fn export_registry(
    g: &Global,
    name: &str,
    dest: &str,
    compression: Compression,
    reg: &RegistryArgs,
) -> Result<()> {
    let r = crate::registry::Reference::parse(dest)?;
    if r.digest.is_some() {
        bail!("export {dest}: a push destination takes a tag, not a digest");
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let client = reg.client(g, None)?;
    let image = client.image_direct(&r);
    // Blobs the image came from on the same registry can be mounted instead of sent.
    let mount_from = {
        let repo = g.open_existing(LockMode::Shared)?;
        let (_, info) = oci_info(&repo, name)?;
        info.source
            .strip_prefix("docker://")
            .and_then(|s| crate::registry::Reference::parse(s).ok())
            .filter(|src| src.registry == r.registry)
            .map(|src| src.repository)
    };
    let tmp = tempfile::Builder::new()
        .prefix("strata-export-")
        .tempdir()
        .context("creating a temporary layout")?;
    export_layout(g, name, tmp.path(), "push", compression)?;
    let report = crate::oci::push::push_layout(
        tmp.path(),
        "push",
        &image,
        &tag,
        mount_from.as_deref(),
        reg.jobs.unwrap_or(4) as usize,
    )
    .with_context(|| format!("export {dest}"))?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.manifest_digest);
        if !g.quiet {
            eprintln!(
                "strata: pushed {}: {} blobs uploaded, {} already there, {} mounted ({} bytes sent)",
                report.destination,
                report.blobs_uploaded,
                report.blobs_existing,
                report.blobs_mounted,
                report.network.bytes_sent
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{name_of_source, split_pull_args};

    #[test]
    fn pull_arguments() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (s, n) = split_pull_args(&v(&["docker://h/app:v1", "app"]), None).unwrap();
        assert_eq!((s.len(), n.as_deref()), (1, Some("app")));
        let (s, n) = split_pull_args(&v(&["docker://h/a:1", "oci:/l:b"]), None).unwrap();
        assert_eq!((s.len(), n), (2, None));
        let e = split_pull_args(&v(&["docker://h/a:1", "oci:/l:b"]), Some("x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pull: --name names one image, but 2 sources were given (each is named after its reference)"
        );
        assert_eq!(name_of_source("docker://h:5000/ns/app:v1"), "app:v1");
        assert_eq!(name_of_source("oci:/srv/layouts/debian:12"), "debian:12");
        assert_eq!(name_of_source("docker://h/app@sha256:ab"), "app@sha256:ab");
    }
}
