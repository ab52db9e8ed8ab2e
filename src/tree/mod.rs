//! Building trees: from a directory on disk (and later from OCI layers).
pub mod dir;
pub mod layers;
