//! Reading a directory on disk into a [`Tree`].
//!
//! Two passes. [`scan`] walks the directory (metadata, xattrs, symlinks and
//! the bytes of small files) on one thread: it is syscall bound and cheap.
//! [`resolve`] then hashes every larger file on a thread pool, names it by its
//! fs-verity digest and optionally copies it into an object directory.
//!
//! Hard links: by default each link is stored as a file of its own with
//! `nlink` 1, as composefs C 1.0.8 `mkcomposefs DIR` does, so that images
//! are byte-identical to its output. With [`ScanOptions::keep_hardlinks`]
//! the links of one file inside the tree stay one inode, and `nlink` counts
//! the links inside the tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use erofs::tree::{
    Content, File, FileData, Inode, InodeId, Stat, Timespec, Tree, TreeBuilder, Xattr,
};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Mode, OFlags};

/// Files of at most this many bytes are stored inside the image.
pub const INLINE_MAX: u64 = 64;

/// What to take from the directory (mkcomposefs' `--skip-*`, `--user-xattrs`, `--use-epoch`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    pub skip_xattrs: bool,
    pub user_xattrs: bool,
    pub skip_devices: bool,
    pub use_epoch: bool,
    /// Keep hard links inside the tree as hard links (composefs C does not).
    pub keep_hardlinks: bool,
}

/// A scanned tree whose large files still need hashing.
#[derive(Debug)]
pub struct Scan {
    pub tree: Tree,
    pub pending: Vec<PendingFile>,
}

/// A regular file larger than [`INLINE_MAX`], to be hashed (and stored).
#[derive(Debug, Clone)]
pub struct PendingFile {
    pub inode: InodeId,
    pub path: PathBuf,
    pub size: u64,
}

/// An error reading the source tree, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}: {source}", path.display())]
pub struct ScanError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

impl ScanError {
    pub fn new(path: impl Into<PathBuf>, what: &'static str, source: impl Into<io::Error>) -> Self {
        ScanError {
            path: path.into(),
            what,
            source: source.into(),
        }
    }
}

fn stat_of(st: &rustix::fs::Stat, opts: &ScanOptions) -> Stat {
    Stat {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: 1,
        mtime: if opts.use_epoch {
            Timespec::default()
        } else {
            Timespec {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            }
        },
        rdev: st.st_rdev,
    }
}

/// Reads the xattrs of `name` in the directory open as `dirfd`.
fn read_xattrs(
    dirfd: &fs::File,
    name: &OsStr,
    full: &Path,
    opts: &ScanOptions,
) -> Result<Vec<Xattr>, ScanError> {
    if opts.skip_xattrs {
        return Ok(Vec::new());
    }
    // Address the entry through the directory fd so that deep trees (longer
    // than PATH_MAX) work; fall back to the full path without /proc.
    use std::os::fd::AsRawFd;
    let mut via_proc = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd()));
    via_proc.push(name);
    let path: &Path = if Path::new("/proc/self/fd").exists() {
        &via_proc
    } else {
        full
    };
    let err = |e: rustix::io::Errno| ScanError::new(full, "reading xattrs", e);
    let mut list = Vec::new();
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        list.resize(size, 0);
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => {
                list.truncate(n);
                break;
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew meanwhile
            Err(e) => return Err(err(e)),
        }
    }
    let mut out = Vec::new();
    for xname in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if opts.user_xattrs && !xname.starts_with(b"user.") {
            continue;
        }
        let cname = OsStr::from_bytes(xname);
        let mut value = Vec::new();
        loop {
            let size = match rustix::fs::lgetxattr_query(path, cname) {
                Ok(n) => n,
                Err(rustix::io::Errno::NODATA) => break, // removed meanwhile
                Err(e) => return Err(err(e)),
            };
            value.resize(size, 0);
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    out.push(Xattr {
                        name: xname.to_vec(),
                        value: std::mem::take(&mut value),
                    });
                    break;
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(out)
}

/// Walks `root` and builds its tree. Large files are left pending for [`resolve`].
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Scan, ScanError> {
    scan_feeding(root, opts, None)
}

