//! The filesystem tree a composefs image describes: what the writer consumes
//! and the reader produces.
//!
//! Inodes live in an arena (`Tree::inodes`, root at index 0); directories hold
//! entries that point at inodes by [`InodeId`]. Several entries may point at
//! the same non-directory inode: those are hard links. Exactly one entry per
//! inode is its *home* (`hardlink == false`): the image places the inode where
//! its home entry is, the way composefs C places a node and skips its
//! `link_to` aliases. Builders get this for free from [`Tree::push_entry`],
//! which makes the first entry added for an inode its home.

use crate::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};

/// Longest file name an image may hold (bytes, no NUL).
pub const NAME_MAX: usize = 255;
/// Longest symlink target composefs accepts (PATH_MAX without the NUL).
pub const SYMLINK_MAX: usize = 4095;

/// Index of an inode in [`Tree::inodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId(pub u32);

impl InodeId {
    pub const ROOT: InodeId = InodeId(0);
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Modification time with nanoseconds; seconds may be negative (pre-1970).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// Inode attributes. `mode` includes the file type bits (`S_IFMT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Link count as given by the source. For directories the writer
    /// recomputes it (2 + subdirectories), as composefs C does.
    pub nlink: u32,
    pub mtime: Timespec,
    /// Device number (Linux `makedev` encoding) for block and char devices.
    pub rdev: u64,
}

impl Stat {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// One extended attribute, full name (`user.foo`, `security.capability`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Stored in the image itself (small files). `len() == File::size`.
    Inline(Vec<u8>),
    /// Stored outside the image: in the object store, found through
    /// `trusted.overlay.redirect`. `redirect` is the path relative to the
    /// object directory (`ab/cdef…`), `verity` the fs-verity digest recorded
    /// in `trusted.overlay.metacopy` (32 bytes: SHA-256, 64: SHA-512).
    External {
        redirect: Option<Vec<u8>>,
        verity: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub size: u64,
    pub data: FileData,
}

/// A directory entry. Names are raw bytes (any byte but `/` and NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub inode: InodeId,
    /// True for every entry of an inode except its home entry.
    pub hardlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Entries sorted by name (bytewise), without `.` and `..`.
    Directory(Vec<Entry>),
    Regular(File),
    Symlink(Vec<u8>),
    /// Block/char devices, fifos and sockets (`Stat::rdev` for devices).
    /// A char device 0:0 is an overlayfs whiteout.
    Special,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub stat: Stat,
    /// In any order; the writer sorts them by name. Names are unique.
    pub xattrs: Vec<Xattr>,
    pub content: Content,
}

impl Inode {
    pub fn new_dir(stat: Stat) -> Self {
        Inode {
            stat,
            xattrs: Vec::new(),
            content: Content::Directory(Vec::new()),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        match &self.content {
            Content::Directory(e) => e,
            _ => &[],
        }
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.value.as_slice())
    }

    /// Set (or replace) an xattr.
    pub fn set_xattr(&mut self, name: &[u8], value: &[u8]) {
        if let Some(x) = self.xattrs.iter_mut().find(|x| x.name == name) {
            x.value = value.to_vec();
        } else {
            self.xattrs.push(Xattr {
                name: name.to_vec(),
                value: value.to_vec(),
            });
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.content, Content::Directory(_))
    }

    /// True for an overlayfs whiteout (char device 0:0).
    pub fn is_whiteout(&self) -> bool {
        self.stat.file_type() == S_IFCHR && self.stat.rdev == 0
    }
}

