//! composefs image writer: tree → EROFS bytes, identical to composefs C 1.0.8.
//!
//! The writer works in four passes over an internal, flattened copy of the
//! tree (the source [`Tree`] is never modified):
//!
//! 1. **rewrite**: the overlayfs view composefs C builds before writing
//!    (escaping of user `trusted.overlay.*` xattrs, metacopy/redirect xattrs
//!    for external files, whiteout escaping, the root's opaque marker and its
//!    256 `00`..`ff` whiteout devices, `.`/`..` entries);
//! 2. **order**: breadth-first inode order over home entries with every
//!    directory's entries sorted by name, directory link counts, the
//!    minimum mtime and the shared-xattr table;
//! 3. **layout**: inode placement (slot alignment and the padding that keeps
//!    inline tails inside one block), data block allocation;
//! 4. **emit**: everything is written into one zero-filled buffer of the
//!    final size.
//!
//! All layout rules below were learned from composefs C 1.0.8
//! (`libcomposefs/lcfs-writer-erofs.c`, `lcfs-writer.c`) and are cited where
//! they are not obvious; the code itself is our own.

use std::borrow::Cow;
use std::collections::HashMap;

use zerocopy::IntoBytes;

use crate::format::{
    ComposefsHeader, Dirent, InodeCompact, InodeExtended, Superblock, XattrEntry, XattrIbodyHeader,
    BLOCK_BITS, BLOCK_SIZE, COMPOSEFS_FLAGS_HAS_ACL, COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC,
    FEATURE_COMPAT_MTIME, FEATURE_COMPAT_XATTR_FILTER, I_DATALAYOUT_BIT, LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, NULL_ADDR, SLOT_SIZE, SUPER_MAGIC_V1, SUPER_OFFSET,
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, XATTR_FILTER_BITS, XATTR_FILTER_DEFAULT,
    XATTR_FILTER_SEED, XATTR_INDEX_POSIX_ACL_ACCESS, XATTR_INDEX_POSIX_ACL_DEFAULT,
    XATTR_INDEX_SECURITY, XATTR_INDEX_TRUSTED, XATTR_INDEX_USER,
};
use crate::tree::{Content, FileData, InodeId, Timespec, Tree, TreeError};

/// Highest composefs format version this writer knows (composefs C
/// `LCFS_VERSION_MAX`). Version 1 marks directories holding escaped
/// whiteouts with the `opaque=x` xattrs.
pub const MAX_FORMAT_VERSION: u32 = 1;
/// Largest inline file composefs accepts (`LCFS_INLINE_CONTENT_MAX`).
pub const INLINE_CONTENT_MAX: u64 = 5000;
/// External files are described by at most this many chunk addresses
/// (`LCFS_MAX_NONINLINE_CHUNKS`): the index must fit one block.
pub const MAX_CHUNKS: u64 = 1024;
/// Redirect payloads must be shorter than `PATH_MAX`.
pub const REDIRECT_MAX: usize = 4095;
/// Per-inode xattr budget (`LCFS_INODE_EXTERNAL_XATTR_MAX`), for the tree's
/// own xattrs and, separately, for those the rewrite pass adds.
const REWRITE_XATTR_BUDGET: u64 = (u16::MAX / 2) as u64;
/// An inode lists at most this many shared xattrs; later multi-use xattrs
/// are stored inline (composefs C caps the count at `EROFS_XATTR_LONG_PREFIX`).
const MAX_SHARED_PER_INODE: usize = 0x80;

/// Format version selection, as mkcomposefs `--min-version/--max-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub min_version: u32,
    pub max_version: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            min_version: 0,
            max_version: 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("unsupported format version {0} (supported: 0 and 1)")]
    Version(u32),
    #[error("{path}: inline content of {size} bytes exceeds the maximum of {INLINE_CONTENT_MAX}")]
    InlineTooLarge { path: String, size: u64 },
    #[error("{path}: file of {size} bytes needs more than {MAX_CHUNKS} chunks")]
    FileTooLarge { path: String, size: u64 },
    #[error("{path}: redirect path is longer than {REDIRECT_MAX} bytes or contains NUL")]
    BadRedirect { path: String },
    #[error("{path}: fs-verity digest of {len} bytes (expected 32 or 64)")]
    BadVerity { path: String, len: usize },
    #[error("{path}: symlink target contains a NUL byte")]
    NulInSymlink { path: String },
    #[error("{path}: xattrs exceed composefs' per-inode size limit")]
    XattrsTooLarge { path: String },
    #[error("{path}: xattr rewrite for overlayfs exceeds the xattr size limit")]
    XattrRewrite { path: String },
}

// ---------------------------------------------------------------------------
// Internal model

#[derive(Clone)]
struct Xa<'a> {
    name: Cow<'a, [u8]>,
    value: Cow<'a, [u8]>,
}