/// [`scan`] and [`resolve`] overlapped: files are hashed (and stored) on
/// `threads` workers while the walk goes on, so the walk's syscalls and the
/// hashing share the cores instead of taking turns.
pub fn scan_and_resolve(
    root: &Path,
    opts: &ScanOptions,
    sink: &dyn FileSink,
    threads: usize,
) -> Result<Tree, ScanError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PendingFile>(4096);
    let rx = std::sync::Mutex::new(rx);
    let done: std::sync::Mutex<Vec<(InodeId, Vec<u8>)>> = Default::default();
    let failed: std::sync::Mutex<Option<ScanError>> = Default::default();
    let scanned = std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let next = rx.lock().expect("receiver lock").recv();
                let Ok(f) = next else { break };
                match sink.ingest(&f) {
                    Ok(d) => done.lock().expect("results lock").push((f.inode, d)),
                    Err(e) => {
                        failed.lock().expect("error lock").get_or_insert(e);
                        // Stop taking work; dropping our receiver share is
                        // not possible, so drain without processing.
                        while rx.lock().expect("receiver lock").recv().is_ok() {}
                        break;
                    }
                }
            });
        }
        scan_feeding(root, opts, Some(tx))
    });
    if let Some(e) = failed.into_inner().expect("error lock") {
        return Err(e);
    }
    let mut tree = scanned?.tree;
    for (id, digest) in done.into_inner().expect("results lock") {
        if let Content::Regular(File {
            data: FileData::External { redirect, verity },
            ..
        }) = &mut tree.inode_mut(id).content
        {
            *redirect = Some(object_path(&digest).into_bytes());
            *verity = Some(digest);
        }
    }
    Ok(tree)
}

