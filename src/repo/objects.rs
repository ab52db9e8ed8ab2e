//! A directory of objects named by fs-verity digest: `XX/YYYY…`.
//!
//! The layout is the one mkcomposefs `--digest-store` and `mount.composefs
//! basedir=` use. Objects appear atomically: data goes to a temporary file
//! (in the object directory itself, or in the repository's `tmp/`), is
//! copied (reflinked where the filesystem can), made read-only for everyone,
//! gets fs-verity where supported, and is then renamed into place. A reader
//! never sees a partial object, and adding an object that exists costs one
//! `stat`. Nothing is fsync'ed per object: callers flush once with
//! [`ObjectDir::sync`] before writing anything that refers to the objects.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::fsverity::{self, Algorithm, Digest, VerityError};
use crate::tree::dir::{FileSink, PendingFile, ScanError};

/// Files at least this large are hashed with several threads each.
const PARALLEL_HASH_MIN: u64 = 32 << 20;

/// What happened when adding an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// It was already there.
    Present,
    /// Written now; `verity` tells whether fs-verity got enabled on it.
    Written { verity: bool },
}

/// Whether objects must get fs-verity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityPolicy {
    /// Enable it where the filesystem supports it; carry on where not.
    Try,
    /// Every new object must get fs-verity; failing to enable it is an error.
    Require,
}

/// An open object directory.
#[derive(Debug)]
pub struct ObjectDir {
    path: PathBuf,
    dir: fs::File,
    tmp: Option<(PathBuf, fs::File)>,
    /// This handle's staging directory under `tmp` (made on first use),
    /// where anonymous files are allocated; see [`ObjectDir::stage`].
    stage: std::sync::OnceLock<Option<(String, fs::File)>>,
    alg: Algorithm,
    policy: VerityPolicy,
    counter: AtomicU64,
    /// Set once enabling verity failed with "not supported" (skip further tries).
    verity_unsupported: AtomicBool,
    /// Set once the filesystem refused O_TMPFILE.
    no_tmpfile: AtomicBool,
    /// Set once linking a descriptor with `AT_EMPTY_PATH` was refused.
    no_empty_path_link: AtomicBool,
    written: AtomicU64,
    written_bytes: AtomicU64,
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

pub(crate) fn oe(
    path: impl Into<PathBuf>,
    what: &'static str,
    e: impl Into<io::Error>,
) -> ObjectError {
    ObjectError {
        path: path.into(),
        what,
        source: e.into(),
    }
}

fn open_dir(path: &Path) -> Result<fs::File, ObjectError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(fs::File::from)
    .map_err(|e| oe(path, "cannot open directory", e))
}

impl ObjectDir {
    /// Opens (creating if needed) an object directory; temporary files go
    /// inside it (mkcomposefs `--digest-store`).
    pub fn open(path: &Path, alg: Algorithm) -> Result<Self, ObjectError> {
        fs::create_dir_all(path).map_err(|e| oe(path, "cannot create object directory", e))?;
        Ok(ObjectDir {
            path: path.to_path_buf(),
            dir: open_dir(path)?,
            tmp: None,
            stage: std::sync::OnceLock::new(),
            alg,
            policy: VerityPolicy::Try,
            counter: AtomicU64::new(0),
            verity_unsupported: AtomicBool::new(false),
            no_tmpfile: AtomicBool::new(false),
            no_empty_path_link: AtomicBool::new(false),
            written: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        })
    }

