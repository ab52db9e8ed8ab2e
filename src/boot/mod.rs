//! bootc-style deployments: the `composefs=` kernel argument and the
//! initramfs step that turns a repository image into the root filesystem.
//!
//! Layout on the physical root (`SYSROOT`, where the initramfs mounted it):
//!
//! ```text
//! SYSROOT/composefs/                   the strata repository (objects, images, refs)
//! SYSROOT/composefs/deployments/       deployment records (see `repo::deployments`)
//! SYSROOT/state/deploy/<image id>/
//!     etc-upper/  etc-work/            writable overlay over the image's /etc
//!     var/                             bind-mounted as /var (older setups), or
//!     var -> ../../var                 deployments made by `deploy`: /var shared
//! SYSROOT/state/var/                   the shared /var
//! BOOT/loader/entries/strata-*.conf    Boot Loader Specification entries (`bls`)
//! BOOT/strata/<kver>-<hash>/           kernels and initramfs images they boot
//! ```
//!
//! [`deploy`] installs an image as a new default boot entry, its `/etc`
//! changes carried from the booted deployment ([`state`]); [`rollback`]
//! makes the previous entry the default; [`gc_deployments`] removes the
//! deployments nothing keeps.
//!
//! [`setup_root`] mounts the image named by `composefs=<image id>` read-only
//! (fs-verity required unless the argument is `composefs=?<image id>`),
//! stacks the per-deployment `/etc` overlay and `/var` on it, moves the
//! physical root to `NEWROOT/sysroot` and finally the new root onto
//! `SYSROOT`, so that the initramfs's usual `switch_root SYSROOT /sbin/init`
//! boots the image.

pub mod bls;
pub mod cmdline;
pub mod deploy;
pub mod image;
pub mod kargs;
mod setup;
pub mod state;

pub use cmdline::{parse_cmdline, ComposefsArg, VerityPolicy};
pub use deploy::{
    deploy, gc_deployments, list_deployments, rollback, DeployGcReport, DeployOptions,
    DeployReport, Deployment, Paths, Status,
};
pub use setup::{setup_root, SetupOptions, SetupReport};

use std::io;
use std::path::PathBuf;

/// Why setting up the root failed: one cause each, naming what is involved.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{}: cannot read the kernel command line: {source}", path.display())]
    ReadCmdline { path: PathBuf, source: io::Error },
    #[error("no composefs=<image id> on the kernel command line")]
    NoComposefsArg,
    #[error("composefs= given twice with different images ({first} and {second})")]
    ConflictingArgs { first: String, second: String },
    #[error("composefs={value}: {why}")]
    BadImageId { value: String, why: String },
    #[error("repository {}: {source}", path.display())]
    Repo {
        path: PathBuf,
        source: crate::repo::RepoError,
    },
    #[error("image {id} is not in the repository {}", repo.display())]
    NoSuchImage { id: String, repo: PathBuf },
    #[error("image {id}: fs-verity is required, but the repository {} does not enforce it (use composefs=?{id} to boot without)", repo.display())]
    RepoNotVerity { id: String, repo: PathBuf },
    #[error("image {id} has no /{dir} directory to mount on")]
    MissingDir { id: String, dir: &'static str },
    #[error("{}: not a mount point (mount the physical root there first)", .0.display())]
    SysrootNotMounted(PathBuf),
    #[error("mount image {id}: {source}")]
    Mount {
        id: String,
        source: Box<crate::mount::MountError>,
    },
    #[error("{step} {}: {source}{}", path.display(), hint(source))]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A hint for the one failure whose errno says little: moving a mount whose
/// parent is shared (systemd makes `/` shared) fails with EINVAL.
fn hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
        " (is the mount's parent shared? `mount --make-rprivate /` first)"
    } else {
        ""
    }
}

/// Why a deployment command failed: one cause each, naming the image, file
/// or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("repository {}: {source}", path.display())]
    Repo {
        path: PathBuf,
        source: crate::repo::RepoError,
    },
    #[error("{0}: not an image in the repository nor a pull source (docker://, oci:, oci-archive:, containers-storage:)")]
    NoSuchImage(String),
    #[error("pull {source_ref}: {err}")]
    Pull {
        source_ref: String,
        err: Box<crate::oci::import::PullError>,
    },
    #[error("image {id} ({}): corrupt: {why}", path.display())]
    CorruptImage {
        id: String,
        path: PathBuf,
        why: String,
    },
    #[error("image {image}: {path}: {why}")]
    ImageFile {
        image: String,
        path: String,
        why: String,
    },
    #[error("image {image} has no kernel to boot: {why}")]
    NoKernel { image: String, why: String },
    #[error("image {image}: {file}: {why}")]
    Kargs {
        image: String,
        file: String,
        why: String,
    },
    #[error("{}: {why}", path.display())]
    BadEntry { path: PathBuf, why: String },
    #[error("no rollback deployment: {0}")]
    NoRollback(String),
    // `err`, not `source`: the message already says it (with a hint after)
    #[error("{step} {}: {err}{}", path.display(), full_hint(err))]
    Io {
        step: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

/// A hint where the errno alone leaves the reader guessing.
fn full_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        " (nothing was changed; `strata gc` removes old deployments)"
    } else {
        ""
    }
}

pub(crate) fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> BootError {
    let path = path.into();
    move |source| BootError::Io { step, path, source }
}

/// Images in use on this system, which gc must keep whatever their names: mounted ones
/// (records whose mount still exists; records of gone mounts are dropped unless
/// `dry_run`) and the image this system booted (`composefs=` in `cmdline`, normally
/// `/proc/cmdline`).
pub fn images_in_use(
    repo: &crate::repo::Repository,
    dry_run: bool,
    cmdline: &std::path::Path,
) -> Result<Vec<crate::fsverity::Digest>, crate::repo::RepoError> {
    let mut out = Vec::new();
    for (path, rec) in repo.mount_records() {
        let live = rec
            .as_ref()
            .is_some_and(|r| crate::mount::is_mounted(r.mnt_ns, r.mnt_id, &r.mountpoint));
        match rec {
            Some(r) if live => {
                if let Ok(d) = crate::fsverity::Digest::from_hex(repo.algorithm(), &r.image) {
                    out.push(d);
                }
            }
            _ if !dry_run => repo.remove_mount_record(&path)?,
            _ => {}
        }
    }
    if let Ok(line) = std::fs::read_to_string(cmdline) {
        if let Ok(arg) = parse_cmdline(&line) {
            out.push(arg.id);
        }
    }
    Ok(out)
}
