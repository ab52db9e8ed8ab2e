//! OCI images: sources (image layouts, archives), manifests and configs,
//! layer decoding (tar + gzip/zstd), splitstreams, and the import pipeline.

pub mod layout_writer;
pub mod reference;
pub mod source;
pub mod splitstream;
pub mod tar;
mod verify;

pub use layout_writer::write_layout;
pub use reference::{ImageRef, Reference};
pub use source::{Compression, LayerDesc, OciSource, PlatformSpec, ResolvedImage, SourceError};
pub use splitstream::{cat, import_layer, object_refs, read_entries, ImportStats, ImportedLayer};
pub use tar::LayerError;

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
