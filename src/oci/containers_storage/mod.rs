//! containers-storage (podman's image store) as an image source:
//! `containers-storage:[DRIVER@ROOT+RUNROOT]IMAGE` (containers-transports(5)).
//!
//! What a caller may rely on:
//!
//! * **Consistency.** Opening the source takes the store's own read locks (the POSIX record
//!   locks on `overlay-layers/layers.lock` and `overlay-images/images.lock`, see
//!   [`store`]) and holds them until the source is dropped: a concurrent `podman pull` or
//!   `podman rmi` waits for the import instead of changing files under it. A store whose
//!   writer holds a lock longer than [`store::LOCK_TIMEOUT`] (60 s,
//!   `$STRATA_STORAGE_LOCK_TIMEOUT`) gives a "store busy" error.
//! * **Nothing unverified.** The manifest and config are checked against their digests like
//!   any source's. Layers are not stored as tars: each is re-serialised from its tar-split
//!   (headers, exactly as pulled) and the files of its `diff` directory (contents), and the
//!   rebuilt stream must hash to the layer's diff_id; a file changed in the store fails the
//!   import, naming the file. So the splitstream is the one a registry pull of the same
//!   layer makes, and the image id is the same.
//! * **Zero copy.** The stream offers the file behind each payload, so objects are cloned
//!   from it (FICLONE where store and repository share a reflink-capable filesystem, a copy
//!   elsewhere); the bytes are still read once, for the diff_id and the fs-verity digest.
//! * Only the overlay driver's layout is read; owners, modes, whiteouts and opaque
//!   directories come from the tar-split headers, never from the (possibly id-shifted) files
//!   or overlay markers on disk.

pub mod error;
mod layer;
pub mod store;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::SourceError;
use super::manifest::{LayerDesc, MAX_JSON_SIZE};
use super::source::{ImageSource, LocalLayer, Top};
pub use error::StorageError;
use store::{ImageRecord, LayerRecord, ReadLock};

/// Deepest layer chain followed.
const MAX_LAYERS: usize = 4096;

/// `containers-storage:[DRIVER@ROOT+RUNROOT]IMAGE`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub driver: Option<String>,
    pub root: Option<PathBuf>,
    pub runroot: Option<PathBuf>,
    pub image: String,
}

impl StorageRef {
    /// Parses what follows `containers-storage:`.
    pub fn parse(spec: &str) -> Result<StorageRef, StorageError> {
        let bad = |why| StorageError::BadReference {
            spec: spec.to_string(),
            why,
        };
        let (store, image) = match spec.strip_prefix('[') {
            Some(rest) => {
                let (inner, image) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
                (Some(inner), image)
            }
            None => (None, spec),
        };
        if image.is_empty() {
            return Err(bad("no image named"));
        }
        let mut r = StorageRef {
            driver: None,
            root: None,
            runroot: None,
            image: image.to_string(),
        };
        if let Some(inner) = store {
            let (driver, roots) = match inner.split_once('@') {
                Some((d, rest)) => (Some(d), rest),
                None => (None, inner),
            };
            if driver.is_some_and(str::is_empty) {
                return Err(bad("empty driver before @"));
            }
            let (root, runroot) = match roots.split_once('+') {
                Some((a, b)) => (a, Some(b)),
                None => (roots, None),
            };
            if !root.starts_with('/') || runroot.is_some_and(|r| !r.starts_with('/')) {
                return Err(bad(
                    "the store's paths must be absolute ([DRIVER@ROOT+RUNROOT])",
                ));
            }
            r.driver = driver.map(str::to_string);
            r.root = Some(root.into());
            r.runroot = runroot.map(PathBuf::from);
        }
        Ok(r)
    }
}

/// One image of a containers-storage overlay store, read under the store's read locks.
pub struct StorageSource {
    root: PathBuf,
    runroot: PathBuf,
    image: ImageRecord,
    /// The name the image was found by (normalised), if found by name.
    name: Option<String>,
    /// The image's layers, top first.
    layers: Vec<LayerRecord>,
    // Held for the source's lifetime; layers before images, as containers-storage does.
    _locks: (ReadLock, ReadLock),
}