    /// Like [`ObjectDir::open`], with temporary files in `tmp` (same filesystem)
    /// and the given verity policy.
    pub fn open_with(
        path: &Path,
        tmp: &Path,
        alg: Algorithm,
        policy: VerityPolicy,
    ) -> Result<Self, ObjectError> {
        let mut d = Self::open(path, alg)?;
        fs::create_dir_all(tmp).map_err(|e| oe(tmp, "cannot create directory", e))?;
        let tmp_dir = open_dir(tmp)?;
        mark_topdir(&tmp_dir);
        d.tmp = Some((tmp.to_path_buf(), tmp_dir));
        d.policy = policy;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The directory fd (for `*at` calls).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Number and total size of objects written by this handle.
    pub fn written(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.written_bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether the object exists.
    pub fn contains(&self, digest: &Digest) -> bool {
        rustix::fs::statat(
            &self.dir,
            digest.object_path().as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// Full path of an object.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.path.join(digest.object_path())
    }

    /// A new empty file to fill: an anonymous `O_TMPFILE` inode in the
    /// object directory where the filesystem supports it (nothing to clean
    /// up after a crash, no directory entry until it is linked in place),
    /// else a named temporary file.
    ///
    /// In a repository the file is made in this handle's staging directory
    /// (see [`ObjectDir::stage`]). Elsewhere (`mkcomposefs --digest-store`)
    /// `near` names the `XX` subdirectory the object will land in, when
    /// known, and the inode is allocated there.
    fn tmp_file(&self, near: Option<&str>) -> Result<Staged<'_>, ObjectError> {
        if !self.no_tmpfile.load(Ordering::Relaxed) {
            let (at, near) = match self.stage() {
                Some(d) => (d, None),
                None => (self.dir.as_fd(), near),
            };
            let open = || {
                rustix::fs::openat(
                    at,
                    near.unwrap_or("."),
                    OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
            };
            let mut r = open();
            if let (Err(rustix::io::Errno::NOENT), Some(sub)) = (&r, near) {
                match rustix::fs::mkdirat(&self.dir, sub, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => r = open(),
                    Err(e) => return Err(oe(self.path.join(sub), "cannot create directory", e)),
                }
            }
            match r {
                Ok(fd) => {
                    return Ok(Staged {
                        fd,
                        named: None,
                        path: self.path.join("(O_TMPFILE)"),
                    })
                }
                Err(
                    rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::ISDIR
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOENT,
                ) => self.no_tmpfile.store(true, Ordering::Relaxed),
                Err(e) => return Err(oe(&self.path, "cannot create temporary file", e)),
            }
        }
        let (tmp_dir, tmp_path) = match &self.tmp {
            Some((p, d)) => (d.as_fd(), p.as_path()),
            None => (self.dir.as_fd(), self.path.as_path()),
        };
        let name = format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let full = tmp_path.join(&name);
        let fd = rustix::fs::openat(
            tmp_dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| oe(&full, "cannot create temporary file", e))?;
        Ok(Staged {
            fd,
            named: Some((tmp_dir, name)),
            path: full,
        })
    }

    /// The directory new inodes are allocated in, for a repository: a
    /// directory of this handle's own in `tmp/`, made on first use under a
    /// name that differs every time, and removed when the handle is dropped.
    ///
    /// Why: ext4 puts a new file's inode in the block group of the
    /// directory it is created in, and without a journal it skips every
    /// inode of that group freed in the last minutes, one lookup each, on
    /// every allocation. Objects created in `objects/XX/` go to the same
    /// groups as the objects of a repository just deleted at the same path
    /// (the groups are chosen from the directory names), and then each new
    /// object pays for all of them. `tmp/` is flagged as a top directory
    /// (`FS_TOPDIR_FL`), so a staging directory with a fresh name is placed
    /// in a group chosen from that name, most likely one with no recent
    /// deletions. Where the flag is not supported this costs nothing.
    fn stage(&self) -> Option<BorrowedFd<'_>> {
        self.stage
            .get_or_init(|| {
                let (_, tmp) = self.tmp.as_ref()?;
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                let name = format!("stage-{}-{:x}", std::process::id(), nanos);
                rustix::fs::mkdirat(tmp, name.as_str(), Mode::from_raw_mode(0o700)).ok()?;
                match rustix::fs::openat(
                    tmp,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => Some((name, fs::File::from(fd))),
                    Err(_) => {
                        let _ = rustix::fs::unlinkat(tmp, name.as_str(), AtFlags::REMOVEDIR);
                        None
                    }
                }
            })
            .as_ref()
            .map(|(_, d)| d.as_fd())
    }

    /// Adds the contents of `src`, whose digest the caller computed from it
    /// while its metadata was `before` (size, mtime, ctime). If the file
    /// changed since, the copy is refused rather than stored under a name
    /// that does not match its bytes.
    pub fn add_file(
        &self,
        src: &fs::File,
        digest: &Digest,
        before: &FileStamp,
    ) -> Result<Added, ObjectError> {
        self.add_with(digest, |tmp| {
            if rustix::fs::ioctl_ficlone(tmp, src).is_err() {
                copy_all(src, tmp)?;
            }
            let copied = rustix::fs::fstat(tmp)?.st_size as u64;
            if FileStamp::of(src)? != *before || copied != before.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "file changed while it was being stored",
                ));
            }
            Ok(())
        })
    }

    /// Adds `data` as an object and returns its digest.
    pub fn add_bytes(&self, data: &[u8]) -> Result<(Digest, Added), ObjectError> {
        let digest = fsverity::par_digest_bytes(self.alg, data);
        let added = self.add_with(&digest, |tmp| {
            let mut off = 0;
            while off < data.len() {
                off += rustix::io::pwrite(tmp, &data[off..], off as u64)?;
            }
            Ok(())
        })?;
        Ok((digest, added))
    }

    fn add_with(
        &self,
        digest: &Digest,
        fill: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Result<Added, ObjectError> {
        if self.contains(digest) {
            return Ok(Added::Present);
        }
        let rel = digest.object_path();
        let tmp = self.tmp_file(Some(&rel[..2]))?;
        if let Err(e) = fill(tmp.fd.as_fd()) {
            let path = tmp.path.clone();
            tmp.discard();
            return Err(oe(&path, "cannot write object data", e));
        }
        self.install(digest, tmp)
    }

    /// Moves a filled temporary file into place as object `digest`:
    /// world-readable mode, fs-verity (which needs the writable descriptor
    /// closed), then a link or rename under its name. If the object appeared
    /// meanwhile (another writer), the temporary file is dropped.
    fn install(&self, digest: &Digest, staged: Staged<'_>) -> Result<Added, ObjectError> {
        let rel = digest.object_path();
        let Staged { fd, named, path } = staged;
        let discard = |named: &Option<(BorrowedFd<'_>, String)>| {
            if let Some((d, n)) = named {
                let _ = rustix::fs::unlinkat(d, n.as_str(), AtFlags::empty());
            }
        };
        let fail = |e: ObjectError| {
            discard(&named);
            e
        };
        let (size, mode) = rustix::fs::fstat(&fd)
            .map(|s| (s.st_size as u64, s.st_mode & 0o7777))
            .unwrap_or((0, 0));
        // Created with mode 0644: only a umask that took bits away from it
        // makes a chmod necessary.
        if mode != 0o644 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))
                .map_err(|e| fail(oe(&path, "cannot chmod object", e)))?;
        }
        // fs-verity needs a read-only descriptor and no writer left open.
        let (fd, verity) = if self.verity_unsupported.load(Ordering::Relaxed)
            && self.policy == VerityPolicy::Try
        {
            (fd, false)
        } else {
            let ro = match &named {
                Some((d, n)) => rustix::fs::openat(
                    d,
                    n.as_str(),
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                None => rustix::fs::open(
                    format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
            }
            .map_err(|e| fail(oe(&path, "cannot reopen object", e)))?;
            drop(fd);
            let verity = self.try_enable_verity(ro.as_fd(), &path).map_err(&fail)?;
            (ro, verity)
        };
        let place = || -> rustix::io::Result<()> {
            let Some((d, n)) = &named else {
                return self.link_anonymous(fd.as_fd(), &rel);
            };
            rustix::fs::renameat(d, n.as_str(), &self.dir, rel.as_str())
        };
        let mut res = place();
        if res == Err(rustix::io::Errno::NOENT) {
            // First object under this prefix: create XX/ and retry.
            match rustix::fs::mkdirat(&self.dir, &rel[..2], Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => res = place(),
                Err(e) => {
                    return Err(fail(oe(
                        self.path.join(&rel[..2]),
                        "cannot create directory",
                        e,
                    )))
                }
            }
        }
        match res {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                discard(&named);
                return Ok(Added::Present);
            }
            Err(e) => {
                return Err(fail(oe(
                    self.path.join(&rel),
                    "cannot move object into place",
                    e,
                )))
            }
        }
        self.written.fetch_add(1, Ordering::Relaxed);
        self.written_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Added::Written { verity })
    }

    /// Starts adding an object whose bytes are not known in advance: write
    /// them to the returned [`ObjectWriter`] (which hashes as it goes), then
    /// [`ObjectWriter::commit`]. Dropping the writer without committing
    /// removes its temporary file.
    pub fn writer(&self) -> Result<ObjectWriter<'_>, ObjectError> {
        let staged = self.tmp_file(None)?;
        Ok(ObjectWriter {
            objects: self,
            hasher: fsverity::FsVerityHasher::new(self.alg),
            tmp: Some(staged),
        })
    }

    /// Gives an anonymous (`O_TMPFILE`) file the name `rel`. Linking the
    /// descriptor itself (`AT_EMPTY_PATH`) saves a walk through `/proc`, but
    /// needs `CAP_DAC_READ_SEARCH`; without it the `/proc/self/fd` path is
    /// used (and tried first from then on).
    fn link_anonymous(&self, fd: BorrowedFd<'_>, rel: &str) -> rustix::io::Result<()> {
        if !self.no_empty_path_link.load(Ordering::Relaxed) {
            match rustix::fs::linkat(fd, "", &self.dir, rel, AtFlags::EMPTY_PATH) {
                Err(
                    rustix::io::Errno::NOENT
                    | rustix::io::Errno::PERM
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::ACCESS,
                ) => {}
                r => return r,
            }
        }
        let r = rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            &self.dir,
            rel,
            AtFlags::SYMLINK_FOLLOW,
        );
        // The descriptor could not be linked but its /proc path could:
        // AT_EMPTY_PATH is not allowed here. (ENOENT from both means the
        // directory is missing; the caller creates it.)
        if r.is_ok() {
            self.no_empty_path_link.store(true, Ordering::Relaxed);
        }
        r
    }

    fn try_enable_verity(&self, ro: BorrowedFd<'_>, path: &Path) -> Result<bool, ObjectError> {
        match enable_retrying(ro, self.alg) {
            Ok(()) => Ok(true),
            Err(VerityError::AlreadyEnabled) => Ok(true),
            Err(e) if self.policy == VerityPolicy::Try => {
                if e.is_not_supported() {
                    self.verity_unsupported.store(true, Ordering::Relaxed);
                }
                Ok(false)
            }
            Err(e) => Err(oe(path, "cannot enable fs-verity", e)),
        }
    }

    /// Makes one object durable: its data and its name (fsync of the file, of its `XX/`
    /// directory and of the object directory, which `XX/` may be new in). For a few small
    /// objects that a ref must name at once; many objects are cheaper with one
    /// [`sync`](Self::sync).
    pub fn sync_one(&self, digest: &Digest) -> Result<(), ObjectError> {
        let path = self.object_path(digest);
        let prefix = path.parent().unwrap_or(&self.path).to_path_buf();
        for p in [&path, &prefix, &self.path] {
            fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(|e| oe(p, "fsync", e))?;
        }
        Ok(())
    }

    /// Flushes everything written to the object directory's filesystem.
    pub fn sync(&self) -> Result<(), ObjectError> {
        rustix::fs::syncfs(&self.dir).map_err(|e| oe(&self.path, "syncfs", e))
    }
}

