//! Mounting composefs images with the new mount API.
//!
//! An image is mounted as EROFS straight from its file (file-backed EROFS,
//! Linux ≥ 6.12), read-only and detached; that mount becomes the lower
//! layer of an overlayfs whose data-only lowers (`datadir+`) are the object
//! directories, with `metacopy=on,redirect_dir=on` so that each file's
//! `trusted.overlay.redirect` finds its object. Option order and values follow
//! composefs C's `lcfs-mount.c` so the two mount the same way.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};

/// How a mount failed, naming the step and the object involved.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}: cannot open image: {source}", path.display())]
    Image { path: PathBuf, source: io::Error },
    #[error("{}: not a composefs image ({why})", path.display())]
    NotComposefs { path: PathBuf, why: String },
    #[error("{}: object directory: {source}", path.display())]
    ObjectDir { path: PathBuf, source: io::Error },
    #[error("{}: mount point: {source}", path.display())]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("this kernel has no {fs} support: {source}")]
    NoFilesystem { fs: &'static str, source: io::Error },
    #[error("{step}: {source}")]
    Kernel { step: String, source: io::Error },
}

fn kernel(step: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> MountError {
    let step = step.into();
    move |e| MountError::Kernel {
        step,
        source: e.into(),
    }
}

/// What to mount and how.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Object directories (data-only lowers), searched in order.
    pub basedirs: Vec<PathBuf>,
    /// Writable overlay: upper and work directories.
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Make the overlay read-only (default when there is no upper dir).
    pub readonly: bool,
    /// Ask overlayfs to require fs-verity on every object (`verity=require`).
    pub require_verity: bool,
}

/// Reads the composefs header flags of an image (to decide on `noacl`).
fn image_has_acl(path: &Path) -> Result<bool, MountError> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| MountError::Image {
        path: path.into(),
        source: e,
    })?;
    let mut hdr = [0u8; 32];
    f.read_exact(&mut hdr)
        .map_err(|_| MountError::NotComposefs {
            path: path.into(),
            why: "shorter than its header".into(),
        })?;
    let magic = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    if magic != erofs::format::COMPOSEFS_MAGIC {
        return Err(MountError::NotComposefs {
            path: path.into(),
            why: "bad composefs magic".into(),
        });
    }
    let flags = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
    Ok(flags & erofs::format::COMPOSEFS_FLAGS_HAS_ACL != 0)
}

/// Mounts the image's EROFS read-only and returns the detached mount.
pub fn mount_erofs(image: &Path) -> Result<OwnedFd, MountError> {
    let has_acl = image_has_acl(image)?;
    let fs =
        fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::NoFilesystem {
            fs: "EROFS",
            source: e.into(),
        })?;
    fsconfig_set_string(&fs, "source", image)
        .map_err(kernel(format!("erofs source {}", image.display())))?;
    fsconfig_set_flag(&fs, "ro").map_err(kernel("erofs ro"))?;
    if !has_acl {
        fsconfig_set_flag(&fs, "noacl").map_err(kernel("erofs noacl"))?;
    }
    fsconfig_create(&fs).map_err(|e| MountError::Kernel {
        step: format!("{}: EROFS refused the image", image.display()),
        source: e.into(),
    })?;
    fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(kernel("erofs fsmount"))
}

/// Builds the overlay over a (detached) EROFS mount and returns it detached.
fn mount_overlay(lower: &Path, opts: &MountOptions) -> Result<OwnedFd, MountError> {
    let fs =
        fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::NoFilesystem {
            fs: "overlayfs",
            source: e.into(),
        })?;
    fsconfig_set_string(&fs, "source", "composefs").map_err(kernel("overlay source"))?;
    fsconfig_set_string(&fs, "metacopy", "on").map_err(kernel("overlay metacopy=on"))?;
    fsconfig_set_string(&fs, "redirect_dir", "on").map_err(kernel("overlay redirect_dir=on"))?;
    if opts.require_verity {
        fsconfig_set_string(&fs, "verity", "require").map_err(kernel("overlay verity=require"))?;
    }
    fsconfig_set_string(&fs, "lowerdir+", lower).map_err(kernel("overlay lowerdir+"))?;
    for d in &opts.basedirs {
        fs::metadata(d).map_err(|e| MountError::ObjectDir {
            path: d.clone(),
            source: e,
        })?;
        fsconfig_set_string(&fs, "datadir+", d.as_path())
            .map_err(kernel(format!("overlay datadir+ {}", d.display())))?;
    }
    if let Some(u) = &opts.upperdir {
        fsconfig_set_string(&fs, "upperdir", u.as_path())
            .map_err(kernel(format!("overlay upperdir {}", u.display())))?;
    }
    if let Some(w) = &opts.workdir {
        fsconfig_set_string(&fs, "workdir", w.as_path())
            .map_err(kernel(format!("overlay workdir {}", w.display())))?;
    }
    fsconfig_create(&fs).map_err(kernel("overlay create"))?;
    let attrs = if opts.readonly || opts.upperdir.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(kernel("overlay fsmount"))
}

/// Mounts composefs image `image` on `target`.
pub fn mount_composefs(image: &Path, target: &Path, opts: &MountOptions) -> Result<(), MountError> {
    let md = fs::metadata(target).map_err(|e| MountError::MountPoint {
        path: target.into(),
        source: e,
    })?;
    if !md.is_dir() {
        return Err(MountError::MountPoint {
            path: target.into(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let erofs = mount_erofs(image)?;
    // Linux ≥ 6.15 lets overlayfs take a detached mount as a layer through
    // its /proc/self/fd path.
    let lower = PathBuf::from(format!("/proc/self/fd/{}", erofs.as_fd().as_raw_fd()));
    let overlay = mount_overlay(&lower, opts)?;
    drop(erofs);
    move_mount(
        overlay.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(kernel(format!("attach overlay at {}", target.display())))?;
    Ok(())
}

/// Unmounts `target` (lazily detaching nothing: a busy mount is an error).
pub fn unmount(target: &Path) -> Result<(), MountError> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(|e| {
        MountError::MountPoint {
            path: target.into(),
            source: e.into(),
        }
    })
}
