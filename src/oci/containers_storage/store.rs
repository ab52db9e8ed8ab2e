//! The on-disk facts of a containers-storage overlay store that strata reads, and its locks.
//!
//! Facts (from the containers-storage(5) and containers-transports(5) man pages, the
//! storage.conf(5) page, and stores written by podman 4.3; no code taken from
//! containers/storage):
//!
//! * `ROOT/overlay-images/images.json`: a JSON array of images: `id` (64 hex), `names`
//!   (normalised references), `digest`/`digests` (manifest digests), `layer` (top layer id),
//!   `big-data-names`, `big-data-sizes`, `big-data-digests`.
//! * An image's big-data items are files in `ROOT/overlay-images/<id>/`: the key itself as
//!   the file name when it consists only of `[.0-9a-z]`, else `=` followed by the standard
//!   padded base64 of the key. Keys: `manifest` (the image's manifest), `manifest-<digest>`
//!   (manifests by digest), `<config digest>` (the config).
//! * `ROOT/overlay-layers/layers.json`: a JSON array of layers: `id`, `parent`,
//!   `diff-digest` (the diff_id), `diff-size`, `flags` (`incomplete` while being written).
//!   `ROOT/overlay-layers/<id>.tar-split.gz` is the layer's tar-split (see
//!   [`crate::oci::tarsplit`]) and `ROOT/overlay/<id>/diff` its unpacked files.
//! * Locks: `ROOT/overlay-layers/layers.lock` and `ROOT/overlay-images/images.lock` are
//!   taken with POSIX record locks (`fcntl(F_SETLK[W])`, `F_RDLCK` to read, `F_WRLCK` to
//!   write, whole file), layers before images; writers replace the JSON files while holding
//!   the write lock. Holding both read locks therefore gives a consistent view, and keeps
//!   a `podman rmi` from deleting a layer's files while strata reads them (it waits).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use super::StorageError;

/// Largest `images.json` or `layers.json` read.
pub const MAX_STORE_JSON: u64 = 256 << 20;
/// Largest `storage.conf` read.
pub const MAX_CONF: u64 = 1 << 20;
/// How long to wait for a writer (podman pull, rmi, …) to release a store lock, unless
/// `$STRATA_STORAGE_LOCK_TIMEOUT` gives another number of seconds.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// [`LOCK_TIMEOUT`], or `$STRATA_STORAGE_LOCK_TIMEOUT` seconds.
pub fn lock_timeout() -> Duration {
    std::env::var("STRATA_STORAGE_LOCK_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(LOCK_TIMEOUT, Duration::from_secs)
}

/// One image of `images.json` (the fields strata uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub digests: Vec<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default, rename = "big-data-names")]
    pub big_data_names: Vec<String>,
    #[serde(default, rename = "big-data-sizes")]
    pub big_data_sizes: HashMap<String, i64>,
}

/// One layer of `layers.json` (the fields strata uses).
#[derive(Debug, Clone, Deserialize)]
pub struct LayerRecord {
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, rename = "diff-digest")]
    pub diff_digest: Option<String>,
    #[serde(default)]
    pub flags: HashMap<String, serde_json::Value>,
}

impl LayerRecord {
    /// Whether a writer marked the layer as not yet complete.
    pub fn incomplete(&self) -> bool {
        self.flags
            .get("incomplete")
            .is_some_and(|v| v.as_bool() == Some(true))
    }
}

/// The file name of big-data item `key` in an image's directory.
pub fn big_data_file(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        key.to_string()
    } else {
        format!(
            "={}",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        )
    }
}

