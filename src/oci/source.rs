//! OCI image sources: image layout directories and `oci-archive` tar files.
//!
//! [`OciSource::open`] opens either kind; [`OciSource::resolve`] turns a tag or digest (and a
//! platform, for multi-platform indexes) into a [`ResolvedImage`]: the manifest, the config
//! and the layer list with diff_ids. [`OciSource::open_blob`] and [`OciSource::open_layer`]
//! stream blobs and decompressed layers with size, digest and diff_id verification.
//!
//! # Archives
//!
//! An `oci-archive` is read in place: its tar headers are scanned once (seeking over member
//! data), recording each member's data offset and size, and blobs are then read with
//! positioned reads (`pread`) from the archive file. Nothing is extracted, so an archive costs
//! no extra disk space or copy time, and several blobs can be read concurrently from one open
//! file. Only plain (non-sparse) regular members and hard links to them are used.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use thiserror::Error;

use super::reference::{ImageRef, Reference};
pub use super::verify::{BlobReader, LayerReader, VerifiedReader};

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Manifests, indexes and configs larger than this are refused (they are read into memory).
pub const MAX_JSON_SIZE: u64 = 64 << 20;
/// How deep nested indexes may go.
const MAX_INDEX_DEPTH: usize = 8;

#[derive(Debug, Error)]
pub enum SourceError {
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
        SourceError::Read(e)
    }

    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SourceError::Io { path, source }
    }
}

/// Layer compression, from the layer's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    /// Also zstd:chunked (a multi-frame zstd stream with a skippable-frame TOC).
    Zstd,
}

impl Compression {
    /// Classify a layer media type; `None` if it is not a layer type we can decode.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

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
}

/// A manifest or config: the exact bytes (digests are over these) and the parsed form.
#[derive(Debug, Clone)]
pub struct Blob<T> {
    pub raw: Vec<u8>,
    pub parsed: T,
}

/// Everything needed to import one image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest_digest: String,
    pub manifest: Blob<ImageManifest>,
    pub config_digest: String,
    pub config: Blob<ImageConfiguration>,
    pub layers: Vec<LayerDesc>,
}