#[derive(Clone, Copy)]
enum Data<'a> {
    Dir,
    /// Regular file without a chunk table or inline bytes (size 0).
    Empty,
    Inline(&'a [u8]),
    External {
        size: u64,
    },
    Symlink(&'a [u8]),
    /// Devices, fifos, sockets.
    Special,
}

struct Node<'a> {
    /// Source inode (`None` for the root whiteouts the writer adds).
    src: Option<InodeId>,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: Timespec,
    rdev: u32,
    data: Data<'a>,
    xattrs: Vec<Xa<'a>>,
    /// Byte budget bookkeeping of the rewrite pass (see `set_xattr`).
    budget: u64,
    /// Range into `Prepared::dirents` (directories only).
    dirents: (u32, u32),
    // Layout, filled in by `layout`.
    n_blocks: u64,
    tail: u64,
    compact: bool,
    xattr_size: u64,
    n_shared: u32,
    nid: u64,
    ino: u32,
}

impl Node<'_> {
    fn ftype(&self) -> u32 {
        self.mode & S_IFMT
    }
}

#[derive(Clone, Copy)]
struct DirentRef<'a> {
    name: &'a [u8],
    target: u32,
    /// False only for the entry through which BFS reaches its target.
    link: bool,
}

// ---------------------------------------------------------------------------
// Pass 1: rewrite

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const ROOT_WHITEOUT_HEX: &[u8; 16] = b"0123456789abcdef";

fn whiteout_name(i: usize) -> &'static [u8] {
    // 256 two-byte names "00".."ff" laid out in one static table.
    static NAMES: [[u8; 2]; 256] = {
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [ROOT_WHITEOUT_HEX[i >> 4], ROOT_WHITEOUT_HEX[i & 15]];
            i += 1;
        }
        t
    };
    &NAMES[i]
}

/// Sets (or replaces) an xattr the way composefs C's rewrite does, including
/// its size bookkeeping: the clone it rewrites starts that bookkeeping at
/// zero, and replacing an existing value subtracts the old entry's estimate
/// (with unsigned wrap-around), so replacing a longer value with a shorter one
/// on an inode that keeps other xattrs trips the limit. We reproduce the
/// outcome (an error) rather than the arithmetic's intent.
fn set_xattr<'a>(node: &mut Node<'a>, name: &'static [u8], value: &'static [u8]) -> bool {
    if let Some(i) = node.xattrs.iter().position(|x| *x.name == *name) {
        let old = node.xattrs.swap_remove(i);
        if node.xattrs.is_empty() {
            node.budget = 0;
        } else {
            node.budget = node
                .budget
                .wrapping_sub(7 + name.len() as u64 + old.value.len() as u64);
        }
    }
    let mut entry = 7 + name.len() as u64 + value.len() as u64;
    if node.xattrs.is_empty() {
        entry += size_of::<XattrIbodyHeader>() as u64;
    }
    if node.budget.wrapping_add(entry) > REWRITE_XATTR_BUDGET {
        return false;
    }
    node.budget = node.budget.wrapping_add(entry);
    node.xattrs.push(Xa {
        name: Cow::Borrowed(name),
        value: Cow::Borrowed(value),
    });
    true
}

fn set_xattr_owned<'a>(node: &mut Node<'a>, name: &'static [u8], value: Vec<u8>) -> bool {
    // Only used for xattrs that are new on the inode (metacopy, redirect).
    debug_assert!(!node.xattrs.iter().any(|x| *x.name == *name));
    let mut entry = 7 + name.len() as u64 + value.len() as u64;
    if node.xattrs.is_empty() {
        entry += size_of::<XattrIbodyHeader>() as u64;
    }
    if node.budget.wrapping_add(entry) > REWRITE_XATTR_BUDGET {
        return false;
    }
    node.budget = node.budget.wrapping_add(entry);
    node.xattrs.push(Xa {
        name: Cow::Borrowed(name),
        value: Cow::Owned(value),
    });
    true
}

fn chunk_bits(size: u64) -> u32 {
    // Smallest power of two >= size, at least one block, at most the largest
    // chunk size the format can express (composefs C erofs_compute_chunk_bitsize).
    let bits = if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros()
    };
    bits.clamp(
        BLOCK_BITS as u32,
        BLOCK_BITS as u32 + crate::format::CHUNK_FORMAT_BLKBITS_MASK as u32,
    )
}

fn chunk_count(size: u64) -> u64 {
    size.div_ceil(1u64 << chunk_bits(size))
}

struct Prepared<'a> {
    nodes: Vec<Node<'a>>,
    dirents: Vec<DirentRef<'a>>,
    version: u32,
}

fn path_of(tree: &Tree, id: Option<InodeId>) -> String {
    match id {
        Some(id) => tree
            .home_paths()
            .get(id.index())
            .cloned()
            .unwrap_or_default(),
        None => "/".into(),
    }
}

