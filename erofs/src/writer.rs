//! composefs image writer: tree → EROFS bytes, identical to composefs C 1.0.8.
//!
//! The writer never copies the tree. It plans the image in three passes and
//! then streams the bytes in file order:
//!
//! 1. **prepare**: validates what composefs would refuse and works out each
//!    inode's xattr list in the overlayfs view composefs C builds before
//!    writing (escaping of user `trusted.overlay.*` xattrs, metacopy/redirect
//!    xattrs for external files, whiteout escaping, the root's opaque marker
//!    and its 256 `00`..`ff` whiteout devices). Those xattrs are never
//!    materialised: each is a small reference (`XRef`) into the tree or a
//!    static table, and every distinct (name, value) pair is interned once;
//!    an inode keeps only a run of interned ids;
//! 2. **order**: breadth-first inode order over home entries with every
//!    directory's entries sorted by name (a merge of the tree's sorted
//!    entries, `.`/`..` and the root whiteouts, computed on the fly), the
//!    minimum mtime and the shared-xattr table;
//! 3. **layout**: inode placement (slot alignment and the padding that keeps
//!    inline tails inside one block), data block allocation — one compact
//!    record per inode;
//! 4. **emit** ([`ImagePlan::write_to`]): header, superblock, inodes, shared
//!    xattrs and data blocks are written in ascending offset order to any
//!    [`std::io::Write`], zero gaps included; nothing image-sized is held.
//!
//! All layout rules below were learned from composefs C 1.0.8
//! (`libcomposefs/lcfs-writer-erofs.c`, `lcfs-writer.c`) and are cited where
//! they are not obvious; the code itself is our own.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::{self, Write};

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
use crate::tree::{Content, Entry, FileData, Inode, Timespec, Tree, TreeError};

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

#[derive(Debug, thiserror::Error)]
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
    /// Writing the image bytes failed (only from the streaming functions).
    #[error("cannot write image: {0}")]
    Io(#[from] io::Error),
}