/// A platform to select from a multi-platform index: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// `linux` and the Go architecture name of the running machine.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" => {
                if cfg!(target_endian = "little") {
                    "ppc64le"
                } else {
                    "ppc64"
                }
            }
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "loongarch64" => "loong64",
            "mips64" => {
                if cfg!(target_endian = "little") {
                    "mips64le"
                } else {
                    "mips64"
                }
            }
            "mips" => {
                if cfg!(target_endian = "little") {
                    "mipsle"
                } else {
                    "mips"
                }
            }
            other => other,
        };
        PlatformSpec {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }

    pub fn parse(s: &str) -> Result<Self, SourceError> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(SourceError::InvalidPlatform(s.to_string()));
        }
        Ok(PlatformSpec {
            os: parts[0].into(),
            arch: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Does a descriptor's platform match? A wanted variant must match exactly, except that
    /// `arm64` without a variant and `arm64/v8` are the same thing.
    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.arch != arch {
            return false;
        }
        let norm = |v: Option<&str>| -> Option<String> {
            match (arch, v) {
                ("arm64", None) => Some("v8".into()),
                (_, v) => v.map(str::to_string),
            }
        };
        match &self.variant {
            None => true,
            Some(w) => norm(Some(w)) == norm(variant),
        }
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Where an archive member's data lies in the archive file.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

enum Store {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// A positioned reader over a range of a shared file.
struct RangeReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// An opened OCI image layout (directory) or OCI archive (tar of a layout).
pub struct OciSource {
    store: Store,
    index: ImageIndex,
}

impl OciSource {
    /// Open the source named by `r` (its tag or digest is used later, by [`Self::resolve`]).
    pub fn open(r: &ImageRef) -> Result<Self, SourceError> {
        match r {
            ImageRef::Layout { path, .. } => Self::open_layout(path),
            ImageRef::Archive { path, .. } => Self::open_archive(path),
        }
    }

    /// Open an OCI image layout directory.
    pub fn open_layout(path: &Path) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(SourceError::io(path))?;
        if !meta.is_dir() {
            return Err(SourceError::NotALayout { path: path.into() });
        }
        let store = Store::Dir(path.to_path_buf());
        Self::with_store(store, path)
    }

    /// Open an OCI archive: scan its tar headers once, then read blobs in place.
    pub fn open_archive(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(SourceError::io(path))?;
        let members = index_tar(&file).map_err(|source| SourceError::Archive {
            archive: path.into(),
            source,
        })?;
        let store = Store::Archive {
            path: path.into(),
            file: Arc::new(file),
            members,
        };
        Self::with_store(store, path)
    }

    fn with_store(store: Store, path: &Path) -> Result<Self, SourceError> {
        let mut src = OciSource {
            store,
            index: ImageIndex::default(),
        };
        if !src.has_file("oci-layout") {
            return Err(SourceError::NotALayout { path: path.into() });
        }
        let raw = src.read_small_file("index.json")?;
        src.index =
            serde_json::from_slice(&raw).map_err(|source| SourceError::InvalidLayoutJson {
                path: path.join("index.json"),
                what: "index.json",
                source,
            })?;
        Ok(src)
    }

    fn has_file(&self, name: &str) -> bool {
        match &self.store {
            Store::Dir(d) => d.join(name).is_file(),
            Store::Archive { members, .. } => members.contains_key(name),
        }
    }

    fn read_small_file(&self, name: &str) -> Result<Vec<u8>, SourceError> {
        let (mut r, size, path) = self.open_file(name)?;
        if size > MAX_JSON_SIZE {
            return Err(SourceError::JsonTooLarge {
                digest: name.to_string(),
                what: "index",
                size,
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v).map_err(SourceError::io(path))?;
        Ok(v)
    }

    /// Open a file of the layout; returns (reader, size, path for messages).
    fn open_file(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64, PathBuf), SourceError> {
        match &self.store {
            Store::Dir(d) => {
                let p = d.join(name);
                let f = File::open(&p).map_err(SourceError::io(&p))?;
                let size = f.metadata().map_err(SourceError::io(&p))?.len();
                Ok((Box::new(f), size, p))
            }
            Store::Archive {
                path,
                file,
                members,
            } => {
                let m = members.get(name).ok_or_else(|| SourceError::Io {
                    path: path.join(name),
                    source: io::Error::from(io::ErrorKind::NotFound),
                })?;
                let r = RangeReader {
                    file: file.clone(),
                    pos: m.offset,
                    end: m.offset + m.size,
                };
                Ok((Box::new(r), m.size, path.join(name)))
            }
        }
    }

    /// The layout's `index.json`.
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// Tags (ref.name annotations) of `index.json`, in order.
    pub fn tags(&self) -> Vec<String> {
        self.index
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(str::to_string))
            .collect()
    }

    /// Stream a blob, verifying its size and sha256 digest as it is read.
    pub fn open_blob(&self, digest: &str, size: u64) -> Result<BlobReader, SourceError> {
        // Validate the digest before using it as a file name.
        super::verify::sha256_bytes(digest)?;
        let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let (r, actual, _) = self.open_file(&name).map_err(|e| match e {
            SourceError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                SourceError::BlobNotFound {
                    digest: digest.to_string(),
                }
            }
            e => e,
        })?;
        if actual != size {
            let digest = digest.to_string();
            return Err(if actual < size {
                SourceError::BlobTruncated {
                    digest,
                    expected: size,
                    got: actual,
                }
            } else {
                SourceError::BlobSizeMismatch {
                    digest,
                    expected: size,
                    got: actual,
                }
            });
        }
        VerifiedReader::new(r, digest, size)
    }

    /// [`Self::open_blob`] for a descriptor.
    pub fn open_descriptor(&self, desc: &Descriptor) -> Result<BlobReader, SourceError> {
        self.open_blob(desc.digest().as_ref(), desc.size())
    }

    /// Stream a layer's uncompressed tar: blob verified against digest and size,
    /// decompressed by media type, and checked against the diff_id at EOF.
    pub fn open_layer(&self, layer: &LayerDesc) -> Result<LayerReader, SourceError> {
        let blob = self.open_blob(&layer.digest, layer.size)?;
        LayerReader::new(blob, layer.compression, &layer.diff_id)
    }

    /// Read a whole (small, JSON) blob, verified.
    pub fn read_json_blob(
        &self,
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
        let mut r = self.open_blob(digest, size)?;
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v).map_err(SourceError::from_io)?;
        Ok(v)
    }

    /// Resolve a tag or digest (none: the only image) to a manifest, config and layers,
    /// choosing `platform` (default: the host's) in multi-platform indexes.
    pub fn resolve(
        &self,
        reference: Option<&Reference>,
        platform: Option<&PlatformSpec>,
    ) -> Result<ResolvedImage, SourceError> {
        let top = self.select_top(reference)?;
        let host;
        let platform = match platform {
            Some(p) => p,
            None => {
                host = PlatformSpec::host();
                &host
            }
        };
        let mut digest = top.digest;
        let mut size = top.size;
        let mut media_type = top.media_type;
        for _ in 0..MAX_INDEX_DEPTH {
            let raw = self.read_json_blob(&digest, size, "manifest")?;
            let mt = match media_type {
                Some(mt) => mt,
                None => sniff_media_type(&raw),
            };
            match mt.as_str() {
                MT_OCI_INDEX | MT_DOCKER_LIST => {
                    let index: ImageIndex = serde_json::from_slice(&raw).map_err(|source| {
                        SourceError::InvalidJson {
                            digest: digest.clone(),
                            what: "image index",
                            source,
                        }
                    })?;
                    let d = choose_platform(&index, platform, &digest)?;
                    digest = d.digest().to_string();
                    size = d.size();
                    media_type = Some(d.media_type().to_string());
                }
                MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
                    return self.resolve_manifest(digest, raw);
                }
                other => {
                    return Err(SourceError::UnsupportedMediaType {
                        digest,
                        media_type: other.to_string(),
                        what: "a manifest or index",
                    })
                }
            }
        }
        Err(SourceError::IndexTooDeep(digest))
    }

    fn select_top(&self, reference: Option<&Reference>) -> Result<Top, SourceError> {
        let manifests = self.index.manifests();
        let from = |d: &Descriptor| Top {
            digest: d.digest().to_string(),
            size: d.size(),
            media_type: Some(d.media_type().to_string()),
        };
        match reference {
            Some(Reference::Tag(tag)) => {
                let hits: Vec<&Descriptor> = manifests
                    .iter()
                    .filter(|d| ref_name(d) == Some(tag.as_str()))
                    .collect();
                match hits.as_slice() {
                    [] => Err(SourceError::TagNotFound {
                        tag: tag.clone(),
                        available: self.tags(),
                    }),
                    [d] => Ok(from(d)),
                    [first, rest @ ..] => {
                        if rest.iter().all(|d| d.digest() == first.digest()) {
                            Ok(from(first))
                        } else {
                            Err(SourceError::AmbiguousTag {
                                tag: tag.clone(),
                                digests: hits.iter().map(|d| d.digest().to_string()).collect(),
                            })
                        }
                    }
                }
            }
            Some(Reference::Digest(digest)) => {
                if let Some(d) = manifests.iter().find(|d| d.digest().to_string() == *digest) {
                    return Ok(from(d));
                }
                // Not listed in index.json (e.g. a platform manifest of a listed index):
                // take the blob's own size and sniff its media type.
                let size = self.blob_size(digest)?;
                Ok(Top {
                    digest: digest.clone(),
                    size,
                    media_type: None,
                })
            }
            None => match manifests.as_slice() {
                [] => Err(SourceError::EmptyIndex),
                [d] => Ok(from(d)),
                _ => Err(SourceError::NeedTag {
                    count: manifests.len(),
                    tags: self.tags(),
                }),
            },
        }
    }

    fn blob_size(&self, digest: &str) -> Result<u64, SourceError> {
        super::verify::sha256_bytes(digest)?;
        let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        match self.open_file(&name) {
            Ok((_, size, _)) => Ok(size),
            Err(SourceError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(SourceError::BlobNotFound {
                    digest: digest.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn resolve_manifest(
        &self,
        manifest_digest: String,
        raw: Vec<u8>,
    ) -> Result<ResolvedImage, SourceError> {
        let manifest: ImageManifest =
            serde_json::from_slice(&raw).map_err(|source| SourceError::InvalidJson {
                digest: manifest_digest.clone(),
                what: "image manifest",
                source,
            })?;
        let cdesc = manifest.config();
        let config_digest = cdesc.digest().to_string();
        let cmt = cdesc.media_type().to_string();
        if cmt != MT_OCI_CONFIG && cmt != MT_DOCKER_CONFIG {
            return Err(SourceError::UnsupportedMediaType {
                digest: config_digest,
                media_type: cmt,
                what: "an image config",
            });
        }
        let config_raw = self.read_json_blob(&config_digest, cdesc.size(), "config")?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_raw).map_err(|source| SourceError::InvalidJson {
                digest: config_digest.clone(),
                what: "image config",
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(SourceError::LayerCountMismatch {
                manifest: manifest_digest,
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let digest = l.digest().to_string();
            let media_type = l.media_type().to_string();
            let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
                SourceError::UnsupportedMediaType {
                    digest: digest.clone(),
                    media_type: media_type.clone(),
                    what: "a layer",
                }
            })?;
            super::verify::sha256_bytes(&digest)?;
            super::verify::sha256_bytes(diff_id)?;
            layers.push(LayerDesc {
                digest,
                size: l.size(),
                media_type,
                diff_id: diff_id.clone(),
                compression,
            });
        }
        Ok(ResolvedImage {
            manifest_digest,
            manifest: Blob {
                raw,
                parsed: manifest,
            },
            config_digest,
            config: Blob {
                raw: config_raw,
                parsed: config,
            },
            layers,
        })
    }
}

struct Top {
    digest: String,
    size: u64,
    media_type: Option<String>,
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// The media type of a manifest blob without a descriptor: its `mediaType` field, else an
/// index if it has `manifests`, else an OCI manifest.
fn sniff_media_type(raw: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(raw) {
        Ok(Probe {
            media_type: Some(mt),
            ..
        }) => mt,
        Ok(Probe {
            manifests: Some(_), ..
        }) => MT_OCI_INDEX.to_string(),
        _ => MT_OCI_MANIFEST.to_string(),
    }
}

fn choose_platform<'a>(
    index: &'a ImageIndex,
    want: &PlatformSpec,
    index_digest: &str,
) -> Result<&'a Descriptor, SourceError> {
    let mut available = Vec::new();
    let mut best: Option<(&Descriptor, u8)> = None;
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        let (os, arch, variant) = (
            p.os().to_string(),
            p.architecture().to_string(),
            p.variant().as_deref(),
        );
        let name = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        if !available.contains(&name) {
            available.push(name);
        }
        if want.matches(&os, &arch, variant) {
            // Without a wanted variant, prefer an entry without one (the default variant);
            // otherwise the first match, as index order expresses preference.
            let score = u8::from(variant.is_none());
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((d, score));
            }
        }
    }
    best.map(|(d, _)| d)
        .ok_or_else(|| SourceError::NoPlatformMatch {
            wanted: want.to_string(),
            index: index_digest.to_string(),
            available,
        })
}

/// Scan a tar's headers (seeking over data), recording where each regular member's data is.
fn index_tar(file: &File) -> io::Result<HashMap<String, Member>> {
    let mut archive = ::tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let kind = entry.header().entry_type();
        let name = normalize_member(&entry.path_bytes());
        if kind.is_file() {
            members.insert(
                name,
                Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
            );
        } else if kind.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                if let Some(m) = members.get(&normalize_member(&target)).copied() {
                    members.insert(name, m);
                }
            }
        }
    }
    Ok(members)
}

fn normalize_member(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    let mut s: &str = &s;
    loop {
        if let Some(r) = s.strip_prefix("./") {
            s = r;
        } else if let Some(r) = s.strip_prefix('/') {
            s = r;
        } else {
            break;
        }
    }
    s.to_string()
}