/// A streaming insert into an [`ObjectDir`]: bytes go to a temporary file
/// and through an fs-verity hasher; [`ObjectWriter::commit`] moves the file
/// into place under its digest (or drops it if that object already exists).
pub struct ObjectWriter<'a> {
    objects: &'a ObjectDir,
    hasher: fsverity::FsVerityHasher,
    tmp: Option<Staged<'a>>,
}

impl std::fmt::Debug for ObjectWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("tmp", &self.tmp.as_ref().map(|t| &t.path))
            .field("len", &self.hasher.len())
            .finish()
    }
}

impl ObjectWriter<'_> {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Finishes the object: returns its digest and whether it was new.
    pub fn commit(mut self) -> Result<(Digest, Added), ObjectError> {
        let staged = self.tmp.take().expect("ObjectWriter used after commit");
        let fresh = fsverity::FsVerityHasher::new(self.objects.alg);
        let hasher = std::mem::replace(&mut self.hasher, fresh);
        let digest = hasher.finish();
        if self.objects.contains(&digest) {
            staged.discard();
            return Ok((digest, Added::Present));
        }
        let added = self.objects.install(&digest, staged)?;
        Ok((digest, added))
    }
}

impl io::Write for ObjectWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(staged) = self.tmp.as_mut() else {
            return Err(io::Error::other("ObjectWriter used after commit"));
        };
        let n = rustix::io::write(&staged.fd, buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        if let Some(staged) = self.tmp.take() {
            staged.discard();
        }
    }
}

