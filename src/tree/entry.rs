//! The vocabulary of a layer entry: what `oci` produces when it decodes a layer's tar
//! stream (or a tar-split, or a TOC) and what [`super::layers`] consumes when it applies
//! layers. It lives here, below `oci`, so that nothing reaches back up.

use erofs::tree::{Timespec, Xattr};

use crate::fsverity::Digest;

/// What a tar entry is, after GNU long-name/link and PAX records are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Regular,
    Directory,
    Symlink(Vec<u8>),
    /// A hard link to an earlier path (raw tar link name, not normalized).
    Hardlink(Vec<u8>),
    CharDevice,
    BlockDevice,
    Fifo,
}

/// Where a regular file's bytes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryData {
    /// Files of at most 64 bytes: kept in the splitstream and the image.
    Inline(Vec<u8>),
    /// Larger files: an object in the repository.
    Object(Digest),
}

/// One tar entry of a layer, fully decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path as the tar gives it (raw bytes, may start with `./` or `/`).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (including setuid/setgid/sticky), no file type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// Device number (Linux `makedev(major, minor)`) for devices.
    pub rdev: u64,
    /// File size for regular files (0 otherwise).
    pub size: u64,
    /// `SCHILY.xattr.*` PAX records (e.g. `security.capability`).
    pub xattrs: Vec<Xattr>,
    /// Regular files only.
    pub data: Option<EntryData>,
}
