//! Deployment records: `REPO/deployments/<image id>.json`, one per image
//! deployed with `strata deploy` (see `doc/deployments.md`). This is
//! storage only; what a deployment is and when it goes away is
//! the boot module's business.
//!
//! A record is a GC root from the moment it exists: gc keeps the image of
//! every file named `<image id>.json` here, even one it cannot parse, so a
//! half-written or damaged record never lets gc take an image a boot entry
//! may point at. Records are written atomically (temporary file, fsync,
//! rename, fsync of the directory). `REPO/deployments/lock` serialises
//! deploy, rollback and deployment gc (flock, exclusive), and is always
//! taken before the repository lock.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::{ioe, sync_dir, write_atomic, RepoError, Repository};
use crate::fsverity::Digest;

/// Directory of the records, relative to the repository.
pub const DEPLOYMENTS_DIR: &str = "deployments";

/// One deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Image id (hex).
    pub image: String,
    /// The image's name in the repository when deployed, if any.
    #[serde(default)]
    pub name: Option<String>,
    /// What `deploy` was given (a name, an id or a pull source).
    pub source: String,
    /// When it was deployed (seconds since the epoch).
    pub deployed: u64,
    pub kernel_version: String,
    /// Paths of the kernel and initramfs within the boot partition.
    pub linux: String,
    pub initrd: String,
    /// The image's own kernel arguments (kargs.d).
    #[serde(default)]
    pub image_kargs: Vec<String>,
    /// Arguments given with `--karg` (and carried from the deployment before).
    #[serde(default)]
    pub local_kargs: Vec<String>,
    /// The deployment whose `/etc` changes this one started with.
    #[serde(default)]
    pub etc_from: Option<String>,
}

/// Holds `REPO/deployments/lock` until dropped.
#[derive(Debug)]
pub struct DeployLock {
    _file: fs::File,
}

/// Path of the records directory of the repository at `root`.
pub fn dir_of(root: &Path) -> PathBuf {
    root.join(DEPLOYMENTS_DIR)
}

/// Takes the deployments lock of the repository at `root` (waiting for it).
/// Call before opening the repository.
pub fn lock(root: &Path) -> Result<DeployLock, RepoError> {
    let dir = dir_of(root);
    fs::create_dir_all(&dir).map_err(|e| ioe(&dir, "cannot create directory", e))?;
    let p = dir.join("lock");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| ioe(&p, "cannot open lock", e))?;
    rustix::fs::flock(&f, FlockOperation::LockExclusive).map_err(|e| ioe(&p, "cannot lock", e))?;
    Ok(DeployLock { _file: f })
}

impl Repository {
    fn deployment_path(&self, image: &str) -> PathBuf {
        dir_of(self.root()).join(format!("{image}.json"))
    }

    /// Writes (or replaces) the record of a deployment, durably.
    pub fn put_deployment(&self, r: &DeploymentRecord) -> Result<(), RepoError> {
        let dir = dir_of(self.root());
        fs::create_dir_all(&dir).map_err(|e| ioe(&dir, "cannot create directory", e))?;
        let json = serde_json::to_vec_pretty(r).expect("serializes");
        write_atomic(
            &self.deployment_path(&r.image),
            &json,
            &self.root().join("tmp"),
        )?;
        sync_dir(&dir)
    }

    /// The record of image `image` (hex), if there is a readable one.
    pub fn deployment(&self, image: &str) -> Option<DeploymentRecord> {
        let b = fs::read(self.deployment_path(image)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Image ids (hex) that have a record file, readable or not.
    pub fn deployed_images(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(dir_of(self.root())) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let id = n.strip_suffix(".json")?;
                (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| id.to_string())
            })
            .collect();
        out.sort();
        out
    }

    /// The deployed images as digests (for gc's roots).
    pub fn deployed_digests(&self) -> Vec<Digest> {
        self.deployed_images()
            .iter()
            .filter_map(|h| Digest::from_hex(self.algorithm(), h).ok())
            .collect()
    }

    /// Removes the record of image `image`; a missing one is not an error.
    pub fn remove_deployment(&self, image: &str) -> Result<(), RepoError> {
        let p = self.deployment_path(image);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&dir_of(self.root())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ioe(p, "cannot remove", e)),
        }
    }
}
