//! OCI commands: pull, inspect, layer cat, export.

use std::io::{self, Write};

use anyhow::{bail, Context, Result};

use super::registry::RegistryArgs;
use super::repo::Global;
use crate::fsverity::Digest;
use crate::oci::import::{pull as do_pull, OciInfo, PullOptions};
use crate::oci::{splitstream, Compression, ImageRef, PlatformSpec, Reference};
use crate::repo::{LockMode, Repository};

pub fn pull(
    g: &Global,
    source: &str,
    name: Option<&str>,
    platform: Option<&str>,
    full: bool,
    reg: &RegistryArgs,
) -> Result<()> {
    let repo = g.open_repo(LockMode::Shared)?;
    use std::io::IsTerminal;
    let progress =
        (!g.quiet && !g.json && io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let registry = if source.starts_with("docker:") {
        Some(reg.client(g, progress.as_ref())?)
    } else {
        None
    };
    let opts = PullOptions {
        platform: platform.map(PlatformSpec::parse).transpose()?,
        progress,
        registry,
        jobs: reg.jobs.map(|j| j as usize),
        full,
        shared: Default::default(),
    };
    let r = do_pull(&repo, source, name, &opts).with_context(|| format!("pull {source}"))?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.image_id);
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
        if g.verbose || (!g.quiet && r.already_present) {
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
            if let Some(n) = &r.network {
                eprintln!(
                    "strata: {} bytes fetched in {} requests ({} retries, {} resumed transfers)",
                    n.bytes_fetched, n.requests, n.retries, n.resumes
                );
            }
        }
    }
    Ok(())
}

fn oci_info(repo: &Repository, name: &str) -> Result<(Digest, OciInfo)> {
    let id = repo.resolve(name)?;
    let rec = repo
        .record(&id)
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
