//! `strata setup-root` (the initramfs step that mounts a repository image as
//! the root filesystem) and the deployment commands `deploy`, `status`,
//! `rollback` (see [`crate::boot`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::repo::Global;
use crate::boot::{self, BootError, DeployOptions, Paths, SetupOptions};
use crate::fsverity::Digest;

/// Arguments of `strata setup-root`.
#[derive(Debug, Args)]
pub struct SetupRootArgs {
    /// Kernel command line to read `composefs=<image id>` (or `composefs=?<image id>`) from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The image instead of the command line: `ID` (fs-verity required) or `?ID` (optional).
    #[arg(long, value_name = "[?]ID", conflicts_with = "cmdline")]
    image: Option<String>,
    /// Where the initramfs mounted the physical root; becomes the new root.
    #[arg(long, value_name = "DIR", default_value = "/sysroot")]
    sysroot: PathBuf,
    /// Per-deployment state directories [default: SYSROOT/state/deploy].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Where the new root is assembled first [default: SYSROOT.tmp].
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    /// Leave mount propagation alone (by default every mount is made private first, which
    /// moving mounts needs when `/` is shared, as systemd makes it).
    #[arg(long)]
    keep_propagation: bool,
}

fn read_cmdline(path: &Path) -> Result<String, BootError> {
    std::fs::read_to_string(path).map_err(|source| BootError::ReadCmdline {
        path: path.into(),
        source,
    })
}

/// Runs setup-root. `repo` is `--repo` if given (default SYSROOT/composefs).
pub fn setup_root(quiet: bool, repo: Option<PathBuf>, a: &SetupRootArgs) -> Result<()> {
    let arg = match &a.image {
        Some(v) => boot::cmdline::parse_value(v)?,
        None => boot::parse_cmdline(&read_cmdline(&a.cmdline)?)?,
    };
    let r = boot::setup_root(&SetupOptions {
        sysroot: a.sysroot.clone(),
        repo,
        state: a.state.clone(),
        staging: a.staging.clone(),
        arg: arg.clone(),
        make_private: !a.keep_propagation,
    })?;
    if !quiet {
        println!(
            "composefs root {} at {} (fs-verity {}), physical root at {}, state {}",
            arg.id.to_hex(),
            r.root.display(),
            if r.verity { "required" } else { "optional" },
            r.root.join("sysroot").display(),
            r.state.display()
        );
    }
    Ok(())
}

/// Where deployments live: shared by deploy, status, rollback and gc.
#[derive(Debug, Args, Clone)]
pub struct DeployPlaces {
    /// The physical root: state in SYSROOT/state, repository SYSROOT/composefs (unless --repo).
    #[arg(long, value_name = "DIR", default_value = "/sysroot")]
    pub sysroot: PathBuf,
    /// The boot partition: entries in BOOT/loader/entries, kernels in BOOT/strata.
    #[arg(long, value_name = "DIR", default_value = "/boot")]
    pub boot: PathBuf,
    /// Kernel command line naming the booted deployment (composefs=).
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
}

impl DeployPlaces {
    pub fn paths(&self, repo: Option<PathBuf>) -> Paths {
        Paths {
            repo: repo.unwrap_or_else(|| self.sysroot.join("composefs")),
            sysroot: self.sysroot.clone(),
            boot: self.boot.clone(),
        }
    }

    /// The booted image: `composefs=` on the command line, if there is one.
    pub fn booted(&self) -> Option<Digest> {
        let line = std::fs::read_to_string(&self.cmdline).ok()?;
        boot::parse_cmdline(&line).ok().map(|a| a.id)
    }
}

/// Arguments of `strata deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Image name or id in the repository, or a pull source (docker://…, oci:…, oci-archive:…).
    source: String,
    /// Extra kernel argument (repeatable); replaces an earlier one with the same key, and is
    /// carried to later deployments.
    #[arg(long = "karg", value_name = "ARG")]
    kargs: Vec<String>,
    #[command(flatten)]
    places: DeployPlaces,
    #[command(flatten)]
    registry: super::registry::RegistryArgs,
}

pub fn deploy(g: &Global, repo: Option<PathBuf>, a: &DeployArgs) -> Result<()> {
    let registry = if a.source.starts_with("docker:") {
        Some(a.registry.client(g, None)?)
    } else {
        None
    };
    let opts = DeployOptions {
        paths: a.places.paths(repo),
        source: a.source.clone(),
        kargs: a.kargs.clone(),
        booted: a.places.booted(),
        pull: crate::oci::import::PullOptions {
            registry,
            jobs: a.registry.jobs.map(|j| j as usize),
            ..Default::default()
        },
    };
    let r = boot::deploy(&opts).with_context(|| format!("deploy {}", a.source))?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{}", r.image);
    if !g.quiet {
        eprintln!(
            "strata: deployed {} (kernel {}) as the default: {}",
            r.name.as_deref().unwrap_or(&r.image[..12]),
            r.kernel_version,
            opts.paths.entries().join(&r.entry).display()
        );
        if let Some(from) = &r.etc_from {
            eprintln!(
                "strata: /etc from {}: {} changed path(s) kept, {} unchanged copied-up path(s) left to the new image{}",
                &from[..12],
                r.etc.kept.len(),
                r.etc.dropped.len(),
                if r.etc.conflicts.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; changed by both (yours kept): {}",
                        r.etc.conflicts.join(" ")
                    )
                }
            );
        }
    }
    Ok(())
}

/// Arguments of `strata status` and `strata rollback`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    places: DeployPlaces,
}

fn print_deployments(list: &[boot::Deployment]) {
    for (i, d) in list.iter().enumerate() {
        let role = match i {
            0 => "default",
            1 => "rollback",
            _ => "",
        };
        let rec = d.record.as_ref();
        println!(
            "{} {:8} {} {:<20} {} {}",
            if d.booted { "*" } else { " " },
            role,
            &d.image[..12.min(d.image.len())],
            rec.and_then(|r| r.name.clone())
                .unwrap_or_else(|| "-".into()),
            rec.map(|r| r.source.as_str()).unwrap_or("-"),
            rec.map(|r| format!("deployed {} kernel {}", utc(r.deployed), r.kernel_version))
                .unwrap_or_default(),
        );
    }
}

pub fn status(g: &Global, repo: Option<PathBuf>, a: &StatusArgs) -> Result<()> {
    let paths = a.places.paths(repo);
    let booted = a.places.booted();
    let s = boot::deploy::status(&paths, booted.as_ref())?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if s.deployments.is_empty() {
        println!("no deployments in {}", paths.entries().display());
    }
    print_deployments(&s.deployments);
    if let Some(b) = &s.booted {
        if !s.deployments.iter().any(|d| &d.image == b) {
            println!(
                "booted: {b} (not a deployment in {})",
                paths.entries().display()
            );
        }
    }
    Ok(())
}

pub fn rollback(g: &Global, repo: Option<PathBuf>, a: &StatusArgs) -> Result<()> {
    let paths = a.places.paths(repo);
    let booted = a.places.booted();
    let list = boot::rollback(&paths, booted.as_ref())?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if !g.quiet {
        eprintln!(
            "strata: {} is the default now; the next boot starts it",
            &list[0].image[..12]
        );
    }
    print_deployments(&list);
    Ok(())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian).
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // days since 1970-01-01 to a civil date (eras of 400 years)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_733_300_000), "2024-12-04 08:13:20 UTC");
    }
}
