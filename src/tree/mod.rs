//! Building trees: from a directory on disk and by applying layer entries.
pub mod dir;
pub mod entry;
pub mod layers;