fn scan_feeding(
    root: &Path,
    opts: &ScanOptions,
    feed: Option<std::sync::mpsc::SyncSender<PendingFile>>,
) -> Result<Scan, ScanError> {
    let st = rustix::fs::statat(rustix::fs::CWD, root, AtFlags::empty())
        .map_err(|e| ScanError::new(root, "cannot stat source", e))?;
    if st.st_mode & erofs::format::S_IFMT != erofs::format::S_IFDIR {
        return Err(ScanError::new(
            root,
            "source",
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let dir = open_dir(rustix::fs::CWD, root, root)?;
    // The root's own xattrs, through the directory just opened (`N/.`),
    // so a relative source or `.` means that directory, not the parent's
    // entry of the same name.
    let root_xattrs = read_xattrs(&dir, OsStr::new("."), root, opts)?;
    let mut root_stat = stat_of(&st, opts);
    root_stat.nlink = 2;
    let mut b = TreeBuilder::new(root_stat);
    b.tree_mut().inode_mut(InodeId::ROOT).xattrs = root_xattrs;
    let mut w = Walker {
        opts: *opts,
        builder: b,
        pending: Vec::new(),
        feed,
        links: HashMap::new(),
    };
    let walked = w.walk(InodeId::ROOT, &dir, root);
    // Close the feed before anything else so workers finish.
    w.feed = None;
    walked?;
    let Walker {
        builder, pending, ..
    } = w;
    let mut tree = builder.finish_unchecked();
    count_links(&mut tree);
    tree.validate().map_err(|e| {
        ScanError::new(
            root,
            "invalid tree",
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok(Scan { tree, pending })
}

fn open_dir<Fd: std::os::fd::AsFd>(
    at: Fd,
    name: impl rustix::path::Arg,
    full: &Path,
) -> Result<fs::File, ScanError> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(fs::File::from)
    .map_err(|e| ScanError::new(full, "cannot open directory", e))
}

/// Sets `nlink` of every non-directory to the number of entries naming it.
fn count_links(tree: &mut Tree) {
    let mut counts = vec![0u32; tree.inodes.len()];
    for inode in &tree.inodes {
        for e in inode.entries() {
            counts[e.inode.index()] += 1;
        }
    }
    for (inode, n) in tree.inodes.iter_mut().zip(counts) {
        if !inode.is_dir() {
            inode.stat.nlink = n.max(1);
        }
    }
}

struct Walker {
    opts: ScanOptions,
    builder: TreeBuilder,
    pending: Vec<PendingFile>,
    /// When set, pending files go to hashing workers as they are found.
    feed: Option<std::sync::mpsc::SyncSender<PendingFile>>,
    /// (dev, ino) of multiply-linked files already added.
    links: HashMap<(u64, u64), InodeId>,
}

impl Walker {
    fn walk(&mut self, dir_id: InodeId, dir: &fs::File, dir_path: &Path) -> Result<(), ScanError> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let rd = rustix::fs::Dir::read_from(dir)
            .map_err(|e| ScanError::new(dir_path, "cannot read directory", e))?;
        for ent in rd {
            let ent = ent.map_err(|e| ScanError::new(dir_path, "cannot read directory", e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        // Sorted so that the home of a hard-linked inode is deterministic.
        names.sort_unstable();
        for name in names {
            let os = OsStr::from_bytes(&name);
            let full = dir_path.join(os);
            let st = rustix::fs::statat(dir, os, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| ScanError::new(&full, "cannot stat", e))?;
            let ftype = st.st_mode & erofs::format::S_IFMT;
            use erofs::format::*;
            if self.opts.skip_devices && (ftype == S_IFBLK || ftype == S_IFCHR) {
                continue;
            }
            let linked = self.opts.keep_hardlinks && ftype != S_IFDIR && st.st_nlink > 1;
            if linked {
                if let Some(&id) = self.links.get(&(st.st_dev, st.st_ino)) {
                    self.builder.link(dir_id, name, id);
                    continue;
                }
            }
            let xattrs = read_xattrs(dir, os, &full, &self.opts)?;
            let stat = stat_of(&st, &self.opts);
            let content = match ftype {
                S_IFDIR => Content::Directory(Vec::new()),
                S_IFREG => {
                    let size = st.st_size as u64;
                    if size <= INLINE_MAX {
                        Content::Regular(File {
                            size,
                            data: FileData::Inline(read_small(dir, os, &full, size)?),
                        })
                    } else {
                        Content::Regular(File {
                            size,
                            data: FileData::External {
                                redirect: None,
                                verity: None,
                            },
                        })
                    }
                }
                S_IFLNK => {
                    let target = rustix::fs::readlinkat(dir, os, Vec::new())
                        .map_err(|e| ScanError::new(&full, "cannot read symlink", e))?;
                    Content::Symlink(target.into_bytes())
                }
                S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => Content::Special,
                _ => {
                    return Err(ScanError::new(
                        &full,
                        "unsupported file type",
                        io::Error::from(io::ErrorKind::Unsupported),
                    ))
                }
            };
            let is_dir = ftype == S_IFDIR;
            let id = self.builder.add(
                dir_id,
                name.clone(),
                Inode {
                    stat,
                    xattrs,
                    content,
                },
            );
            if ftype == S_IFREG && st.st_size as u64 > INLINE_MAX {
                let p = PendingFile {
                    inode: id,
                    path: full.clone(),
                    size: st.st_size as u64,
                };
                match &self.feed {
                    // A closed channel means the workers stopped on an error,
                    // which the caller reports.
                    Some(tx) => {
                        let _ = tx.send(p);
                    }
                    None => self.pending.push(p),
                }
            }
            if linked {
                self.links.insert((st.st_dev, st.st_ino), id);
            }
            if is_dir {
                let sub = open_dir(dir, os, &full)?;
                self.walk(id, &sub, &full)?;
            }
        }
        Ok(())
    }
}

fn read_small(dir: &fs::File, name: &OsStr, full: &Path, size: u64) -> Result<Vec<u8>, ScanError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| ScanError::new(full, "cannot open", e))?;
    let mut buf = vec![0u8; size as usize + 1];
    let mut got = 0;
    loop {
        let n = rustix::io::read(&fd, &mut buf[got..])
            .map_err(|e| ScanError::new(full, "cannot read", e))?;
        if n == 0 {
            break;
        }
        got += n;
        if got == buf.len() {
            break;
        }
    }
    if got as u64 != size {
        return Err(ScanError::new(
            full,
            "file changed while reading",
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected {size} bytes, read {got}"),
            ),
        ));
    }
    buf.truncate(got);
    Ok(buf)
}

/// Computes the object id of one pending file (and stores it if asked).
/// Returns the fs-verity digest bytes.
pub trait FileSink: Sync {
    fn ingest(&self, file: &PendingFile) -> Result<Vec<u8>, ScanError>;
}

/// Hashes (and stores) every pending file on `threads` threads, filling in
/// `redirect` (`XX/YYYY…`) and `verity` for each.
pub fn resolve(mut scan: Scan, sink: &dyn FileSink, threads: usize) -> Result<Tree, ScanError> {
    // Largest first, so one big file does not end up last on one thread.
    scan.pending.sort_by_key(|p| std::cmp::Reverse(p.size));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| ScanError::new("", "thread pool", io::Error::other(e)))?;
    let digests: Vec<(InodeId, Vec<u8>)> = pool.install(|| {
        scan.pending
            .par_iter()
            .map(|p| sink.ingest(p).map(|d| (p.inode, d)))
            .collect::<Result<_, _>>()
    })?;
    for (id, digest) in digests {
        if let Content::Regular(File {
            data: FileData::External { redirect, verity },
            ..
        }) = &mut scan.tree.inode_mut(id).content
        {
            *redirect = Some(object_path(&digest).into_bytes());
            *verity = Some(digest);
        }
    }
    Ok(scan.tree)
}

/// `XX/YYYY…`: the object path of a digest, relative to the object directory.
pub fn object_path(digest: &[u8]) -> String {
    let hex = hex::encode(digest);
    format!("{}/{}", &hex[..2], &hex[2..])
}
