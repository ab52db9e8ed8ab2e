//! Repository commands: init, create-image, images, dump, rm, gc, fsck.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::dumpfile;
use crate::fsverity::Algorithm;
use crate::repo::objects::ObjectSink;
use crate::repo::{LockMode, Repository};
use crate::tree::dir::{self, ScanOptions};

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub repo: PathBuf,
    pub json: bool,
    pub quiet: bool,
    pub verbose: bool,
}

impl Global {
    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("strata: {msg}");
        }
    }

    /// A byte-progress bar on a terminal, hidden otherwise.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if self.quiet || !io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        // Without a known length: a spinner with bytes and rate.
        let (pb, template) = if len == 0 {
            (
                indicatif::ProgressBar::no_length(),
                "{spinner} {msg:12} {bytes} {bytes_per_sec} {elapsed}",
            )
        } else {
            (
                indicatif::ProgressBar::new(len),
                "{msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// Opens the repository, creating it on first use (and saying so).
    pub fn open_repo(&self, mode: LockMode) -> Result<Repository> {
        let (repo, created) = Repository::open_or_create(&self.repo, mode)?;
        if let Some(support) = created {
            self.note(&format!("created repository {}", self.repo.display()));
            if let crate::fsverity::Support::NotSupported { reason } = support {
                self.note(&format!(
                    "fs-verity is {reason}; objects in {} are not verity-protected",
                    self.repo.display()
                ));
            }
        }
        Ok(repo)
    }

    /// Opens an existing repository (commands that only read).
    pub fn open_existing(&self, mode: LockMode) -> Result<Repository> {
        Ok(Repository::open(&self.repo, mode)?)
    }
}

pub fn init(g: &Global, hash: &str, require_verity: bool) -> Result<()> {
    let alg = Algorithm::from_name(hash)
        .with_context(|| format!("unknown hash {hash:?} (sha256 or sha512)"))?;
    let (repo, support) = Repository::init(&g.repo, alg, require_verity)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(repo.meta())?);
    } else if !g.quiet {
        println!(
            "initialized {} ({}, fs-verity {})",
            g.repo.display(),
            alg,
            if repo.meta().verity_enforced {
                "enforced".to_string()
            } else {
                format!("not enforced: {support}")
            }
        );
    }
    Ok(())
}