fn prepare<'a>(tree: &'a Tree, opts: &WriteOptions) -> Result<Prepared<'a>, WriteError> {
    // Version selection (composefs C lcfs_write_to): reject unknown versions,
    // raise max to min, then move to version 1 if any inode is a whiteout.
    if opts.min_version > MAX_FORMAT_VERSION {
        return Err(WriteError::Version(opts.min_version));
    }
    if opts.max_version > MAX_FORMAT_VERSION {
        return Err(WriteError::Version(opts.max_version));
    }
    let max_version = opts.max_version.max(opts.min_version);
    let is_whiteout = |mode: u32, rdev: u64| mode & S_IFMT == S_IFCHR && rdev as u32 == 0;
    let mut version = opts.min_version;
    if version < 1
        && max_version >= 1
        && tree
            .inodes
            .iter()
            .any(|i| is_whiteout(i.stat.mode, i.stat.rdev))
    {
        version = 1;
    }

    let n = tree.inodes.len();
    let mut nodes: Vec<Node<'a>> = Vec::with_capacity(n + 256);
    for (idx, inode) in tree.inodes.iter().enumerate() {
        let st = &inode.stat;
        let id = InodeId(idx as u32);
        let err_path = || path_of(tree, Some(id));
        let mut mode = st.mode;
        let data = match &inode.content {
            Content::Directory(_) => Data::Dir,
            Content::Symlink(t) => {
                if t.contains(&0) {
                    return Err(WriteError::NulInSymlink { path: err_path() });
                }
                Data::Symlink(t)
            }
            Content::Special => Data::Special,
            Content::Regular(f) => match &f.data {
                FileData::Inline(d) => {
                    if f.size > INLINE_CONTENT_MAX {
                        return Err(WriteError::InlineTooLarge {
                            path: err_path(),
                            size: f.size,
                        });
                    }
                    if d.is_empty() {
                        Data::Empty
                    } else {
                        Data::Inline(d)
                    }
                }
                FileData::External { .. } if f.size == 0 => Data::Empty,
                FileData::External { .. } => {
                    if chunk_count(f.size) > MAX_CHUNKS {
                        return Err(WriteError::FileTooLarge {
                            path: err_path(),
                            size: f.size,
                        });
                    }
                    Data::External { size: f.size }
                }
            },
        };
        // composefs accepts at most UINT16_MAX/2 bytes of xattrs per inode,
        // counted as 12 + sum(7 + name + value) (lcfs_node_set_xattr): no
        // tree beyond that can reach its writer.
        if !inode.xattrs.is_empty() {
            let est: u64 = size_of::<XattrIbodyHeader>() as u64
                + inode
                    .xattrs
                    .iter()
                    .map(|x| 7 + x.name.len() as u64 + x.value.len() as u64)
                    .sum::<u64>();
            if est > REWRITE_XATTR_BUDGET {
                return Err(WriteError::XattrsTooLarge { path: err_path() });
            }
        }
        let mut xattrs: Vec<Xa<'a>> = Vec::with_capacity(inode.xattrs.len());
        for x in &inode.xattrs {
            // User xattrs in the overlayfs namespace are escaped one level
            // so overlayfs shows them to users unchanged.
            let name = match x.name.strip_prefix(OVERLAY_PREFIX) {
                Some(rest) => {
                    let mut v = Vec::with_capacity(OVERLAY_ESCAPED_PREFIX.len() + rest.len());
                    v.extend_from_slice(OVERLAY_ESCAPED_PREFIX);
                    v.extend_from_slice(rest);
                    Cow::Owned(v)
                }
                None => Cow::Borrowed(x.name.as_slice()),
            };
            xattrs.push(Xa {
                name,
                value: Cow::Borrowed(x.value.as_slice()),
            });
        }
        let whiteout = is_whiteout(mode, st.rdev);
        if whiteout {
            mode = S_IFREG | (mode & !S_IFMT);
        }
        let mut node = Node {
            src: Some(id),
            mode,
            uid: st.uid,
            gid: st.gid,
            nlink: st.nlink,
            mtime: st.mtime,
            rdev: if whiteout { 0 } else { st.rdev as u32 },
            data: if whiteout { Data::Empty } else { data },
            xattrs,
            budget: 0,
            dirents: (0, 0),
            n_blocks: 0,
            tail: 0,
            compact: false,
            xattr_size: 0,
            n_shared: 0,
            nid: 0,
            ino: 0,
        };
        let mut ok = true;
        if let (Content::Regular(f), Data::External { .. }) = (&inode.content, data) {
            if let FileData::External { redirect, verity } = &f.data {
                let mut meta = Vec::new();
                if let Some(d) = verity {
                    // fs-verity algorithm ids: 1 = SHA-256, 2 = SHA-512.
                    let alg = match d.len() {
                        32 => 1u8,
                        64 => 2u8,
                        len => {
                            return Err(WriteError::BadVerity {
                                path: err_path(),
                                len,
                            })
                        }
                    };
                    meta.extend_from_slice(&[0, 4 + d.len() as u8, 0, alg]);
                    meta.extend_from_slice(d);
                }
                ok &= set_xattr_owned(&mut node, b"trusted.overlay.metacopy", meta);
                if let Some(r) = redirect.as_deref().filter(|r| !r.is_empty()) {
                    if r.len() > REDIRECT_MAX || r.contains(&0) {
                        return Err(WriteError::BadRedirect { path: err_path() });
                    }
                    let mut v = Vec::with_capacity(r.len() + 1);
                    v.push(b'/');
                    v.extend_from_slice(r);
                    ok &= set_xattr_owned(&mut node, b"trusted.overlay.redirect", v);
                }
            }
        }
        if whiteout {
            ok &= set_xattr(&mut node, b"trusted.overlay.overlay.whiteout", b"");
            ok &= set_xattr(&mut node, b"user.overlay.whiteout", b"");
        }
        if !ok {
            return Err(WriteError::XattrRewrite { path: err_path() });
        }
        nodes.push(node);
    }

    // Directories holding whiteouts get marked (opaque=x from version 1).
    for (idx, inode) in tree.inodes.iter().enumerate() {
        let mut ok = true;
        for e in inode.entries() {
            let t = &tree.inodes[e.inode.index()].stat;
            if e.hardlink || !is_whiteout(t.mode, t.rdev) {
                continue;
            }
            let dir = &mut nodes[idx];
            ok &= set_xattr(dir, b"trusted.overlay.overlay.whiteouts", b"");
            ok &= set_xattr(dir, b"user.overlay.whiteouts", b"");
            if version >= 1 {
                ok &= set_xattr(dir, b"trusted.overlay.overlay.opaque", b"x");
                ok &= set_xattr(dir, b"user.overlay.opaque", b"x");
            }
        }
        if !ok {
            return Err(WriteError::XattrRewrite {
                path: path_of(tree, Some(InodeId(idx as u32))),
            });
        }
    }
    if !set_xattr(&mut nodes[0], b"trusted.overlay.opaque", b"y") {
        return Err(WriteError::XattrRewrite { path: "/".into() });
    }

    // The root gets whiteout devices 00..ff (those not already present),
    // inheriting the root's ownership, mtime and SELinux label. They are added
    // after the rewrite above, so they stay character devices.
    let root_entries = tree.root().entries();
    let mut have = [false; 256];
    for e in root_entries {
        if let [a, b] = e.name[..] {
            let hex = |c: u8| ROOT_WHITEOUT_HEX.iter().position(|&h| h == c);
            if let (Some(hi), Some(lo)) = (hex(a), hex(b)) {
                have[hi * 16 + lo] = true;
            }
        }
    }
    let selinux: Option<Cow<'a, [u8]>> = nodes[0]
        .xattrs
        .iter()
        .find(|x| *x.name == *b"security.selinux")
        .map(|x| x.value.clone());
    let (ruid, rgid, rmtime) = (nodes[0].uid, nodes[0].gid, nodes[0].mtime);
    let first_whiteout = nodes.len();
    for present in have {
        if present {
            continue;
        }
        nodes.push(Node {
            src: None,
            mode: S_IFCHR | 0o644,
            uid: ruid,
            gid: rgid,
            nlink: 1,
            mtime: rmtime,
            rdev: 0,
            data: Data::Special,
            xattrs: match &selinux {
                Some(v) => vec![Xa {
                    name: Cow::Borrowed(b"security.selinux"),
                    value: v.clone(),
                }],
                None => Vec::new(),
            },
            budget: 0,
            dirents: (0, 0),
            n_blocks: 0,
            tail: 0,
            compact: false,
            xattr_size: 0,
            n_shared: 0,
            nid: 0,
            ino: 0,
        });
    }

    // Directory entries, with "." and ".." (and the root whiteouts), sorted
    // bytewise as composefs C keeps children.
    let mut parent = vec![0u32; n];
    for (idx, inode) in tree.inodes.iter().enumerate() {
        for e in inode.entries() {
            if !e.hardlink {
                parent[e.inode.index()] = idx as u32;
            }
        }
    }
    let total_entries: usize = tree.inodes.iter().map(|i| i.entries().len() + 2).sum();
    let mut dirents: Vec<DirentRef<'a>> = Vec::with_capacity(total_entries + 256);
    for (idx, inode) in tree.inodes.iter().enumerate() {
        let Content::Directory(entries) = &inode.content else {
            continue;
        };
        let start = dirents.len();
        dirents.push(DirentRef {
            name: b".",
            target: idx as u32,
            link: true,
        });
        dirents.push(DirentRef {
            name: b"..",
            target: parent[idx],
            link: true,
        });
        dirents.extend(entries.iter().map(|e| DirentRef {
            name: &e.name,
            target: e.inode.0,
            link: e.hardlink,
        }));
        if idx == 0 {
            let mut k = first_whiteout as u32;
            for (i, present) in have.iter().enumerate() {
                if !*present {
                    dirents.push(DirentRef {
                        name: whiteout_name(i),
                        target: k,
                        link: false,
                    });
                    k += 1;
                }
            }
        }
        let slice = &mut dirents[start..];
        if !slice.is_sorted_by(|a, b| a.name <= b.name) {
            slice.sort_unstable_by(|a, b| a.name.cmp(b.name));
        }
        nodes[idx].dirents = (start as u32, dirents.len() as u32);
    }

    Ok(Prepared {
        nodes,
        dirents,
        version,
    })
}

