//! EROFS for composefs: the on-disk format ([`format`]), the in-memory tree an
//! image describes ([`tree`]), a writer that turns a tree into image bytes
//! identical to composefs C 1.0.8 `mkcomposefs` ([`writer`]), and a reader that
//! parses any image back into a tree ([`reader`]).
//!
//! This crate knows nothing of repositories, OCI or the kernel.

pub mod debug;
pub mod format;
pub mod reader;
pub mod tree;
pub mod writer;

pub use reader::{read_image, ReadError, ReadImage};
pub use tree::{
    Content, Entry, File, FileData, Inode, InodeId, Stat, Timespec, Tree, TreeBuilder, Xattr,
};
pub use writer::{write_image, write_image_to, ImagePlan, WriteError, WriteOptions};
