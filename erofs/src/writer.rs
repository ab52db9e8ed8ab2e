//! composefs image writer: tree → EROFS bytes, identical to composefs C 1.0.8.

use crate::tree::{Tree, TreeError};

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
}

/// Writes the composefs image for `tree`. (Stub: implemented in writer work.)
pub fn write_image(tree: &Tree, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    let _ = (tree, opts);
    unimplemented!("writer")
}
