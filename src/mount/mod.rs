//! Mounting composefs images with the new mount API.
//!
//! An image is mounted as EROFS straight from its file (file-backed EROFS,
//! Linux ≥ 6.12; a read-only, autoclearing loop device when the kernel was
//! built without it), read-only; that mount becomes the lower layer of an
//! overlayfs whose data-only lowers (`datadir+`) are the object directories,
//! with `metacopy=on,redirect_dir=on` so that each file's
//! `trusted.overlay.redirect` finds its object. Option values follow composefs
//! C's `lcfs-mount.c` so the two mount the same way.
//!
//! On Linux ≥ 6.15 the EROFS mount is never attached anywhere: overlayfs
//! takes the detached mount through `/proc/self/fd/N`. Older kernels refuse
//! to clone a detached layer, so there it is attached to a private temporary
//! directory just long enough to build the overlay. Either way, unmounting
//! the overlay releases the EROFS mount and its loop device, if any.

mod helper;
mod loopdev;

pub use helper::{parse_helper_args, usage as helper_usage, HelperArgs, HelperError};

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use crate::fsverity::{self, Digest};

/// The oldest kernel strata mounts on: file-backed EROFS, data-only lower
/// layers and overlayfs `verity=require` are all there from 6.12 on.
pub const MIN_KERNEL: (u32, u32) = (6, 12);
/// From this release overlayfs accepts a detached mount as a layer.
const DETACHED_LAYERS: (u32, u32) = (6, 15);

/// How a mount failed, naming the step and the object involved.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}: cannot open image: {source}", path.display())]
    Image { path: PathBuf, source: io::Error },
    #[error("{}: not a composefs image ({why})", path.display())]
    NotComposefs { path: PathBuf, why: String },
    #[error("{}: image has no fs-verity, which --verity require needs", path.display())]
    ImageNoVerity { path: PathBuf },
    #[error("{}: fs-verity digest is {found}, expected {expected}", path.display())]
    WrongDigest {
        path: PathBuf,
        found: Box<Digest>,
        expected: Box<Digest>,
    },
    #[error("{}: object directory: {source}", path.display())]
    ObjectDir { path: PathBuf, source: io::Error },
    #[error("{}: mount point: {source}", path.display())]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("this kernel has no {fs} support ({source}); try `modprobe {module}`")]
    NoFilesystem {
        fs: &'static str,
        module: &'static str,
        source: io::Error,
    },
    #[error("Linux {release} is too old: strata needs {}.{} or newer (file-backed EROFS, data-only overlay layers, verity=require)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { release: String },
    #[error("{}: cannot set up a loop device: {source}", path.display())]
    Loop { path: PathBuf, source: io::Error },
    #[error("{step}: {cause}{}", kernel_says(log))]
    Kernel {
        step: String,
        cause: io::Error,
        /// Messages the kernel left in the filesystem context's log.
        log: Vec<String>,
    },
}

fn kernel_says(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {})", log.join("; "))
    }
}

impl MountError {
    fn kernel(step: impl Into<String>, e: rustix::io::Errno, fs: Option<&OwnedFd>) -> MountError {
        MountError::Kernel {
            step: step.into(),
            cause: e.into(),
            log: fs.map(fs_log).unwrap_or_default(),
        }
    }

    fn errno(&self) -> Option<i32> {
        match self {
            MountError::Kernel { cause, .. } => cause.raw_os_error(),
            _ => None,
        }
    }
}

/// Drains the messages a filesystem context logged (`e …`, `w …`, `i …`
/// lines, read one per `read(2)` until `ENODATA`).
fn fs_log(fs: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < 16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                let msg = msg.trim_end();
                let msg = msg
                    .strip_prefix("e ")
                    .or_else(|| msg.strip_prefix("w "))
                    .or_else(|| msg.strip_prefix("i "))
                    .unwrap_or(msg);
                out.push(msg.to_owned());
            }
            _ => break,
        }
    }
    out
}

