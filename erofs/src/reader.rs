//! composefs/EROFS image reader: bytes → tree, rejecting malformed images.
//!
//! Format facts come from the kernel's EROFS documentation and
//! `fs/erofs/erofs_fs.h` (see [`crate::format`]); the overlay xattr rewrite
//! this reader undoes is the one composefs C 1.0.8 applies when writing
//! (`add_overlayfs_xattrs`, `set_overlay_opaque`, `add_overlay_whiteouts` in
//! `lcfs-writer-erofs.c`), and its own reader (`lcfs_build_node_from_image`)
//! was consulted for which xattrs are dropped or unescaped.
//!
//! For composefs images (header at offset 0) the writer's overlayfs rewrite
//! is undone so that reading and writing again gives the same bytes:
//! - `trusted.overlay.metacopy` on a regular file makes it
//!   [`FileData::External`], its digest (after the 4-byte header) the
//!   `verity` (an empty value: none); `trusted.overlay.redirect` minus the
//!   leading `/` is the `redirect`; chunk-based files are external too; other
//!   regular files are [`FileData::Inline`];
//! - escaped `trusted.overlay.overlay.X` becomes `trusted.overlay.X`; other
//!   unescaped `trusted.overlay.*` (the root's `opaque`) were added by the
//!   writer and are dropped;
//! - real char devices 0:0 (the writer's `00`..`ff` root whiteouts) are left
//!   out, like composefs C's reader does; an empty regular file with the
//!   escaped whiteout and `user.overlay.whiteout` (both "") in a directory
//!   with the writer's markers becomes a whiteout (char device 0:0) again and
//!   the markers are dropped (see `Reader::restore_whiteouts`);
//! - each inode's home entry is chosen so that the writer's inode order
//!   reproduces the image's nid order (see `assign_homes`).
//!
//! Plain EROFS images (no composefs header, `version` 0, e.g. from
//! `mkfs.erofs`) are read as stored: xattrs untouched, file data inline.
//!
//! The input is untrusted: every offset is bounds-checked with overflow-safe
//! arithmetic, every directory may be visited once (so loops are rejected),
//! and the bytes the tree may hold are capped relative to the image length
//! (see [`alloc_budget`]), so a small hostile image cannot make the reader
//! allocate without bound. Errors name the inode (nid) or offset at fault.

use std::collections::{HashMap, VecDeque};

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::format::{
    ComposefsHeader, Dirent, InodeCompact, InodeExtended, Superblock, XattrEntry, XattrIbodyHeader,
    BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES,
    COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC, I_DATALAYOUT_BIT, I_DATALAYOUT_MASK, I_VERSION_MASK,
    LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, NULL_ADDR, SLOT_BITS,
    SUPER_MAGIC_V1, SUPER_OFFSET, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG,
    XATTR_LONG_PREFIX, XATTR_PREFIXES,
};
use crate::tree::{
    check_name, mode_is_valid, Content, Entry, File, FileData, Inode, InodeId, Stat, Timespec,
    Tree, TreeError, Xattr, NAME_MAX, SYMLINK_MAX,
};

/// A parsed image.
#[derive(Debug, Clone)]
pub struct ReadImage {
    pub tree: Tree,
    /// composefs format version from the header (0 or 1); 0 for a plain
    /// EROFS image without a composefs header.
    pub version: u32,
}

/// Why an image could not be read. Messages name the inode (`nid`) or the
/// byte offset where the problem was found.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("image is {len} bytes, too short for an EROFS superblock")]
    TooShort { len: usize },
    #[error("not an EROFS image: bad superblock magic {found:#010x} at offset 1024")]
    BadMagic { found: u32 },
    #[error("unsupported composefs header version {0} (expected 1)")]
    HeaderVersion(u32),
    #[error("unsupported composefs format version {0} (supported: 0 and 1)")]
    FormatVersion(u32),
    #[error("unsupported block size 2^{0} (only 4096-byte blocks are supported)")]
    BlockSize(u8),
    #[error("{}{what} at offset {offset:#x} (+{len} bytes) lies outside the {image_len}-byte image", nid_prefix(.nid))]
    OutOfBounds {
        nid: Option<u64>,
        what: &'static str,
        offset: u64,
        len: u64,
        image_len: u64,
    },
    #[error("inode nid {nid} (offset {offset:#x}): {reason}")]
    Inode {
        nid: u64,
        offset: u64,
        reason: String,
    },
    #[error("inode nid {nid}: unsupported {what}")]
    Unsupported { nid: u64, what: String },
    #[error("directory nid {dir}, entry {name:?}: {reason}")]
    Entry {
        dir: u64,
        name: String,
        reason: String,
    },
    #[error("directory nid {dir}, block {block}: {reason}")]
    DirBlock {
        dir: u64,
        block: u64,
        reason: String,
    },
    #[error("image would expand to more than {limit} bytes of tree data (hostile image?)")]
    TooLarge { limit: u64 },
    #[error("image describes an invalid tree: {0}")]
    Tree(#[from] TreeError),
}

fn nid_prefix(nid: &Option<u64>) -> String {
    match nid {
        Some(n) => format!("inode nid {n}: "),
        None => String::new(),
    }
}

type Result<T> = std::result::Result<T, ReadError>;

