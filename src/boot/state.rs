//! Per-deployment state and the `/etc` carried from one deployment to the
//! next.
//!
//! ```text
//! SYSROOT/state/deploy/<image id>/etc-upper/   the /etc overlay's upper layer
//! SYSROOT/state/deploy/<image id>/etc-work/    its work directory
//! SYSROOT/state/deploy/<image id>/var -> ../../var
//! SYSROOT/state/var/                           /var, shared by every deployment
//! ```
//!
//! A deployment's state directory is made complete under a temporary name
//! (`.tmp-<image id>-<pid>`), flushed (`syncfs`) and renamed into place, so
//! it either exists whole or not at all. `var` as a symlink is how
//! `setup-root` tells a deployment made by `deploy` (shared `/var`) from an
//! older per-image one (`var` a directory, kept working as it was).
//!
//! ## The three-way rule for `/etc`
//!
//! The old deployment's upper layer holds everything the user did to its
//! `/etc` (plus whatever overlayfs copied up without a change). For each
//! path in it, with O the old image's `/etc` and N the new image's:
//!
//! * a file, symlink or special file equal to O's at that path (same type,
//!   bytes or target, permission bits, owner): a copy-up, not a change:
//!   **dropped**, so the new deployment shows N's version (the image's
//!   update wins where the user changed nothing);
//! * anything else (changed, or new, or a whiteout = deleted by the user):
//!   **kept**, so the user's version (or deletion) hides N's. When N also
//!   differs from O there, the user's version still wins and the path is
//!   reported as a conflict;
//! * a directory: kept when it is opaque (the user replaced it: copied
//!   whole) or new; otherwise entered, and dropped if nothing in it was kept
//!   and its attributes equal O's.
//!
//! Extended attributes are copied, except overlayfs' own
//! (`trusted.overlay.*` other than `opaque`), which describe the old
//! lower layer. They are not compared.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use erofs::tree::Content;
use serde::Serialize;

use super::image::ImageFiles;
use super::DeployError;

/// `SYSROOT/state/deploy`.
pub fn deploy_dir(sysroot: &Path) -> PathBuf {
    sysroot.join("state/deploy")
}

/// `SYSROOT/state/var`, shared by deployments made with `deploy`.
pub fn shared_var(sysroot: &Path) -> PathBuf {
    sysroot.join("state/var")
}

/// What carrying `/etc` forward did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EtcReport {
    /// Paths (under /etc) whose user version was kept.
    pub kept: Vec<String>,
    /// Copied-up paths equal to the old image's, left to the new image.
    pub dropped: Vec<String>,
    /// Kept paths the new image changed too (the user's version wins).
    pub conflicts: Vec<String>,
}

fn io_err(step: &'static str, p: &Path) -> impl FnOnce(io::Error) -> DeployError {
    let path = p.to_path_buf();
    move |err| DeployError::Io { step, path, err }
}

/// Makes the state directory of a new deployment at `final_dir`, its
/// `/etc` upper carried from `from` (old upper, old image) when given, and
/// the new image `new`. Does nothing when `final_dir` already exists (a
/// deployment keeps its own state). Returns whether it created it.
pub fn create_state(
    sysroot: &Path,
    final_dir: &Path,
    from: Option<(&Path, &ImageFiles<'_>)>,
    new: &ImageFiles<'_>,
    report: &mut EtcReport,
) -> Result<bool, DeployError> {
    if final_dir.exists() {
        return Ok(false);
    }
    let base = deploy_dir(sysroot);
    fs::create_dir_all(&base).map_err(io_err("create state directory", &base))?;
    let var = shared_var(sysroot);
    fs::create_dir_all(&var).map_err(io_err("create state directory", &var))?;
    let name = final_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = base.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let r = (|| {
        let upper = tmp.join("etc-upper");
        let work = tmp.join("etc-work");
        fs::create_dir_all(&upper).map_err(io_err("create", &upper))?;
        fs::create_dir_all(&work).map_err(io_err("create", &work))?;
        std::os::unix::fs::symlink("../../var", tmp.join("var"))
            .map_err(io_err("create", &tmp.join("var")))?;
        if let Some((old_upper, old_image)) = from {
            if old_upper.is_dir() {
                let ctx = Merge {
                    old: old_image,
                    new,
                };
                ctx.merge_dir(old_upper, &upper, "/etc", report)?;
            }
        }
        let d = fs::File::open(&tmp).map_err(io_err("open", &tmp))?;
        rustix::fs::syncfs(&d).map_err(|e| io_err("sync", &tmp)(e.into()))?;
        fs::rename(&tmp, final_dir).map_err(io_err("rename into place", final_dir))?;
        crate::repo::sync_dir(&base).map_err(|e| DeployError::Io {
            step: "sync",
            path: base.clone(),
            err: io::Error::other(e.to_string()),
        })
    })();
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r.map(|()| true)
}

struct Merge<'a, 'r> {
    old: &'a ImageFiles<'r>,
    new: &'a ImageFiles<'r>,
}

/// An overlayfs whiteout: a character device 0:0.
fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    v.truncate(n);
    Some(v)
}

fn is_opaque(p: &Path) -> bool {
    get_xattr(p, "trusted.overlay.opaque").as_deref() == Some(b"y")
}