/// A position in the kernel log (`/dev/kmsg`), to pick up what a
/// filesystem printed about a failed mount when it did not use the
/// filesystem context's own log (EROFS reports a bad superblock so).
struct KmsgCursor(Option<OwnedFd>);

impl KmsgCursor {
    fn here() -> KmsgCursor {
        use rustix::fs::{open, seek, Mode, OFlags, SeekFrom};
        let fd = open(
            "/dev/kmsg",
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .filter(|fd| seek(fd, SeekFrom::End(0)).is_ok());
        KmsgCursor(fd)
    }

    /// Messages logged since [`KmsgCursor::here`] that mention `tag`.
    fn since(&self, tag: &str) -> Vec<String> {
        let Some(fd) = &self.0 else { return vec![] };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        for _ in 0..256 {
            match rustix::io::read(fd, &mut buf) {
                Ok(n) if n > 0 => {
                    // "prio,seq,usec,flags;message\n[continuation lines]"
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                    let msg = msg.lines().next().unwrap_or("").trim();
                    if msg.contains(tag) && out.len() < 4 {
                        out.push(msg.to_owned());
                    }
                }
                // EPIPE: a record was overwritten; keep reading.
                Err(rustix::io::Errno::PIPE) => continue,
                _ => break,
            }
        }
        out
    }
}

/// fs-verity policy for a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verity {
    /// Every file's object must carry the fs-verity digest its image names
    /// (overlayfs `verity=require`), and the image file itself must have
    /// fs-verity; refuse to mount otherwise.
    Require,
    /// Require verity when the image file has fs-verity enabled (a sign that
    /// its store is verity-protected), otherwise mount without it.
    #[default]
    Try,
    /// Never ask overlayfs to check digests.
    Off,
}

impl std::str::FromStr for Verity {
    type Err = String;
    fn from_str(s: &str) -> Result<Verity, String> {
        match s {
            "require" => Ok(Verity::Require),
            "try" => Ok(Verity::Try),
            "off" => Ok(Verity::Off),
            _ => Err(format!("unknown verity policy {s:?} (require, try or off)")),
        }
    }
}

/// How to get a block-less EROFS mount from the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErofsSource {
    /// The file itself, falling back to a loop device if the kernel says
    /// `ENOTBLK` (built without `CONFIG_EROFS_FS_BACKED_BY_FILE`).
    #[default]
    Auto,
    /// Always a loop device.
    Loop,
}

/// How overlayfs gets the EROFS mount as its lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowerAttach {
    /// Detached on Linux ≥ 6.15, private temporary directory before.
    #[default]
    Auto,
    /// Always the detached mount (`/proc/self/fd/N`).
    Detached,
    /// Always a private temporary directory.
    Private,
}

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Object directories (data-only lowers), searched in order.
    pub basedirs: Vec<PathBuf>,
    /// Writable overlay: upper and work directories.
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Make the overlay read-only (always so when there is no upper dir).
    pub readonly: bool,
    /// fs-verity policy.
    pub verity: Verity,
    /// The image file's fs-verity digest must be this (measured by the
    /// kernel when the file has fs-verity, computed here otherwise).
    pub expected_digest: Option<Digest>,
    /// Without kernel fs-verity on the image, hash it here to check
    /// `expected_digest` (otherwise the pin is only checked when the kernel
    /// can measure it for free).
    pub hash_unverified: bool,
    /// A user namespace file (`/proc/PID/ns/user`) whose id mapping the
    /// image's files are shown with.
    pub idmap: Option<PathBuf>,
    /// Extra attributes of the final mount (`nosuid`, `nodev`, …).
    pub attrs: MountAttrFlags,
    pub erofs_source: ErofsSource,
    pub lower_attach: LowerAttach,
    /// Give overlayfs its layers as one `lowerdir=L::D1::D2` string (the
    /// form kernels without `lowerdir+` need) even when `lowerdir+` works.
    pub lowerdir_string: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            basedirs: Vec::new(),
            upperdir: None,
            workdir: None,
            readonly: true,
            verity: Verity::default(),
            expected_digest: None,
            hash_unverified: true,
            idmap: None,
            attrs: MountAttrFlags::empty(),
            erofs_source: ErofsSource::default(),
            lower_attach: LowerAttach::default(),
            lowerdir_string: false,
        }
    }
}

