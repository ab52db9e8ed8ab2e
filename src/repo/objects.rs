//! A directory of objects named by fs-verity digest: `XX/YYYY…`.
//!
//! The layout is the one mkcomposefs `--digest-store` and `mount.composefs
//! basedir=` use. Objects appear atomically: data goes to a temporary file in
//! the object directory, is copied (reflinked where the filesystem can),
//! made read-only for everyone, gets fs-verity where supported, and is then
//! renamed into place. Adding an object that exists costs one `stat`.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::fsverity::{self, Algorithm};

/// What happened when adding an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// It was already there.
    Present,
    /// Written now; `verity` tells whether fs-verity got enabled on it.
    Written { verity: bool },
}

/// An open object directory.
#[derive(Debug)]
pub struct ObjectDir {
    path: PathBuf,
    dir: fs::File,
    alg: Algorithm,
    counter: AtomicU64,
}

/// An object-store error, naming the object or file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}: {source}", path.display())]
pub struct ObjectError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

fn oe(path: impl Into<PathBuf>, what: &'static str, e: impl Into<io::Error>) -> ObjectError {
    ObjectError {
        path: path.into(),
        what,
        source: e.into(),
    }
}

impl ObjectDir {
    /// Opens (creating if needed) an object directory.
    pub fn open(path: &Path, alg: Algorithm) -> Result<Self, ObjectError> {
        match fs::create_dir_all(path) {
            Ok(()) => {}
            Err(e) => return Err(oe(path, "cannot create object directory", e)),
        }
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| oe(path, "cannot open object directory", e))?;
        Ok(ObjectDir {
            path: path.to_path_buf(),
            dir: fs::File::from(dir),
            alg,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of an object relative to the directory (`XX/YYYY…`).
    pub fn relative_path(digest: &[u8]) -> String {
        crate::tree::dir::object_path(digest)
    }

    /// Whether the object exists.
    pub fn contains(&self, digest: &[u8]) -> bool {
        rustix::fs::statat(&self.dir, Self::relative_path(digest).as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Adds the contents of `src` (whose digest the caller computed) as an object.
    pub fn add_file(&self, src: &fs::File, digest: &[u8]) -> Result<Added, ObjectError> {
        let rel = Self::relative_path(digest);
        if rustix::fs::statat(&self.dir, rel.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Ok(Added::Present);
        }
        let sub = &rel[..2];
        match rustix::fs::mkdirat(&self.dir, sub, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(oe(self.path.join(sub), "cannot create directory", e)),
        }
        let tmp_name = format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_path = self.path.join(&tmp_name);
        let tmp = rustix::fs::openat(
            &self.dir,
            tmp_name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| oe(&tmp_path, "cannot create temporary file", e))?;
        let cleanup = |e: ObjectError| {
            let _ = rustix::fs::unlinkat(&self.dir, tmp_name.as_str(), AtFlags::empty());
            e
        };
        if rustix::fs::ioctl_ficlone(&tmp, src).is_err() {
            copy_all(src, &tmp).map_err(|e| cleanup(oe(&tmp_path, "cannot copy object data", e)))?;
        }
        rustix::fs::fchmod(&tmp, Mode::from_raw_mode(0o644))
            .map_err(|e| cleanup(oe(&tmp_path, "cannot chmod object", e)))?;
        drop(tmp);
        // fs-verity needs a read-only fd with no writer open.
        let verity = {
            let ro = rustix::fs::openat(&self.dir, tmp_name.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| cleanup(oe(&tmp_path, "cannot reopen object", e)))?;
            fsverity::enable_retrying(ro.as_fd(), self.alg).is_ok()
        };
        rustix::fs::renameat(&self.dir, tmp_name.as_str(), &self.dir, rel.as_str())
            .map_err(|e| cleanup(oe(self.path.join(&rel), "cannot rename object into place", e)))?;
        Ok(Added::Written { verity })
    }

    /// Flushes everything written to the object directory's filesystem.
    pub fn sync(&self) -> Result<(), ObjectError> {
        rustix::fs::syncfs(&self.dir).map_err(|e| oe(&self.path, "syncfs", e))
    }
}

/// Copies the whole of `src` into `dst` (both at offset 0), in-kernel where possible.
fn copy_all(src: &fs::File, dst: impl AsFd) -> io::Result<()> {
    let mut off_in: u64 = 0;
    let mut off_out: u64 = 0;
    loop {
        match rustix::fs::copy_file_range(src, Some(&mut off_in), &dst, Some(&mut off_out), 1 << 30) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP)
                if off_in == 0 =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Plain read/write fallback.
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = rustix::io::pread(src, &mut buf, pos)?;
        if n == 0 {
            return Ok(());
        }
        let mut w = 0;
        while w < n {
            w += rustix::io::pwrite(&dst, &buf[w..n], pos + w as u64)?;
        }
        pos += n as u64;
    }
}
