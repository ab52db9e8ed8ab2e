//! What can go wrong reading an image from any source: I/O, missing or corrupt blobs,
//! invalid JSON, verification failures. Shared by every source and by verification.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::media::MAX_JSON_SIZE;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Storage(Box<super::containers_storage::error::StorageError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Read(#[source] io::Error),
    #[error("{path}: not an OCI image layout (no oci-layout file)")]
    NotALayout { path: PathBuf },
    #[error("{path}: invalid {what}: {source}")]
    InvalidLayoutJson {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{archive}: reading tar: {source}")]
    Archive {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest}: not found in the image source")]
    BlobNotFound { digest: String },
    #[error("blob {digest}: digest mismatch (expected {digest}, got {got})")]
    BlobDigestMismatch { digest: String, got: String },
    #[error("blob {digest}: size mismatch (expected {expected} bytes, got {got})")]
    BlobSizeMismatch {
        digest: String,
        expected: u64,
        got: u64,
    },
    #[error("blob {digest}: size mismatch (more than the expected {expected} bytes)")]
    BlobTooLong { digest: String, expected: u64 },
    #[error("blob {digest}: truncated (expected {expected} bytes, got {got})")]
    BlobTruncated {
        digest: String,
        expected: u64,
        got: u64,
    },
    #[error("blob {digest}: read after a verification failure")]
    BlobFailed { digest: String },
    #[error("blob {digest}: {size} bytes is too large for a {what} (limit {MAX_JSON_SIZE})")]
    JsonTooLarge {
        digest: String,
        what: &'static str,
        size: u64,
    },
    #[error("blob {digest}: invalid {what}: {source}")]
    InvalidJson {
        digest: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest}: decompressing: {source}")]
    Decompress {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {diff_id}: diff_id mismatch (expected {diff_id}, got {got})")]
    DiffIdMismatch { diff_id: String, got: String },
    #[error("layer {diff_id}: read after a verification failure")]
    LayerFailed { diff_id: String },
    #[error("unsupported digest {0:?} (only sha256 can be verified)")]
    UnsupportedDigest(String),
    #[error("blob {digest}: unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        digest: String,
        media_type: String,
        what: &'static str,
    },
    #[error("no image tagged {tag:?}; available tags: {}", list_or_none(.available))]
    TagNotFound { tag: String, available: Vec<String> },
    #[error("tag {tag:?} names several images: {}", .digests.join(", "))]
    AmbiguousTag { tag: String, digests: Vec<String> },
    #[error("index.json lists no images")]
    EmptyIndex,
    #[error("index.json lists {count} images; name one with a tag (available tags: {})", list_or_none(.tags))]
    NeedTag { count: usize, tags: Vec<String> },
    #[error("no manifest for platform {wanted} in index {index}; available platforms: {}", list_or_none(.available))]
    NoPlatformMatch {
        wanted: String,
        index: String,
        available: Vec<String>,
    },
    #[error("index {0}: image indexes nested too deeply")]
    IndexTooDeep(String),
    #[error("invalid platform {0:?} (expected os/arch[/variant])")]
    InvalidPlatform(String),
    #[error("manifest {manifest}: {layers} layers but the config lists {diff_ids} diff_ids")]
    LayerCountMismatch {
        manifest: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("export: layer {index}: given diff_id {given} but the config lists {config}")]
    ExportDiffIdMismatch {
        index: usize,
        given: String,
        config: String,
    },
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
}

impl From<super::containers_storage::error::StorageError> for SourceError {
    fn from(e: super::containers_storage::error::StorageError) -> Self {
        SourceError::Storage(Box::new(e))
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

impl SourceError {
    /// Unwrap an `io::Error` produced by the verifying readers back into the `SourceError`
    /// it carries, or wrap a plain I/O error.
    pub fn from_io(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|i| i.is::<SourceError>()) {
            let inner = e.into_inner().expect("checked above");
            return *inner.downcast::<SourceError>().expect("checked above");
        }
        if e.get_ref()
            .is_some_and(|i| i.is::<crate::registry::RegistryError>())
        {
            let inner = e.into_inner().expect("checked above");
            return SourceError::Registry(
                *inner
                    .downcast::<crate::registry::RegistryError>()
                    .expect("checked above"),
            );
        }
        SourceError::Read(e)
    }

    /// Does this `io::Error` carry one of our own errors (verification, registry)?
    pub fn is_ours(e: &io::Error) -> bool {
        e.get_ref()
            .is_some_and(|i| i.is::<SourceError>() || i.is::<crate::registry::RegistryError>())
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SourceError::Io { path, source }
    }
}
