//! The repository: a content-addressed object store plus images and refs.
//!
//! ```text
//! REPO/meta.json                 format version, hash algorithm, verity policy
//! REPO/objects/XX/…              file objects and EROFS images, by fs-verity digest
//! REPO/images/<image id>         symlink → ../objects/XX/… (images that may be mounted)
//! REPO/refs/images/<name>        symlink → ../../images/<image id> (GC roots)
//! REPO/deployments/<image id>.json  deployment records (GC roots; see deployments.rs)
//! REPO/tmp/                      staging; cleaned when the repository is opened alone
//! REPO/refs/records/<image id>   symlink → the image's latest record (below)
//! REPO/refs/manifests/<hex>      symlink → the record of the import of that OCI manifest
//! REPO/refs/names/<name>         symlink → the record of the import that set that name
//! REPO/refs/layers/<diff_id hex> symlink → a layer's splitstream; refs/blobs/<hex>: blobs
//! REPO/index/sha256/XX           the content index (index.rs)
//! REPO/claims/<alg>-<hex>[.partial|.sums|.wanted|.contents]  fetch claims, partial
//!                                downloads, announcements (claims.rs, announce.rs)
//! REPO/lock                      flock: shared for readers and writers, exclusive for gc
//! ```
//!
//! Every write is atomic (temporary file or symlink, then rename) and objects
//! are flushed (one `syncfs`) before any ref that needs them is written, so a
//! crash at any moment leaves a consistent repository.

pub mod announce;
pub mod claims;
pub mod deployments;
pub mod fsck;
pub mod gc;
pub mod index;
pub mod mounts;
pub mod objects;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::fsverity::{self, Algorithm, Digest};
use objects::{ObjectDir, ObjectError, VerityPolicy};

/// Current `meta.json` format version.
pub const FORMAT_VERSION: u32 = 1;

/// Repository errors: one clear cause each, naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("{}: not a strata repository (no meta.json); run `strata init` or pick another --repo", .0.display())]
    NotARepo(PathBuf),
    #[error("{}: unsupported repository format {found} (this strata reads format {FORMAT_VERSION})", path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("{}: invalid meta.json: {why}", path.display())]
    Meta { path: PathBuf, why: String },
    #[error("{}: repository already exists", .0.display())]
    Exists(PathBuf),
    #[error("{}: fs-verity is required, but it is {why}", path.display())]
    VerityRequired { path: PathBuf, why: String },
    #[error("no image named {0:?} (see `strata images`)")]
    NoSuchImage(String),
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

pub(crate) fn ioe(
    path: impl Into<PathBuf>,
    what: &'static str,
    e: impl Into<io::Error>,
) -> RepoError {
    RepoError::Io {
        path: path.into(),
        what,
        source: e.into(),
    }
}

/// Contents of `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub format: u32,
    /// `sha256` or `sha512`.
    pub algorithm: String,
    /// True when every object is required to have fs-verity enabled.
    pub verity_enforced: bool,
}

/// The default repository: `$STRATA_REPO`, else `/var/lib/strata` for root,
/// else `$XDG_DATA_HOME/strata` (or `~/.local/share/strata`).
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_REPO").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/strata");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("strata");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/strata")
}

/// Checks a user-chosen image name (it becomes a file name under refs/).
pub fn check_name(name: &str) -> Result<(), RepoError> {
    let bad = |why| {
        Err(RepoError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains control characters");
    }
    Ok(())
}

/// Lock modes on `REPO/lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An open repository, holding its lock for as long as it lives.
#[derive(Debug)]
pub struct Repository {
    root: PathBuf,
    meta: Meta,
    alg: Algorithm,
    objects: ObjectDir,
    lock: fs::File,
}

/// Facts about an image in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub name: Option<String>,
    pub id: String,
    /// Size of the EROFS image in bytes.
    pub image_size: u64,
    /// Distinct objects the image references, and their total size.
    pub objects: u64,
    pub data_size: u64,
}