/// Structural equality; two [`WriteError::Io`] are equal when their kind
/// and message are.
impl PartialEq for WriteError {
    fn eq(&self, other: &Self) -> bool {
        use WriteError::*;
        match (self, other) {
            (Tree(a), Tree(b)) => a == b,
            (Version(a), Version(b)) => a == b,
            (InlineTooLarge { path: a, size: x }, InlineTooLarge { path: b, size: y })
            | (FileTooLarge { path: a, size: x }, FileTooLarge { path: b, size: y }) => {
                a == b && x == y
            }
            (BadVerity { path: a, len: x }, BadVerity { path: b, len: y }) => a == b && x == y,
            (BadRedirect { path: a }, BadRedirect { path: b })
            | (NulInSymlink { path: a }, NulInSymlink { path: b })
            | (XattrsTooLarge { path: a }, XattrsTooLarge { path: b })
            | (XattrRewrite { path: a }, XattrRewrite { path: b }) => a == b,
            (Io(a), Io(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for WriteError {}

// ---------------------------------------------------------------------------
// Byte strings in two parts

/// A byte string stored as the concatenation of two slices, so escaped names
/// (`trusted.overlay.overlay.` + rest) and built values (`/` + redirect,
/// metacopy header + digest) need no allocation.
#[derive(Clone, Copy)]
struct Bytes2<'a>(&'a [u8], &'a [u8]);

impl<'a> Bytes2<'a> {
    fn one(b: &'a [u8]) -> Self {
        Bytes2(&[], b)
    }

    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    fn cmp(&self, o: &Bytes2) -> Ordering {
        // Most strings are in one part: compare those without touching the
        // (empty) prefixes.
        match (self.0.is_empty(), o.0.is_empty()) {
            (true, true) => self.1.cmp(o.1),
            _ if self.0 == o.0 => self.1.cmp(o.1),
            _ => self.0.iter().chain(self.1).cmp(o.0.iter().chain(o.1)),
        }
    }

    fn eq(&self, o: &Bytes2) -> bool {
        if self.len() != o.len() {
            return false;
        }
        if self.0.len() == o.0.len() {
            return bytes_eq(self.0, o.0) && bytes_eq(self.1, o.1);
        }
        self.cmp(o) == Ordering::Equal
    }

    /// The contiguous bytes, copied into `buf` when in two parts (xattr names
    /// are at most 263 bytes after escaping).
    fn flat<'b>(&self, buf: &'b mut [u8; NAME_BUF]) -> &'b [u8]
    where
        'a: 'b,
    {
        if self.0.is_empty() {
            return self.1;
        }
        let n = self.len();
        buf[..self.0.len()].copy_from_slice(self.0);
        buf[self.0.len()..n].copy_from_slice(self.1);
        &buf[..n]
    }
}

const NAME_BUF: usize = 512;

/// Slice equality that short-cuts the common case of two references to the
/// same (static or tree) bytes.
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

/// A streaming multiplicative hash over a sequence of byte slices: the
/// result only depends on the concatenated bytes, not on how they are split.
/// (Keys are not attacker-controlled in a way that matters for a one-shot
/// build, and SipHash dominated the profile on large trees.)
struct StreamHash {
    h: u64,
    word: u64,
    n: u32,
}

impl StreamHash {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn new() -> Self {
        StreamHash {
            h: 0,
            word: 0,
            n: 0,
        }
    }

    fn mix(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while self.n != 0 && !bytes.is_empty() {
            self.byte(bytes[0]);
            bytes = &bytes[1..];
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().unwrap()));
        }
        for &b in chunks.remainder() {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        self.word |= (b as u64) << (8 * self.n);
        self.n += 1;
        if self.n == 8 {
            let w = self.word;
            self.mix(w);
            self.word = 0;
            self.n = 0;
        }
    }

    fn finish(mut self) -> u64 {
        let tail = self.word ^ ((self.n as u64) << 60);
        self.mix(tail);
        // Fold the well-mixed high bits into the low ones that pick slots.
        let h = self.h ^ (self.h >> 29);
        h.wrapping_mul(Self::K) ^ (h >> 32)
    }
}

// ---------------------------------------------------------------------------
// Xattrs of the rewritten (overlayfs) view, by reference

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const ROOT_WHITEOUT_HEX: &[u8; 16] = b"0123456789abcdef";

/// Xattrs the rewrite adds with fixed names and values.
const FIXED: [(&[u8], &[u8]); 7] = [
    (b"trusted.overlay.overlay.whiteout", b""),
    (b"user.overlay.whiteout", b""),
    (b"trusted.overlay.overlay.whiteouts", b""),
    (b"user.overlay.whiteouts", b""),
    (b"trusted.overlay.overlay.opaque", b"x"),
    (b"user.overlay.opaque", b"x"),
    (b"trusted.overlay.opaque", b"y"),
];
const FX_WHITEOUT: [u8; 2] = [0, 1];
const FX_WHITEOUTS: [u8; 2] = [2, 3];
const FX_OPAQUE_X: [u8; 2] = [4, 5];
const FX_OPAQUE_Y: u8 = 6;
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
/// `trusted.overlay.metacopy` header: version 0, length, flags 0, algorithm
/// (fs-verity ids 1 = SHA-256, 2 = SHA-512).
const METACOPY_SHA256: &[u8] = &[0, 4 + 32, 0, 1];
const METACOPY_SHA512: &[u8] = &[0, 4 + 64, 0, 2];

/// One xattr of an inode in the rewritten view; resolved against the inode
/// it belongs to by [`xview`].
#[derive(Clone, Copy)]
enum XRef {
    /// `inode.xattrs[i]`, its name escaped when in the overlay namespace.
    Tree(u32),
    /// `FIXED[i]`.
    Fixed(u8),
    /// `trusted.overlay.metacopy` of an external file.
    Metacopy,
    /// `trusted.overlay.redirect` (`/` + redirect) of an external file.
    Redirect,
}

fn external(inode: &Inode) -> (Option<&[u8]>, Option<&[u8]>) {
    match &inode.content {
        Content::Regular(f) => match &f.data {
            FileData::External { redirect, verity } => (redirect.as_deref(), verity.as_deref()),
            FileData::Inline(_) => (None, None),
        },
        _ => (None, None),
    }
}

/// Name and value of `x` on `inode`.
fn xview(inode: &Inode, x: XRef) -> (Bytes2<'_>, Bytes2<'_>) {
    match x {
        XRef::Tree(i) => {
            let x = &inode.xattrs[i as usize];
            let name = match x.name.strip_prefix(OVERLAY_PREFIX) {
                // User xattrs in the overlayfs namespace are escaped one
                // level so overlayfs shows them to users unchanged.
                Some(rest) => Bytes2(OVERLAY_ESCAPED_PREFIX, rest),
                None => Bytes2::one(&x.name),
            };
            (name, Bytes2::one(&x.value))
        }
        XRef::Fixed(i) => {
            let (n, v) = FIXED[i as usize];
            (Bytes2::one(n), Bytes2::one(v))
        }
        XRef::Metacopy => {
            let value = match external(inode).1 {
                Some(d) if d.len() == 64 => Bytes2(METACOPY_SHA512, d),
                Some(d) => Bytes2(METACOPY_SHA256, d),
                None => Bytes2::one(&[]),
            };
            (Bytes2::one(METACOPY), value)
        }
        XRef::Redirect => (
            Bytes2::one(REDIRECT),
            Bytes2(b"/", external(inode).0.unwrap_or_default()),
        ),
    }
}

/// The per-inode list the rewrite pass works on, with composefs C's size
/// bookkeeping (see [`XList::set`]).
struct XList {
    items: Vec<XRef>,
    budget: u64,
}

impl XList {
    fn entry_estimate(name: usize, value: usize) -> u64 {
        7 + name as u64 + value as u64
    }

    /// Sets (or replaces) an xattr the way composefs C's rewrite does,
    /// including its size bookkeeping: the clone it rewrites starts that
    /// bookkeeping at zero, and replacing an existing value subtracts the old
    /// entry's estimate (with unsigned wrap-around), so replacing a longer
    /// value with a shorter one on an inode that keeps other xattrs trips the
    /// limit. We reproduce the outcome (an error) rather than the
    /// arithmetic's intent.
    fn set(&mut self, inode: &Inode, x: XRef) -> bool {
        let (name, value) = xview(inode, x);
        if let Some(i) = self.items.iter().position(|&o| xview(inode, o).0.eq(&name)) {
            let old_len = xview(inode, self.items[i]).1.len();
            self.items.swap_remove(i);
            if self.items.is_empty() {
                self.budget = 0;
            } else {
                self.budget = self
                    .budget
                    .wrapping_sub(Self::entry_estimate(name.len(), old_len));
            }
        }
        self.add(name.len(), value.len(), x)
    }

    /// Adds an xattr known to be new on the inode (metacopy, redirect).
    fn set_new(&mut self, inode: &Inode, x: XRef) -> bool {
        let (name, value) = xview(inode, x);
        self.add(name.len(), value.len(), x)
    }

    fn add(&mut self, name: usize, value: usize, x: XRef) -> bool {
        let mut entry = Self::entry_estimate(name, value);
        if self.items.is_empty() {
            entry += size_of::<XattrIbodyHeader>() as u64;
        }
        if self.budget.wrapping_add(entry) > REWRITE_XATTR_BUDGET {
            return false;
        }
        self.budget = self.budget.wrapping_add(entry);
        self.items.push(x);
        true
    }
}

/// A distinct (name, value) pair, represented by its first use.
struct Uniq {
    node: u32,
    x: XRef,
    uses: u32,
    /// Offset in the shared table, or `NOT_SHARED`.
    off: u64,
}

const NOT_SHARED: u64 = u64::MAX;

/// Open-addressing set of interned xattrs (4 bytes a slot).
struct Interner {
    slots: Vec<u32>,
    hashes: Vec<u64>,
}

const EMPTY_SLOT: u32 = u32::MAX;

impl Interner {
    fn new() -> Self {
        Interner {
            slots: vec![EMPTY_SLOT; 1024],
            hashes: Vec::new(),
        }
    }

    fn hash(name: Bytes2, value: Bytes2) -> u64 {
        let mut h = StreamHash::new();
        h.feed(name.0);
        h.feed(name.1);
        h.feed(&(name.len() as u32).to_le_bytes());
        h.feed(value.0);
        h.feed(value.1);
        h.finish()
    }

    /// The id of (name, value) of `x` on node `node` (source inode
    /// `inode`), adding it (with this node as representative) when new.
    fn intern(&mut self, tree: &Tree, uniq: &mut Vec<Uniq>, node: u32, x: XRef) -> u32 {
        let inode = &tree.inodes[node as usize];
        let (name, value) = xview(inode, x);
        let h = Self::hash(name, value);
        let mask = self.slots.len() - 1;
        let mut s = h as usize & mask;
        loop {
            let id = self.slots[s];
            if id == EMPTY_SLOT {
                break;
            }
            if self.hashes[id as usize] == h {
                let u = &mut uniq[id as usize];
                let (n2, v2) = xview(&tree.inodes[u.node as usize], u.x);
                if n2.eq(&name) && v2.eq(&value) {
                    u.uses += 1;
                    return id;
                }
            }
            s = (s + 1) & mask;
        }
        let id = uniq.len() as u32;
        uniq.push(Uniq {
            node,
            x,
            uses: 1,
            off: NOT_SHARED,
        });
        self.hashes.push(h);
        self.slots[s] = id;
        if self.hashes.len() * 2 > self.slots.len() {
            let cap = self.slots.len() * 2;
            self.slots.clear();
            self.slots.resize(cap, EMPTY_SLOT);
            for (id, &h) in self.hashes.iter().enumerate() {
                let mut s = h as usize & (cap - 1);
                while self.slots[s] != EMPTY_SLOT {
                    s = (s + 1) & (cap - 1);
                }
                self.slots[s] = id as u32;
            }
        }
        id
    }
}

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

fn round_up(v: u64, to: u64) -> u64 {
    v.next_multiple_of(to)
}

// ---------------------------------------------------------------------------
// Nodes

/// What an inode stores, in the rewritten view.
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

/// Attributes of a node in the rewritten view.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: Timespec,
    rdev: u32,
}

/// Per-node layout record. Nodes are the tree's inodes (same indices) and
/// then the root whiteouts the writer adds.
#[derive(Clone, Copy, Default)]
struct Rec {
    nid: u64,
    /// Start of this node's run in `ImagePlan::xids`.
    x_start: u32,
    n_blocks: u32,
    xattr_size: u32,
    /// Node holding this node's home entry (the root for the root).
    parent: u32,
    x_len: u16,
    tail: u16,
    n_shared: u8,
    compact: bool,
}

/// One directory entry of the image.
#[derive(Clone, Copy)]
struct DirEnt<'a> {
    name: &'a [u8],
    target: u32,
    /// False only for the entry through which BFS reaches its target.
    link: bool,
}

fn is_whiteout(mode: u32, rdev: u64) -> bool {
    mode & S_IFMT == S_IFCHR && rdev as u32 == 0
}

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

fn path_of(tree: &Tree, node: u32) -> String {
    tree.home_paths()
        .get(node as usize)
        .cloned()
        .unwrap_or_else(|| "/".into())
}

/// Checks what composefs refuses about one inode's content.
fn check_content(inode: &Inode, path: impl Fn() -> String) -> Result<(), WriteError> {
    match &inode.content {
        Content::Symlink(t) if t.contains(&0) => Err(WriteError::NulInSymlink { path: path() }),
        Content::Regular(f) => match &f.data {
            FileData::Inline(_) if f.size > INLINE_CONTENT_MAX => Err(WriteError::InlineTooLarge {
                path: path(),
                size: f.size,
            }),
            FileData::External { .. } if f.size > 0 && chunk_count(f.size) > MAX_CHUNKS => {
                Err(WriteError::FileTooLarge {
                    path: path(),
                    size: f.size,
                })
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The plan

/// A planned composefs image: everything but the bytes. Build it with
/// [`ImagePlan::new`] (all errors about the tree surface there), then stream
/// the image with [`ImagePlan::write_to`].
///
/// The plan borrows the tree and holds about 40 bytes per inode, 4 per xattr
/// and 24 per distinct xattr; it never copies names, xattrs or file contents.
pub struct ImagePlan<'a> {
    tree: &'a Tree,
    version: u32,
    recs: Vec<Rec>,
    /// Interned xattr id of every node's xattrs, sorted by name per node.
    xids: Vec<u32>,
    uniq: Vec<Uniq>,
    /// Shared xattrs in table order.
    shared_table: Vec<u32>,
    shared_size: u64,
    /// Indices `0..256` of the root whiteouts the writer adds, ascending.
    root_whiteouts: Vec<u8>,
    /// Sorted entry order of directories whose tree entries are not sorted.
    unsorted: HashMap<u32, Vec<u32>>,
    /// Nodes in BFS (= inode number) order.
    order: Vec<u32>,
    min_mtime: Timespec,
    has_acl: bool,
    inodes_end: u64,
    n_data_blocks: u64,
}

impl<'a> ImagePlan<'a> {
    /// Validates `tree` ([`Tree::validate`] and composefs' own limits) and
    /// lays the image out. Trees composefs would refuse (oversized inline
    /// content, more than [`MAX_CHUNKS`] chunks, xattrs beyond the per-inode
    /// budget, ...) give a [`WriteError`], never a panic.
    pub fn new(tree: &'a Tree, opts: &WriteOptions) -> Result<Self, WriteError> {
        tree.validate()?;
        let mut plan = Self::prepare(tree, opts)?;
        plan.layout()?;
        Ok(plan)
    }

    /// Size of the image in bytes.
    pub fn image_size(&self) -> u64 {
        self.data_start() + self.n_data_blocks * BLOCK_SIZE
    }

    fn data_start(&self) -> u64 {
        round_up(self.inodes_end + self.shared_size, BLOCK_SIZE)
    }

    fn n_tree(&self) -> usize {
        self.tree.inodes.len()
    }

    fn prepare(tree: &'a Tree, opts: &WriteOptions) -> Result<Self, WriteError> {
        // Version selection (composefs C lcfs_write_to): reject unknown
        // versions, raise max to min, then move to version 1 if any inode is
        // a whiteout.
        if opts.min_version > MAX_FORMAT_VERSION {
            return Err(WriteError::Version(opts.min_version));
        }
        if opts.max_version > MAX_FORMAT_VERSION {
            return Err(WriteError::Version(opts.max_version));
        }
        let max_version = opts.max_version.max(opts.min_version);
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

        // The root gets whiteout devices 00..ff (those not already present).
        let mut have = [false; 256];
        for e in tree.root().entries() {
            if let [a, b] = e.name[..] {
                let hex = |c: u8| ROOT_WHITEOUT_HEX.iter().position(|&h| h == c);
                if let (Some(hi), Some(lo)) = (hex(a), hex(b)) {
                    have[hi * 16 + lo] = true;
                }
            }
        }
        let root_whiteouts: Vec<u8> = (0..=255u8).filter(|&i| !have[i as usize]).collect();

        let n = tree.inodes.len();
        let n_nodes = n + root_whiteouts.len();
        let total_xattrs: usize = tree.inodes.iter().map(|i| i.xattrs.len()).sum();
        let mut recs = vec![Rec::default(); n_nodes];
        let mut xids: Vec<u32> = Vec::with_capacity(total_xattrs + total_xattrs / 2 + 8);
        let mut uniq: Vec<Uniq> = Vec::new();
        let mut interner = Interner::new();
        let mut list = XList {
            items: Vec::new(),
            budget: 0,
        };
        let mut has_acl = false;
        let mut root_selinux: Option<u32> = None;
        // Errors of the second rewrite step (marking directories that hold
        // whiteouts, then the root's opaque marker) rank after every error
        // of the first step, as in composefs C's pass order.
        let mut dir_err: Option<u32> = None;
        let mut root_err = false;
        let mut unsorted = HashMap::new();

        for (idx, inode) in tree.inodes.iter().enumerate() {
            let err_path = || path_of(tree, idx as u32);
            check_content(inode, err_path)?;
            // composefs accepts at most UINT16_MAX/2 bytes of xattrs per
            // inode, counted as 12 + sum(7 + name + value)
            // (lcfs_node_set_xattr): no tree beyond that can reach its writer.
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
            list.items.clear();
            list.items
                .extend((0..inode.xattrs.len() as u32).map(XRef::Tree));
            list.budget = 0;
            let mut ok = true;
            if let Content::Regular(f) = &inode.content {
                if let FileData::External { redirect, verity } = &f.data {
                    if f.size > 0 {
                        if let Some(d) = verity {
                            if d.len() != 32 && d.len() != 64 {
                                return Err(WriteError::BadVerity {
                                    path: err_path(),
                                    len: d.len(),
                                });
                            }
                        }
                        ok &= list.set_new(inode, XRef::Metacopy);
                        if let Some(r) = redirect.as_deref().filter(|r| !r.is_empty()) {
                            if r.len() > REDIRECT_MAX || r.contains(&0) {
                                return Err(WriteError::BadRedirect { path: err_path() });
                            }
                            ok &= list.set_new(inode, XRef::Redirect);
                        }
                    }
                }
            }
            if is_whiteout(inode.stat.mode, inode.stat.rdev) {
                for f in FX_WHITEOUT {
                    ok &= list.set(inode, XRef::Fixed(f));
                }
            }
            if !ok {
                return Err(WriteError::XattrRewrite { path: err_path() });
            }

            if let Content::Directory(entries) = &inode.content {
                // Directories holding whiteouts get marked (opaque=x from
                // version 1), once per whiteout as composefs C does.
                let mut ok = true;
                for e in entries {
                    let t = &tree.inodes[e.inode.index()].stat;
                    if e.hardlink || !is_whiteout(t.mode, t.rdev) {
                        continue;
                    }
                    for f in FX_WHITEOUTS {
                        ok &= list.set(inode, XRef::Fixed(f));
                    }
                    if version >= 1 {
                        for f in FX_OPAQUE_X {
                            ok &= list.set(inode, XRef::Fixed(f));
                        }
                    }
                }
                if !ok && dir_err.is_none() {
                    dir_err = Some(idx as u32);
                }
                for e in entries {
                    if !e.hardlink {
                        recs[e.inode.index()].parent = idx as u32;
                    }
                }
                if !entries.is_sorted_by(|a, b| a.name <= b.name) {
                    let mut perm: Vec<u32> = (0..entries.len() as u32).collect();
                    perm.sort_unstable_by(|&a, &b| {
                        entries[a as usize].name.cmp(&entries[b as usize].name)
                    });
                    unsorted.insert(idx as u32, perm);
                }
            }
            if idx == 0 && !list.set(inode, XRef::Fixed(FX_OPAQUE_Y)) {
                root_err = true;
            }

            if list.items.len() > 1 {
                let by_name = |a: &XRef, b: &XRef| xview(inode, *a).0.cmp(&xview(inode, *b).0);
                if !list
                    .items
                    .is_sorted_by(|a, b| by_name(a, b) != Ordering::Greater)
                {
                    list.items.sort_unstable_by(by_name);
                }
            }
            let rec = &mut recs[idx];
            rec.x_start = xids.len() as u32;
            rec.x_len = list.items.len() as u16;
            for &x in &list.items {
                let id = interner.intern(tree, &mut uniq, idx as u32, x);
                // Only the tree's own xattrs can be ACLs or SELinux labels.
                if let XRef::Tree(k) = x {
                    let name = &inode.xattrs[k as usize].name[..];
                    if name.starts_with(b"system.posix_acl_")
                        && (name == b"system.posix_acl_access"
                            || name == b"system.posix_acl_default")
                    {
                        has_acl = true;
                    }
                    if idx == 0 && name == b"security.selinux" {
                        root_selinux = Some(id);
                    }
                }
                xids.push(id);
            }
        }
        if let Some(d) = dir_err {
            return Err(WriteError::XattrRewrite {
                path: path_of(tree, d),
            });
        }
        if root_err {
            return Err(WriteError::XattrRewrite { path: "/".into() });
        }
        drop(interner);

        // The root whiteouts inherit the root's ownership, mtime and SELinux
        // label. They are added after the rewrite, so they stay character
        // devices.
        for rec in &mut recs[n..] {
            rec.x_start = xids.len() as u32;
            if let Some(id) = root_selinux {
                uniq[id as usize].uses += 1;
                xids.push(id);
                rec.x_len = 1;
            }
        }

        Ok(ImagePlan {
            tree,
            version,
            recs,
            xids,
            uniq,
            shared_table: Vec::new(),
            shared_size: 0,
            root_whiteouts,
            unsorted,
            order: Vec::new(),
            min_mtime: Timespec::default(),
            has_acl,
            inodes_end: 0,
            n_data_blocks: 0,
        })
    }

    /// Attributes of `node` in the rewritten view (directory link counts
    /// recomputed as 2 + subdirectories, as composefs C does).
    fn attrs(&self, node: u32) -> Attrs {
        let Some(inode) = self.tree.inodes.get(node as usize) else {
            let root = &self.tree.inodes[0].stat;
            return Attrs {
                mode: S_IFCHR | 0o644,
                uid: root.uid,
                gid: root.gid,
                nlink: 1,
                mtime: root.mtime,
                rdev: 0,
            };
        };
        let st = &inode.stat;
        let mut a = Attrs {
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            nlink: st.nlink,
            mtime: st.mtime,
            rdev: st.rdev as u32,
        };
        if is_whiteout(st.mode, st.rdev) {
            a.mode = S_IFREG | (st.mode & !S_IFMT);
            a.rdev = 0;
        }
        if let Content::Directory(entries) = &inode.content {
            let subdirs = entries
                .iter()
                .filter(|e| !e.hardlink && self.tree.inodes[e.inode.index()].is_dir())
                .count();
            a.nlink = 2 + subdirs as u32;
        }
        a
    }

    fn mode(&self, node: u32) -> u32 {
        match self.tree.inodes.get(node as usize) {
            Some(i) if is_whiteout(i.stat.mode, i.stat.rdev) => S_IFREG | (i.stat.mode & !S_IFMT),
            Some(i) => i.stat.mode,
            None => S_IFCHR | 0o644,
        }
    }

    fn data(&self, node: u32) -> Data<'a> {
        let Some(inode) = self.tree.inodes.get(node as usize) else {
            return Data::Special;
        };
        match &inode.content {
            Content::Directory(_) => Data::Dir,
            Content::Symlink(t) => Data::Symlink(t),
            Content::Special if is_whiteout(inode.stat.mode, inode.stat.rdev) => Data::Empty,
            Content::Special => Data::Special,
            Content::Regular(f) => match &f.data {
                FileData::Inline(d) if d.is_empty() => Data::Empty,
                FileData::Inline(d) => Data::Inline(d),
                FileData::External { .. } if f.size == 0 => Data::Empty,
                FileData::External { .. } => Data::External { size: f.size },
            },
        }
    }

    /// The image entries of directory `dir`, sorted by name: `.`, `..`, the
    /// tree's entries and, for the root, the added whiteouts.
    fn dir_entries(&self, dir: u32) -> DirIter<'_, 'a> {
        let entries = self.tree.inodes[dir as usize].entries();
        DirIter {
            dir,
            parent: self.recs[dir as usize].parent,
            dots: 0,
            entries,
            perm: self.unsorted.get(&dir).map(|p| &p[..]),
            ei: 0,
            whiteouts: if dir == 0 { &self.root_whiteouts } else { &[] },
            wi: 0,
            first_whiteout: self.n_tree() as u32,
        }
    }

    fn xattrs_of(&self, node: u32) -> &[u32] {
        let r = &self.recs[node as usize];
        &self.xids[r.x_start as usize..r.x_start as usize + r.x_len as usize]
    }

    /// Name and value of interned xattr `id`.
    fn uview(&self, id: u32) -> (Bytes2<'a>, Bytes2<'a>) {
        let u = &self.uniq[id as usize];
        let tree: &'a Tree = self.tree;
        xview(&tree.inodes[u.node as usize], u.x)
    }

    fn xattr_entry_size(&self, id: u32) -> u64 {
        let (name, value) = self.uview(id);
        let mut buf = [0u8; NAME_BUF];
        let (_, suffix) = xattr_index(name.flat(&mut buf));
        (size_of::<XattrEntry>() + suffix.len() + value.len()).next_multiple_of(4) as u64
    }

    fn layout(&mut self) -> Result<(), WriteError> {
        // Breadth-first order over home entries.
        let mut order: Vec<u32> = Vec::with_capacity(self.recs.len());
        order.push(0);
        let mut qi = 0;
        while qi < order.len() {
            let ni = order[qi];
            if (ni as usize) < self.n_tree() && self.tree.inodes[ni as usize].is_dir() {
                for d in self.dir_entries(ni) {
                    if !d.link {
                        order.push(d.target);
                    }
                }
            }
            qi += 1;
        }

        let mut min_mtime = self.tree.inodes[0].stat.mtime;
        for &ni in &order[..] {
            if let Some(i) = self.tree.inodes.get(ni as usize) {
                min_mtime = min_mtime.min(i.stat.mtime);
            }
        }

        // Shared xattrs: every (name, value) pair used by more than one
        // inode. Table order per composefs C xattrs_ht_sort: its comparator
        // runs descending on name, then on value length, then on value bytes.
        let mut shared: Vec<u32> = (0..self.uniq.len() as u32)
            .filter(|&i| self.uniq[i as usize].uses > 1)
            .collect();
        shared.sort_unstable_by(|&a, &b| {
            let ((na, va), (nb, vb)) = (self.uview(a), self.uview(b));
            nb.cmp(&na).then(vb.len().cmp(&va.len())).then(vb.cmp(&va))
        });
        let mut shared_size = 0u64;
        for &id in &shared {
            self.uniq[id as usize].off = shared_size;
            shared_size += self.xattr_entry_size(id);
        }
        self.shared_table = shared;
        self.shared_size = shared_size;

        for &ni in &order {
            let mut n_shared = 0usize;
            let mut unshared = 0u64;
            for &id in self.xattrs_of(ni) {
                if self.uniq[id as usize].off != NOT_SHARED && n_shared < MAX_SHARED_PER_INODE {
                    n_shared += 1;
                } else {
                    unshared += self.xattr_entry_size(id);
                }
            }
            let xattr_size = if n_shared == 0 && unshared == 0 {
                0
            } else {
                round_up(
                    size_of::<XattrIbodyHeader>() as u64 + 4 * n_shared as u64 + unshared,
                    4,
                )
            };
            if xattr_size > 0 && (xattr_size - 12) / 4 + 1 > u16::MAX as u64 {
                return Err(WriteError::XattrsTooLarge {
                    path: path_of(self.tree, ni),
                });
            }
            let rec = &mut self.recs[ni as usize];
            rec.n_shared = n_shared as u8;
            rec.xattr_size = xattr_size as u32;
        }

        // Inode placement, starting right after the superblock; nids count
        // 32-byte slots from the start of block 0.
        let mut pos = SUPER_OFFSET + size_of::<Superblock>() as u64;
        let mut n_data_blocks = 0u64;
        for &ni in &order {
            let data = self.data(ni);
            let (mut blocks, mut tail) = match data {
                Data::Dir => self.dir_size(ni),
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
            let a = self.attrs(ni);
            let size = inode_size_field(data, blocks, tail);
            let compact = a.mtime == min_mtime
                && a.nlink <= u16::MAX as u32
                && a.uid <= u16::MAX as u32
                && a.gid <= u16::MAX as u32
                && size <= u32::MAX as u64;
            let isize = if compact {
                size_of::<InodeCompact>()
            } else {
                size_of::<InodeExtended>()
            } as u64;
            let rec = &mut self.recs[ni as usize];
            pos = round_up(pos, SLOT_SIZE);
            pos += tail_padding(
                data,
                &mut blocks,
                &mut tail,
                pos,
                isize + rec.xattr_size as u64,
            );
            rec.nid = pos / SLOT_SIZE;
            rec.compact = compact;
            rec.n_blocks = u32::try_from(blocks).expect("directory block count fits u32");
            rec.tail = tail as u16;
            n_data_blocks += blocks;
            pos += isize + rec.xattr_size as u64 + tail;
        }

        self.order = order;
        self.min_mtime = min_mtime;
        self.inodes_end = round_up(pos, SLOT_SIZE);
        self.n_data_blocks = n_data_blocks;
        Ok(())
    }

    /// Full blocks and inline tail bytes of a directory.
    fn dir_size(&self, dir: u32) -> (u64, u64) {
        let (mut blocks, mut used) = (0u64, 0u64);
        for d in self.dir_entries(dir) {
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

    /// Splits a directory's entries into full blocks and the inline tail,
    /// the same way `dir_size` counted them. Calls `f(entries, is_tail)`.
    fn for_each_dir_chunk<'s>(
        &'s self,
        dir: u32,
        n_blocks: u64,
        buf: &mut Vec<DirEnt<'s>>,
        mut f: impl FnMut(&[DirEnt<'s>], bool) -> io::Result<()>,
    ) -> io::Result<()> {
        buf.clear();
        let mut used = 0u64;
        let mut written = 0u64;
        for d in self.dir_entries(dir) {
            let len = (size_of::<Dirent>() + d.name.len()) as u64;
            if used + len > BLOCK_SIZE {
                f(buf, false)?;
                buf.clear();
                written += 1;
                used = 0;
            }
            used += len;
            buf.push(d);
        }
        if written < n_blocks {
            f(buf, false)?;
            buf.clear();
            used = 0;
        }
        if used > 0 {
            f(buf, true)?;
        }
        Ok(())
    }

    /// Streams the image to `out` in file order and returns its size (always
    /// [`ImagePlan::image_size`]). `out` should be buffered: the writer
    /// issues many small writes.
    pub fn write_to<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<u64> {
        let mut out = Sink { w: out, pos: 0 };
        let data_start = self.data_start();
        let total = self.image_size();

        let header = ComposefsHeader {
            magic: COMPOSEFS_MAGIC.into(),
            version: COMPOSEFS_HEADER_VERSION.into(),
            flags: if self.has_acl {
                COMPOSEFS_FLAGS_HAS_ACL
            } else {
                0
            }
            .into(),
            composefs_version: self.version.into(),
            ..Default::default()
        };
        out.put(header.as_bytes())?;
        let sb = Superblock {
            magic: SUPER_MAGIC_V1.into(),
            feature_compat: (FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER).into(),
            blkszbits: BLOCK_BITS,
            root_nid: (self.recs[0].nid as u16).into(),
            inos: (self.order.len() as u64).into(),
            build_time: (self.min_mtime.sec as u64).into(),
            build_time_nsec: self.min_mtime.nsec.into(),
            blocks: ((data_start / BLOCK_SIZE + self.n_data_blocks) as u32).into(),
            meta_blkaddr: 0.into(),
            xattr_blkaddr: ((self.inodes_end / BLOCK_SIZE) as u32).into(),
            ..Default::default()
        };
        out.seek(SUPER_OFFSET)?;
        out.put(sb.as_bytes())?;

        // Inodes, allocating data blocks in inode order.
        let mut dirbuf = Vec::new();
        let mut next_block = data_start / BLOCK_SIZE;
        for (ino, &ni) in self.order.iter().enumerate() {
            let rec = self.recs[ni as usize];
            let a = self.attrs(ni);
            let data = self.data(ni);
            let ft = a.mode & S_IFMT;
            let n_blocks = rec.n_blocks as u64;
            let mut layout = if rec.tail > 0 {
                LAYOUT_FLAT_INLINE
            } else {
                LAYOUT_FLAT_PLAIN
            };
            let mut i_u = 0u32;
            if n_blocks > 0 && matches!(ft, S_IFDIR | S_IFREG | S_IFLNK) {
                i_u = next_block as u32;
                next_block += n_blocks;
            }
            if ft == S_IFCHR || ft == S_IFBLK {
                i_u = a.rdev;
            }
            if let Data::External { size } = data {
                // The chunk format shares the union with raw_blkaddr and, as
                // in composefs C, overwrites its low 16 bits.
                layout = LAYOUT_CHUNK_BASED;
                let fmt = chunk_bits(size) - BLOCK_BITS as u32;
                i_u = (i_u & 0xffff_0000) | fmt;
            }
            let size = inode_size_field(data, n_blocks, rec.tail as u64);
            let icount = if rec.xattr_size == 0 {
                0
            } else {
                ((rec.xattr_size - 12) / 4 + 1) as u16
            };
            out.seek(rec.nid * SLOT_SIZE)?;
            if rec.compact {
                let i = InodeCompact {
                    i_format: (layout << I_DATALAYOUT_BIT).into(),
                    i_xattr_icount: icount.into(),
                    i_mode: (a.mode as u16).into(),
                    i_nlink: (a.nlink as u16).into(),
                    i_size: (size as u32).into(),
                    i_u: i_u.into(),
                    i_ino: (ino as u32).into(),
                    i_uid: (a.uid as u16).into(),
                    i_gid: (a.gid as u16).into(),
                    ..Default::default()
                };
                out.put(i.as_bytes())?;
            } else {
                let i = InodeExtended {
                    i_format: ((layout << I_DATALAYOUT_BIT) | 1).into(),
                    i_xattr_icount: icount.into(),
                    i_mode: (a.mode as u16).into(),
                    i_size: size.into(),
                    i_u: i_u.into(),
                    i_ino: (ino as u32).into(),
                    i_uid: a.uid.into(),
                    i_gid: a.gid.into(),
                    i_mtime: (a.mtime.sec as u64).into(),
                    i_mtime_nsec: a.mtime.nsec.into(),
                    i_nlink: a.nlink.into(),
                    ..Default::default()
                };
                out.put(i.as_bytes())?;
            }

            if rec.xattr_size > 0 {
                let start = out.pos;
                self.write_inode_xattrs(&mut out, ni, rec.n_shared)?;
                debug_assert_eq!(out.pos - start, rec.xattr_size as u64);
                out.seek(start + rec.xattr_size as u64)?;
            }

            match data {
                Data::Dir => {
                    self.for_each_dir_chunk(ni, n_blocks, &mut dirbuf, |ds, tail| {
                        if tail {
                            self.write_dirents(&mut out, ds)?;
                        }
                        Ok(())
                    })?;
                }
                Data::Symlink(t) if n_blocks == 0 => out.put(t)?,
                Data::Inline(d) if rec.tail > 0 => out.put(&d[d.len() - rec.tail as usize..])?,
                Data::External { .. } if rec.tail > 0 => {
                    for _ in 0..rec.tail / 4 {
                        out.put(&NULL_ADDR.to_le_bytes())?;
                    }
                }
                _ => {}
            }
        }

        // Shared xattr table right after the inodes.
        out.seek(self.inodes_end)?;
        for &id in &self.shared_table {
            self.write_xattr(&mut out, id)?;
        }

        // Data blocks, in the order they were allocated.
        out.seek(data_start)?;
        for &ni in &self.order {
            let n_blocks = self.recs[ni as usize].n_blocks as u64;
            if n_blocks == 0 {
                continue;
            }
            let base = out.pos;
            match self.data(ni) {
                Data::Dir => {
                    let mut b = base;
                    self.for_each_dir_chunk(ni, n_blocks, &mut dirbuf, |ds, tail| {
                        if !tail {
                            out.seek(b)?;
                            self.write_dirents(&mut out, ds)?;
                            b += BLOCK_SIZE;
                        }
                        Ok(())
                    })?;
                }
                Data::External { .. } => {
                    // The chunk index moved out of the inode: a full block
                    // of NULL_ADDR entries (as composefs C writes it).
                    out.put(&[0xff; BLOCK_SIZE as usize])?;
                }
                Data::Inline(d) => {
                    let n = (n_blocks * BLOCK_SIZE).min(d.len() as u64) as usize;
                    out.put(&d[..n])?;
                }
                Data::Symlink(t) => out.put(t)?,
                Data::Empty | Data::Special => {}
            }
            out.seek(base + n_blocks * BLOCK_SIZE)?;
        }
        out.seek(total)?;
        Ok(total)
    }

    fn write_inode_xattrs<W: Write + ?Sized>(
        &self,
        out: &mut Sink<'_, W>,
        ni: u32,
        n_shared: u8,
    ) -> io::Result<()> {
        let ids = self.xattrs_of(ni);
        let mut filter = 0u32;
        let mut buf = [0u8; NAME_BUF];
        for &id in ids {
            let (index, suffix) = xattr_index(self.uview(id).0.flat(&mut buf));
            let bit = crate::format::xxh32(suffix, XATTR_FILTER_SEED + index as u32)
                & (XATTR_FILTER_BITS - 1);
            filter |= 1 << bit;
        }
        let h = XattrIbodyHeader {
            h_name_filter: (XATTR_FILTER_DEFAULT & !filter).into(),
            h_shared_count: n_shared,
            ..Default::default()
        };
        out.put(h.as_bytes())?;
        // The first `n_shared` multi-use xattrs (by name) are shared, the
        // rest inline.
        let xattr_base = self.inodes_end % BLOCK_SIZE;
        let is_shared = |id: u32, count: &mut u8| {
            let shared = self.uniq[id as usize].off != NOT_SHARED && *count < n_shared;
            *count += shared as u8;
            shared
        };
        let mut count = 0u8;
        for &id in ids {
            if is_shared(id, &mut count) {
                let off = self.uniq[id as usize].off;
                out.put(&(((xattr_base + off) / 4) as u32).to_le_bytes())?;
            }
        }
        let mut count = 0u8;
        for &id in ids {
            if !is_shared(id, &mut count) {
                self.write_xattr(out, id)?;
            }
        }
        Ok(())
    }

    fn write_xattr<W: Write + ?Sized>(&self, out: &mut Sink<'_, W>, id: u32) -> io::Result<()> {
        let (name, value) = self.uview(id);
        let mut buf = [0u8; NAME_BUF];
        let (index, suffix) = xattr_index(name.flat(&mut buf));
        let e = XattrEntry {
            e_name_len: suffix.len() as u8,
            e_name_index: index,
            e_value_size: (value.len() as u16).into(),
        };
        out.put(e.as_bytes())?;
        out.put(suffix)?;
        out.put(value.0)?;
        out.put(value.1)?;
        out.seek(round_up(out.pos, 4))
    }

    /// Writes dirents `ds` as one EROFS directory block (entries, then names).
    fn write_dirents<W: Write + ?Sized>(
        &self,
        out: &mut Sink<'_, W>,
        ds: &[DirEnt],
    ) -> io::Result<()> {
        let mut nameoff = (ds.len() * size_of::<Dirent>()) as u64;
        for d in ds {
            let de = Dirent {
                nid: self.recs[d.target as usize].nid.into(),
                nameoff: (nameoff as u16).into(),
                file_type: crate::format::file_type_of_mode(self.mode(d.target)),
                reserved: 0,
            };
            out.put(de.as_bytes())?;
            nameoff += d.name.len() as u64;
        }
        for d in ds {
            out.put(d.name)?;
        }
        Ok(())
    }
}

/// Merges `.`/`..`, a directory's tree entries (sorted, through a
/// permutation when the tree's are not) and the root whiteouts into one
/// name-sorted sequence.
struct DirIter<'p, 'a> {
    dir: u32,
    parent: u32,
    dots: u8,
    entries: &'a [Entry],
    perm: Option<&'p [u32]>,
    ei: usize,
    whiteouts: &'p [u8],
    wi: usize,
    first_whiteout: u32,
}

impl<'a> Iterator for DirIter<'_, 'a> {
    type Item = DirEnt<'a>;

    fn next(&mut self) -> Option<DirEnt<'a>> {
        let dot: Option<&'static [u8]> = match self.dots {
            0 => Some(b"."),
            1 => Some(b".."),
            _ => None,
        };
        let entry: Option<&'a Entry> = (self.ei < self.entries.len()).then(|| {
            let k = self.perm.map_or(self.ei, |p| p[self.ei] as usize);
            &self.entries[k]
        });
        let wo = self
            .whiteouts
            .get(self.wi)
            .map(|&i| whiteout_name(i as usize));
        // Names are unique across the three sources.
        let mut best: Option<&[u8]> = None;
        let mut src = 0;
        for (s, name) in [(0, dot), (1, entry.map(|e| &e.name[..])), (2, wo)] {
            if let Some(name) = name {
                if best.is_none_or(|b| name < b) {
                    best = Some(name);
                    src = s;
                }
            }
        }
        match src {
            _ if best.is_none() => None,
            0 => {
                self.dots += 1;
                Some(DirEnt {
                    name: dot.unwrap(),
                    target: if self.dots == 1 {
                        self.dir
                    } else {
                        self.parent
                    },
                    link: true,
                })
            }
            1 => {
                self.ei += 1;
                let e = entry.unwrap();
                Some(DirEnt {
                    name: &e.name,
                    target: e.inode.0,
                    link: e.hardlink,
                })
            }
            _ => {
                self.wi += 1;
                Some(DirEnt {
                    name: wo.unwrap(),
                    target: self.first_whiteout + self.wi as u32 - 1,
                    link: false,
                })
            }
        }
    }
}

/// The inode's `i_size`.
fn inode_size_field(data: Data, n_blocks: u64, tail: u64) -> u64 {
    match data {
        Data::Dir => n_blocks * BLOCK_SIZE + tail,
        Data::Inline(d) => d.len() as u64,
        Data::External { size } => size,
        Data::Symlink(t) => t.len() as u64,
        Data::Empty | Data::Special => 0,
    }
}

/// Padding to insert before an inode at slot-aligned `pos` so that its inline
/// tail stays within one block; may move the tail out to a data block
/// (composefs C compute_erofs_inode_padding_for_tail).
fn tail_padding(data: Data, n_blocks: &mut u64, tail: &mut u64, pos: u64, head: u64) -> u64 {
    let to_block = round_up(pos, BLOCK_SIZE) - pos;
    if let Data::Symlink(_) = data {
        // Symlinks keep inode and target together in one block when they
        // fit; a target that cannot fit is moved to a block of its own.
        let total = head + *tail;
        if total / BLOCK_SIZE > 0 {
            *n_blocks += 1;
            *tail = 0;
        }
        return if pos / BLOCK_SIZE != (pos + total - 1) / BLOCK_SIZE {
            to_block
        } else {
            0
        };
    }
    let room = BLOCK_SIZE - (pos + head) % BLOCK_SIZE;
    if room >= *tail {
        return 0;
    }
    let pad = round_up(room, SLOT_SIZE);
    let room = BLOCK_SIZE - (pos + head + pad) % BLOCK_SIZE;
    if *tail <= room {
        return pad;
    }
    *n_blocks += 1;
    *tail = 0;
    to_block
}

/// A position-tracking writer: `seek` only moves forward, writing zeros.
struct Sink<'w, W: Write + ?Sized> {
    w: &'w mut W,
    pos: u64,
}

impl<W: Write + ?Sized> Sink<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn seek(&mut self, at: u64) -> io::Result<()> {
        static ZEROS: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
        if at < self.pos {
            return Err(io::Error::other(format!(
                "internal error: image layout goes back from {} to {at}",
                self.pos
            )));
        }
        while self.pos < at {
            let n = (at - self.pos).min(BLOCK_SIZE) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Streams the composefs image for `tree` to `out` and returns its size in
/// bytes: the same bytes composefs C 1.0.8 `mkcomposefs` produces for the
/// equivalent dumpfile and `--min-version/--max-version`.
///
/// The whole layout is computed (and the tree validated) before the first
/// byte is written, so a tree error never leaves partial output. `out`
/// should be buffered (e.g. a [`std::io::BufWriter`]); it is not flushed.
/// See [`write_image`] for the rules, [`ImagePlan`] to separate planning
/// from writing.
pub fn write_image_to(
    tree: &Tree,
    opts: &WriteOptions,
    out: &mut impl Write,
) -> Result<u64, WriteError> {
    let plan = ImagePlan::new(tree, opts)?;
    Ok(plan.write_to(out)?)
}

/// Writes the composefs image for `tree` into memory: the same bytes
/// composefs C 1.0.8 `mkcomposefs` produces for the equivalent dumpfile and
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
    let plan = ImagePlan::new(tree, opts)?;
    let mut buf = Vec::with_capacity(plan.image_size() as usize);
    plan.write_to(&mut buf)?;
    Ok(buf)
}
