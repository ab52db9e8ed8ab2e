//! Tables of contents of seekable layer formats (zstd:chunked, eStargz): which byte
//! ranges of the blob hold which file's contents, named by the sha256 of those contents.
//!
//! This module only reads and checks TOCs; [`super::partial`] decides what to fetch.
//! Everything here is untrusted input: sizes are checked before any allocation, offsets
//! must be ordered and inside the blob, and the TOC's own digest is checked against the
//! (digest-verified) manifest's annotation before anything in it is used.

pub mod chunked;
pub mod estargz;

/// A sha256, raw.
pub type Sha256Sum = [u8; 32];

/// Largest compressed TOC or tar-split fetched.
pub const MAX_COMPRESSED: u64 = 64 << 20;
/// Largest uncompressed TOC or tar-split accepted.
pub const MAX_UNCOMPRESSED: u64 = 512 << 20;

/// One regular file with contents, where they sit in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    /// The entry's name as the TOC gives it.
    pub name: String,
    /// Uncompressed size.
    pub size: u64,
    /// sha256 of the contents.
    pub sha256: Sha256Sum,
    /// Compressed bytes `start..end` of the blob decompress to exactly the contents.
    pub start: u64,
    pub end: u64,
}

/// Where the tar headers come from when the layer is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Headers {
    /// From the blob's bytes between the files' ranges: every header and padding byte sits
    /// in frames of its own (the older zstd:chunked form, which has no tar-split).
    Gaps,
    /// From a tar-split: compressed bytes `offset..offset+len` of the blob, whose sha256 is
    /// `digest` and whose decompressed size is `uncompressed`.
    TarSplit {
        offset: u64,
        len: u64,
        uncompressed: u64,
        digest: Sha256Sum,
    },
}

/// Where a layer's TOC is and how to check it, from the manifest's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub format: Format,
    /// The compressed TOC: blob bytes `offset..offset+len`.
    pub offset: u64,
    pub len: u64,
    /// Its size once decompressed.
    pub uncompressed: u64,
    /// sha256 of the compressed TOC bytes.
    pub checksum: Sha256Sum,
    /// The tar-split, for the newer zstd:chunked form (its digest comes from the TOC).
    pub tar_split: Option<(u64, u64, u64)>,
}

/// The seekable formats strata reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `io.containers.zstd-chunked.*`: TOC, no tar-split.
    ChunkedV1,
    /// `io.github.containers.zstd-chunked.*`: TOC and tar-split.
    ChunkedV2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::ChunkedV1 => "zstd:chunked",
            Format::ChunkedV2 => "zstd:chunked with tar-split",
        })
    }
}

/// A parsed, checked TOC.
#[derive(Debug, Clone)]
pub struct LayerToc {
    pub format: Format,
    /// Regular files with contents, in tar order (ranges increasing, disjoint).
    pub files: Vec<FileRange>,
    pub headers: Headers,
    /// Where the tar's frames end (the first byte of the TOC's or tar-split's frame).
    pub data_end: u64,
}

/// Why a TOC cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("annotation {key}: {why}")]
    Annotation { key: String, why: String },
    #[error("table of contents: sha256 {got} differs from the manifest's {want}")]
    Checksum { want: String, got: String },
    #[error("tar-split: sha256 {got} differs from the TOC's tarSplitDigest {want}")]
    TarSplitChecksum { want: String, got: String },
    #[error("table of contents: {0}")]
    Invalid(String),
    #[error("table of contents: {what} of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("table of contents: cannot decompress: {0}")]
    Decompress(std::io::Error),
}

/// Parses `sha256:<64 hex>`.
pub fn parse_sha256(s: &str) -> Option<Sha256Sum> {
    let h = s.strip_prefix("sha256:")?;
    if h.len() != 64 {
        return None;
    }
    hex::decode(h).ok()?.try_into().ok()
}

/// Decompresses a zstd TOC or tar-split of `want` bytes (checked against the limits).
pub fn decompress(data: &[u8], want: u64, what: &'static str) -> Result<Vec<u8>, TocError> {
    use std::io::Read;
    if want > MAX_UNCOMPRESSED {
        return Err(TocError::TooLarge {
            what,
            size: want,
            limit: MAX_UNCOMPRESSED,
        });
    }
    // Grown as the data arrives: the annotation's size is a bound, not a promise.
    let mut out = Vec::with_capacity(want.min(16 << 20) as usize);
    zstd::stream::read::Decoder::new(data)
        .map_err(TocError::Decompress)?
        .take(want + 1)
        .read_to_end(&mut out)
        .map_err(TocError::Decompress)?;
    if out.len() as u64 != want {
        return Err(TocError::Invalid(format!(
            "{what} decompresses to {} bytes, the annotation says {want}",
            out.len()
        )));
    }
    Ok(out)
}