impl Repository {
    /// Creates a repository at `root`. fs-verity is probed on its filesystem:
    /// where it is missing the repository is recorded as not verity-enforced
    /// (and `require_verity` makes that an error).
    pub fn init(
        root: &Path,
        alg: Algorithm,
        require_verity: bool,
    ) -> Result<(Repository, fsverity::Support), RepoError> {
        if root.join("meta.json").exists() {
            return Err(RepoError::Exists(root.to_path_buf()));
        }
        // Probe before creating anything, so a refusal leaves nothing behind.
        let created_root = !root.exists();
        fs::create_dir_all(root).map_err(|e| ioe(root, "cannot create repository", e))?;
        let support = fsverity::probe(root);
        if require_verity && !support.is_supported() {
            if created_root {
                let _ = fs::remove_dir(root);
            }
            let why = match &support {
                fsverity::Support::NotSupported { reason } => reason.clone(),
                fsverity::Support::Supported => String::new(),
            };
            return Err(RepoError::VerityRequired {
                path: root.to_path_buf(),
                why,
            });
        }
        for d in ["objects", "images", "refs/images", "tmp"] {
            fs::create_dir_all(root.join(d))
                .map_err(|e| ioe(root.join(d), "cannot create directory", e))?;
        }
        let meta = Meta {
            format: FORMAT_VERSION,
            algorithm: alg.name().to_string(),
            verity_enforced: support.is_supported(),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        install_meta(root, &json)?;
        sync_dir(root)?;
        Ok((Self::open(root, LockMode::Shared)?, support))
    }

    /// Opens the repository at `root` with the given lock.
    pub fn open(root: &Path, mode: LockMode) -> Result<Repository, RepoError> {
        let meta_path = root.join("meta.json");
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NotARepo(root.into()))
            }
            Err(e) => return Err(ioe(&meta_path, "cannot read", e)),
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| RepoError::Meta {
            path: meta_path.clone(),
            why: e.to_string(),
        })?;
        if meta.format != FORMAT_VERSION {
            return Err(RepoError::Format {
                path: root.into(),
                found: meta.format,
            });
        }
        let alg = Algorithm::from_name(&meta.algorithm).ok_or_else(|| RepoError::Meta {
            path: meta_path.clone(),
            why: format!("unknown algorithm {:?}", meta.algorithm),
        })?;
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("lock"))
            .or_else(|_| fs::File::open(root.join("lock")))
            .or_else(|_| fs::File::open(root))
            .map_err(|e| ioe(root.join("lock"), "cannot open lock", e))?;
        // Clean tmp/ when nobody else has the repository open.
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
            clean_dir(&root.join("tmp"));
            remove_meta_staging(root);
            if mode == LockMode::Shared {
                rustix::fs::flock(&lock, FlockOperation::LockShared)
                    .map_err(|e| ioe(root, "cannot lock", e))?;
            }
        } else {
            let op = match mode {
                LockMode::Shared => FlockOperation::LockShared,
                LockMode::Exclusive => FlockOperation::LockExclusive,
            };
            rustix::fs::flock(&lock, op).map_err(|e| ioe(root, "cannot lock", e))?;
        }
        let policy = if meta.verity_enforced {
            VerityPolicy::Require
        } else {
            VerityPolicy::Try
        };
        let objects = ObjectDir::open_with(&root.join("objects"), &root.join("tmp"), alg, policy)?;
        Ok(Repository {
            root: root.to_path_buf(),
            meta,
            alg,
            objects,
            lock,
        })
    }

    /// Opens the repository, creating it first if `root` holds none
    /// (first use needs no setup). Returns whether it was created, and the
    /// fs-verity probe result when it was.
    pub fn open_or_create(
        root: &Path,
        mode: LockMode,
    ) -> Result<(Repository, Option<fsverity::Support>), RepoError> {
        match Self::open(root, mode) {
            Err(RepoError::NotARepo(_)) => {
                let (r, support) = match Self::init(root, Algorithm::Sha256, false) {
                    Err(RepoError::Exists(_)) => return Ok((Self::open(root, mode)?, None)),
                    other => other?,
                };
                drop(r);
                Ok((Self::open(root, mode)?, Some(support)))
            }
            other => other.map(|r| (r, None)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn objects(&self) -> &ObjectDir {
        &self.objects
    }

    /// The fetch claims of this repository (see [`claims`]).
    pub fn claims(&self) -> claims::Claims {
        claims::Claims::new(self.root.join("claims"))
    }

    /// Converts the lock held (e.g. to exclusive for gc).
    pub fn relock(&self, mode: LockMode) -> Result<(), RepoError> {
        let op = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&self.lock, op).map_err(|e| ioe(&self.root, "cannot lock", e))
    }

    /// Stores an EROFS image as an object and, after flushing every object,
    /// records it under `images/` and (if given) as `refs/images/NAME`.
    pub fn commit_image(&self, image: &[u8], name: Option<&str>) -> Result<Digest, RepoError> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let (id, _) = self.objects.add_bytes(image)?;
        // Objects (file contents and the image) are durable before any link to them.
        self.objects.sync()?;
        if let Some(n) = name {
            // Named by no import now (create-image): forget the one that named it before.
            self.forget_name_record(n)?;
        }
        self.commit_image_link(&id, name)?;
        Ok(id)
    }

    /// Links an image that is already a (flushed) object under `images/`,
    /// and names it `name` if given.
    pub fn commit_image_link(&self, id: &Digest, name: Option<&str>) -> Result<(), RepoError> {
        symlink_atomic(
            &format!("../objects/{}", id.object_path()),
            &self.root.join("images").join(id.to_hex()),
            &self.root.join("tmp"),
        )?;
        sync_dir(&self.root.join("images"))?;
        if let Some(n) = name {
            self.tag_image(id, n)?;
        }
        Ok(())
    }

    /// Image names (refs) and the image id each points at.
    pub fn image_refs(&self) -> Result<Vec<(String, Option<String>)>, RepoError> {
        let dir = self.root.join("refs/images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ioe(&dir, "cannot read", e))? {
            let e = e.map_err(|e| ioe(&dir, "cannot read", e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let id = fs::read_link(e.path())
                .ok()
                .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
            out.push((name, id));
        }
        out.sort();
        Ok(out)
    }

    /// Resolves a name or an image id (full hex) to the image id.
    pub fn resolve(&self, name_or_id: &str) -> Result<Digest, RepoError> {
        if check_name(name_or_id).is_ok() {
            let link = self.root.join("refs/images").join(name_or_id);
            if let Ok(t) = fs::read_link(&link) {
                if let Some(hex) = t.file_name().and_then(|f| f.to_str()) {
                    if let Ok(d) = Digest::from_hex(self.alg, hex) {
                        return Ok(d);
                    }
                }
            }
        }
        if let Ok(d) = Digest::from_hex(self.alg, name_or_id) {
            if self.root.join("images").join(d.to_hex()).exists() {
                return Ok(d);
            }
        }
        Err(RepoError::NoSuchImage(name_or_id.to_string()))
    }

    /// Path of an image's EROFS file.
    pub fn image_path(&self, id: &Digest) -> PathBuf {
        self.objects.object_path(id)
    }

    /// Reads and parses an image.
    pub fn read_image(&self, id: &Digest) -> Result<erofs::ReadImage, RepoError> {
        let p = self.image_path(id);
        let bytes = fs::read(&p).map_err(|e| ioe(&p, "cannot read image", e))?;
        erofs::read_image(&bytes).map_err(|e| {
            ioe(
                &p,
                "corrupt image",
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Describes an image: sizes and the objects it references.
    pub fn image_info(&self, name: Option<String>, id: &Digest) -> Result<ImageInfo, RepoError> {
        let image = self.read_image(id)?;
        let mut objs = std::collections::BTreeSet::new();
        for r in image_redirects(&image.tree) {
            objs.insert(r);
        }
        let mut data_size = 0;
        for r in &objs {
            if let Ok(st) =
                rustix::fs::statat(self.objects.dir_fd(), r.as_slice(), AtFlags::empty())
            {
                data_size += st.st_size as u64;
            }
        }
        let image_size = fs::metadata(self.image_path(id))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(ImageInfo {
            name,
            id: id.to_hex(),
            image_size,
            objects: objs.len() as u64,
            data_size,
        })
    }

    /// Points `refs/NS/NAME` at an object (atomically). Namespaces other than
    /// `images` hold caches and metadata: `layers` (diff_id → splitstream),
    /// `blobs` (OCI digest → manifest/config bytes), `records` (image id → its latest
    /// record), `manifests` (manifest digest → import record), `names` (image name →
    /// the record of the import that set it).
    pub fn set_ref(&self, ns: &str, name: &str, target: &Digest) -> Result<(), RepoError> {
        let dir = self.root.join("refs").join(ns);
        fs::create_dir_all(&dir).map_err(|e| ioe(&dir, "cannot create directory", e))?;
        symlink_atomic(
            &format!("../../objects/{}", target.object_path()),
            &dir.join(name),
            &self.root.join("tmp"),
        )
    }

    /// The object `refs/NS/NAME` points at, if the ref and the object exist.
    pub fn get_ref(&self, ns: &str, name: &str) -> Option<Digest> {
        let t = fs::read_link(self.root.join("refs").join(ns).join(name)).ok()?;
        let d = Digest::from_object_path(t.to_str()?).ok()?;
        self.objects.contains(&d).then_some(d)
    }

    /// All refs of a namespace with their targets (None when dangling or malformed).
    pub fn list_refs(&self, ns: &str) -> Vec<(String, Option<Digest>)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("refs").join(ns)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let d = fs::read_link(e.path())
                    .ok()
                    .and_then(|t| t.to_str().and_then(|t| Digest::from_object_path(t).ok()));
                out.push((name, d));
            }
        }
        out.sort();
        out
    }

    /// Removes `refs/NS/NAME` if present.
    pub fn remove_ns_ref(&self, ns: &str, name: &str) -> Result<(), RepoError> {
        let p = self.root.join("refs").join(ns).join(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ioe(p, "cannot remove", e)),
        }
    }

    /// Reads a whole object.
    pub fn read_object(&self, d: &Digest) -> Result<Vec<u8>, RepoError> {
        let p = self.objects.object_path(d);
        fs::read(&p).map_err(|e| ioe(p, "cannot read object", e))
    }

    /// Makes `NAME` point at an existing image.
    pub fn tag_image(&self, id: &Digest, name: &str) -> Result<(), RepoError> {
        check_name(name)?;
        symlink_atomic(
            &format!("../../images/{}", id.to_hex()),
            &self.root.join("refs/images").join(name),
            &self.root.join("tmp"),
        )?;
        sync_dir(&self.root.join("refs/images"))
    }

    /// Removes the name `name` (the image stays until gc finds it unreferenced).
    pub fn remove_ref(&self, name: &str) -> Result<(), RepoError> {
        check_name(name)?;
        let p = self.root.join("refs/images").join(name);
        match fs::remove_file(&p) {
            Ok(()) => {
                sync_dir(&self.root.join("refs/images"))?;
                // Best effort: a names ref left behind is ignored once its name names
                // another image, and gc removes it.
                let _ = self.remove_ns_ref("names", name);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RepoError::NoSuchImage(name.into()))
            }
            Err(e) => Err(ioe(p, "cannot remove", e)),
        }
    }
}

/// Metadata that travels with an image (e.g. how an OCI image was imported),
/// stored as an object under `refs/records/<image id>` (and, for an OCI import, under
/// `refs/manifests/<manifest hex>` and `refs/names/<name>`). `keeps` lists the objects
/// (`XX/YYYY…`) it needs beyond the image's own (manifests, configs, splitstreams and
/// their payloads); `refs` the refs in other namespaces that belong to it. gc keeps both while the image is
/// named, and removes them with it. One image may have several records: two manifests
/// with different layers can build one tree (a squashed copy), and each keeps its
/// layers through its `refs/manifests` ref. Other fields are the importer's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub image: String,
    #[serde(default)]
    pub keeps: Vec<String>,
    #[serde(default)]
    pub refs: Vec<(String, String)>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Repository {
    /// Stores a record for an image (objects are flushed by the caller's
    /// commit) and links it as `refs/records/<image id>`.
    pub fn store_record(&self, record: &Record) -> Result<Digest, RepoError> {
        let bytes = serde_json::to_vec(record).expect("record serializes");
        let (d, _) = self.objects.add_bytes(&bytes)?;
        Ok(d)
    }

    /// Reads the record of an image, if it has one (its latest, when several imports
    /// built it: see [`Record`]).
    pub fn record(&self, image: &Digest) -> Option<Record> {
        let d = self.get_ref("records", &image.to_hex())?;
        self.read_record(&d)
    }

    /// The record of the import that set the name `name` on image `image`
    /// (`refs/names/<name>`), else the image's latest. Two images with one tree (a squashed
    /// copy and its layered original) share an id; each name keeps its own layers.
    pub fn record_named(&self, name: &str, image: &Digest) -> Option<Record> {
        check_name(name)
            .ok()
            .and_then(|()| self.get_ref("names", name))
            .and_then(|d| self.read_record(&d))
            .filter(|r| r.image == image.to_hex())
            .or_else(|| self.record(image))
    }

    /// Remembers that the name `name` is set by the import whose record is `record`.
    /// Call it *before* tagging, so that a crash in between leaves a names ref whose
    /// image the name does not name (ignored, and removed by gc), never a name whose
    /// names ref is another import's.
    pub fn name_record(&self, name: &str, record: &Digest) -> Result<(), RepoError> {
        check_name(name)?;
        self.set_ref("names", name, record)?;
        sync_dir(&self.root.join("refs/names"))
    }

    /// Forgets which import set the name `name` (before it names something else).
    pub fn forget_name_record(&self, name: &str) -> Result<(), RepoError> {
        check_name(name)?;
        self.remove_ns_ref("names", name)
    }

    fn read_record(&self, d: &Digest) -> Option<Record> {
        serde_json::from_slice(&self.read_object(d).ok()?).ok()
    }
}

/// Object paths (`XX/YYYY…`, relative) that an image's files redirect to.
pub fn image_redirects(tree: &erofs::Tree) -> impl Iterator<Item = Vec<u8>> + '_ {
    tree.inodes.iter().filter_map(|i| match &i.content {
        erofs::Content::Regular(erofs::File {
            data: erofs::FileData::External {
                redirect: Some(r), ..
            },
            ..
        }) => Some(r.strip_prefix(b"/").unwrap_or(r).to_vec()),
        _ => None,
    })
}