// ---------------------------------------------------------------------------
// Pass 2/3: order and layout

/// EROFS name index and the name suffix stored on disk.
fn xattr_index(name: &[u8]) -> (u8, &[u8]) {
    const PREFIXES: [(&[u8], u8); 5] = [
        (b"user.", XATTR_INDEX_USER),
        (b"system.posix_acl_access", XATTR_INDEX_POSIX_ACL_ACCESS),
        (b"system.posix_acl_default", XATTR_INDEX_POSIX_ACL_DEFAULT),
        (b"trusted.", XATTR_INDEX_TRUSTED),
        (b"security.", XATTR_INDEX_SECURITY),
    ];
    for (p, i) in PREFIXES {
        if let Some(rest) = name.strip_prefix(p) {
            return (i, rest);
        }
    }
    (0, name)
}

fn xattr_entry_size(x: &Xa) -> u64 {
    let (_, suffix) = xattr_index(&x.name);
    (size_of::<XattrEntry>() + suffix.len() + x.value.len()).next_multiple_of(4) as u64
}

fn round_up(v: u64, to: u64) -> u64 {
    v.next_multiple_of(to)
}

struct Layout {
    order: Vec<u32>,
    min_mtime: Timespec,
    has_acl: bool,
    /// Per xattr of each node (flattened in `order`, node xattr order):
    /// shared offset in bytes, or `u64::MAX` when stored inline.
    shared_off: Vec<u64>,
    /// Start of each ordered node's run in `shared_off`.
    shared_start: Vec<u32>,
    /// Shared xattrs in table order: (node index, xattr index).
    shared_table: Vec<(u32, u32)>,
    shared_size: u64,
    inodes_end: u64,
    n_data_blocks: u64,
}

