//! EROFS on-disk structures, as plain little-endian structs.
//!
//! Field layouts per the kernel's `fs/erofs/erofs_fs.h` and the EROFS
//! on-disk format documentation; the composefs header per composefs C's
//! `lcfs-erofs.h`. Everything here is `zerocopy`-derived: no `unsafe`, and
//! parsing a struct out of a byte slice can only fail on length.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Block size used by composefs images (4 KiB, `blkszbits` = 12).
pub const BLOCK_BITS: u8 = 12;
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Inodes are addressed in 32-byte slots: nid = offset / 32 from `meta_blkaddr`.
pub const SLOT_BITS: u8 = 5;
pub const SLOT_SIZE: u64 = 1 << SLOT_BITS;
/// The superblock lives at byte 1024 of the image.
pub const SUPER_OFFSET: u64 = 1024;
pub const SUPER_MAGIC_V1: u32 = 0xE0F5_E1E2;

/// composefs header at offset 0 (the first 1024 bytes are otherwise unused by EROFS).
pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
pub const COMPOSEFS_FLAGS_HAS_ACL: u32 = 1 << 0;

pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
pub const FEATURE_COMPAT_MTIME: u32 = 0x0000_0002;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x0000_0004;

/// Data layouts (bits 1..3 of `i_format`).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_COMPRESSED_FULL: u16 = 1;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_COMPRESSED_COMPACT: u16 = 3;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
pub const I_VERSION_BIT: u16 = 0;
pub const I_VERSION_MASK: u16 = 0x1;
pub const I_DATALAYOUT_BIT: u16 = 1;
pub const I_DATALAYOUT_MASK: u16 = 0x7;

/// Chunk-based inodes: low bits of `chunk_info.format` give chunk size as
/// `BLOCK_BITS + (format & CHUNK_FORMAT_BLKBITS_MASK)`.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001f;
pub const CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// A chunk address meaning "hole" (reads as zeros).
pub const NULL_ADDR: u32 = u32::MAX;

/// Xattr name indexes.
pub const XATTR_INDEX_USER: u8 = 1;
pub const XATTR_INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub const XATTR_INDEX_POSIX_ACL_DEFAULT: u8 = 3;
pub const XATTR_INDEX_TRUSTED: u8 = 4;
pub const XATTR_INDEX_LUSTRE: u8 = 5;
pub const XATTR_INDEX_SECURITY: u8 = 6;
/// Set in `e_name_index` when the entry uses a long (superblock-defined) prefix.
pub const XATTR_LONG_PREFIX: u8 = 0x80;
/// Xattr name bloom filter (`h_name_filter`; a set bit means "not present").
pub const XATTR_FILTER_BITS: u32 = 32;
pub const XATTR_FILTER_DEFAULT: u32 = u32::MAX;
pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;

/// Prefix table indexed by `e_name_index` (index 0: no prefix).
pub const XATTR_PREFIXES: [&[u8]; 7] = [
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
];

/// Directory entry file types.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// POSIX file type bits of a mode.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// composefs header, 32 bytes at offset 0.
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ComposefsHeader {
    pub magic: U32,
    pub version: U32,
    pub flags: U32,
    pub composefs_version: U32,
    pub unused: [U32; 4],
}

/// EROFS superblock, 128 bytes at [`SUPER_OFFSET`].
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Superblock {
    pub magic: U32,
    pub checksum: U32,
    pub feature_compat: U32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: U16,
    pub inos: U64,
    pub build_time: U64,
    pub build_time_nsec: U32,
    pub blocks: U32,
    pub meta_blkaddr: U32,
    pub xattr_blkaddr: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: U32,
    pub available_compr_algs: U16,
    pub extra_devices: U16,
    pub devt_slotoff: U16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: U32,
    pub packed_nid: U64,
    pub xattr_filter_reserved: u8,
    pub reserved2: [u8; 23],
}

/// 32-byte compact inode (`i_format` bit 0 clear). Its mtime is the
/// superblock's `build_time`.
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InodeCompact {
    pub i_format: U16,
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    pub i_nlink: U16,
    pub i_size: U32,
    pub i_reserved: U32,
    /// raw_blkaddr, rdev, or chunk info (format: u16, reserved: u16) by type/layout.
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U16,
    pub i_gid: U16,
    pub i_reserved2: U32,
}

/// 64-byte extended inode (`i_format` bit 0 set).
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InodeExtended {
    pub i_format: U16,
    pub i_xattr_icount: U16,
    pub i_mode: U16,
    pub i_reserved: U16,
    pub i_size: U64,
    pub i_u: U32,
    pub i_ino: U32,
    pub i_uid: U32,
    pub i_gid: U32,
    pub i_mtime: U64,
    pub i_mtime_nsec: U32,
    pub i_nlink: U32,
    pub i_reserved2: [u8; 16],
}

/// Header of an inode's inline xattr area (12 bytes), followed by
/// `h_shared_count` u32 shared-xattr ids, then the inline entries.
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XattrIbodyHeader {
    pub h_name_filter: U32,
    pub h_shared_count: u8,
    pub h_reserved2: [u8; 7],
}

/// Xattr entry header (4 bytes), followed by name suffix and value, padded to 4.
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XattrEntry {
    pub e_name_len: u8,
    pub e_name_index: u8,
    pub e_value_size: U16,
}

/// Directory entry (12 bytes). Names follow the entry array in the same block;
/// `nameoff` of the first entry therefore equals 12 * number of entries.
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Dirent {
    pub nid: U64,
    pub nameoff: U16,
    pub file_type: u8,
    pub reserved: u8,
}

/// Size of an inline xattr area given `i_xattr_icount` (0 means none).
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        size_of::<XattrIbodyHeader>() + (icount as usize - 1) * 4
    }
}

/// EROFS directory-entry file type for a mode.
pub fn file_type_of_mode(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => FT_REG_FILE,
        S_IFDIR => FT_DIR,
        S_IFCHR => FT_CHRDEV,
        S_IFBLK => FT_BLKDEV,
        S_IFIFO => FT_FIFO,
        S_IFSOCK => FT_SOCK,
        S_IFLNK => FT_SYMLINK,
        _ => FT_UNKNOWN,
    }
}

/// xxHash32, as the kernel's `lib/xxhash.c` computes it; EROFS uses it for the
/// xattr name bloom filter (seeded with `XATTR_FILTER_SEED + name_index`).
pub fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let round = |acc: u32, lane: u32| {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    };
    let mut rest = input;
    let mut h = if input.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 16 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, word(&rest[i * 4..]));
            }
            rest = &rest[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u32);
    while rest.len() >= 4 {
        h = h
            .wrapping_add(word(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &b in rest {
        h = h
            .wrapping_add((b as u32).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_erofs_fs_h() {
        assert_eq!(size_of::<ComposefsHeader>(), 32);
        assert_eq!(size_of::<Superblock>(), 128);
        assert_eq!(size_of::<InodeCompact>(), 32);
        assert_eq!(size_of::<InodeExtended>(), 64);
        assert_eq!(size_of::<XattrIbodyHeader>(), 12);
        assert_eq!(size_of::<XattrEntry>(), 4);
        assert_eq!(size_of::<Dirent>(), 12);
    }

    #[test]
    fn xxh32_reference_values() {
        // Reference values from the xxHash specification's test vectors.
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }
}