fn clean_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path()).or_else(|_| fs::remove_dir_all(e.path()));
        }
    }
}

fn tmp_name(tmp: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    tmp.join(format!(
        ".{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes a small file atomically (temp file in `tmp`, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], tmp: &Path) -> Result<(), RepoError> {
    use std::io::Write;
    let t = tmp_name(tmp);
    let res = (|| {
        let mut f = fs::File::create(&t)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&t, path)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&t);
        ioe(path, "cannot write", e)
    })
}

/// Points `link` at `target` atomically (symlink in `tmp`, rename over).
pub fn symlink_atomic(target: &str, link: &Path, tmp: &Path) -> Result<(), RepoError> {
    let t = tmp_name(tmp);
    std::os::unix::fs::symlink(target, &t).map_err(|e| ioe(&t, "cannot create symlink", e))?;
    fs::rename(&t, link).map_err(|e| {
        let _ = fs::remove_file(&t);
        ioe(link, "cannot write ref", e)
    })
}

/// Prefix of the staging files of `meta.json` in a repository's root; ones left by a crash
/// are removed by the next lone `open`.
const META_STAGING: &str = ".meta.json.";

/// Writes `meta.json` of a new repository unless one appeared meanwhile
/// ([`RepoError::Exists`]): several processes may create one repository at once (two
/// `strata pull` on a fresh `--repo`). The staging file is in the root, not in `tmp/`,
/// which another process's `open` may empty at any moment; it is linked into place (which
/// fails if the name exists), so exactly one creator wins and nobody waits for another.
fn install_meta(root: &Path, json: &[u8]) -> Result<(), RepoError> {
    use std::io::Write;
    let meta = root.join("meta.json");
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        // Created exclusively: processes sharing a pid (containers on one volume) clash
        // into a new name, never truncate each other's file.
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = root.join(format!("{META_STAGING}{}.{n}", std::process::id()));
        let mut f = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ioe(&staged, "cannot create", e)),
        };
        // Locked while it is ours: `remove_meta_staging` takes only unlocked ones.
        let res = rustix::fs::flock(&f, FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .and_then(|()| f.write_all(json))
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::hard_link(&staged, &meta));
        let _ = fs::remove_file(&staged);
        match res {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RepoError::Exists(root.to_path_buf()))
            }
            // Removed by a cleaner between our create and our lock: again, new name.
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = e,
            Err(e) => return Err(ioe(&meta, "cannot write", e)),
        }
    }
    Err(ioe(&meta, "cannot write", last))
}