impl StorageSource {
    /// Opens the image `spec` (what follows `containers-storage:`) names.
    pub fn open(spec: &str) -> Result<StorageSource, SourceError> {
        let r = StorageRef::parse(spec)?;
        let (conf_driver, def_root, def_run) = match &r.root {
            Some(_) => (None, PathBuf::new(), PathBuf::new()),
            None => store::default_store()?,
        };
        let root = r.root.clone().unwrap_or(def_root);
        let runroot = r.runroot.clone().unwrap_or(def_run);
        let driver = r.driver.clone().or(conf_driver);
        match driver.as_deref() {
            Some("overlay" | "overlay2") => {}
            Some(other) => {
                return Err(StorageError::UnsupportedDriver {
                    root,
                    driver: other.to_string(),
                }
                .into())
            }
            None => {
                if !root.join("overlay-images").is_dir() {
                    return Err(guess_driver(&root).into());
                }
            }
        }
        if !root.join("overlay-images/images.json").is_file() {
            return Err(StorageError::NotAStore { root }.into());
        }
        let timeout = store::lock_timeout();
        let layers_lock = store::read_lock(&root.join("overlay-layers/layers.lock"), timeout)?;
        let images_lock = store::read_lock(&root.join("overlay-images/images.lock"), timeout)?;
        let images: Vec<ImageRecord> = store::read_json(
            &root.join("overlay-images/images.json"),
            store::MAX_STORE_JSON,
            "cannot read",
        )?;
        let (image, name) = find_image(&root, &images, &r.image)?;
        let all_layers: Vec<LayerRecord> = store::read_json(
            &root.join("overlay-layers/layers.json"),
            store::MAX_STORE_JSON,
            "cannot read",
        )?;
        let layers = layer_chain(&root, &image, &all_layers)?;
        Ok(StorageSource {
            root,
            runroot,
            image,
            name,
            layers,
            _locks: (layers_lock, images_lock),
        })
    }

    /// The source as recorded with imported images:
    /// `containers-storage:[overlay@ROOT+RUNROOT]NAME-or-ID`.
    pub fn canonical(&self) -> String {
        format!(
            "containers-storage:[overlay@{}+{}]{}",
            self.root.display(),
            self.runroot.display(),
            self.name.as_deref().unwrap_or(&self.image.id)
        )
    }

    /// The store's image id (not strata's).
    pub fn image_id(&self) -> &str {
        &self.image.id
    }

    fn bad_image(&self, what: impl Into<String>) -> StorageError {
        StorageError::BadImage {
            root: self.root.clone(),
            image: self.image.id.clone(),
            what: what.into(),
        }
    }

    /// A big-data item of the image, bounded by [`MAX_JSON_SIZE`].
    fn big_data(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.image.big_data_names.iter().any(|k| k == key) {
            return Ok(None);
        }
        let path = self
            .root
            .join("overlay-images")
            .join(&self.image.id)
            .join(store::big_data_file(key));
        store::read_bounded(&path, MAX_JSON_SIZE, "cannot read").map(Some)
    }
}

/// What a store without `overlay-images/` holds: another driver's, or none.
fn guess_driver(root: &Path) -> StorageError {
    let found = std::fs::read_dir(root).ok().and_then(|d| {
        d.filter_map(Result::ok).find_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_suffix("-images").map(str::to_string)
        })
    });
    match found {
        Some(driver) => StorageError::UnsupportedDriver {
            root: root.to_path_buf(),
            driver,
        },
        None => StorageError::NotAStore {
            root: root.to_path_buf(),
        },
    }
}

/// Finds the image `want` names: a reference (normalised like docker references, short
/// names also tried under `localhost/`), `NAME@DIGEST`, a full id or a unique id prefix.
fn find_image(
    root: &Path,
    images: &[ImageRecord],
    want: &str,
) -> Result<(ImageRecord, Option<String>), StorageError> {
    let not_found = || StorageError::ImageNotFound {
        root: root.to_path_buf(),
        image: want.to_string(),
    };
    let id = want.strip_prefix("sha256:").unwrap_or(want);
    if store::valid_id(id) {
        if let Some(i) = images.iter().find(|i| i.id == id) {
            return Ok((i.clone(), None));
        }
    }
    if let Ok(r) = crate::registry::Reference::parse(want) {
        let mut candidates = vec![r.clone()];
        if !want.contains('/')
            || !want
                .split('/')
                .next()
                .is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost")
        {
            if let Ok(l) = crate::registry::Reference::parse(&format!("localhost/{want}")) {
                candidates.push(l);
            }
        }
        for c in candidates {
            let hit = match &c.digest {
                Some(d) => {
                    let repo = format!("{}/{}", c.registry, c.repository);
                    images.iter().find(|i| {
                        (i.digest.as_deref() == Some(d) || i.digests.iter().any(|x| x == d))
                            && i.names.iter().any(|n| {
                                crate::registry::Reference::parse(n).is_ok_and(|nr| {
                                    format!("{}/{}", nr.registry, nr.repository) == repo
                                })
                            })
                    })
                }
                None => {
                    let name = c.to_string();
                    images.iter().find(|i| i.names.contains(&name))
                }
            };
            if let Some(i) = hit {
                return Ok((i.clone(), Some(c.to_string())));
            }
        }
    }
    if id.len() >= 3 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        let hits: Vec<&ImageRecord> = images.iter().filter(|i| i.id.starts_with(id)).collect();
        match hits.len() {
            0 => {}
            1 => return Ok((hits[0].clone(), None)),
            count => {
                return Err(StorageError::AmbiguousId {
                    root: root.to_path_buf(),
                    prefix: id.to_string(),
                    count,
                })
            }
        }
    }
    Err(not_found())
}