fn dir_size(dirents: &[DirentRef]) -> (u64, u64) {
    let (mut blocks, mut used) = (0u64, 0u64);
    for d in dirents {
        let len = (size_of::<Dirent>() + d.name.len()) as u64;
        if used + len > BLOCK_SIZE {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    // Never inline more than half a block (composefs C heuristic).
    if used > BLOCK_SIZE / 2 {
        blocks += 1;
        used = 0;
    }
    (blocks, used)
}

/// A small multiplicative hasher for the xattr table (keys are not
/// attacker-controlled in a way that matters for a one-shot build, and
/// SipHash dominated the profile on large trees).
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn layout(p: &mut Prepared, tree: &Tree) -> Result<Layout, WriteError> {
    // Breadth-first order over home entries.
    let mut order: Vec<u32> = Vec::with_capacity(p.nodes.len());
    order.push(0);
    let mut qi = 0;
    while qi < order.len() {
        let (s, e) = p.nodes[order[qi] as usize].dirents;
        for d in &p.dirents[s as usize..e as usize] {
            if !d.link {
                order.push(d.target);
            }
        }
        qi += 1;
    }

    let mut min_mtime = p.nodes[0].mtime;
    let mut has_acl = false;
    for (ino, &ni) in order.iter().enumerate() {
        let node = &mut p.nodes[ni as usize];
        node.ino = ino as u32;
        if node.xattrs.len() > 1 && !node.xattrs.is_sorted_by(|a, b| a.name <= b.name) {
            node.xattrs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        if node.mtime < min_mtime {
            min_mtime = node.mtime;
        }
        if node.xattrs.iter().any(|x| {
            *x.name == *b"system.posix_acl_access" || *x.name == *b"system.posix_acl_default"
        }) {
            has_acl = true;
        }
    }
    // Directory link count: 2 + subdirectories (composefs C recomputes it).
    for &ni in &order {
        let node = &p.nodes[ni as usize];
        if node.ftype() != S_IFDIR {
            continue;
        }
        let (s, e) = node.dirents;
        let subdirs = p.dirents[s as usize..e as usize]
            .iter()
            .filter(|d| !d.link && p.nodes[d.target as usize].ftype() == S_IFDIR)
            .count();
        p.nodes[ni as usize].nlink = 2 + subdirs as u32;
    }

    // Shared xattrs: every (name, value) pair used by more than one inode.
    let total_xattrs: usize = p.nodes.iter().map(|n| n.xattrs.len()).sum();
    let mut ids: HashMap<(&[u8], &[u8]), u32, std::hash::BuildHasherDefault<FastHasher>> =
        HashMap::with_capacity_and_hasher(total_xattrs, Default::default());
    let mut first_use: Vec<(u32, u32)> = Vec::with_capacity(total_xattrs);
    let mut uses: Vec<u32> = Vec::with_capacity(total_xattrs);
    let mut xid: Vec<u32> = Vec::with_capacity(total_xattrs);
    let mut shared_start: Vec<u32> = Vec::with_capacity(order.len() + 1);
    for &ni in &order {
        shared_start.push(xid.len() as u32);
        for (xi, x) in p.nodes[ni as usize].xattrs.iter().enumerate() {
            let next = first_use.len() as u32;
            let id = *ids.entry((&*x.name, &*x.value)).or_insert(next);
            if id == next {
                first_use.push((ni, xi as u32));
                uses.push(0);
            }
            uses[id as usize] += 1;
            xid.push(id);
        }
    }
    shared_start.push(xid.len() as u32);
    drop(ids);
    let xa = |(ni, xi): (u32, u32)| &p.nodes[ni as usize].xattrs[xi as usize];
    let mut shared_ids: Vec<u32> = (0..first_use.len() as u32)
        .filter(|&i| uses[i as usize] > 1)
        .collect();
    // Table order per composefs C xattrs_ht_sort: its comparator runs
    // descending on name, then on value length, then on value bytes.
    shared_ids.sort_unstable_by(|&a, &b| {
        let (xa_, xb) = (xa(first_use[a as usize]), xa(first_use[b as usize]));
        xb.name
            .cmp(&xa_.name)
            .then(xb.value.len().cmp(&xa_.value.len()))
            .then(xb.value.cmp(&xa_.value))
    });
    let mut offset_of = vec![u64::MAX; first_use.len()];
    let mut shared_size = 0u64;
    let mut shared_table = Vec::with_capacity(shared_ids.len());
    for &id in &shared_ids {
        offset_of[id as usize] = shared_size;
        let fu = first_use[id as usize];
        shared_table.push(fu);
        shared_size += xattr_entry_size(xa(fu));
    }
    let mut shared_off: Vec<u64> = Vec::with_capacity(xid.len());
    for (k, &ni) in order.iter().enumerate() {
        let run = &xid[shared_start[k] as usize..shared_start[k + 1] as usize];
        let mut n_shared = 0usize;
        let mut unshared = 0u64;
        for (xi, &id) in run.iter().enumerate() {
            let off = offset_of[id as usize];
            if off != u64::MAX && n_shared < MAX_SHARED_PER_INODE {
                n_shared += 1;
                shared_off.push(off);
            } else {
                shared_off.push(u64::MAX);
                unshared += xattr_entry_size(&p.nodes[ni as usize].xattrs[xi]);
            }
        }
        let node = &mut p.nodes[ni as usize];
        node.n_shared = n_shared as u32;
        node.xattr_size = if n_shared == 0 && unshared == 0 {
            0
        } else {
            round_up(
                size_of::<XattrIbodyHeader>() as u64 + 4 * n_shared as u64 + unshared,
                4,
            )
        };
        if node.xattr_size > 0 && (node.xattr_size - 12) / 4 + 1 > u16::MAX as u64 {
            return Err(WriteError::XattrsTooLarge {
                path: path_of(tree, node.src),
            });
        }
    }

    // Inode placement, starting right after the superblock; nids count
    // 32-byte slots from the start of block 0.
    let mut pos = SUPER_OFFSET + size_of::<Superblock>() as u64;
    let mut n_data_blocks = 0u64;
    for &ni in &order {
        let node = &mut p.nodes[ni as usize];
        let (blocks, tail) = match node.data {
            Data::Dir => {
                let (s, e) = node.dirents;
                dir_size(&p.dirents[s as usize..e as usize])
            }
            Data::Symlink(t) => (0, t.len() as u64),
            Data::Inline(d) => {
                let len = d.len() as u64;
                if len % BLOCK_SIZE > BLOCK_SIZE / 2 {
                    (len / BLOCK_SIZE + 1, 0)
                } else {
                    (len / BLOCK_SIZE, len % BLOCK_SIZE)
                }
            }
            Data::External { size } => (0, 4 * chunk_count(size)),
            Data::Empty | Data::Special => (0, 0),
        };
        node.n_blocks = blocks;
        node.tail = tail;
        let size = inode_size_field(node);
        node.compact = node.mtime == min_mtime
            && node.nlink <= u16::MAX as u32
            && node.uid <= u16::MAX as u32
            && node.gid <= u16::MAX as u32
            && size <= u32::MAX as u64;
        let isize = if node.compact {
            size_of::<InodeCompact>()
        } else {
            size_of::<InodeExtended>()
        } as u64;
        pos = round_up(pos, SLOT_SIZE);
        pos += tail_padding(node, pos, isize + node.xattr_size);
        node.nid = pos / SLOT_SIZE;
        n_data_blocks += node.n_blocks;
        pos += isize + node.xattr_size + node.tail;
    }

    Ok(Layout {
        order,
        min_mtime,
        has_acl,
        shared_off,
        shared_start,
        shared_table,
        shared_size,
        inodes_end: round_up(pos, SLOT_SIZE),
        n_data_blocks,
    })
}

/// The inode's `i_size`.
fn inode_size_field(node: &Node) -> u64 {
    match node.data {
        Data::Dir => node.n_blocks * BLOCK_SIZE + node.tail,
        Data::Inline(d) => d.len() as u64,
        Data::External { size } => size,
        Data::Symlink(t) => t.len() as u64,
        Data::Empty | Data::Special => 0,
    }
}

/// Padding to insert before an inode at slot-aligned `pos` so that its inline
/// tail stays within one block; may move the tail out to a data block
/// (composefs C compute_erofs_inode_padding_for_tail).
fn tail_padding(node: &mut Node, pos: u64, head: u64) -> u64 {
    let to_block = round_up(pos, BLOCK_SIZE) - pos;
    if let Data::Symlink(_) = node.data {
        // Symlinks keep inode and target together in one block when they
        // fit; a target that cannot fit is moved to a block of its own.
        let total = head + node.tail;
        if total / BLOCK_SIZE > 0 {
            node.n_blocks += 1;
            node.tail = 0;
        }
        return if pos / BLOCK_SIZE != (pos + total - 1) / BLOCK_SIZE {
            to_block
        } else {
            0
        };
    }
    let room = BLOCK_SIZE - (pos + head) % BLOCK_SIZE;
    if room >= node.tail {
        return 0;
    }
    let pad = round_up(room, SLOT_SIZE);
    let room = BLOCK_SIZE - (pos + head + pad) % BLOCK_SIZE;
    if node.tail <= room {
        return pad;
    }
    node.n_blocks += 1;
    node.tail = 0;
    to_block
}

// ---------------------------------------------------------------------------
// Pass 4: emit

struct Out {
    buf: Vec<u8>,
}

impl Out {
    fn put(&mut self, at: u64, bytes: &[u8]) -> u64 {
        let at = at as usize;
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        (at + bytes.len()) as u64
    }
}

fn write_xattr(out: &mut Out, at: u64, x: &Xa) -> u64 {
    let (index, suffix) = xattr_index(&x.name);
    let e = XattrEntry {
        e_name_len: suffix.len() as u8,
        e_name_index: index,
        e_value_size: (x.value.len() as u16).into(),
    };
    let mut p = out.put(at, e.as_bytes());
    p = out.put(p, suffix);
    p = out.put(p, &x.value);
    round_up(p, 4)
}

/// Writes dirents `ds` as one EROFS directory block (entries, then names).
fn write_dirent_block(out: &mut Out, at: u64, ds: &[DirentRef], nodes: &[Node]) -> u64 {
    let mut nameoff = (ds.len() * size_of::<Dirent>()) as u64;
    let mut p = at;
    for d in ds {
        let t = &nodes[d.target as usize];
        let de = Dirent {
            nid: t.nid.into(),
            nameoff: (nameoff as u16).into(),
            file_type: crate::format::file_type_of_mode(t.mode),
            reserved: 0,
        };
        p = out.put(p, de.as_bytes());
        nameoff += d.name.len() as u64;
    }
    for d in ds {
        p = out.put(p, d.name);
    }
    p
}

/// Splits a directory's entries into full blocks and the inline tail, the
/// same way `dir_size` counted them. Calls `f(entries, is_tail)`.
fn for_each_dir_chunk<'a>(
    ds: &'a [DirentRef<'a>],
    n_blocks: u64,
    mut f: impl FnMut(&'a [DirentRef<'a>], bool),
) {
    let mut used = 0u64;
    let mut first = 0usize;
    let mut written = 0u64;
    for (i, d) in ds.iter().enumerate() {
        let len = (size_of::<Dirent>() + d.name.len()) as u64;
        if used + len > BLOCK_SIZE {
            f(&ds[first..i], false);
            written += 1;
            used = 0;
            first = i;
        }
        used += len;
    }
    if written < n_blocks {
        f(&ds[first..], false);
        used = 0;
        first = ds.len();
    }
    if used > 0 {
        f(&ds[first..], true);
    }
}

