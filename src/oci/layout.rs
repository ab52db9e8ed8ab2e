//! OCI image layouts (directories) and `oci-archive` tar files as image sources.
//!
//! [`OciSource::open`] opens either kind; [`OciSource::resolve`] turns a tag or digest (and a
//! platform, for multi-platform indexes) into a [`ResolvedImage`]: the manifest, the config
//! and the layer list with diff_ids. [`OciSource::open_blob`] and [`OciSource::open_layer`]
//! stream blobs and decompressed layers with size, digest and diff_id verification.
//! [`OciSource::named`] makes it the [`ImageSource`] the import pipeline takes.
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

use oci_spec::image::{Descriptor, ImageIndex};

use super::error::SourceError;
use super::manifest::{self, ref_name, LayerDesc, PlatformSpec, ResolvedImage, MAX_JSON_SIZE};
use super::reference::{ImageRef, Reference};
use super::source::{self, BlobReader, ImageSource, LayerReader, Top};
use super::verify::sha256_bytes;

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
        source::open_blob(&self.unnamed(), digest, size)
    }

    /// [`Self::open_blob`] for a descriptor.
    pub fn open_descriptor(&self, desc: &Descriptor) -> Result<BlobReader, SourceError> {
        self.open_blob(desc.digest().as_ref(), desc.size())
    }

    /// Stream a layer's uncompressed tar: blob verified against digest and size,
    /// decompressed by media type, and checked against the diff_id at EOF.
    pub fn open_layer(&self, layer: &LayerDesc) -> Result<LayerReader, SourceError> {
        source::open_layer(&self.unnamed(), layer)
    }

    fn unnamed(&self) -> Named<'_> {
        Named {
            src: self,
            reference: None,
        }
    }

    /// Resolve a tag or digest (none: the only image) to a manifest, config and layers,
    /// choosing `platform` (default: the host's) in multi-platform indexes.
    pub fn resolve(
        &self,
        reference: Option<&Reference>,
        platform: Option<&PlatformSpec>,
    ) -> Result<ResolvedImage, SourceError> {
        let named = Named {
            src: self,
            reference,
        };
        manifest::resolve(&named, platform)
    }

    /// This source with the image named by `reference`, as an [`ImageSource`].
    pub fn named(self, reference: Option<Reference>) -> NamedLayout {
        NamedLayout {
            src: self,
            reference,
        }
    }

    fn raw_blob(
        &self,
        digest: &str,
        size: Option<u64>,
    ) -> Result<(Box<dyn Read + Send>, u64), SourceError> {
        // Validate the digest before using it as a file name.
        sha256_bytes(digest)?;
        let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let (r, actual, _) = self.open_file(&name).map_err(|e| match e {
            SourceError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                SourceError::BlobNotFound {
                    digest: digest.to_string(),
                }
            }
            e => e,
        })?;
        if let Some(size) = size {
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
        }
        Ok((r, actual))
    }

    /// A manifest or index blob, bounded by [`MAX_JSON_SIZE`] (not verified here).
    pub fn fetch_manifest(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, SourceError> {
        let (mut r, actual) = self.raw_blob(digest, size)?;
        if actual > MAX_JSON_SIZE {
            return Err(SourceError::JsonTooLarge {
                digest: digest.to_string(),
                what: "manifest",
                size: actual,
            });
        }
        let mut v = Vec::with_capacity(actual as usize);
        r.read_to_end(&mut v).map_err(SourceError::Read)?;
        Ok(v)
    }

    fn select_top(&self, reference: Option<&Reference>) -> Result<Top, SourceError> {
        let manifests = self.index.manifests();
        let from = |d: &Descriptor| Top::Known {
            digest: d.digest().to_string(),
            size: Some(d.size()),
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
                Ok(Top::Known {
                    digest: digest.clone(),
                    size: Some(size),
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
        sha256_bytes(digest)?;
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
}

/// A layout borrowed with the reference that names an image in it.
struct Named<'a> {
    src: &'a OciSource,
    reference: Option<&'a Reference>,
}

impl ImageSource for Named<'_> {
    fn top(&self) -> Result<Top, SourceError> {
        self.src.select_top(self.reference)
    }

    fn fetch_manifest(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, SourceError> {
        self.src.fetch_manifest(digest, size)
    }

    fn open_raw_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(self.src.raw_blob(digest, Some(size))?.0)
    }
}

/// A layout or archive together with the tag or digest naming one image in it.
pub struct NamedLayout {
    src: OciSource,
    reference: Option<Reference>,
}

impl ImageSource for NamedLayout {
    fn top(&self) -> Result<Top, SourceError> {
        self.src.select_top(self.reference.as_ref())
    }

    fn fetch_manifest(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, SourceError> {
        self.src.fetch_manifest(digest, size)
    }

    fn open_raw_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(self.src.raw_blob(digest, Some(size))?.0)
    }
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