/// An xattr as stored: full name, value, shared xattr id (None when inline).
pub(crate) type RawXattr = (Vec<u8>, Vec<u8>, Option<u32>);

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
const WHITEOUT_UNESCAPED: &[u8] = b"trusted.overlay.whiteout";
// Names after unescaping (`trusted.overlay.overlay.X` → `trusted.overlay.X`).
const WHITEOUTS_UNESCAPED: &[u8] = b"trusted.overlay.whiteouts";
const OPAQUE_UNESCAPED: &[u8] = b"trusted.overlay.opaque";
const USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
const USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";

/// Per-entry bookkeeping overhead charged against the budget, so images made
/// of many tiny things are bounded too.
const OVERHEAD: u64 = 64;

/// How many bytes of names, xattrs, file data and bookkeeping the tree read
/// from an image of `image_len` bytes may hold. Shared xattrs legitimately
/// expand (one 4-byte reference per inode to a stored name/value), hence the
/// factor; a real image stays far below it.
pub fn alloc_budget(image_len: usize) -> u64 {
    (16 << 20) + 32 * image_len as u64
}

/// Parses an image into a tree. Accepts composefs images (header at offset 0,
/// the overlay xattr rewrite undone) and plain EROFS images (xattrs as
/// stored, `version` 0).
pub fn read_image(bytes: &[u8]) -> Result<ReadImage> {
    let mut r = Reader::new(bytes)?;
    r.walk()?;
    r.finish()
}

/// One parsed on-disk inode header.
#[derive(Debug, Clone)]
pub(crate) struct RawInode {
    pub(crate) nid: u64,
    pub(crate) offset: u64,
    /// Size of the inode core (32 or 64).
    pub(crate) isize: u64,
    pub(crate) layout: u16,
    pub(crate) xattr_icount: u16,
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) size: u64,
    /// `i_u`: raw block address, rdev or chunk info depending on type/layout.
    pub(crate) i_u: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: Timespec,
}

impl RawInode {
    fn xattr_size(&self) -> u64 {
        crate::format::xattr_ibody_size(self.xattr_icount) as u64
    }

    fn err(&self, reason: impl Into<String>) -> ReadError {
        ReadError::Inode {
            nid: self.nid,
            offset: self.offset,
            reason: reason.into(),
        }
    }
}