/// Why a tree cannot become an image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("root inode is not a directory")]
    RootNotDirectory,
    #[error("{path}: invalid file name ({why})")]
    BadName { path: String, why: &'static str },
    #[error("{path}: duplicate directory entry")]
    Duplicate { path: String },
    #[error("{path}: entry points at missing inode {inode}")]
    DanglingEntry { path: String, inode: u32 },
    #[error("{path}: hard link to a directory")]
    DirectoryHardlink { path: String },
    #[error("{path}: inode has {homes} home entries (expected exactly 1)")]
    BadHome { path: String, homes: usize },
    #[error("inode {0} is not reachable from the root")]
    Unreachable(u32),
    #[error("{path}: mode {mode:#o} has an unknown file type")]
    BadMode { path: String, mode: u32 },
    #[error("{path}: content does not match file type in mode {mode:#o}")]
    ContentMismatch { path: String, mode: u32 },
    #[error("{path}: symlink target is empty")]
    EmptySymlink { path: String },
    #[error("{path}: symlink target longer than {SYMLINK_MAX} bytes")]
    LongSymlink { path: String },
    #[error("{path}: inline data length {len} differs from file size {size}")]
    InlineSize { path: String, len: usize, size: u64 },
    #[error("{path}: xattr name is empty or longer than 255 bytes")]
    BadXattrName { path: String },
    #[error("{path}: xattr value longer than 65535 bytes")]
    LongXattrValue { path: String },
    #[error("{path}: duplicate xattr {name}")]
    DuplicateXattr { path: String, name: String },
}

/// Checks a single file name component the way composefs does.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > NAME_MAX {
        return Err("longer than 255 bytes");
    }
    if name == b"." || name == b".." {
        return Err("'.' and '..' are not allowed");
    }
    if name.contains(&b'/') {
        return Err("contains '/'");
    }
    if name.contains(&0) {
        return Err("contains a NUL byte");
    }
    Ok(())
}

/// The tree: an inode arena with the root directory at index 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub inodes: Vec<Inode>,
}

impl Tree {
    /// A tree holding only a root directory with these attributes.
    pub fn new(root: Stat) -> Self {
        Tree {
            inodes: vec![Inode::new_dir(root)],
        }
    }