/// `major.minor` of the running kernel and its release string.
pub fn kernel_version() -> ((u32, u32), String) {
    let uts = rustix::system::uname();
    let release = uts.release().to_string_lossy().into_owned();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    ((major, minor), release)
}

/// Fails on kernels older than [`MIN_KERNEL`].
pub fn check_kernel() -> Result<(), MountError> {
    let (v, release) = kernel_version();
    if v < MIN_KERNEL {
        return Err(MountError::KernelTooOld { release });
    }
    Ok(())
}

/// An opened, checked image.
struct Image {
    path: PathBuf,
    file: File,
    has_acl: bool,
    /// The image file has fs-verity enabled.
    verity: bool,
}

/// Opens the image, checks its header, its fs-verity state against the
/// policy and its digest against the pin.
fn open_image(path: &Path, opts: &MountOptions) -> Result<Image, MountError> {
    use std::io::Read;
    let img_err = |e| MountError::Image {
        path: path.into(),
        source: e,
    };
    let mut file = File::open(path).map_err(img_err)?;
    let md = file.metadata().map_err(img_err)?;
    if !md.is_file() {
        return Err(MountError::NotComposefs {
            path: path.into(),
            why: "not a regular file".into(),
        });
    }
    let mut hdr = [0u8; 32];
    file.read_exact(&mut hdr)
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
    let measured = fsverity::measure(&file).ok().flatten();
    if opts.verity == Verity::Require && measured.is_none() {
        return Err(MountError::ImageNoVerity { path: path.into() });
    }
    if let Some(expected) = &opts.expected_digest {
        let found = match &measured {
            Some(d) if d.algorithm() == expected.algorithm() => Some(*d),
            _ if opts.hash_unverified => {
                Some(fsverity::digest_file(expected.algorithm(), &file).map_err(img_err)?)
            }
            _ => None,
        };
        if let Some(found) = found.filter(|f| f != expected) {
            return Err(MountError::WrongDigest {
                path: path.into(),
                found: Box::new(found),
                expected: Box::new(*expected),
            });
        }
    }
    Ok(Image {
        path: path.into(),
        file,
        has_acl: flags & erofs::format::COMPOSEFS_FLAGS_HAS_ACL != 0,
        verity: measured.is_some(),
    })
}

/// The path the kernel resolves to exactly the file we opened and checked.
fn fd_path(fd: &impl AsFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// One EROFS superblock from `source` (the image file or a loop device).
fn erofs_from(source: &Path, image: &Image) -> Result<OwnedFd, MountError> {
    let fs =
        fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::NoFilesystem {
            fs: "EROFS",
            module: "erofs",
            source: e.into(),
        })?;
    let p = image.path.display();
    fsconfig_set_string(&fs, "source", source)
        .map_err(|e| MountError::kernel(format!("{p}: EROFS source"), e, Some(&fs)))?;
    fsconfig_set_flag(&fs, "ro")
        .map_err(|e| MountError::kernel("EROFS option ro", e, Some(&fs)))?;
    if !image.has_acl {
        fsconfig_set_flag(&fs, "noacl")
            .map_err(|e| MountError::kernel("EROFS option noacl", e, Some(&fs)))?;
    }
    let kmsg = KmsgCursor::here();
    if let Err(e) = fsconfig_create(&fs) {
        let mut err = MountError::kernel(format!("{p}: EROFS refused the image"), e, Some(&fs));
        if let MountError::Kernel { log, .. } = &mut err {
            if log.is_empty() {
                *log = kmsg.since("erofs");
            }
        }
        return Err(err);
    }
    Ok(fs)
}