/// What a nid turned out to be.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Inode(InodeId),
    /// A real overlay whiteout (char device 0:0) in a composefs image: the
    /// writer's additions, left out of the tree like composefs C does.
    Skipped,
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    image_len: u64,
    meta_base: u64,
    xattr_base: u64,
    build_time: Timespec,
    pub(crate) root_nid: u64,
    /// composefs header present: undo the overlay xattr rewrite.
    pub(crate) composefs: bool,
    pub(crate) version: u32,
    budget: u64,
    limit: u64,
    tree: Tree,
    /// nid of each tree inode.
    nids: Vec<u64>,
    /// Whether each tree inode may be a whiteout stored as an escaped regular
    /// file (see `Reader::restore_whiteouts`).
    whiteout: Vec<bool>,
    seen: HashMap<u64, Seen>,
    /// Skipped whiteouts in the root directory (name, nid), for [`assign_homes`].
    phantoms: Vec<(Vec<u8>, u64)>,
    shared_cache: HashMap<u32, (Vec<u8>, Vec<u8>)>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self> {
        let image_len = bytes.len() as u64;
        let sb_end = SUPER_OFFSET as usize + size_of::<Superblock>();
        if bytes.len() < sb_end {
            return Err(ReadError::TooShort { len: bytes.len() });
        }
        let header = ComposefsHeader::read_from_bytes(&bytes[..size_of::<ComposefsHeader>()])
            .map_err(|_| ReadError::TooShort { len: bytes.len() })?;
        let sb = Superblock::read_from_bytes(&bytes[SUPER_OFFSET as usize..sb_end])
            .map_err(|_| ReadError::TooShort { len: bytes.len() })?;
        if sb.magic.get() != SUPER_MAGIC_V1 {
            return Err(ReadError::BadMagic {
                found: sb.magic.get(),
            });
        }
        let (composefs, version) = if header.magic.get() == COMPOSEFS_MAGIC {
            if header.version.get() != COMPOSEFS_HEADER_VERSION {
                return Err(ReadError::HeaderVersion(header.version.get()));
            }
            let v = header.composefs_version.get();
            if v > 1 {
                return Err(ReadError::FormatVersion(v));
            }
            (true, v)
        } else {
            (false, 0)
        };
        if sb.blkszbits != BLOCK_BITS {
            return Err(ReadError::BlockSize(sb.blkszbits));
        }
        let meta_base = u64::from(sb.meta_blkaddr.get()) << BLOCK_BITS;
        let xattr_base = u64::from(sb.xattr_blkaddr.get()) << BLOCK_BITS;
        if meta_base >= image_len {
            return Err(ReadError::OutOfBounds {
                nid: None,
                what: "inode metadata area (superblock meta_blkaddr)",
                offset: meta_base,
                len: 0,
                image_len,
            });
        }
        let limit = alloc_budget(bytes.len());
        Ok(Reader {
            bytes,
            image_len,
            meta_base,
            xattr_base,
            build_time: Timespec {
                // The on-disk field is unsigned; composefs stores the (possibly
                // negative) minimum mtime in it, so reinterpret.
                sec: sb.build_time.get() as i64,
                nsec: sb.build_time_nsec.get(),
            },
            root_nid: u64::from(sb.root_nid.get()),
            composefs,
            version,
            budget: limit,
            limit,
            tree: Tree { inodes: Vec::new() },
            nids: Vec::new(),
            whiteout: Vec::new(),
            seen: HashMap::new(),
            phantoms: Vec::new(),
            shared_cache: HashMap::new(),
        })
    }

    fn charge(&mut self, n: u64) -> Result<()> {
        match self.budget.checked_sub(n.saturating_add(OVERHEAD)) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => Err(ReadError::TooLarge { limit: self.limit }),
        }
    }

    /// `len` bytes at `offset`, or an error naming `what`.
    fn get(&self, nid: Option<u64>, what: &'static str, offset: u64, len: u64) -> Result<&'a [u8]> {
        let bytes: &'a [u8] = self.bytes;
        match offset.checked_add(len) {
            Some(end) if end <= self.image_len => Ok(&bytes[offset as usize..end as usize]),
            _ => Err(ReadError::OutOfBounds {
                nid,
                what,
                offset,
                len,
                image_len: self.image_len,
            }),
        }
    }

    fn get_struct<T: FromBytes + KnownLayout + Immutable>(
        &self,
        nid: Option<u64>,
        what: &'static str,
        offset: u64,
    ) -> Result<T> {
        let s = self.get(nid, what, offset, size_of::<T>() as u64)?;
        T::read_from_bytes(s).map_err(|_| ReadError::OutOfBounds {
            nid,
            what,
            offset,
            len: size_of::<T>() as u64,
            image_len: self.image_len,
        })
    }

    fn inode_offset(&self, nid: u64) -> Result<u64> {
        nid.checked_mul(1 << SLOT_BITS)
            .and_then(|o| o.checked_add(self.meta_base))
            .ok_or(ReadError::OutOfBounds {
                nid: Some(nid),
                what: "inode",
                offset: u64::MAX,
                len: 0,
                image_len: self.image_len,
            })
    }

    pub(crate) fn read_raw_inode(&self, nid: u64) -> Result<RawInode> {
        let offset = self.inode_offset(nid)?;
        let c: InodeCompact = self.get_struct(Some(nid), "inode", offset)?;
        let format = c.i_format.get();
        let layout = (format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK;
        let raw = if format & I_VERSION_MASK == 0 {
            RawInode {
                nid,
                offset,
                isize: size_of::<InodeCompact>() as u64,
                layout,
                xattr_icount: c.i_xattr_icount.get(),
                mode: u32::from(c.i_mode.get()),
                nlink: u32::from(c.i_nlink.get()),
                size: u64::from(c.i_size.get()),
                i_u: c.i_u.get(),
                uid: u32::from(c.i_uid.get()),
                gid: u32::from(c.i_gid.get()),
                mtime: self.build_time,
            }
        } else {
            let e: InodeExtended = self.get_struct(Some(nid), "extended inode", offset)?;
            RawInode {
                nid,
                offset,
                isize: size_of::<InodeExtended>() as u64,
                layout,
                xattr_icount: e.i_xattr_icount.get(),
                mode: u32::from(e.i_mode.get()),
                nlink: e.i_nlink.get(),
                size: e.i_size.get(),
                i_u: e.i_u.get(),
                uid: e.i_uid.get(),
                gid: e.i_gid.get(),
                mtime: Timespec {
                    sec: e.i_mtime.get() as i64,
                    nsec: e.i_mtime_nsec.get(),
                },
            }
        };
        if !mode_is_valid(raw.mode) {
            return Err(raw.err(format!("mode {:#o} has an unknown file type", raw.mode)));
        }
        // The inline xattr area must lie in the image too.
        self.get(
            Some(nid),
            "inline xattr area",
            offset + raw.isize,
            raw.xattr_size(),
        )?;
        Ok(raw)
    }

    /// The bytes of a flat (plain or inline) inode's data as (block part,
    /// inline tail). Per the kernel's flat-mode mapping, an inline inode keeps
    /// all but its last block in blocks from `raw_blkaddr` and the rest right
    /// after its xattrs, within the inode's own metadata block.
    pub(crate) fn flat_data(&self, ino: &RawInode) -> Result<(&'a [u8], &'a [u8])> {
        let nid = Some(ino.nid);
        match ino.layout {
            LAYOUT_FLAT_PLAIN => {
                if ino.size == 0 {
                    return Ok((&[], &[]));
                }
                let off = u64::from(ino.i_u) << BLOCK_BITS;
                Ok((self.get(nid, "data blocks", off, ino.size)?, &[]))
            }
            LAYOUT_FLAT_INLINE => {
                let nblocks = ino.size.div_ceil(BLOCK_SIZE);
                let head_len = nblocks.saturating_sub(1) * BLOCK_SIZE;
                let tail_len = ino.size - head_len;
                let head = if head_len > 0 {
                    let off = u64::from(ino.i_u) << BLOCK_BITS;
                    self.get(nid, "data blocks", off, head_len)?
                } else {
                    &[]
                };
                let tail_off = ino.offset + ino.isize + ino.xattr_size();
                if tail_off % BLOCK_SIZE + tail_len > BLOCK_SIZE {
                    return Err(ino.err(format!(
                        "inline data ({tail_len} bytes at offset {tail_off:#x}) crosses a block boundary"
                    )));
                }
                let tail = self.get(nid, "inline data", tail_off, tail_len)?;
                Ok((head, tail))
            }
            LAYOUT_CHUNK_BASED => Err(ReadError::Unsupported {
                nid: ino.nid,
                what: "chunk-based layout for this file type".into(),
            }),
            other => Err(ReadError::Unsupported {
                nid: ino.nid,
                what: format!("data layout {other} (compressed images are not supported)"),
            }),
        }
    }

    fn flat_bytes(&mut self, ino: &RawInode) -> Result<Vec<u8>> {
        let (head, tail) = self.flat_data(ino)?;
        self.charge(ino.size)?;
        let mut v = Vec::with_capacity(head.len() + tail.len());
        v.extend_from_slice(head);
        v.extend_from_slice(tail);
        Ok(v)
    }

    /// The data of a chunk-based file in a plain EROFS image (composefs
    /// uses chunk-based files only for external data). Per `erofs_fs.h`, the
    /// chunk table follows the inode's xattrs, aligned to its entry size:
    /// 4-byte block addresses, or 8-byte indexes (advise, device id, block
    /// address) when `CHUNK_FORMAT_INDEXES` is set; `NULL_ADDR` is a hole.
    fn chunk_bytes(&mut self, ino: &RawInode) -> Result<Vec<u8>> {
        let nid = Some(ino.nid);
        let format = (ino.i_u & 0xffff) as u16;
        if format & !(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES) != 0 {
            return Err(ReadError::Unsupported {
                nid: ino.nid,
                what: format!("chunk format {format:#x}"),
            });
        }
        let chunk_bits = u32::from(BLOCK_BITS) + u32::from(format & CHUNK_FORMAT_BLKBITS_MASK);
        let chunk_size = 1u64 << chunk_bits;
        let unit: u64 = if format & CHUNK_FORMAT_INDEXES != 0 {
            8
        } else {
            4
        };
        let n = ino.size.div_ceil(chunk_size);
        let base = (ino.offset + ino.isize + ino.xattr_size()).next_multiple_of(unit);
        let table_len = n.saturating_mul(unit);
        let table = self.get(nid, "chunk table", base, table_len)?;
        self.charge(ino.size)?;
        let mut out = Vec::with_capacity(ino.size as usize);
        for (i, e) in table.chunks_exact(unit as usize).enumerate() {
            let (device, blkaddr) = if unit == 8 {
                (
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            } else {
                (0, u32::from_le_bytes([e[0], e[1], e[2], e[3]]))
            };
            let len = chunk_size.min(ino.size - i as u64 * chunk_size);
            if blkaddr == NULL_ADDR {
                out.resize(out.len() + len as usize, 0);
            } else if device != 0 {
                return Err(ReadError::Unsupported {
                    nid: ino.nid,
                    what: format!("chunk on extra device {device}"),
                });
            } else {
                let off = u64::from(blkaddr) << BLOCK_BITS;
                out.extend_from_slice(self.get(nid, "chunk data", off, len)?);
            }
        }
        Ok(out)
    }

    /// Decodes one xattr entry at `offset`, returning (full name, value, entry length).
    fn xattr_entry(
        &mut self,
        nid: u64,
        what: &'static str,
        offset: u64,
    ) -> Result<(Vec<u8>, Vec<u8>, u64)> {
        let e: XattrEntry = self.get_struct(Some(nid), what, offset)?;
        let name_len = u64::from(e.e_name_len);
        let value_len = u64::from(e.e_value_size.get());
        let body = self.get(Some(nid), what, offset + 4, name_len + value_len)?;
        let index = e.e_name_index;
        if index & XATTR_LONG_PREFIX != 0 {
            return Err(ReadError::Unsupported {
                nid,
                what: format!("long xattr name prefix (index {index:#x}) at offset {offset:#x}"),
            });
        }
        let Some(prefix) = XATTR_PREFIXES.get(index as usize) else {
            return Err(ReadError::Inode {
                nid,
                offset,
                reason: format!("unknown xattr name index {index}"),
            });
        };
        let (suffix, value) = body.split_at(name_len as usize);
        let mut name = Vec::with_capacity(prefix.len() + suffix.len());
        name.extend_from_slice(prefix);
        name.extend_from_slice(suffix);
        if name.is_empty() || name.contains(&0) {
            return Err(ReadError::Inode {
                nid,
                offset,
                reason: "xattr with an empty name or a NUL byte in its name".into(),
            });
        }
        self.charge(name.len() as u64 + value_len)?;
        Ok((name, value.to_vec(), 4 + name_len + value_len))
    }

    /// All xattrs of an inode, inline then shared, with their stored names.
    /// Shared ones carry their shared xattr id.
    pub(crate) fn raw_xattrs(&mut self, ino: &RawInode) -> Result<Vec<RawXattr>> {
        let size = ino.xattr_size();
        if size == 0 {
            return Ok(Vec::new());
        }
        let start = ino.offset + ino.isize;
        let end = start + size;
        let h: XattrIbodyHeader = self.get_struct(Some(ino.nid), "xattr header", start)?;
        let shared = u64::from(h.h_shared_count);
        let ids_off = start + size_of::<XattrIbodyHeader>() as u64;
        let mut pos = ids_off + 4 * shared;
        if pos > end {
            return Err(ino.err(format!(
                "{shared} shared xattr ids do not fit the {size}-byte xattr area"
            )));
        }
        let mut out = Vec::new();
        // Inline entries, each padded to 4 bytes, fill the rest of the area.
        while pos < end {
            let (name, value, len) = self.xattr_entry(ino.nid, "inline xattr", pos)?;
            let next = pos + len.div_ceil(4) * 4;
            if next > end {
                return Err(ino.err(format!(
                    "inline xattr at offset {pos:#x} runs past the xattr area end {end:#x}"
                )));
            }
            out.push((name, value, None));
            pos = next;
        }
        for i in 0..shared {
            let b = self.get(Some(ino.nid), "shared xattr id", ids_off + 4 * i, 4)?;
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let (name, value) = match self.shared_cache.get(&id) {
                Some((n, v)) => {
                    let (n, v) = (n.clone(), v.clone());
                    self.charge((n.len() + v.len()) as u64)?;
                    (n, v)
                }
                None => {
                    let off = self
                        .xattr_base
                        .checked_add(u64::from(id) * 4)
                        .ok_or_else(|| ino.err("shared xattr offset overflows"))?;
                    let (n, v, _) = self.xattr_entry(ino.nid, "shared xattr", off)?;
                    self.shared_cache.insert(id, (n.clone(), v.clone()));
                    (n, v)
                }
            };
            out.push((name, value, Some(id)));
        }
        Ok(out)
    }

    /// Parses the inode at `nid` and adds it to the tree (directories without
    /// their entries yet). Returns `Seen::Skipped` for composefs' real whiteouts.
    fn load_inode(&mut self, nid: u64) -> Result<Seen> {
        let ino = self.read_raw_inode(nid)?;
        let ftype = ino.mode & S_IFMT;
        let rdev = if ftype == S_IFCHR || ftype == S_IFBLK {
            u64::from(ino.i_u)
        } else {
            0
        };
        if self.composefs && ftype == S_IFCHR && rdev == 0 {
            return Ok(Seen::Skipped);
        }
        let raw = self.raw_xattrs(&ino)?;
        let stat = Stat {
            mode: ino.mode,
            uid: ino.uid,
            gid: ino.gid,
            nlink: ino.nlink,
            mtime: ino.mtime,
            rdev,
        };
        let mut xattrs = Vec::with_capacity(raw.len());
        let mut metacopy = None;
        let mut redirect = None;
        for (name, value, _) in raw {
            if !self.composefs {
                xattrs.push(Xattr { name, value });
                continue;
            }
            // Undo composefs' rewrite (lcfs-writer-erofs.c, add_overlayfs_xattrs).
            if name == METACOPY {
                if ftype == S_IFREG {
                    metacopy = Some(value);
                }
            } else if name == REDIRECT {
                if ftype == S_IFREG {
                    redirect = Some(value);
                }
            } else if let Some(rest) = name.strip_prefix(ESCAPED_PREFIX) {
                let mut n = OVERLAY_PREFIX.to_vec();
                n.extend_from_slice(rest);
                xattrs.push(Xattr { name: n, value });
            } else if name.starts_with(OVERLAY_PREFIX) {
                // Unescaped trusted.overlay.* other than the above were added
                // by the writer (e.g. the root's opaque marker): drop.
            } else {
                xattrs.push(Xattr { name, value });
            }
        }
        let content = match ftype {
            S_IFDIR => Content::Directory(Vec::new()),
            S_IFLNK => {
                if ino.size == 0 || ino.size > SYMLINK_MAX as u64 {
                    return Err(ino.err(format!(
                        "symlink target length {} is not in 1..={SYMLINK_MAX}",
                        ino.size
                    )));
                }
                let target = self.flat_bytes(&ino)?;
                if target.contains(&0) {
                    return Err(ino.err("symlink target contains a NUL byte"));
                }
                Content::Symlink(target)
            }
            S_IFREG => {
                let external = metacopy.is_some()
                    || redirect.is_some()
                    || (ino.layout == LAYOUT_CHUNK_BASED && ino.size > 0);
                let data = if !self.composefs && ino.layout == LAYOUT_CHUNK_BASED {
                    FileData::Inline(self.chunk_bytes(&ino)?)
                } else if external {
                    if ino.layout != LAYOUT_CHUNK_BASED
                        && ino.layout != LAYOUT_FLAT_PLAIN
                        && ino.layout != LAYOUT_FLAT_INLINE
                    {
                        return Err(ReadError::Unsupported {
                            nid,
                            what: format!("data layout {}", ino.layout),
                        });
                    }
                    let verity = match metacopy {
                        None => None,
                        Some(v) if v.is_empty() => None,
                        // 4-byte header (version, length, flags, algorithm),
                        // then the digest (SHA-256 or SHA-512).
                        Some(v) if v.len() == 4 + 32 || v.len() == 4 + 64 => Some(v[4..].to_vec()),
                        Some(v) => {
                            return Err(ino.err(format!(
                                "trusted.overlay.metacopy value has unexpected length {}",
                                v.len()
                            )))
                        }
                    };
                    let redirect = redirect.map(|r| match r.strip_prefix(b"/") {
                        Some(rest) => rest.to_vec(),
                        None => r,
                    });
                    FileData::External { redirect, verity }
                } else {
                    FileData::Inline(self.flat_bytes(&ino)?)
                };
                Content::Regular(File {
                    size: ino.size,
                    data,
                })
            }
            _ => Content::Special,
        };
        // The writer stores a whiteout (char device 0:0) as an empty regular
        // file with both whiteout xattrs set to ""; whether this one is such
        // a whiteout is decided once its parent's markers are known.
        let candidate = self.composefs
            && ftype == S_IFREG
            && ino.size == 0
            && has_xattr(&xattrs, WHITEOUT_UNESCAPED, b"")
            && has_xattr(&xattrs, USER_WHITEOUT, b"");
        self.charge(OVERHEAD)?;
        let id = self.tree.push_inode(Inode {
            stat,
            xattrs,
            content,
        });
        self.nids.push(nid);
        self.whiteout.push(candidate);
        Ok(Seen::Inode(id))
    }

    /// Reads every directory block of `dir` and returns its (name, nid)
    /// pairs; `.` and `..` only when `dots` is set.
    pub(crate) fn read_dir(&mut self, dir_nid: u64, dots: bool) -> Result<Vec<(Vec<u8>, u64)>> {
        let ino = self.read_raw_inode(dir_nid)?;
        let (head, tail) = self.flat_data(&ino)?;
        let nblocks = ino.size.div_ceil(BLOCK_SIZE);
        let mut out = Vec::new();
        for b in 0..nblocks {
            let start = b * BLOCK_SIZE;
            let block = if start < head.len() as u64 {
                let end = (start + BLOCK_SIZE).min(head.len() as u64);
                &head[start as usize..end as usize]
            } else {
                tail
            };
            self.read_dir_block(dir_nid, b, block, dots, &mut out)?;
        }
        Ok(out)
    }

    fn read_dir_block(
        &mut self,
        dir: u64,
        block_no: u64,
        block: &[u8],
        dots: bool,
        out: &mut Vec<(Vec<u8>, u64)>,
    ) -> Result<()> {
        let bad = |reason: String| ReadError::DirBlock {
            dir,
            block: block_no,
            reason,
        };
        let de_size = size_of::<Dirent>();
        let dirent = |i: usize| -> Result<Dirent> {
            block
                .get(i * de_size..(i + 1) * de_size)
                .and_then(|s| Dirent::read_from_bytes(s).ok())
                .ok_or_else(|| bad(format!("dirent {i} lies past the block end")))
        };
        let first = dirent(0)?;
        let names_start = first.nameoff.get() as usize;
        let count = names_start / de_size;
        if count == 0 || count * de_size != names_start || names_start > block.len() {
            return Err(bad(format!(
                "first name offset {names_start} is not a multiple of {de_size} within the {}-byte block",
                block.len()
            )));
        }
        for i in 0..count {
            let d = dirent(i)?;
            let off = d.nameoff.get() as usize;
            let end = if i + 1 < count {
                dirent(i + 1)?.nameoff.get() as usize
            } else {
                block.len()
            };
            if off < names_start || off >= end || end > block.len() {
                return Err(bad(format!(
                    "name {i} has invalid bounds {off}..{end} (names start at {names_start}, block is {} bytes)",
                    block.len()
                )));
            }
            let mut name = &block[off..end];
            if i + 1 == count {
                // The last name runs to the block end or a NUL.
                if let Some(z) = name.iter().position(|&c| c == 0) {
                    name = &name[..z];
                }
            }
            if name == b"." || name == b".." {
                if dots {
                    out.push((name.to_vec(), d.nid.get()));
                }
                continue;
            }
            if name.len() > NAME_MAX {
                return Err(bad(format!("name {i} is {} bytes long", name.len())));
            }
            if let Err(why) = check_name(name) {
                return Err(ReadError::Entry {
                    dir,
                    name: String::from_utf8_lossy(name).into_owned(),
                    reason: format!("invalid name ({why})"),
                });
            }
            self.charge(name.len() as u64)?;
            out.push((name.to_vec(), d.nid.get()));
        }
        Ok(())
    }

    fn walk(&mut self) -> Result<()> {
        let root_nid = self.root_nid;
        match self.load_inode(root_nid)? {
            Seen::Inode(id) if self.tree.inodes[id.index()].is_dir() => {
                self.seen.insert(root_nid, Seen::Inode(id));
            }
            _ => {
                return Err(ReadError::Inode {
                    nid: root_nid,
                    offset: self.inode_offset(root_nid)?,
                    reason: "root inode is not a directory".into(),
                })
            }
        }
        let mut queue = VecDeque::from([(InodeId::ROOT, root_nid)]);
        while let Some((dir_id, dir_nid)) = queue.pop_front() {
            let children = self.read_dir(dir_nid, false)?;
            let mut entries = Vec::with_capacity(children.len());
            for (name, nid) in children {
                let id = match self.seen.get(&nid) {
                    Some(Seen::Skipped) => {
                        if dir_id == InodeId::ROOT {
                            self.phantoms.push((name, nid));
                        }
                        continue;
                    }
                    Some(Seen::Inode(id)) => {
                        if self.tree.inodes[id.index()].is_dir() {
                            return Err(ReadError::Entry {
                                dir: dir_nid,
                                name: String::from_utf8_lossy(&name).into_owned(),
                                reason: format!(
                                    "directory nid {nid} is reached a second time (loop or directory hard link)"
                                ),
                            });
                        }
                        *id
                    }
                    None => {
                        let seen = self.load_inode(nid)?;
                        self.seen.insert(nid, seen);
                        match seen {
                            Seen::Skipped => {
                                if dir_id == InodeId::ROOT {
                                    self.phantoms.push((name, nid));
                                }
                                continue;
                            }
                            Seen::Inode(id) => {
                                if self.tree.inodes[id.index()].is_dir() {
                                    queue.push_back((id, nid));
                                }
                                id
                            }
                        }
                    }
                };
                entries.push(Entry {
                    name,
                    inode: id,
                    hardlink: false,
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
                return Err(ReadError::Entry {
                    dir: dir_nid,
                    name: String::from_utf8_lossy(&w[0].name).into_owned(),
                    reason: "duplicate directory entry".into(),
                });
            }
            self.tree.inodes[dir_id.index()].content = Content::Directory(entries);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ReadImage> {
        let marked: Vec<bool> = (0..self.tree.inodes.len())
            .map(|d| self.composefs && self.has_whiteout_markers(d))
            .collect();
        // A possible whiteout's home should be in a marked directory, as the
        // writer marks the home directory of each whiteout.
        let candidate = &self.whiteout;
        let prefer = |t: usize, dir: usize| !candidate[t] || marked[dir];
        assign_homes(&mut self.tree, &self.nids, &self.phantoms, &prefer);
        if self.composefs {
            self.restore_whiteouts(&marked);
        }
        self.tree.validate()?;
        Ok(ReadImage {
            tree: self.tree,
            version: self.version,
        })
    }

    /// Turns the writer's escaped whiteouts back into char devices 0:0 and
    /// drops the markers the writer puts on their directory (`whiteouts` in
    /// both namespaces, and from version 1 the `opaque` "x" pair). A
    /// candidate file (see `load_inode`) is taken for a whiteout only when
    /// its home directory carries all those markers, as every writer-made
    /// whiteout's directory does; otherwise the file and the directory keep
    /// their xattrs, which then came from the source tree.
    fn restore_whiteouts(&mut self, marked: &[bool]) {
        let v1 = self.version >= 1;
        for d in (0..self.tree.inodes.len()).filter(|&d| marked[d]) {
            let dir = &self.tree.inodes[d];
            let whiteouts: Vec<InodeId> = dir
                .entries()
                .iter()
                .filter(|e| !e.hardlink && self.whiteout[e.inode.index()])
                .map(|e| e.inode)
                .collect();
            if whiteouts.is_empty() {
                continue;
            }
            for id in whiteouts {
                let w = &mut self.tree.inodes[id.index()];
                w.stat.mode = (w.stat.mode & !S_IFMT) | S_IFCHR;
                w.stat.rdev = 0;
                w.content = Content::Special;
                w.xattrs
                    .retain(|x| x.name != WHITEOUT_UNESCAPED && x.name != USER_WHITEOUT);
            }
            self.tree.inodes[d].xattrs.retain(|x| {
                let n = x.name.as_slice();
                !(n == WHITEOUTS_UNESCAPED
                    || n == USER_WHITEOUTS
                    || (v1 && (n == OPAQUE_UNESCAPED || n == USER_OPAQUE)))
            });
        }
    }
}

impl Reader<'_> {
    /// Whether directory `d` carries every marker the writer puts on a
    /// directory holding whiteouts.
    fn has_whiteout_markers(&self, d: usize) -> bool {
        let dir = &self.tree.inodes[d];
        dir.is_dir()
            && has_xattr(&dir.xattrs, WHITEOUTS_UNESCAPED, b"")
            && has_xattr(&dir.xattrs, USER_WHITEOUTS, b"")
            && (self.version < 1
                || (has_xattr(&dir.xattrs, OPAQUE_UNESCAPED, b"x")
                    && has_xattr(&dir.xattrs, USER_OPAQUE, b"x")))
    }
}

fn has_xattr(xattrs: &[Xattr], name: &[u8], value: &[u8]) -> bool {
    xattrs.iter().any(|x| x.name == name && x.value == value)
}

/// Chooses each inode's home entry. composefs writers store inodes in
/// breadth-first order over home entries with children sorted by name, so
/// walking the tree that way, an entry is the home of its inode exactly when
/// that inode is the next one (by nid) not yet placed. The root's real
/// whiteouts, left out of the tree but re-added by the writer at the same
/// names, take part in the walk as placeholders (`phantoms`: name, nid), since
/// they hold nids between the tree's inodes.
///
/// Several entries of an inode can qualify when no other inode is placed
/// between them in the walk; they give the same nid order, and the earliest
/// is taken unless `prefer(inode, dir)` rejects its directory and a later
/// qualifying entry's directory is preferred (whiteouts: the writer marks the
/// home's directory). If the image does not follow that order (e.g.
/// mkfs.erofs output), the first entry seen in the same walk becomes the
/// home instead.
fn assign_homes(
    tree: &mut Tree,
    nids: &[u64],
    phantoms: &[(Vec<u8>, u64)],
    prefer: &dyn Fn(usize, usize) -> bool,
) {
    if !assign_homes_by_nid(tree, nids, phantoms, prefer) {
        assign_homes_first_seen(tree);
    }
}

/// One entry of the breadth-first walk: directory, index in its entries
/// (`None` for a phantom), target slot (tree inode, or `n + j` for phantom j).
type WalkEntry = (usize, Option<usize>, usize);

fn assign_homes_by_nid(
    tree: &mut Tree,
    nids: &[u64],
    phantoms: &[(Vec<u8>, u64)],
    prefer: &dyn Fn(usize, usize) -> bool,
) -> bool {
    let n = tree.inodes.len();
    let total = n + phantoms.len();
    let nid_of = |i: usize| if i < n { nids[i] } else { phantoms[i - n].1 };
    let is_dir: Vec<bool> = tree.inodes.iter().map(|i| i.is_dir()).collect();
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by_key(|&i| nid_of(i));
    if order.first() != Some(&0) {
        return false;
    }
    // Directories have exactly one entry, so the walk over all entries is
    // fixed whatever the homes of other inodes are.
    let mut walk: Vec<WalkEntry> = Vec::new();
    let mut queue = VecDeque::from([0usize]);
    while let Some(d) = queue.pop_front() {
        let mut items: Vec<(&[u8], Option<usize>, usize)> = tree.inodes[d]
            .entries()
            .iter()
            .enumerate()
            .map(|(k, e)| (e.name.as_slice(), Some(k), e.inode.index()))
            .collect();
        if d == 0 && !phantoms.is_empty() {
            items.extend(
                phantoms
                    .iter()
                    .enumerate()
                    .map(|(j, (name, _))| (name.as_slice(), None, n + j)),
            );
            items.sort_by(|a, b| a.0.cmp(b.0));
        }
        for (_, k, t) in items {
            if t < n && is_dir[t] {
                queue.push_back(t);
            }
            walk.push((d, k, t));
        }
    }
    // Greedy: the earliest entry of the next inode in nid order is its home.
    let mut home = vec![usize::MAX; total];
    let mut next = 1;
    for (p, &(_, _, t)) in walk.iter().enumerate() {
        if next < total && order[next] == t {
            home[t] = p;
            next += 1;
        } else if t >= n || is_dir[t] {
            // Directories and phantoms have a single entry: it must be home.
            return false;
        }
    }
    if next != total {
        return false;
    }
    // Move a home later within its window when that suits `prefer`.
    for k in 1..total {
        let t = order[k];
        let p = home[t];
        if t >= n || prefer(t, walk[p].0) {
            continue;
        }
        let end = if k + 1 < total {
            home[order[k + 1]]
        } else {
            walk.len()
        };
        if let Some(q) = (p + 1..end).find(|&q| walk[q].2 == t && prefer(t, walk[q].0)) {
            home[t] = q;
        }
    }
    for (p, &(d, k, t)) in walk.iter().enumerate() {
        if let (Some(k), Content::Directory(entries)) = (k, &mut tree.inodes[d].content) {
            entries[k].hardlink = home[t] != p;
        }
    }
    true
}

/// Fallback: the first entry seen in a breadth-first walk (children in name
/// order) is the home.
fn assign_homes_first_seen(tree: &mut Tree) {
    let n = tree.inodes.len();
    let is_dir: Vec<bool> = tree.inodes.iter().map(|i| i.is_dir()).collect();
    let mut placed = vec![false; n];
    placed[0] = true;
    let mut queue = VecDeque::from([0usize]);
    while let Some(d) = queue.pop_front() {
        if let Content::Directory(entries) = &mut tree.inodes[d].content {
            for e in entries.iter_mut() {
                let t = e.inode.index();
                e.hardlink = placed[t];
                if !placed[t] {
                    placed[t] = true;
                    if is_dir[t] {
                        queue.push_back(t);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_with_nids(bytes: &[u8]) -> (Tree, Vec<u64>) {
        let mut r = Reader::new(bytes).unwrap();
        r.walk().unwrap();
        let nids = r.nids.clone();
        let img = r.finish().unwrap();
        (img.tree, nids)
    }

    /// Re-writing places inodes in BFS order over home entries; for a
    /// composefs image that order must be the stored nid order.
    fn assert_home_order_matches_nids(bytes: &[u8]) {
        let (tree, nids) = read_with_nids(bytes);
        let order: Vec<u64> = tree.bfs_order().iter().map(|i| nids[i.index()]).collect();
        assert_eq!(order.len(), tree.inodes.len());
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn fixtures_home_order() {
        for bytes in [
            &include_bytes!("../tests/fixtures/special.cfs")[..],
            &include_bytes!("../tests/fixtures/special_v1.cfs")[..],
            &include_bytes!("../tests/fixtures/hardlinks.cfs")[..],
        ] {
            assert_home_order_matches_nids(bytes);
        }
    }

    #[test]
    fn conformance_home_order() {
        let Some(dir) = std::env::var_os("STRATA_CONFORMANCE_IMAGES") else {
            eprintln!("skipping: STRATA_CONFORMANCE_IMAGES not set");
            return;
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cfs") {
                eprintln!("{}", p.display());
                assert_home_order_matches_nids(&std::fs::read(&p).unwrap());
            }
        }
    }
}
