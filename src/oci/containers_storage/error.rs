//! What can go wrong reading a containers-storage store. Below everything else of the
//! source (and of `oci`'s own error type, which wraps it), so nothing imports upwards.

use std::path::PathBuf;

use crate::oci::tarsplit::TarSplitError;

/// Why a containers-storage source failed, naming the store, image, layer or file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("containers-storage:{spec}: {why}")]
    BadReference { spec: String, why: &'static str },
    #[error("{root}: unsupported storage driver {driver:?} (strata reads overlay stores only)", root = .root.display())]
    UnsupportedDriver { root: PathBuf, driver: String },
    #[error("{root}: not a containers-storage overlay store (no overlay-images/images.json)", root = .root.display())]
    NotAStore { root: PathBuf },
    #[error("{root}: no image {image:?} in the store", root = .root.display())]
    ImageNotFound { root: PathBuf, image: String },
    #[error("{root}: image id prefix {prefix:?} matches {count} images; give more of the id", root = .root.display())]
    AmbiguousId {
        root: PathBuf,
        prefix: String,
        count: usize,
    },
    #[error("{path}: {what}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {limit} bytes", path = .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: invalid JSON: {source}", path = .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid storage.conf: {why}", path = .path.display())]
    Conf { path: PathBuf, why: String },
    #[error("{path}: store busy: a writer (podman?) held the lock for more than {secs} s", path = .path.display())]
    Busy { path: PathBuf, secs: u64 },
    #[error("{root}: image {image}: {what}", root = .root.display())]
    BadImage {
        root: PathBuf,
        image: String,
        what: String,
    },
    #[error("{path}: {source}", path = .path.display())]
    TarSplit {
        path: PathBuf,
        #[source]
        source: TarSplitError,
    },
    #[error("layer {diff_id}: {path}: {what}", path = .path.display())]
    File {
        diff_id: String,
        path: PathBuf,
        what: String,
    },
    #[error("layer {diff_id}: the files of {diff} rebuild a tar with digest {got}, not the layer's diff_id (the store changed?)", diff = .diff.display())]
    DiffIdMismatch {
        diff_id: String,
        diff: PathBuf,
        got: String,
    },
}