/// The image's layers, top first, each present and complete.
fn layer_chain(
    root: &Path,
    image: &ImageRecord,
    all: &[LayerRecord],
) -> Result<Vec<LayerRecord>, StorageError> {
    let bad = |what: String| StorageError::BadImage {
        root: root.to_path_buf(),
        image: image.id.clone(),
        what,
    };
    if !store::valid_id(&image.id) {
        return Err(bad("invalid image id".into()));
    }
    let mut chain = Vec::new();
    let mut next = image.layer.clone();
    while let Some(id) = next.filter(|s| !s.is_empty()) {
        if chain.len() >= MAX_LAYERS {
            return Err(bad(format!("layer chain longer than {MAX_LAYERS}")));
        }
        let l = all.iter().find(|l| l.id == id).ok_or_else(|| {
            bad(format!(
                "layer {id} missing from overlay-layers/layers.json"
            ))
        })?;
        if !store::valid_id(&l.id) {
            return Err(bad(format!("invalid layer id {:?}", l.id)));
        }
        if l.incomplete() {
            return Err(bad(format!(
                "layer {id} is marked incomplete (a pull in progress or interrupted)"
            )));
        }
        next = l.parent.clone();
        chain.push(l.clone());
    }
    Ok(chain)
}

impl ImageSource for StorageSource {
    fn top(&self) -> Result<Top, SourceError> {
        let raw = self
            .big_data("manifest")?
            .ok_or_else(|| self.bad_image("no manifest stored"))?;
        Ok(Top::Fetched {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
            raw,
            media_type: None,
        })
    }

    fn fetch_manifest(&self, digest: &str, _size: Option<u64>) -> Result<Vec<u8>, SourceError> {
        self.big_data(&format!("manifest-{digest}"))?
            .ok_or_else(|| SourceError::BlobNotFound {
                digest: digest.to_string(),
            })
    }

    fn open_raw_blob(&self, digest: &str, _size: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        // Only the config is kept as a blob (big-data under its digest); layers are
        // read through `open_local_layer`.
        match self.big_data(digest)? {
            Some(raw) => Ok(Box::new(std::io::Cursor::new(raw))),
            None => Err(SourceError::BlobNotFound {
                digest: digest.to_string(),
            }),
        }
    }

    fn open_local_layer(&self, layer: &LayerDesc) -> Result<Option<LocalLayer>, SourceError> {
        let l = self
            .layers
            .iter()
            .find(|l| l.diff_digest.as_deref() == Some(&layer.diff_id))
            .ok_or_else(|| {
                self.bad_image(format!(
                    "no layer with diff_id {} in its layer chain",
                    layer.diff_id
                ))
            })?;
        let t = layer::LayerTar::open(&self.root, &l.id, &layer.diff_id)?;
        Ok(Some(Box::new(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = StorageRef::parse("[overlay@/a/root+/a/run]alpine:3").unwrap();
        assert_eq!(r.driver.as_deref(), Some("overlay"));
        assert_eq!(r.root.as_deref(), Some(Path::new("/a/root")));
        assert_eq!(r.runroot.as_deref(), Some(Path::new("/a/run")));
        assert_eq!(r.image, "alpine:3");
        let r = StorageRef::parse("[/r+/s]abc").unwrap();
        assert_eq!((r.driver, r.image.as_str()), (None, "abc"));
        let r = StorageRef::parse("docker.io/library/alpine:latest").unwrap();
        assert_eq!(r.root, None);
        for (bad, why) in [
            ("[overlay@/r+/s", "missing ]"),
            ("[overlay@/r+/s]", "no image named"),
            (
                "[vfs@r+/s]x",
                "the store's paths must be absolute ([DRIVER@ROOT+RUNROOT])",
            ),
            ("[@/r]x", "empty driver before @"),
        ] {
            let e = StorageRef::parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("containers-storage:{bad}: {why}"));
        }
    }
}