/// Mounts the image's EROFS read-only and returns the detached mount.
fn mount_erofs(image: &Image, opts: &MountOptions) -> Result<OwnedFd, MountError> {
    let sb = match opts.erofs_source {
        ErofsSource::Auto => match erofs_from(&fd_path(&image.file), image) {
            Err(e) if e.errno() == Some(libc::ENOTBLK) => None,
            r => Some(r?),
        },
        ErofsSource::Loop => None,
    };
    let sb = match sb {
        Some(sb) => sb,
        None => {
            let dev = loopdev::attach(&image.file).map_err(|e| MountError::Loop {
                path: image.path.clone(),
                source: e,
            })?;
            // The superblock holds the device open; dropping `dev` leaves
            // the autoclear device to vanish when the superblock goes.
            erofs_from(&dev.path, image)?
        }
    };
    let mnt = fsmount(
        &sb,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(|e| MountError::kernel("EROFS fsmount", e, Some(&sb)))?;
    if let Some(ns) = &opts.idmap {
        let userns = File::open(ns).map_err(|e| MountError::Kernel {
            step: format!("idmap {}", ns.display()),
            cause: e,
            log: vec![],
        })?;
        crate::sys::mount_set_idmap(&mnt, &userns)
            .map_err(|e| MountError::kernel(format!("idmap {}", ns.display()), e, None))?;
    }
    Ok(mnt)
}

/// Where overlayfs finds the EROFS layer.
enum Lower {
    Detached(OwnedFd),
    /// Attached to a private temporary directory; detached and removed on drop.
    Private(tempfile::TempDir),
}

impl Lower {
    fn path(&self) -> PathBuf {
        match self {
            Lower::Detached(fd) => fd_path(fd),
            Lower::Private(dir) => dir.path().to_owned(),
        }
    }
}

impl Drop for Lower {
    fn drop(&mut self) {
        if let Lower::Private(dir) = self {
            let _ = rustix::mount::unmount(dir.path(), UnmountFlags::DETACH);
        }
    }
}

/// Attaches the detached EROFS mount to a fresh private directory (for
/// kernels that cannot take a detached layer).
fn attach_private(mnt: OwnedFd) -> Result<Lower, MountError> {
    let base = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix(".strata-lower-")
        .tempdir_in(&base)
        .map_err(|e| MountError::Kernel {
            step: format!("temporary directory in {}", base.display()),
            cause: e,
            log: vec![],
        })?;
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        dir.path(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        MountError::kernel(format!("attach EROFS at {}", dir.path().display()), e, None)
    })?;
    let lower = Lower::Private(dir);
    rustix::mount::mount_change(lower.path(), rustix::mount::MountPropagationFlags::PRIVATE)
        .map_err(|e| MountError::kernel("make the EROFS mount private", e, None))?;
    Ok(lower)
}

