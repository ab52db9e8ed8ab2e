//! One shape for every image source (layouts, archives, registries, …): a source names a
//! top manifest, fetches manifests by digest and opens blobs as raw byte streams.
//! Verification is not the source's business: [`open_blob`] and [`open_layer`] wrap any
//! source's reader in the digest, size and diff_id checks, and resolution
//! ([`super::manifest`]) checks every manifest against the digest that named it.

use std::io::Read;

use super::error::SourceError;
use super::media::{Compression, MAX_JSON_SIZE};
pub use super::verify::{BlobReader, LayerReader, VerifiedReader};

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// Digest of the (compressed) blob, `sha256:…`.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: String,
    /// sha256 of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
    pub compression: Compression,
    /// The descriptor's annotations (zstd:chunked and eStargz positions and checksums).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The manifest (or index) a reference names.
#[derive(Debug, Clone)]
pub enum Top {
    /// Named by digest; the bytes are fetched (or found locally) later. A descriptor may
    /// have given the size and media type.
    Known {
        digest: String,
        size: Option<u64>,
        media_type: Option<String>,
    },
    /// Fetched by tag: the exact bytes and the digest they must have (the registry's
    /// `Docker-Content-Digest`, else computed from the bytes).
    Fetched {
        digest: String,
        raw: Vec<u8>,
        media_type: Option<String>,
    },
}

/// An image source. Implementations return raw bytes; callers verify.
pub trait ImageSource: Send + Sync {
    /// The manifest or index the reference names.
    fn top(&self) -> Result<Top, SourceError>;
    /// A manifest or index by digest (at most [`MAX_JSON_SIZE`] bytes; `size` when a
    /// descriptor gave it). Not verified here.
    fn fetch_manifest(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, SourceError>;
    /// A blob's bytes, `size` of them expected. Not verified here.
    fn open_raw_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + Send>, SourceError>;
    /// A blob's bytes from `offset` on (a resumed download). By default the blob is read
    /// from its start and the first `offset` bytes skipped; registries ask for a range.
    fn open_raw_blob_at(
        &self,
        digest: &str,
        size: u64,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let mut r = self.open_raw_blob(digest, size)?;
        let skipped = std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
            .map_err(SourceError::from_io)?;
        if skipped < offset {
            // Shorter than the part already held: the verifier reports the wrong size.
            return Ok(Box::new(std::io::empty()));
        }
        Ok(r)
    }
    /// Whether reading a blob again is cheap (local files), so that a failed layer can be
    /// re-read to name the real cause. Network sources say no.
    fn cheap_to_reread(&self) -> bool {
        true
    }
    /// A layer the source holds unpacked (containers-storage): its exact tar stream,
    /// re-serialised by the source, which also offers the local file behind each payload
    /// (so that objects can be reflinked) and checks the layer's diff_id at the end of the
    /// stream (errors travel as `io::Error`s carrying a [`SourceError`]). `None`: read the
    /// blob instead.
    fn open_local_layer(&self, _layer: &LayerDesc) -> Result<Option<LocalLayer>, SourceError> {
        Ok(None)
    }
    /// The registry client behind a `docker://` source, for ranged fetches (partial pulls).
    fn registry_image(&self) -> Option<&crate::registry::ImageClient> {
        None
    }
}

/// A layer's tar stream with local files for its payloads; see
/// [`ImageSource::open_local_layer`].
pub type LocalLayer = Box<dyn super::splitstream::TarStream + Send>;

/// Stream a blob, verifying its size and sha256 digest as it is read.
pub fn open_blob(
    src: &dyn ImageSource,
    digest: &str,
    size: u64,
) -> Result<BlobReader, SourceError> {
    super::verify::sha256_bytes(digest)?;
    VerifiedReader::new(src.open_raw_blob(digest, size)?, digest, size)
}

/// Stream a layer's uncompressed tar: blob verified against digest and size, decompressed
/// by media type, and checked against the diff_id at EOF.
pub fn open_layer(src: &dyn ImageSource, layer: &LayerDesc) -> Result<LayerReader, SourceError> {
    let blob = open_blob(src, &layer.digest, layer.size)?;
    LayerReader::new(blob, layer.compression, &layer.diff_id)
}

/// Read a whole (small, JSON) blob, verified.
pub fn read_json_blob(
    src: &dyn ImageSource,
    digest: &str,
    size: u64,
    what: &'static str,
) -> Result<Vec<u8>, SourceError> {
    if size > MAX_JSON_SIZE {
        return Err(SourceError::JsonTooLarge {
            digest: digest.to_string(),
            what,
            size,
        });
    }
    let mut r = open_blob(src, digest, size)?;
    let mut v = Vec::with_capacity(size as usize);
    r.read_to_end(&mut v).map_err(SourceError::from_io)?;
    Ok(v)
}