/// Whether `id` is a store id (64 lower-case hex digits); ids are used in paths.
pub fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, StorageError> {
    let f = fs::File::open(path).map_err(|source| StorageError::Io {
        path: path.to_path_buf(),
        what,
        source,
    })?;
    let mut v = Vec::new();
    (&f).take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            what,
            source,
        })?;
    if v.len() as u64 > limit {
        return Err(StorageError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(v)
}

/// Parses a bounded JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<T, StorageError> {
    let raw = read_bounded(path, limit, what)?;
    serde_json::from_slice(&raw).map_err(|source| StorageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A POSIX read lock on one of the store's lock files, held until dropped (closing the
/// descriptor releases it). Each lock file is opened once per process: POSIX locks belong
/// to the process, and closing any descriptor of the file would drop them.
#[derive(Debug)]
pub struct ReadLock {
    _file: fs::File,
}

/// Takes a read lock on `path` the way containers-storage does, waiting up to `timeout`
/// for a writer to finish.
pub fn read_lock(path: &Path, timeout: Duration) -> Result<ReadLock, StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        what: "cannot open lock file",
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        // A store that never had a writer of this kind may lack the file; make it as
        // containers-storage would (it is empty until a writer records itself).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?,
        Err(e) => return Err(io(e)),
    };
    let start = Instant::now();
    loop {
        match rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => return Ok(ReadLock { _file: file }),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS)
                if start.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {
                return Err(StorageError::Busy {
                    path: path.to_path_buf(),
                    secs: timeout.as_secs(),
                })
            }
            Err(e) => {
                return Err(StorageError::Io {
                    path: path.to_path_buf(),
                    what: "cannot lock",
                    source: e.into(),
                })
            }
        }
    }
}

/// `[storage]` of storage.conf (the keys strata uses).
#[derive(Debug, Default, Deserialize)]
struct Conf {
    #[serde(default)]
    storage: ConfStorage,
}

#[derive(Debug, Default, Deserialize)]
struct ConfStorage {
    driver: Option<String>,
    graphroot: Option<PathBuf>,
    runroot: Option<PathBuf>,
    rootless_storage_path: Option<PathBuf>,
}

/// Where the default store is: `(driver, graphroot, runroot)` from storage.conf
/// (`$CONTAINERS_STORAGE_CONF`, else `/etc/containers/storage.conf`, for rootless users
/// `$XDG_CONFIG_HOME/containers/storage.conf` first), else containers-storage's defaults
/// (`/var/lib/containers/storage` + `/run/containers/storage` for root,
/// `$XDG_DATA_HOME/containers/storage` (`~/.local/share/…`) for other users).
pub fn default_store() -> Result<(Option<String>, PathBuf, PathBuf), StorageError> {
    let root = rustix::process::geteuid().is_root();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("CONTAINERS_STORAGE_CONF") {
        candidates.push(p.into());
    } else {
        if !root {
            let cfg = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".config")));
            if let Some(c) = cfg {
                candidates.push(c.join("containers/storage.conf"));
            }
        }
        candidates.push("/etc/containers/storage.conf".into());
    }
    let mut conf = ConfStorage::default();
    for c in candidates {
        match read_bounded(&c, MAX_CONF, "cannot read storage.conf") {
            Ok(raw) => {
                let text = String::from_utf8_lossy(&raw);
                let parsed: Conf = toml::from_str(&text).map_err(|e| StorageError::Conf {
                    path: c.clone(),
                    why: e.to_string().lines().next().unwrap_or("").to_string(),
                })?;
                conf = parsed.storage;
                break;
            }
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    if root {
        Ok((
            conf.driver,
            conf.graphroot
                .unwrap_or_else(|| "/var/lib/containers/storage".into()),
            conf.runroot
                .unwrap_or_else(|| "/run/containers/storage".into()),
        ))
    } else {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".local/share"));
        let uid = rustix::process::geteuid().as_raw();
        let run = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("containers"))
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}/containers")));
        Ok((
            conf.driver,
            conf.rootless_storage_path
                .unwrap_or_else(|| data.join("containers/storage")),
            run,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_as_podman_writes_them() {
        assert_eq!(big_data_file("manifest"), "manifest");
        // Seen in a podman 4.3 store.
        assert_eq!(
            big_data_file(
                "sha256:603b7879db21ae8bd71235f3149f19f76f5293852470092dec82423d9ba5bed6"
            ),
            "=c2hhMjU2OjYwM2I3ODc5ZGIyMWFlOGJkNzEyMzVmMzE0OWYxOWY3NmY1MjkzODUyNDcwMDkyZGVjODI0MjNkOWJhNWJlZDY="
        );
    }
}