impl Merge<'_, '_> {
    /// Whether `p` in the user's upper equals the old image's `ipath`.
    fn same_as_old(&self, p: &Path, m: &fs::Metadata, ipath: &str) -> Result<bool, DeployError> {
        let Some(id) = self.old.lookup(ipath) else {
            return Ok(false);
        };
        let st = &self.old.tree.inode(id).stat;
        if st.mode != m.mode() || st.uid != m.uid() || st.gid != m.gid() {
            return Ok(false);
        }
        let ft = m.file_type();
        if ft.is_file() {
            if !self.old.is_file(id) {
                return Ok(false);
            }
            let ours = fs::read(p).map_err(io_err("read", p))?;
            let theirs = self.old.read(ipath, id, u64::MAX)?;
            Ok(ours == theirs)
        } else if ft.is_symlink() {
            let t = fs::read_link(p).map_err(io_err("read", p))?;
            Ok(matches!(&self.old.tree.inode(id).content,
                Content::Symlink(x) if x.as_slice() == t.as_os_str().as_bytes()))
        } else if ft.is_dir() {
            Ok(self.old.is_dir(id))
        } else {
            Ok(false)
        }
    }

    /// Whether the new image differs from the old at `ipath` (content or
    /// presence), for the conflict report.
    fn image_changed(&self, ipath: &str) -> bool {
        let a = self.old.lookup(ipath);
        let b = self.new.lookup(ipath);
        match (a, b) {
            (None, None) => false,
            (Some(a), Some(b)) => {
                let (ia, ib) = (self.old.tree.inode(a), self.new.tree.inode(b));
                ia.stat.mode != ib.stat.mode || !same_content(&ia.content, &ib.content)
            }
            _ => true,
        }
    }

    fn merge_dir(
        &self,
        src: &Path,
        dst: &Path,
        ipath: &str,
        report: &mut EtcReport,
    ) -> Result<(), DeployError> {
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(io_err("read", src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read", src))?;
        names.sort();
        for name in names {
            let s = src.join(&name);
            let d = dst.join(&name);
            let ip = format!("{ipath}/{}", name.to_string_lossy());
            let m = fs::symlink_metadata(&s).map_err(io_err("stat", &s))?;
            if m.is_dir() && !is_opaque(&s) {
                let existed_in_old = self.old.lookup(&ip).is_some_and(|id| self.old.is_dir(id));
                fs::create_dir(&d).map_err(io_err("create", &d))?;
                self.merge_dir(&s, &d, &ip, report)?;
                copy_attrs(&s, &d, &m)?;
                let empty = fs::read_dir(&d)
                    .map_err(io_err("read", &d))?
                    .next()
                    .is_none();
                if empty && existed_in_old && self.same_as_old(&s, &m, &ip)? {
                    fs::remove_dir(&d).map_err(io_err("remove", &d))?;
                }
                continue;
            }
            if !is_whiteout(&m) && !m.is_dir() && self.same_as_old(&s, &m, &ip)? {
                report.dropped.push(ip);
                continue;
            }
            copy_tree(&s, &d)?;
            if self.image_changed(&ip) {
                report.conflicts.push(ip.clone());
            }
            report.kept.push(ip);
        }
        Ok(())
    }
}

fn same_content(a: &Content, b: &Content) -> bool {
    use erofs::tree::FileData;
    match (a, b) {
        (Content::Regular(x), Content::Regular(y)) => {
            x.size == y.size
                && match (&x.data, &y.data) {
                    (FileData::Inline(p), FileData::Inline(q)) => p == q,
                    (
                        FileData::External { redirect: p, .. },
                        FileData::External { redirect: q, .. },
                    ) => p == q,
                    _ => false,
                }
        }
        (Content::Symlink(x), Content::Symlink(y)) => x == y,
        (Content::Directory(_), Content::Directory(_)) => true,
        (Content::Special, Content::Special) => true,
        _ => false,
    }
}

/// Copies owner, permission bits, times and xattrs (not overlayfs' own,
/// except `opaque`) from `src` to `dst`.
fn copy_attrs(src: &Path, dst: &Path, m: &fs::Metadata) -> Result<(), DeployError> {
    use rustix::fs::{Gid, Uid};
    rustix::fs::chownat(
        rustix::fs::CWD,
        dst,
        Some(Uid::from_raw(m.uid())),
        Some(Gid::from_raw(m.gid())),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("chown", dst)(e.into()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(src, &mut buf[..]).unwrap_or(0);
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") && name != b"trusted.overlay.opaque" {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let mut v = vec![0u8; 64 * 1024];
        if let Ok(k) = rustix::fs::lgetxattr(src, name, &mut v[..]) {
            rustix::fs::lsetxattr(dst, name, &v[..k], rustix::fs::XattrFlags::empty())
                .map_err(|e| io_err("set xattr on", dst)(e.into()))?;
        }
    }
    if !m.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("chmod", dst))?;
    }
    let ts = |s: i64, ns: i64| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: ts(m.atime(), m.atime_nsec()),
        last_modification: ts(m.mtime(), m.mtime_nsec()),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        dst,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set times on", dst)(e.into()))?;
    Ok(())
}

/// Copies a file, symlink, device or whole directory with its attributes.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), DeployError> {
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    let ft = m.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).map_err(io_err("create", dst))?;
        for e in fs::read_dir(src).map_err(io_err("read", src))? {
            let e = e.map_err(io_err("read", src))?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        let t = fs::read_link(src).map_err(io_err("read", src))?;
        std::os::unix::fs::symlink(&t, dst).map_err(io_err("create", dst))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(io_err("copy to", dst))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        let kind = if ft.is_char_device() {
            rustix::fs::FileType::CharacterDevice
        } else if ft.is_block_device() {
            rustix::fs::FileType::BlockDevice
        } else if ft.is_fifo() {
            rustix::fs::FileType::Fifo
        } else {
            rustix::fs::FileType::Socket
        };
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dst,
            kind,
            rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777),
            m.rdev(),
        )
        .map_err(|e| io_err("create", dst)(e.into()))?;
    }
    copy_attrs(src, dst, &m)
}