/// Escapes a layer path for the `lowerdir=` string form (`\`, `:` and `,`).
fn escape_layer(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Builds the overlay over the EROFS layer and returns it detached.
fn mount_overlay(lower: &Path, image: &Image, opts: &MountOptions) -> Result<OwnedFd, MountError> {
    let fs =
        fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::NoFilesystem {
            fs: "overlayfs",
            module: "overlay",
            source: e.into(),
        })?;
    let set = |k: &str, v: &str| {
        fsconfig_set_string(&fs, k, v)
            .map_err(|e| MountError::kernel(format!("overlay option {k}={v}"), e, Some(&fs)))
    };
    set("source", "composefs")?;
    set("metacopy", "on")?;
    set("redirect_dir", "on")?;
    let verity = match opts.verity {
        Verity::Require => true,
        Verity::Try => image.verity,
        Verity::Off => false,
    };
    if verity {
        set("verity", "require")?;
    }
    for d in &opts.basedirs {
        let md = fs::metadata(d).map_err(|e| MountError::ObjectDir {
            path: d.clone(),
            source: e,
        })?;
        if !md.is_dir() {
            return Err(MountError::ObjectDir {
                path: d.clone(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
    }
    let appended = if opts.lowerdir_string {
        Err(rustix::io::Errno::INVAL)
    } else {
        fsconfig_set_string(&fs, "lowerdir+", lower)
    };
    match appended {
        Ok(()) => {
            for d in &opts.basedirs {
                fsconfig_set_string(&fs, "datadir+", d.as_path()).map_err(|e| {
                    MountError::kernel(format!("overlay datadir+ {}", d.display()), e, Some(&fs))
                })?;
            }
        }
        Err(e) if e == rustix::io::Errno::INVAL => {
            // No `lowerdir+` (Linux < 6.8): the string form, data-only
            // layers after `::`.
            let _ = fs_log(&fs);
            let mut s = escape_layer(lower);
            for d in &opts.basedirs {
                s.push_str("::");
                s.push_str(&escape_layer(d));
            }
            set("lowerdir", &s)?;
        }
        Err(e) => return Err(MountError::kernel("overlay lowerdir+", e, Some(&fs))),
    }
    if let Some(u) = &opts.upperdir {
        fsconfig_set_string(&fs, "upperdir", u.as_path()).map_err(|e| {
            MountError::kernel(format!("overlay upperdir {}", u.display()), e, Some(&fs))
        })?;
    }
    if let Some(w) = &opts.workdir {
        fsconfig_set_string(&fs, "workdir", w.as_path()).map_err(|e| {
            MountError::kernel(format!("overlay workdir {}", w.display()), e, Some(&fs))
        })?;
    }
    fsconfig_create(&fs).map_err(|e| MountError::kernel("overlay", e, Some(&fs)))?;
    let mut attrs = opts.attrs;
    if opts.readonly || opts.upperdir.is_none() {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| MountError::kernel("overlay fsmount", e, Some(&fs)))
}

/// Mounts composefs image `image` and returns the overlay as a detached
/// mount, to be attached with `move_mount` wherever the caller wants.
pub fn mount_composefs_detached(image: &Path, opts: &MountOptions) -> Result<OwnedFd, MountError> {
    check_kernel()?;
    if opts.upperdir.is_some() != opts.workdir.is_some() {
        return Err(MountError::Kernel {
            step: "overlay".into(),
            cause: io::Error::new(
                io::ErrorKind::InvalidInput,
                "upperdir and workdir go together",
            ),
            log: vec![],
        });
    }
    let image = open_image(image, opts)?;
    let erofs = mount_erofs(&image, opts)?;
    let private = match opts.lower_attach {
        LowerAttach::Auto => kernel_version().0 < DETACHED_LAYERS,
        LowerAttach::Detached => false,
        LowerAttach::Private => true,
    };
    if private {
        let lower = attach_private(erofs)?;
        return mount_overlay(&lower.path(), &image, opts);
    }
    // Keep a second handle: if this kernel turns out not to take detached
    // layers after all, fall back to the private directory.
    let spare = rustix::io::fcntl_dupfd_cloexec(&erofs, 0)
        .map_err(|e| MountError::kernel("dup EROFS mount", e, None))?;
    let lower = Lower::Detached(erofs);
    match mount_overlay(&lower.path(), &image, opts) {
        Err(e) if opts.lower_attach == LowerAttach::Auto && e.errno() == Some(libc::EINVAL) => {
            drop((lower, e));
            let lower = attach_private(spare)?;
            mount_overlay(&lower.path(), &image, opts)
        }
        r => r,
    }
}

/// Mounts composefs image `image` on `target`.
pub fn mount_composefs(image: &Path, target: &Path, opts: &MountOptions) -> Result<(), MountError> {
    check_mountpoint(target)?;
    let overlay = mount_composefs_detached(image, opts)?;
    attach(&overlay, target)
}

/// Checks that `target` is a directory we can mount on.
pub fn check_mountpoint(target: &Path) -> Result<(), MountError> {
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
    Ok(())
}

/// Attaches a detached mount at `target`.
pub fn attach(mnt: &OwnedFd, target: &Path) -> Result<(), MountError> {
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| MountError::MountPoint {
        path: target.into(),
        source: e.into(),
    })
}

/// Unmounts `target`. A busy mount is an error, not detached lazily; but
/// `EBUSY` is retried for a moment first, because a child forked by some
/// other thread briefly holds copies of open descriptors until it execs.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let mut tries = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => {
                return r.map_err(|e| MountError::MountPoint {
                    path: target.into(),
                    // umount(2) says EINVAL for "nothing is mounted here".
                    source: if e == rustix::io::Errno::INVAL {
                        io::Error::new(io::ErrorKind::InvalidInput, "not a mount point")
                    } else {
                        e.into()
                    },
                });
            }
        }
    }
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id never reused.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// Who a mount is: the inode of the mount namespace it lives in and its
/// unique mount id, as seen at `path` (the mount point, once mounted).
pub fn mount_identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ns = fs::metadata("/proc/self/ns/mnt")?.ino();
    Ok((ns, mount_id_at(path)?))
}

