//! `strata mount`, `strata umount` and the `mount.composefs` helper.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::repo::Global;
use crate::fsverity::Digest;
use crate::mount::{self, ErofsSource, LowerAttach, MountOptions, Verity};
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

/// Unmounts a composefs mount.
pub fn umount(target: &Path) -> Result<()> {
    Ok(mount::unmount(target)?)
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