impl Drop for ObjectDir {
    fn drop(&mut self) {
        if let (Some((name, _)), Some((_, tmp))) =
            (self.stage.get().and_then(Option::as_ref), &self.tmp)
        {
            // Only anonymous files were ever made in it: it is empty.
            let _ = rustix::fs::unlinkat(tmp, name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// Sets `FS_TOPDIR_FL` on a directory if it is not set (best effort: not
/// every filesystem has the flag, and it only steers ext4's placement of
/// the directories made in it).
fn mark_topdir(dir: &fs::File) {
    use rustix::fs::IFlags;
    if let Ok(flags) = rustix::fs::ioctl_getflags(dir) {
        if !flags.contains(IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(dir, flags | IFlags::TOPDIR);
        }
    }
}

/// A temporary file being filled: anonymous (`O_TMPFILE`) or named.
struct Staged<'a> {
    fd: rustix::fd::OwnedFd,
    named: Option<(BorrowedFd<'a>, String)>,
    /// For messages.
    path: PathBuf,
}

impl Staged<'_> {
    /// Drops the file (an anonymous one vanishes with its descriptor).
    fn discard(self) {
        if let Some((d, n)) = &self.named {
            let _ = rustix::fs::unlinkat(d, n.as_str(), AtFlags::empty());
        }
    }
}

/// Enables fs-verity, retrying while the kernel says a writer is still open
/// (ETXTBSY: another thread may be between fork and exec holding our fd).
pub fn enable_retrying(fd: BorrowedFd<'_>, alg: Algorithm) -> Result<(), VerityError> {
    let mut delay = std::time::Duration::from_millis(1);
    for _ in 0..10 {
        match fsverity::enable(fd, alg) {
            Err(VerityError::FileBusy) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            r => return r,
        }
    }
    fsverity::enable(fd, alg)
}

/// Copies the whole of `src` into `dst` (both at offset 0), in-kernel where possible.
fn copy_all(src: &fs::File, dst: BorrowedFd<'_>) -> io::Result<()> {
    let mut off_in: u64 = 0;
    let mut off_out: u64 = 0;
    loop {
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), 1 << 30)
        {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::OPNOTSUPP,
            ) if off_in == 0 => break,
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
            w += rustix::io::pwrite(dst, &buf[w..n], pos + w as u64)?;
        }
        pos += n as u64;
    }
}