fn mount_id_at(path: &Path) -> io::Result<u64> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let st = statx(
        CWD,
        path,
        AtFlags::empty(),
        StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE) | StatxFlags::MNT_ID,
    )?;
    Ok(st.stx_mnt_id)
}

/// Whether the mount `mnt_id` made in namespace `mnt_ns` is still at
/// `mountpoint`. Looked up through a process living in that namespace
/// (`/proc/PID/root/…`), so mounts made by container engines in their own
/// namespaces count too. No process in the namespace: the namespace, and
/// the mount, are gone. Unsure (no permission): treated as mounted.
pub fn is_mounted(mnt_ns: u64, mnt_id: u64, mountpoint: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let in_ns =
        |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == mnt_ns);
    let pid = if in_ns("self") {
        Some("self".to_string())
    } else {
        fs::read_dir("/proc").ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .find(|n| in_ns(n))
        })
    };
    let Some(pid) = pid else { return false };
    let rel = mountpoint.strip_prefix("/").unwrap_or(mountpoint);
    match mount_id_at(&Path::new("/proc").join(pid).join("root").join(rel)) {
        Ok(id) => id == mnt_id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_escaping() {
        assert_eq!(escape_layer(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
        assert_eq!(escape_layer(Path::new("/plain/dir")), "/plain/dir");
    }

    #[test]
    fn verity_policy_parses() {
        assert_eq!("require".parse::<Verity>().unwrap(), Verity::Require);
        assert_eq!("try".parse::<Verity>().unwrap(), Verity::Try);
        assert_eq!("off".parse::<Verity>().unwrap(), Verity::Off);
        assert!("on"
            .parse::<Verity>()
            .unwrap_err()
            .contains("require, try or off"));
    }

    #[test]
    fn old_kernel_message_names_the_minimum() {
        let e = MountError::KernelTooOld {
            release: "6.1.0-28-amd64".into(),
        };
        assert_eq!(
            e.to_string(),
            "Linux 6.1.0-28-amd64 is too old: strata needs 6.12 or newer (file-backed EROFS, data-only overlay layers, verity=require)"
        );
        let e = MountError::NoFilesystem {
            fs: "EROFS",
            module: "erofs",
            source: io::Error::from_raw_os_error(19),
        };
        assert!(
            e.to_string()
                .starts_with("this kernel has no EROFS support ("),
            "{e}"
        );
        assert!(e.to_string().ends_with("try `modprobe erofs`"), "{e}");
    }

    #[test]
    fn kernel_release_parses() {
        let ((maj, _min), rel) = kernel_version();
        assert!(maj >= 3, "{rel}");
    }
}
