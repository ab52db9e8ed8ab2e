//! composefs/EROFS image reader: bytes → tree, rejecting malformed images.

use crate::tree::Tree;

/// A parsed image.
#[derive(Debug, Clone)]
pub struct ReadImage {
    pub tree: Tree,
    /// composefs format version from the header (0 or 1).
    pub version: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("image is corrupt: {0}")]
    Corrupt(String),
}

/// Parses an image. (Stub: implemented in reader work.)
pub fn read_image(bytes: &[u8]) -> Result<ReadImage, ReadError> {
    let _ = bytes;
    unimplemented!("reader")
}