/// What identifies a file's contents cheaply: if none of this changed, the
/// bytes did not either (writes update mtime and ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime: (i64, u64),
    pub ctime: (i64, u64),
    pub ino: u64,
}

impl FileStamp {
    pub fn of(f: impl AsFd) -> io::Result<FileStamp> {
        let st = rustix::fs::fstat(f)?;
        Ok(FileStamp {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u64),
            ctime: (st.st_ctime, st.st_ctime_nsec as u64),
            ino: st.st_ino,
        })
    }
}

/// Hashes pending files (and stores them when given an object directory).
pub struct ObjectSink<'a> {
    pub alg: Algorithm,
    pub store: Option<&'a ObjectDir>,
    pub progress: Option<&'a indicatif::ProgressBar>,
}

impl FileSink for ObjectSink<'_> {
    fn ingest(&self, f: &PendingFile) -> Result<Vec<u8>, ScanError> {
        let file =
            fs::File::open(&f.path).map_err(|e| ScanError::new(&f.path, "cannot open", e))?;
        let stamp = FileStamp::of(&file).map_err(|e| ScanError::new(&f.path, "cannot stat", e))?;
        if stamp.size != f.size {
            return Err(ScanError::new(
                &f.path,
                "file changed while reading the tree",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("size was {}, now {}", f.size, stamp.size),
                ),
            ));
        }
        let digest = if f.size >= PARALLEL_HASH_MIN {
            fsverity::par_digest_file(self.alg, &file)
        } else {
            fsverity::digest_file(self.alg, &file)
        }
        .map_err(|e| ScanError::new(&f.path, "cannot read", e))?;
        if let Some(store) = self.store {
            store
                .add_file(&file, &digest, &stamp)
                .map_err(|e| ScanError::new(&f.path, "cannot store object", io::Error::other(e)))?;
        }
        if let Some(p) = self.progress {
            p.inc(f.size);
        }
        Ok(digest.as_bytes().to_vec())
    }
}