pub fn create_image(
    g: &Global,
    source: &Path,
    name: Option<&str>,
    threads: Option<usize>,
    keep_hardlinks: bool,
) -> Result<()> {
    if let Some(n) = name {
        crate::repo::check_name(n)?;
    }
    let repo = g.open_repo(LockMode::Shared)?;
    // The total is not known while the walk and the hashing overlap.
    let pb = g.progress(0, "importing");
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let sink = ObjectSink {
        alg: repo.algorithm(),
        store: Some(repo.objects()),
        progress: Some(&pb),
    };
    let opts = ScanOptions {
        keep_hardlinks,
        ..ScanOptions::default()
    };
    let tree = dir::scan_and_resolve(source, &opts, &sink, threads)?;
    pb.finish_and_clear();
    let image =
        erofs::write_image(&tree, &erofs::WriteOptions::default()).context("cannot write image")?;
    let id = repo.commit_image(&image, name)?;
    let (n, bytes) = repo.objects().written();
    if g.json {
        let v = serde_json::json!({
            "id": id.to_hex(), "name": name, "image_size": image.len(),
            "objects_written": n, "bytes_written": bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", id.to_hex());
        if g.verbose {
            eprintln!(
                "strata: {} new objects ({} bytes), image {} bytes",
                n,
                bytes,
                image.len()
            );
        }
    }
    Ok(())
}

pub fn images(g: &Global) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let mut infos = Vec::new();
    for (name, id) in repo.image_refs()? {
        match id.and_then(|id| repo.resolve(&id).ok()) {
            Some(d) => {
                // Where an imported image came from (docker://…, oci:…); none for create-image.
                let source = repo.record_named(&name, &d).and_then(|r| {
                    r.extra
                        .get("oci")
                        .and_then(|o| o.get("source"))
                        .and_then(|s| s.as_str())
                        .map(str::to_string)
                });
                infos.push((repo.image_info(Some(name), &d)?, source));
            }
            None => g.note(&format!("ref {name} is dangling (run `strata fsck`)")),
        }
    }
    if g.json {
        let v: Vec<serde_json::Value> = infos
            .iter()
            .map(|(i, source)| {
                let mut v = serde_json::to_value(i).expect("serializes");
                v["source"] = serde_json::json!(source);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<64} {:>10} {:>8} {:>12}  SOURCE",
        "NAME", "IMAGE ID", "IMAGE", "OBJECTS", "DATA"
    )?;
    for (i, source) in infos {
        writeln!(
            out,
            "{:<24} {:<64} {:>10} {:>8} {:>12}  {}",
            i.name.unwrap_or_default(),
            i.id,
            human(i.image_size),
            i.objects,
            human(i.data_size),
            source.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

pub fn dump(g: &Global, name: &str) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let id = repo.resolve(name)?;
    let image = repo.read_image(&id)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    dumpfile::print_image(&image, &mut out)?;
    out.flush()?;
    Ok(())
}

pub fn rm(g: &Global, names: &[String]) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    for n in names {
        repo.remove_ref(n)?;
    }
    if !g.quiet && !g.json {
        eprintln!(
            "strata: removed {} name(s); run `strata gc` to free space",
            names.len()
        );
    }
    Ok(())
}

/// Where gc finds deployments (used only when the repository has some).
#[derive(Debug, Clone)]
pub struct GcPlaces {
    pub keep: usize,
    pub sysroot: PathBuf,
    pub boot: PathBuf,
    pub cmdline: PathBuf,
}

pub fn gc(g: &Global, dry_run: bool, places: &GcPlaces) -> Result<()> {
    use crate::boot::deploy;
    // The deployments lock comes before the repository's.
    let deploy_lock = deploy::lock_for_gc(&g.repo)?;
    let repo = g.open_existing(LockMode::Exclusive)?;
    let booted = std::fs::read_to_string(&places.cmdline)
        .ok()
        .and_then(|l| crate::boot::parse_cmdline(&l).ok())
        .map(|a| a.id);
    let dep = match &deploy_lock {
        Some(_) => {
            let paths = crate::boot::Paths {
                sysroot: places.sysroot.clone(),
                boot: places.boot.clone(),
                repo: g.repo.clone(),
            };
            Some(
                deploy::gc_deployments(&paths, &repo, booted.as_ref(), places.keep, dry_run)
                    .context("gc deployments")?,
            )
        }
        None => None,
    };
    let mut in_use = crate::boot::images_in_use(&repo, dry_run, Path::new("/proc/cmdline"))?;
    in_use.extend(booted);
    let r = repo.gc(dry_run, &in_use)?;
    drop(deploy_lock);
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(d) = &dep {
            v["deployments"] = serde_json::to_value(d)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(d) = &dep {
            if let Some(why) = &d.skipped {
                eprintln!("strata: {why}");
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            for id in &d.removed {
                println!("{verb} deployment {id}");
            }
            if !d.removed.is_empty() || !d.kernels_removed.is_empty() {
                println!(
                    "{verb} {} boot entries, {} kernel directories ({}); {} deployments kept",
                    d.entries_removed.len(),
                    d.kernels_removed.len(),
                    human(d.bytes_freed_boot),
                    d.kept.len()
                );
            }
        }
        let verb = if dry_run { "would free" } else { "freed" };
        println!(
            "{verb} {} objects ({}), {} images; {} objects kept{}",
            r.objects_removed,
            human(r.bytes_freed),
            r.images_removed.len(),
            r.objects_kept,
            match r.images_in_use {
                0 => String::new(),
                n => format!(" ({n} unnamed image(s) kept: mounted or booted)"),
            }
        );
        if r.records_unreadable > 0 {
            g.note(&format!(
                "{} import record(s) under refs/manifests or refs/names could not be read;                  kept as they are (their objects fail `strata fsck` if corrupt)",
                r.records_unreadable
            ));
        }
    }
    Ok(())
}

pub fn fsck(g: &Global, repair: bool) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let pb = g.progress(0, "checking");
    let r = repo.fsck(repair, Some(&pb))?;
    pb.finish_and_clear();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.problems {
            println!("{p}");
        }
        for p in &r.removed {
            println!("removed {}", p.display());
        }
        for i in &r.incomplete_images {
            println!("image {i} is now incomplete");
        }
        if !g.quiet {
            eprintln!(
                "strata: checked {} objects, {} images: {} problem(s)",
                r.objects_checked,
                r.images_checked,
                r.problems.len()
            );
        }
    }
    if !r.problems.is_empty() {
        bail!("{} problem(s) found", r.problems.len());
    }
    Ok(())
}

pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}