    pub fn root(&self) -> &Inode {
        &self.inodes[0]
    }

    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.index()]
    }

    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.index()]
    }

    /// Adds an inode (not yet linked anywhere) and returns its id.
    pub fn push_inode(&mut self, inode: Inode) -> InodeId {
        let id = InodeId(u32::try_from(self.inodes.len()).expect("more than 2^32 inodes"));
        self.inodes.push(inode);
        id
    }

    /// Appends an entry to directory `dir`. The first entry ever added for an
    /// inode becomes its home; later ones are hard links. Entries are not kept
    /// sorted here: call [`Tree::sort_entries`] once building is done.
    /// `has_home` must be tracked by the caller for speed; see [`TreeBuilder`].
    fn push_entry_raw(&mut self, dir: InodeId, name: Vec<u8>, inode: InodeId, hardlink: bool) {
        match &mut self.inodes[dir.index()].content {
            Content::Directory(entries) => entries.push(Entry {
                name,
                inode,
                hardlink,
            }),
            _ => panic!("push_entry on a non-directory inode"),
        }
    }

    /// Sorts every directory's entries by name (bytewise), as images store them.
    pub fn sort_entries(&mut self) {
        for inode in &mut self.inodes {
            if let Content::Directory(entries) = &mut inode.content {
                if !entries.is_sorted_by(|a, b| a.name < b.name) {
                    entries.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
        }
    }

    /// Inodes in breadth-first order over home entries (the order composefs
    /// images store them in), with each inode's path for messages.
    pub fn bfs_order(&self) -> Vec<InodeId> {
        let mut order = Vec::with_capacity(self.inodes.len());
        order.push(InodeId::ROOT);
        let mut i = 0;
        while i < order.len() {
            let id = order[i];
            for e in self.inode(id).entries() {
                if !e.hardlink {
                    order.push(e.inode);
                }
            }
            i += 1;
        }
        order
    }

    /// Paths of every inode's home entry (root is "/"), for error messages.
    pub fn home_paths(&self) -> Vec<String> {
        let mut paths = vec![String::new(); self.inodes.len()];
        paths[0] = "/".to_string();
        for id in self.bfs_order() {
            let base = paths[id.index()].clone();
            for e in self.inode(id).entries() {
                if !e.hardlink && e.inode.index() < paths.len() {
                    paths[e.inode.index()] = join_path(&base, &e.name);
                }
            }
        }
        paths
    }

    /// Checks every structural rule an image needs; the error names the path.
    pub fn validate(&self) -> Result<(), TreeError> {
        if !self.root().is_dir() {
            return Err(TreeError::RootNotDirectory);
        }
        let n = self.inodes.len();
        let mut homes = vec![0usize; n];
        let mut dir_path: Vec<Option<String>> = vec![None; n];
        dir_path[0] = Some("/".into());
        // Walk home entries breadth-first to find paths and reachability.
        let mut queue = vec![InodeId::ROOT];
        let mut seen = vec![false; n];
        seen[0] = true;
        let mut qi = 0;
        while qi < queue.len() {
            let id = queue[qi];
            qi += 1;
            let base = dir_path[id.index()].clone().unwrap_or_default();
            let entries = self.inode(id).entries();
            for (k, e) in entries.iter().enumerate() {
                // Paths are only built when reporting an error.
                let path = || join_path(&base, &e.name);
                check_name(&e.name).map_err(|why| TreeError::BadName { path: path(), why })?;
                if k > 0 {
                    match entries[k - 1].name.cmp(&e.name) {
                        std::cmp::Ordering::Equal => {
                            return Err(TreeError::Duplicate { path: path() })
                        }
                        std::cmp::Ordering::Greater => {
                            // Unsorted directories are accepted only if no duplicates.
                            if entries.iter().filter(|o| o.name == e.name).count() > 1 {
                                return Err(TreeError::Duplicate { path: path() });
                            }
                        }
                        std::cmp::Ordering::Less => {}
                    }
                }
                if e.inode.index() >= n || e.inode == InodeId::ROOT {
                    return Err(TreeError::DanglingEntry {
                        path: path(),
                        inode: e.inode.0,
                    });
                }
                let target = self.inode(e.inode);
                if e.hardlink {
                    if target.is_dir() {
                        return Err(TreeError::DirectoryHardlink { path: path() });
                    }
                    continue;
                }
                homes[e.inode.index()] += 1;
                if homes[e.inode.index()] > 1 {
                    return Err(TreeError::BadHome {
                        path: path(),
                        homes: 2,
                    });
                }
                if !seen[e.inode.index()] {
                    seen[e.inode.index()] = true;
                    if target.is_dir() {
                        dir_path[e.inode.index()] = Some(path());
                    }
                    queue.push(e.inode);
                }
                self.validate_inode(target, &path)?;
            }
        }
        self.validate_inode(self.root(), &|| "/".to_string())?;
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(TreeError::Unreachable(i as u32));
        }
        Ok(())
    }

    fn validate_inode(&self, inode: &Inode, path: &dyn Fn() -> String) -> Result<(), TreeError> {
        let mode = inode.stat.mode;
        let ok = match (mode & S_IFMT, &inode.content) {
            (S_IFDIR, Content::Directory(_)) => true,
            (S_IFREG, Content::Regular(_)) => true,
            (S_IFLNK, Content::Symlink(_)) => true,
            (S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK, Content::Special) => true,
            (S_IFDIR | S_IFREG | S_IFLNK | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK, _) => false,
            _ => return Err(TreeError::BadMode { path: path(), mode }),
        };
        if !ok {
            return Err(TreeError::ContentMismatch { path: path(), mode });
        }
        match &inode.content {
            Content::Symlink(t) if t.is_empty() => {
                return Err(TreeError::EmptySymlink { path: path() })
            }
            Content::Symlink(t) if t.len() > SYMLINK_MAX => {
                return Err(TreeError::LongSymlink { path: path() })
            }
            Content::Regular(File {
                size,
                data: FileData::Inline(d),
            }) if d.len() as u64 != *size => {
                return Err(TreeError::InlineSize {
                    path: path(),
                    len: d.len(),
                    size: *size,
                })
            }
            _ => {}
        }
        for (i, x) in inode.xattrs.iter().enumerate() {
            if x.name.is_empty() || x.name.len() > 255 || x.name.contains(&0) {
                return Err(TreeError::BadXattrName { path: path() });
            }
            if x.value.len() > u16::MAX as usize {
                return Err(TreeError::LongXattrValue { path: path() });
            }
            if inode.xattrs[..i].iter().any(|o| o.name == x.name) {
                return Err(TreeError::DuplicateXattr {
                    path: path(),
                    name: String::from_utf8_lossy(&x.name).into_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Joins a directory path and a raw name into a printable path.
pub fn join_path(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Builds a [`Tree`] entry by entry, tracking which inodes already have a
/// home entry so that later links to them become hard links.
#[derive(Debug)]
pub struct TreeBuilder {
    tree: Tree,
    has_home: Vec<bool>,
}

impl TreeBuilder {
    pub fn new(root: Stat) -> Self {
        TreeBuilder {
            tree: Tree::new(root),
            has_home: vec![true],
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn tree_mut(&mut self) -> &mut Tree {
        &mut self.tree
    }

    /// Adds a new inode as `name` in directory `dir` and returns its id.
    pub fn add(&mut self, dir: InodeId, name: Vec<u8>, inode: Inode) -> InodeId {
        let id = self.tree.push_inode(inode);
        self.has_home.push(true);
        self.tree.push_entry_raw(dir, name, id, false);
        id
    }

    /// Adds an inode not linked anywhere yet (link it later with [`Self::link`]).
    pub fn add_unlinked(&mut self, inode: Inode) -> InodeId {
        let id = self.tree.push_inode(inode);
        self.has_home.push(false);
        id
    }

    /// Links an existing inode as `name` in `dir` (a hard link unless the
    /// inode has no home yet).
    pub fn link(&mut self, dir: InodeId, name: Vec<u8>, inode: InodeId) {
        let hardlink = std::mem::replace(&mut self.has_home[inode.index()], true);
        self.tree.push_entry_raw(dir, name, inode, hardlink);
    }

    /// Sorts directories and validates the result.
    pub fn finish(mut self) -> Result<Tree, TreeError> {
        self.tree.sort_entries();
        self.tree.validate()?;
        Ok(self.tree)
    }

    /// Sorts directories without validating (for callers that validate later).
    pub fn finish_unchecked(mut self) -> Tree {
        self.tree.sort_entries();
        self.tree
    }
}

/// Mode helper: is this a known file type?
pub fn mode_is_valid(mode: u32) -> bool {
    matches!(
        mode & S_IFMT,
        S_IFDIR | S_IFREG | S_IFLNK | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32) -> Stat {
        Stat {
            mode,
            nlink: 1,
            ..Default::default()
        }
    }

    #[test]
    fn builder_marks_second_link_as_hardlink() {
        let mut b = TreeBuilder::new(st(S_IFDIR | 0o755));
        let f = b.add(
            InodeId::ROOT,
            b"b".to_vec(),
            Inode {
                stat: st(S_IFREG | 0o644),
                xattrs: vec![],
                content: Content::Regular(File {
                    size: 0,
                    data: FileData::Inline(vec![]),
                }),
            },
        );
        b.link(InodeId::ROOT, b"a".to_vec(), f);
        let t = b.finish().unwrap();
        let e = t.root().entries();
        assert_eq!(e[0].name, b"a");
        assert!(e[0].hardlink);
        assert!(!e[1].hardlink);
    }

    #[test]
    fn rejects_dot_names_and_duplicates() {
        let mut b = TreeBuilder::new(st(S_IFDIR | 0o755));
        b.add(InodeId::ROOT, b"..".to_vec(), Inode::new_dir(st(S_IFDIR)));
        assert!(matches!(b.finish(), Err(TreeError::BadName { .. })));
        let mut b = TreeBuilder::new(st(S_IFDIR | 0o755));
        b.add(InodeId::ROOT, b"x".to_vec(), Inode::new_dir(st(S_IFDIR)));
        b.add(InodeId::ROOT, b"x".to_vec(), Inode::new_dir(st(S_IFDIR)));
        assert!(matches!(b.finish(), Err(TreeError::Duplicate { .. })));
    }
}