/// Removes `meta.json` staging files left in `root` by creators that died: those nobody
/// holds locked (a live creator locks its file from just after creating it to its
/// removal; one caught in between retries under a new name).
fn remove_meta_staging(root: &Path) {
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with(META_STAGING) {
            continue;
        }
        let Ok(f) = fs::File::open(e.path()) else {
            continue;
        };
        if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// fsyncs a directory (making renames in it durable).
pub fn sync_dir(dir: &Path) -> Result<(), RepoError> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ioe(dir, "cannot open", e))?;
    rustix::fs::fsync(fd.as_fd()).map_err(|e| ioe(dir, "fsync", e))
}

#[allow(dead_code)]
fn _assert_send() {
    fn s<T: Send + Sync>() {}
    s::<Repository>();
}

#[cfg(test)]
mod create_tests {
    use super::*;

    /// Many processes (threads here: each opens its own lock file description) creating
    /// one repository at once: exactly one creates it, every one opens it, and none
    /// loses a file to another's tmp/ cleaning.
    #[test]
    fn concurrent_first_uses_create_one_repository() {
        for _ in 0..20 {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("repo");
            let created: Vec<bool> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..6)
                    .map(|_| {
                        let root = root.clone();
                        s.spawn(move || {
                            let (r, c) = Repository::open_or_create(&root, LockMode::Shared)
                                .expect("open_or_create");
                            assert_eq!(r.algorithm(), Algorithm::Sha256);
                            c.is_some()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
            let left: Vec<_> = fs::read_dir(&root)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(META_STAGING))
                .collect();
            assert!(left.is_empty(), "staging files left: {left:?}");
        }
    }

    #[test]
    fn a_dead_creators_staging_file_goes_a_live_ones_stays() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        drop(Repository::open_or_create(&root, LockMode::Shared).unwrap());
        let dead = root.join(format!("{META_STAGING}1.dead"));
        let live = root.join(format!("{META_STAGING}2.live"));
        fs::write(&dead, b"{").unwrap();
        fs::write(&live, b"{").unwrap();
        let held = fs::File::open(&live).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();
        drop(Repository::open(&root, LockMode::Shared).unwrap());
        assert!(!dead.exists(), "unlocked: its creator died");
        assert!(live.exists(), "locked: its creator is at work");
    }
}
