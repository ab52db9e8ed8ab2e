//! Kernel fs-verity: enabling, measuring and probing, with typed errors.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use super::{digest_bytes, Algorithm, Digest, BLOCK_SIZE};
use crate::sys::{enable_verity, measure_verity};

/// Failure of an fs-verity ioctl.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The kernel or this filesystem does not implement fs-verity (or not
    /// with these parameters): `EOPNOTSUPP`, `ENOTTY`, `EINVAL`, `ENOPKG`.
    /// Not a failure of the file itself; callers typically fall back to
    /// running without kernel verity.
    #[error("fs-verity not supported here: {0}")]
    NotSupported(#[source] io::Error),
    /// `ETXTBSY`: the file still has a writable file descriptor open
    /// (possibly in another process, or a just-closed one not yet released);
    /// close writers and retry.
    #[error("cannot enable fs-verity: file is open for writing (ETXTBSY)")]
    FileBusy,
    /// `EEXIST`: fs-verity is already enabled on the file.
    #[error("fs-verity is already enabled on the file")]
    AlreadyEnabled,
    /// The kernel reported a digest with an algorithm id or size this crate
    /// does not know.
    #[error("kernel reported unknown fs-verity digest (algorithm {alg}, {size} bytes)")]
    UnknownAlgorithm {
        /// Kernel algorithm id.
        alg: u16,
        /// Digest size in bytes.
        size: usize,
    },
    /// Any other error (I/O, permissions, read-only filesystem, ...).
    #[error(transparent)]
    Io(io::Error),
}

impl VerityError {
    /// Whether this is [`VerityError::NotSupported`].
    pub fn is_not_supported(&self) -> bool {
        matches!(self, VerityError::NotSupported(_))
    }
}

impl From<VerityError> for io::Error {
    fn from(e: VerityError) -> io::Error {
        match e {
            VerityError::NotSupported(e) | VerityError::Io(e) => e,
            VerityError::FileBusy => Errno::TXTBSY.into(),
            VerityError::AlreadyEnabled => Errno::EXIST.into(),
            e @ VerityError::UnknownAlgorithm { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            }
        }
    }
}

/// Errnos meaning "no fs-verity for this kernel/filesystem/parameters".
fn is_not_supported_errno(e: Errno) -> bool {
    e == Errno::OPNOTSUPP || e == Errno::NOTTY || e == Errno::INVAL || e == Errno::NOPKG
}

pub(super) fn classify_errno(e: Errno) -> VerityError {
    if is_not_supported_errno(e) {
        VerityError::NotSupported(e.into())
    } else if e == Errno::TXTBSY {
        VerityError::FileBusy
    } else if e == Errno::EXIST {
        VerityError::AlreadyEnabled
    } else {
        VerityError::Io(e.into())
    }
}

/// Enables fs-verity (4 KiB blocks, no salt, no signature) on the file open
/// as `fd`, which must be opened read-only with no writable descriptors
/// left open anywhere (else [`VerityError::FileBusy`]). After success the
/// file is immutable and [`measure`] returns its digest, which equals the
/// userspace [`digest_file`](super::digest_file) result.
pub fn enable<Fd: AsFd>(fd: Fd, alg: Algorithm) -> Result<(), VerityError> {
    enable_verity(fd, u32::from(alg.kernel_id()), BLOCK_SIZE as u32).map_err(classify_errno)
}

/// Reads the fs-verity digest of the file open as `fd`: `Ok(None)` if
/// fs-verity is not enabled on it (`ENODATA`), and
/// [`VerityError::NotSupported`] if the filesystem has no fs-verity at all.
pub fn measure<Fd: AsFd>(fd: Fd) -> Result<Option<Digest>, VerityError> {
    match measure_verity(fd) {
        Ok((alg_id, bytes)) => {
            let unknown = || VerityError::UnknownAlgorithm {
                alg: alg_id,
                size: bytes.len(),
            };
            let alg = Algorithm::from_kernel_id(u32::from(alg_id)).ok_or_else(unknown)?;
            Digest::from_bytes(alg, &bytes)
                .map(Some)
                .map_err(|_| unknown())
        }
        Err(e) if e == Errno::NODATA => Ok(None),
        Err(e) => Err(classify_errno(e)),
    }
}

/// Whether files in some directory can get kernel fs-verity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Enabling and measuring fs-verity worked on a probe file.
    Supported,
    /// It did not; `reason` says why (e.g. the ioctl's error, or why no
    /// probe file could be created).
    NotSupported {
        /// Human-readable explanation.
        reason: String,
    },
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Support::Supported => f.write_str("supported"),
            Support::NotSupported { reason } => write!(f, "not supported: {reason}"),
        }
    }
}

impl Support {
    /// Whether this is [`Support::Supported`].
    pub fn is_supported(&self) -> bool {
        matches!(self, Support::Supported)
    }
}

/// Removes the probe file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Checks whether fs-verity can be enabled on files in `dir`, by creating a
/// small hidden temporary file there, enabling SHA-256 verity on it and
/// checking that the kernel's measurement equals the userspace digest. The
/// file is removed afterwards. Any failure (including not being able to
/// create the file) yields [`Support::NotSupported`] with the reason.
pub fn probe(dir: &Path) -> Support {
    match probe_inner(dir) {
        Ok(()) => Support::Supported,
        Err(reason) => Support::NotSupported { reason },
    }
}

fn probe_inner(dir: &Path) -> Result<(), String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const CONTENT: &[u8] = b"strata fs-verity probe\n";
    let name = format!(
        ".strata-verity-probe.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let create = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(CONTENT)
    };
    create().map_err(|e| format!("cannot create probe file {}: {e}", path.display()))?;
    let _guard = RemoveOnDrop(path.clone());
    let file = File::open(&path)
        .map_err(|e| format!("cannot reopen probe file {}: {e}", path.display()))?;
    // The writer was closed above; a brief ETXTBSY is still possible if the
    // kernel has not yet released it, so retry a few times.
    let mut attempts = 0;
    loop {
        match enable(&file, Algorithm::Sha256) {
            Ok(()) => break,
            Err(VerityError::FileBusy) if attempts < 5 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(VerityError::NotSupported(e)) => {
                return Err(format!("not supported by the filesystem: {e}"))
            }
            Err(e) => return Err(format!("enabling fs-verity failed: {e}")),
        }
    }
    let expected = digest_bytes(Algorithm::Sha256, CONTENT);
    match measure(&file) {
        Ok(Some(d)) if d == expected => Ok(()),
        Ok(Some(d)) => Err(format!(
            "kernel measured {} but userspace computed {}",
            d.to_prefixed(),
            expected.to_prefixed()
        )),
        Ok(None) => Err("fs-verity enable succeeded but measure found none".to_owned()),
        Err(e) => Err(format!("measuring fs-verity failed: {e}")),
    }
}
