//! `strata mount`, `strata umount` and the `mount.composefs` helper.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::repo::Global;
use crate::fsverity::Digest;
use crate::mount::{self, ErofsSource, LowerAttach, MountOptions, Verity};
use crate::repo::mounts::MountRecord;
use crate::repo::LockMode;

/// What `strata mount` was asked.
#[derive(Debug)]
pub struct MountArgs<'a> {
    pub name: &'a str,
    pub target: &'a Path,
    pub verity: Verity,
    pub digest: Option<&'a str>,
    pub upperdir: Option<&'a Path>,
    pub workdir: Option<&'a Path>,
    pub force_loop: bool,
    pub private_lower: bool,
}

/// Mounts a repository image (by name or id) on a directory.
pub fn mount(g: &Global, a: &MountArgs) -> Result<()> {
    let repo = g.open_existing(LockMode::Shared)?;
    let id = repo.resolve(a.name)?;
    let enforced = repo.meta().verity_enforced;
    let verity = match a.verity {
        Verity::Require if !enforced => bail!(
            "--verity require: repository {} is not verity-enforced (its filesystem had no fs-verity when it was created)",
            g.repo.display()
        ),
        // A verity-enforced repository only ever mounts with verity.
        Verity::Try if enforced => Verity::Require,
        v => v,
    };
    // Images are named by their fs-verity digest: the file must be it.
    // Without fs-verity on the file that means hashing it, done only when
    // asked (--digest): it is most of a mount's time for a large image.
    let (expected, hash_unverified) = match a.digest {
        Some(d) => (
            d.parse::<Digest>()
                .with_context(|| format!("--digest {d}"))?,
            true,
        ),
        None => (id, false),
    };
    let opts = MountOptions {
        basedirs: vec![g.repo.join("objects")],
        upperdir: a.upperdir.map(Path::to_path_buf),
        workdir: a.workdir.map(Path::to_path_buf),
        readonly: a.upperdir.is_none(),
        verity,
        expected_digest: Some(expected),
        hash_unverified,
        erofs_source: if a.force_loop {
            ErofsSource::Loop
        } else {
            ErofsSource::Auto
        },
        lower_attach: if a.private_lower {
            LowerAttach::Private
        } else {
            LowerAttach::Auto
        },
        ..MountOptions::default()
    };
    if a.upperdir.is_some() != a.workdir.is_some() {
        bail!("--upperdir and --workdir go together");
    }
    let image = repo.image_path(&id);
    mount::mount_composefs(&image, a.target, &opts)?;
    // Record the mount (still under the shared lock, so no gc runs
    // between the mount and its record); gc keeps mounted images. A
    // read-only repository cannot be collected, so nothing to record.
    let read_only = rustix::fs::statvfs(&g.repo)
        .is_ok_and(|st| st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    let recorded = if read_only {
        Ok(())
    } else {
        record_mount(&repo, &id, a.target)
    };
    if let Err(e) = recorded {
        let _ = mount::unmount(a.target);
        return Err(e.context(format!(
            "{}: mounted, but cannot record the mount (unmounted again)",
            a.target.display()
        )));
    }
    if g.verbose {
        eprintln!(
            "strata: mounted {} ({}) on {}{}",
            a.name,
            id,
            a.target.display(),
            if verity == Verity::Require {
                ", fs-verity required"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Notes that image `id` is mounted at `target` (see `repo::mounts`).
fn record_mount(repo: &crate::repo::Repository, id: &Digest, target: &Path) -> Result<()> {
    let (mnt_ns, mnt_id) = mount::mount_identity(target)?;
    repo.add_mount_record(&MountRecord {
        image: id.to_hex(),
        mountpoint: std::fs::canonicalize(target)?,
        mnt_id,
        mnt_ns,
    })?;
    Ok(())
}

/// Unmounts a composefs mount and drops its record in the repository.
pub fn umount(g: &Global, target: &Path) -> Result<()> {
    let ident = mount::mount_identity(target).ok();
    mount::unmount(target)?;
    if let (Some((ns, id)), Ok(repo)) = (ident, g.open_existing(LockMode::Shared)) {
        let record = repo.mount_record_path(ns, id);
        if record.exists() {
            repo.remove_mount_record(&record)?;
        }
    }
    Ok(())
}

/// `mount.composefs IMAGE MOUNTPOINT -o …` (also `strata mount-helper`).
pub fn helper(args: &[OsString]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", mount::helper_usage());
        return Ok(());
    }
    let a = mount::parse_helper_args(args)?;
    if a.verbose || a.fake {
        eprintln!(
            "mount.composefs: {} on {} (basedirs {}, verity {:?}{})",
            a.image.display(),
            a.target.display(),
            a.options
                .basedirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            a.options.verity,
            if a.options.upperdir.is_some() {
                ", writable"
            } else {
                ""
            }
        );
    }
    if a.fake {
        mount::check_mountpoint(&a.target)?;
        return Ok(());
    }
    mount::mount_composefs(&a.image, &a.target, &a.options)?;
    Ok(())
}
