//! Manifests, indexes and configs, whatever the source: media types, platform choice,
//! and resolution (tag or digest → index → image manifest → config → layers).
//!
//! Resolution runs over any [`ImageSource`]. Every manifest and index it reads is checked
//! against the digest that named it (or, for the top manifest fetched by tag, the digest
//! is computed from the bytes); configs are verified blobs. Nothing here trusts a size or
//! media type without checking it, and JSON is bounded by [`MAX_JSON_SIZE`] before it is
//! read.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::error::SourceError;
pub use super::media::{
    Compression, ANNOTATION_REF_NAME, MAX_JSON_SIZE, MT_DOCKER_CONFIG, MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
pub use super::source::LayerDesc;
use super::source::{ImageSource, Top};
use super::verify::sha256_bytes;

/// How deep nested indexes may go.
pub const MAX_INDEX_DEPTH: usize = 8;

/// A manifest or config: the exact bytes (digests are over these) and the parsed form.
#[derive(Debug, Clone)]
pub struct Blob<T> {
    pub raw: Vec<u8>,
    pub parsed: T,
}

/// Everything needed to import one image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Indexes walked to reach the manifest, outermost first: (digest, exact bytes).
    pub indexes: Vec<(String, Vec<u8>)>,
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

pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// The media type of a manifest blob without a descriptor: its `mediaType` field, else an
/// index if it has `manifests`, else an OCI manifest.
pub(crate) fn sniff_media_type(raw: &[u8]) -> String {
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

/// The image manifest a reference resolves to, before its config is read.
#[derive(Debug, Clone)]
pub struct ManifestChoice {
    /// Indexes walked, outermost first: (digest, exact bytes).
    pub indexes: Vec<(String, Vec<u8>)>,
    pub manifest_digest: String,
    pub manifest_raw: Vec<u8>,
}

fn check_digest(digest: &str, raw: &[u8]) -> Result<(), SourceError> {
    let want = sha256_bytes(digest)?;
    let got: [u8; 32] = Sha256::digest(raw).into();
    if got != want {
        return Err(SourceError::BlobDigestMismatch {
            digest: digest.to_string(),
            got: format!("sha256:{}", hex::encode(got)),
        });
    }
    Ok(())
}

/// Walks from the source's top manifest through indexes (choosing `platform`, default the
/// host's) to an image manifest. `known` answers manifests the caller already has by
/// digest (a repository's stored blobs), so that a present image costs no request.
pub fn resolve_manifest(
    src: &dyn ImageSource,
    platform: Option<&PlatformSpec>,
    known: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<ManifestChoice, SourceError> {
    let host;
    let platform = match platform {
        Some(p) => p,
        None => {
            host = PlatformSpec::host();
            &host
        }
    };
    let (mut digest, mut raw, mut media_type) = match src.top()? {
        Top::Fetched {
            digest,
            raw,
            media_type,
        } => {
            check_digest(&digest, &raw)?;
            (digest, raw, media_type)
        }
        Top::Known {
            digest,
            size,
            media_type,
        } => {
            let raw = fetch_checked(src, &digest, size, known)?;
            (digest, raw, media_type)
        }
    };
    let mut indexes = Vec::new();
    for _ in 0..MAX_INDEX_DEPTH {
        // The bytes decide: a descriptor's media type may be missing or generic.
        let mt = match media_type.as_deref() {
            Some(MT_OCI_INDEX | MT_DOCKER_LIST | MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => {
                media_type.clone().unwrap_or_default()
            }
            _ => sniff_media_type(&raw),
        };
        match mt.as_str() {
            MT_OCI_INDEX | MT_DOCKER_LIST => {
                let index: ImageIndex =
                    serde_json::from_slice(&raw).map_err(|source| SourceError::InvalidJson {
                        digest: digest.clone(),
                        what: "image index",
                        source,
                    })?;
                let d = choose_platform(&index, platform, &digest)?;
                let next = d.digest().to_string();
                let size = d.size();
                let next_mt = d.media_type().to_string();
                indexes.push((std::mem::take(&mut digest), std::mem::take(&mut raw)));
                raw = fetch_checked(src, &next, Some(size), known)?;
                digest = next;
                media_type = Some(next_mt);
            }
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
                return Ok(ManifestChoice {
                    indexes,
                    manifest_digest: digest,
                    manifest_raw: raw,
                })
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

fn fetch_checked(
    src: &dyn ImageSource,
    digest: &str,
    size: Option<u64>,
    known: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, SourceError> {
    sha256_bytes(digest)?;
    if let Some(raw) = known(digest) {
        if check_digest(digest, &raw).is_ok() {
            return Ok(raw);
        }
    }
    if let Some(size) = size {
        if size > MAX_JSON_SIZE {
            return Err(SourceError::JsonTooLarge {
                digest: digest.to_string(),
                what: "manifest",
                size,
            });
        }
    }
    let raw = src.fetch_manifest(digest, size)?;
    if let Some(size) = size {
        if raw.len() as u64 != size {
            return Err(SourceError::BlobSizeMismatch {
                digest: digest.to_string(),
                expected: size,
                got: raw.len() as u64,
            });
        }
    }
    check_digest(digest, &raw)?;
    Ok(raw)
}

impl ManifestChoice {
    /// The config's digest and size as the manifest states them, when it has them (a
    /// light look, before [`load_image`] parses and checks everything).
    pub fn config_descriptor(&self) -> Option<(String, u64)> {
        #[derive(serde::Deserialize)]
        struct Desc {
            digest: String,
            size: u64,
        }
        #[derive(serde::Deserialize)]
        struct Light {
            config: Desc,
        }
        let l: Light = serde_json::from_slice(&self.manifest_raw).ok()?;
        Some((l.config.digest, l.config.size))
    }
}

/// Reads the chosen manifest's config and lists its layers with their diff_ids.
pub fn load_image(
    src: &dyn ImageSource,
    choice: ManifestChoice,
) -> Result<ResolvedImage, SourceError> {
    load_image_with(src, choice, None)
}

/// [`load_image`], with the config's bytes already at hand (`config`: checked against the
/// manifest's digest like fetched ones; read from `src` if they differ).
pub fn load_image_with(
    src: &dyn ImageSource,
    choice: ManifestChoice,
    config: Option<Vec<u8>>,
) -> Result<ResolvedImage, SourceError> {
    let ManifestChoice {
        indexes,
        manifest_digest,
        manifest_raw: raw,
    } = choice;
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
    let config_raw = match config {
        Some(raw)
            if raw.len() as u64 == cdesc.size() && check_digest(&config_digest, &raw).is_ok() =>
        {
            raw
        }
        _ => super::source::read_json_blob(src, &config_digest, cdesc.size(), "config")?,
    };
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
        sha256_bytes(&digest)?;
        sha256_bytes(diff_id)?;
        layers.push(LayerDesc {
            digest,
            size: l.size(),
            media_type,
            diff_id: diff_id.clone(),
            compression,
            annotations: l
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    Ok(ResolvedImage {
        indexes,
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

/// [`resolve_manifest`] then [`load_image`], with nothing known beforehand.
pub fn resolve(
    src: &dyn ImageSource,
    platform: Option<&PlatformSpec>,
) -> Result<ResolvedImage, SourceError> {
    load_image(src, resolve_manifest(src, platform, &|_| None)?)
}