fn emit(p: &Prepared, l: &Layout) -> Vec<u8> {
    let data_start = round_up(l.inodes_end + l.shared_size, BLOCK_SIZE);
    let total = data_start + l.n_data_blocks * BLOCK_SIZE;
    let mut out = Out {
        buf: vec![0u8; total as usize],
    };
    let nodes = &p.nodes;

    let header = ComposefsHeader {
        magic: COMPOSEFS_MAGIC.into(),
        version: COMPOSEFS_HEADER_VERSION.into(),
        flags: if l.has_acl {
            COMPOSEFS_FLAGS_HAS_ACL
        } else {
            0
        }
        .into(),
        composefs_version: p.version.into(),
        ..Default::default()
    };
    out.put(0, header.as_bytes());
    let sb = Superblock {
        magic: SUPER_MAGIC_V1.into(),
        feature_compat: (FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER).into(),
        blkszbits: BLOCK_BITS,
        root_nid: (nodes[0].nid as u16).into(),
        inos: (l.order.len() as u64).into(),
        build_time: (l.min_mtime.sec as u64).into(),
        build_time_nsec: l.min_mtime.nsec.into(),
        blocks: ((data_start / BLOCK_SIZE + l.n_data_blocks) as u32).into(),
        meta_blkaddr: 0.into(),
        xattr_blkaddr: ((l.inodes_end / BLOCK_SIZE) as u32).into(),
        ..Default::default()
    };
    out.put(SUPER_OFFSET, sb.as_bytes());

    // Inodes, allocating data blocks in inode order.
    let mut next_block = data_start / BLOCK_SIZE;
    let mut block_of: Vec<u64> = Vec::with_capacity(l.order.len());
    for (k, &ni) in l.order.iter().enumerate() {
        let node = &nodes[ni as usize];
        let ft = node.ftype();
        let mut layout = if node.tail > 0 {
            LAYOUT_FLAT_INLINE
        } else {
            LAYOUT_FLAT_PLAIN
        };
        let mut i_u = 0u32;
        let first_block = next_block;
        if node.n_blocks > 0 && matches!(ft, S_IFDIR | S_IFREG | S_IFLNK) {
            i_u = first_block as u32;
            next_block += node.n_blocks;
        }
        block_of.push(first_block);
        if ft == S_IFCHR || ft == S_IFBLK {
            i_u = node.rdev;
        }
        if let Data::External { size } = node.data {
            // The chunk format shares the union with raw_blkaddr and, as in
            // composefs C, overwrites its low 16 bits.
            layout = LAYOUT_CHUNK_BASED;
            let fmt = chunk_bits(size) - BLOCK_BITS as u32;
            i_u = (i_u & 0xffff_0000) | fmt;
        }
        let size = inode_size_field(node);
        let icount = if node.xattr_size == 0 {
            0
        } else {
            ((node.xattr_size - 12) / 4 + 1) as u16
        };
        let pos = node.nid * SLOT_SIZE;
        let mut at = if node.compact {
            let i = InodeCompact {
                i_format: (layout << I_DATALAYOUT_BIT).into(),
                i_xattr_icount: icount.into(),
                i_mode: (node.mode as u16).into(),
                i_nlink: (node.nlink as u16).into(),
                i_size: (size as u32).into(),
                i_u: i_u.into(),
                i_ino: node.ino.into(),
                i_uid: (node.uid as u16).into(),
                i_gid: (node.gid as u16).into(),
                ..Default::default()
            };
            out.put(pos, i.as_bytes())
        } else {
            let i = InodeExtended {
                i_format: ((layout << I_DATALAYOUT_BIT) | 1).into(),
                i_xattr_icount: icount.into(),
                i_mode: (node.mode as u16).into(),
                i_size: size.into(),
                i_u: i_u.into(),
                i_ino: node.ino.into(),
                i_uid: node.uid.into(),
                i_gid: node.gid.into(),
                i_mtime: (node.mtime.sec as u64).into(),
                i_mtime_nsec: node.mtime.nsec.into(),
                i_nlink: node.nlink.into(),
                ..Default::default()
            };
            out.put(pos, i.as_bytes())
        };

        if node.xattr_size > 0 {
            let offs = &l.shared_off[l.shared_start[k] as usize..l.shared_start[k + 1] as usize];
            let mut filter = 0u32;
            for x in &node.xattrs {
                let (index, suffix) = xattr_index(&x.name);
                let bit = crate::format::xxh32(suffix, XATTR_FILTER_SEED + index as u32)
                    & (XATTR_FILTER_BITS - 1);
                filter |= 1 << bit;
            }
            let h = XattrIbodyHeader {
                h_name_filter: (XATTR_FILTER_DEFAULT & !filter).into(),
                h_shared_count: node.n_shared as u8,
                ..Default::default()
            };
            let start = at;
            at = out.put(at, h.as_bytes());
            let xattr_base = l.inodes_end % BLOCK_SIZE;
            for &off in offs.iter().filter(|&&o| o != u64::MAX) {
                at = out.put(at, &(((xattr_base + off) / 4) as u32).to_le_bytes());
            }
            for (x, _) in node.xattrs.iter().zip(offs).filter(|(_, &o)| o == u64::MAX) {
                at = write_xattr(&mut out, at, x);
            }
            debug_assert_eq!(at - start, node.xattr_size);
            at = start + node.xattr_size;
        }

        match node.data {
            Data::Dir => {
                let (s, e) = node.dirents;
                for_each_dir_chunk(
                    &p.dirents[s as usize..e as usize],
                    node.n_blocks,
                    |ds, tail| {
                        if tail {
                            at = write_dirent_block(&mut out, at, ds, nodes);
                        }
                    },
                );
            }
            Data::Symlink(t) if node.n_blocks == 0 => {
                out.put(at, t);
            }
            Data::Inline(d) if node.tail > 0 => {
                out.put(at, &d[d.len() - node.tail as usize..]);
            }
            Data::External { .. } if node.tail > 0 => {
                for c in 0..node.tail / 4 {
                    out.put(at + 4 * c, &NULL_ADDR.to_le_bytes());
                }
            }
            _ => {}
        }
    }

    // Shared xattr table right after the inodes.
    let mut at = l.inodes_end;
    for &fu in &l.shared_table {
        at = write_xattr(&mut out, at, &nodes[fu.0 as usize].xattrs[fu.1 as usize]);
    }

    // Data blocks.
    for (k, &ni) in l.order.iter().enumerate() {
        let node = &nodes[ni as usize];
        if node.n_blocks == 0 {
            continue;
        }
        let base = block_of[k] * BLOCK_SIZE;
        match node.data {
            Data::Dir => {
                let (s, e) = node.dirents;
                let mut b = base;
                for_each_dir_chunk(
                    &p.dirents[s as usize..e as usize],
                    node.n_blocks,
                    |ds, tail| {
                        if !tail {
                            write_dirent_block(&mut out, b, ds, nodes);
                            b += BLOCK_SIZE;
                        }
                    },
                );
            }
            Data::External { .. } => {
                // The chunk index moved out of the inode: a full block of
                // NULL_ADDR entries (as composefs C writes it).
                out.buf[base as usize..(base + BLOCK_SIZE) as usize].fill(0xff);
            }
            Data::Inline(d) => {
                let n = (node.n_blocks * BLOCK_SIZE).min(d.len() as u64) as usize;
                out.put(base, &d[..n]);
            }
            Data::Symlink(t) => {
                out.put(base, t);
            }
            Data::Empty | Data::Special => {}
        }
    }
    out.buf
}

/// Writes the composefs image for `tree`: the same bytes composefs C 1.0.8
/// `mkcomposefs` produces for the equivalent dumpfile and
/// `--min-version/--max-version`.
///
/// The tree is validated first ([`Tree::validate`]); trees composefs would
/// refuse (oversized inline content, more than [`MAX_CHUNKS`] chunks, xattrs
/// beyond the per-inode budget, ...) give a [`WriteError`], never a panic.
///
/// One extension: a 64-byte (SHA-512) fs-verity digest is recorded in
/// `trusted.overlay.metacopy` with algorithm id 2; composefs C only knows
/// 32-byte SHA-256 digests.
pub fn write_image(tree: &Tree, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    tree.validate()?;
    let mut p = prepare(tree, opts)?;
    let l = layout(&mut p, tree)?;
    Ok(emit(&p, &l))
}
