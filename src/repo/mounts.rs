//! Which images are mounted: `strata mount` leaves a record in
//! `REPO/mounts/`, `strata umount` removes it, and gc keeps the images of
//! records whose mount still exists (so `rm` + `gc` cannot pull objects out
//! from under a running container). Deciding whether a mount still exists
//! is the caller's business (see `mount::is_mounted`): this is storage only.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ioe, write_atomic, RepoError, Repository};

/// One mount of a repository image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Image id (hex).
    pub image: String,
    /// Where it was mounted, as seen in its mount namespace.
    pub mountpoint: PathBuf,
    /// The mount's unique id (`STATX_MNT_ID_UNIQUE`; never reused).
    pub mnt_id: u64,
    /// Inode of the mount namespace it was made in.
    pub mnt_ns: u64,
}

impl MountRecord {
    fn file_name(&self) -> String {
        format!("{}-{}.json", self.mnt_ns, self.mnt_id)
    }
}

impl Repository {
    fn mounts_dir(&self) -> PathBuf {
        self.root().join("mounts")
    }

    /// Records a mount (atomically; the directory is made on first use).
    pub fn add_mount_record(&self, r: &MountRecord) -> Result<(), RepoError> {
        let dir = self.mounts_dir();
        fs::create_dir_all(&dir).map_err(|e| ioe(&dir, "cannot create", e))?;
        let json = serde_json::to_vec_pretty(r).expect("serializes");
        write_atomic(&dir.join(r.file_name()), &json, &self.root().join("tmp"))
    }

    /// Every mount record (unreadable ones are skipped: they protect nothing
    /// and gc removes them).
    pub fn mount_records(&self) -> Vec<(PathBuf, Option<MountRecord>)> {
        let Ok(rd) = fs::read_dir(self.mounts_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| {
                let r = fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                (e.path(), r)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes a mount record; a missing one is not an error.
    pub fn remove_mount_record(&self, path: &std::path::Path) -> Result<(), RepoError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ioe(path, "cannot remove", e))
            }
            _ => Ok(()),
        }
    }

    /// The record of the mount `(mnt_ns, mnt_id)`, if any.
    pub fn mount_record_path(&self, mnt_ns: u64, mnt_id: u64) -> PathBuf {
        self.mounts_dir().join(format!("{mnt_ns}-{mnt_id}.json"))
    }
}
