//! Fetch claims: which pull is fetching which digest, so that concurrent pulls (other
//! processes, or other threads of one process) fetch each blob once.
//!
//! A claim is keyed by a digest string `ALG:HEX` (a layer blob `sha256:…` or a config):
//! the key is the caller's business, this module only needs it to be a well-formed
//! digest. Files inside blobs are not claimed one by one: a holder announces the contents
//! its blob will store ([`ClaimGuard::announce`], `announce.rs`).
//!
//! What a caller may rely on:
//!
//! - **One holder.** [`Claims::try_claim`] answers [`Claimed::Mine`] to exactly one caller
//!   at a time per key, across processes and threads: the claim is an `flock(LOCK_EX)` on
//!   `REPO/claims/<alg>-<hex>`, opened anew by every call (a separate open file
//!   description, so threads of one process exclude each other too).
//! - **Dies with its holder.** The kernel drops the lock when the holder's process dies
//!   (kill -9, crash); power loss drops every lock. A stale claim file never blocks
//!   anyone: whoever locks it next owns the claim.
//! - **No unlink race.** The holder unlinks the claim file while still holding the lock
//!   and only then closes it; a caller that locked an inode which is no longer the one at
//!   the path (it was unlinked, maybe replaced) drops it and tries again. So two callers
//!   can never both believe they hold one key.
//! - **Who holds it.** The holder writes its pid into the file (ASCII decimal, newline);
//!   [`Claimed::Busy`] carries it for "waiting for another pull (pid N)" messages. It may
//!   be missing for an instant after the file is created.
//! - **Partial downloads survive the holder.** Bytes a holder downloads under a claim go
//!   to `<alg>-<hex>.partial`, with the SHA-256 of every complete [`PARTIAL_CHUNK`] in
//!   `<alg>-<hex>.sums` (32 bytes each, appended after the chunk's bytes are written).
//!   The next holder keeps the longest prefix whose chunks verify
//!   ([`ClaimGuard::resume_partial`]) and continues from there: a torn tail (power loss)
//!   is cut off, never trusted. Dropping a guard removes the partial files (the result
//!   is stored, or the attempt failed and its bytes are not trusted); only a dead holder
//!   leaves them behind.
//!
//! Claims never wait: a caller that is told `Busy` decides what to do meanwhile (a pull
//! fetches its other layers and comes back). A holder must not wait for another blob
//! claim while holding one. It waits under its claim for two things only, neither of
//! which can close a cycle: *earlier* announcements (ordered by their sequence numbers,
//! `announce.rs`), and contents other layers of the same process are fetching, which it
//! does only after finishing its own such contents, so the layers it waits for never wait
//! for it. gc removes claim, partial, `.wanted` and announcement files under the exclusive
//! repository lock, when no pull can hold a claim (`doc/concurrency.md`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::FlockOperation;
use sha2::{Digest as _, Sha256};

use super::{ioe, RepoError};

/// Bytes of a partial download covered by one SHA-256 in the `.sums` file.
pub const PARTIAL_CHUNK: u64 = 64 * 1024;
/// Size of one entry of the `.sums` file.
const SUM_LEN: usize = 32;
/// How long a caller that finds a claim locked waits before looking once more (see
/// [`Claims::try_claim`]).
const PROBE_GRACE: Duration = Duration::from_millis(1);
/// Longest claim file read for the holder's pid.
const MAX_PID_FILE: u64 = 32;

/// The claims of one repository (`REPO/claims/`).
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
}

/// The answer of [`Claims::try_claim`].
#[derive(Debug)]
pub enum Claimed {
    /// The caller holds the claim until the guard is dropped.
    Mine(ClaimGuard),
    /// Someone else holds it; `pid` is the holder's process, when it has written it.
    Busy { pid: Option<u32> },
}

/// A held claim; dropping it removes the partial download and releases the claim.
#[derive(Debug)]
pub struct ClaimGuard {
    key: String,
    path: PathBuf,
    file: Option<File>,
    /// The announcement file (`announce.rs`), locked for as long as the claim is held:
    /// readers probe *it*, never the claim file, so a probe cannot make the claim look
    /// taken to a caller of [`Claims::try_claim`].
    pub(super) announcement: std::sync::Mutex<Option<File>>,
}

/// A partial download under a claim: the verified prefix to read back, and the writer
/// that appends what comes next.
#[derive(Debug)]
pub struct Partial {
    /// Bytes of the verified prefix: resume the download here.
    pub verified: u64,
    /// Reads the verified prefix from its start.
    pub prefix: io::Take<File>,
    pub writer: PartialWriter,
}

/// Appends downloaded bytes to a claim's partial file, and a checksum per full chunk.
#[derive(Debug)]
pub struct PartialWriter {
    data: File,
    sums: File,
    path: PathBuf,
    chunk: Sha256,
    chunk_len: u64,
}

impl Claims {
    pub(crate) fn new(dir: PathBuf) -> Claims {
        Claims { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of a key: `ALG:HEX` → `ALG-HEX`.
    fn file_name(key: &str) -> Result<String, RepoError> {
        let bad = || {
            ioe(
                key,
                "invalid claim key",
                io::Error::new(io::ErrorKind::InvalidInput, "expected ALG:HEX"),
            )
        };
        let (alg, hex) = key.split_once(':').ok_or_else(bad)?;
        let alg_ok = !alg.is_empty()
            && alg.len() <= 16
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let hex_ok = (32..=128).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(alg_ok && hex_ok) {
            return Err(bad());
        }
        Ok(format!("{alg}-{hex}"))
    }

    /// Claims `key` if nobody holds it. Never blocks.
    pub fn try_claim(&self, key: &str) -> Result<Claimed, RepoError> {
        self.try_claim_with(key, true)
    }

    /// [`try_claim`](Self::try_claim); without `grace`, the first `EWOULDBLOCK` is final.
    pub(crate) fn try_claim_with(&self, key: &str, grace: bool) -> Result<Claimed, RepoError> {
        let path = self.dir.join(Self::file_name(key)?);
        fs::create_dir_all(&self.dir).map_err(|e| ioe(&self.dir, "cannot create directory", e))?;
        let mut retried = !grace;
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| ioe(&path, "cannot open claim", e))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if !retried => {
                    // Maybe nobody holds it and `Claims::count` (fsck's report) is
                    // probing it with a shared lock held for two system calls: look once
                    // more before saying busy. (Pulls never probe claim files: they probe
                    // announcements, see `announcement`.)
                    retried = true;
                    std::thread::sleep(PROBE_GRACE);
                    continue;
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    // Tell the holder that someone waits, so that it publishes its result
                    // as soon as it has one (see `ClaimGuard::wanted`).
                    let mut w = path.clone().into_os_string();
                    w.push(".wanted");
                    let _ = fs::File::create(PathBuf::from(w));
                    return Ok(Claimed::Busy {
                        pid: read_pid(&file),
                    });
                }
                Err(e) => return Err(ioe(&path, "cannot lock claim", e)),
            }
            // Locked: still the file at `path`? (its holder may have unlinked it between
            // our open and our lock; then another caller may hold a new one.)
            let ours = file.metadata().map_err(|e| ioe(&path, "cannot stat", e))?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ioe(&path, "cannot stat", e)),
            }
            let mut f = &file;
            let pid = format!("{}\n", std::process::id());
            f.set_len(0)
                .and_then(|()| f.write_all(pid.as_bytes()))
                .map_err(|e| ioe(&path, "cannot write claim", e))?;
            return Ok(Claimed::Mine(ClaimGuard {
                key: key.to_string(),
                path,
                file: Some(file),
                announcement: std::sync::Mutex::new(None),
            }));
        }
    }

    /// Waits (polling every `poll`) until `key` is claimed by the caller, or `done()`
    /// says the result is there (then `None`). `busy` hears the holder's pid on every
    /// poll that finds the claim taken. For callers with nothing else to do meanwhile; a
    /// pull with other work defers the key instead.
    pub fn wait(
        &self,
        key: &str,
        poll: Duration,
        done: impl Fn() -> bool,
        mut busy: impl FnMut(Option<u32>),
    ) -> Result<Option<ClaimGuard>, RepoError> {
        loop {
            if done() {
                return Ok(None);
            }
            match self.try_claim(key)? {
                Claimed::Mine(g) if done() => {
                    drop(g);
                    return Ok(None);
                }
                Claimed::Mine(g) => return Ok(Some(g)),
                Claimed::Busy { pid } => busy(pid),
            }
            std::thread::sleep(poll);
        }
    }

    /// Removes every claim and partial file. Only under the exclusive repository lock
    /// (gc), when no pull holds a claim. Returns how many files went.
    pub fn remove_all(&self) -> Result<u64, RepoError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ioe(&self.dir, "cannot read", e)),
        };
        let mut n = 0;
        for e in rd {
            let e = e.map_err(|e| ioe(&self.dir, "cannot read", e))?;
            match fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(ioe(e.path(), "cannot remove", err)),
            }
        }
        Ok(n)
    }

    /// Claim files whose holder is alive (locked now), and stale ones (unlocked).
    pub fn count(&self) -> (u64, u64) {
        let (mut live, mut stale) = (0, 0);
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if [
                ".partial",
                ".sums",
                ".wanted",
                ".contents",
                ".contents-new",
                ".lock",
            ]
            .iter()
            .any(|ext| name.ends_with(ext))
            {
                continue;
            }
            let Ok(f) = File::open(e.path()) else {
                continue;
            };
            match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
                Ok(()) => stale += 1,
                Err(_) => live += 1,
            }
        }
        (live, stale)
    }
}

fn read_pid(file: &File) -> Option<u32> {
    let mut s = String::new();
    file.take(MAX_PID_FILE).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl ClaimGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether another pull found this claim taken (and waits for its result).
    pub fn wanted(&self) -> bool {
        self.side(".wanted").exists()
    }

    pub(crate) fn side(&self, ext: &str) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    }

    /// Opens the partial download left under this claim (by a holder that died), keeping
    /// the longest prefix whose chunk checksums verify, or starts an empty one.
    pub fn resume_partial(&self) -> Result<Partial, RepoError> {
        let (dpath, spath) = (self.side(".partial"), self.side(".sums"));
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| ioe(p, "cannot open partial download", e))
        };
        let (mut data, mut sums) = (open(&dpath)?, open(&spath)?);
        let mut recorded = Vec::new();
        sums.read_to_end(&mut recorded)
            .map_err(|e| ioe(&spath, "cannot read", e))?;
        let mut good = 0u64;
        let mut buf = vec![0u8; PARTIAL_CHUNK as usize];
        for want in recorded.chunks_exact(SUM_LEN) {
            let n = read_full(&mut data, &mut buf).map_err(|e| ioe(&dpath, "cannot read", e))?;
            if n as u64 != PARTIAL_CHUNK || Sha256::digest(&buf).as_slice() != want {
                break;
            }
            good += 1;
        }
        let verified = good * PARTIAL_CHUNK;
        data.set_len(verified)
            .and_then(|()| data.seek(SeekFrom::End(0)).map(drop))
            .map_err(|e| ioe(&dpath, "cannot truncate", e))?;
        sums.set_len(good * SUM_LEN as u64)
            .and_then(|()| sums.seek(SeekFrom::End(0)).map(drop))
            .map_err(|e| ioe(&spath, "cannot truncate", e))?;
        let reader = File::open(&dpath).map_err(|e| ioe(&dpath, "cannot open", e))?;
        Ok(Partial {
            verified,
            prefix: reader.take(verified),
            writer: PartialWriter {
                data,
                sums,
                path: dpath,
                chunk: Sha256::new(),
                chunk_len: 0,
            },
        })
    }
}

#[cfg(test)]
impl ClaimGuard {
    /// The holder dies: the lock goes, every file stays.
    pub(crate) fn die(mut self) {
        drop(self.file.take());
        drop(self.announcement_file());
        std::mem::forget(self);
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl PartialWriter {
    /// Appends `bytes`: data first, then the checksum of each chunk they complete.
    pub fn append(&mut self, mut bytes: &[u8]) -> Result<(), RepoError> {
        while !bytes.is_empty() {
            let room = (PARTIAL_CHUNK - self.chunk_len) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.data
                .write_all(now)
                .map_err(|e| ioe(&self.path, "cannot write partial download", e))?;
            self.chunk.update(now);
            self.chunk_len += now.len() as u64;
            if self.chunk_len == PARTIAL_CHUNK {
                let sum = std::mem::take(&mut self.chunk).finalize();
                self.sums
                    .write_all(&sum)
                    .map_err(|e| ioe(&self.path, "cannot write partial checksums", e))?;
                self.chunk_len = 0;
            }
            bytes = rest;
        }
        Ok(())
    }
}

impl ClaimGuard {
    fn announcement_file(&self) -> Option<File> {
        self.announcement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        // Partial files first, then the claim file, all while the lock is held; closing
        // the file releases the claim.
        let _ = fs::remove_file(self.side(".partial"));
        let _ = fs::remove_file(self.side(".sums"));
        let _ = fs::remove_file(self.side(".wanted"));
        let _ = fs::remove_file(self.side(".contents-new"));
        let _ = fs::remove_file(self.side(".contents")); // the announcement (announce.rs)
        drop(self.announcement_file());
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn claims() -> (tempfile::TempDir, Claims) {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        (d, c)
    }

    #[test]
    fn one_holder_across_threads_and_release_on_drop() {
        let (_d, c) = claims();
        let Claimed::Mine(g) = c.try_claim(KEY).unwrap() else {
            panic!("first claim")
        };
        let c2 = c.clone();
        let other = std::thread::spawn(move || match c2.try_claim(KEY).unwrap() {
            Claimed::Busy { pid } => pid,
            Claimed::Mine(_) => panic!("two holders"),
        });
        assert_eq!(other.join().unwrap(), Some(std::process::id()));
        drop(g);
        assert!(!c.dir().join(Claims::file_name(KEY).unwrap()).exists());
        assert!(matches!(c.try_claim(KEY).unwrap(), Claimed::Mine(_)));
    }

    #[test]
    fn bad_keys_are_refused_with_the_key() {
        let (_d, c) = claims();
        for k in ["sha256", "sha256:../../etc", "SHA:00", "sha256:xyz"] {
            let e = c.try_claim(k).unwrap_err().to_string();
            assert!(e.starts_with(k) && e.contains("invalid claim key"), "{e}");
        }
    }

    #[test]
    fn a_stale_claim_file_does_not_block() {
        let (_d, c) = claims();
        fs::create_dir_all(c.dir()).unwrap();
        fs::write(c.dir().join(Claims::file_name(KEY).unwrap()), "999999\n").unwrap();
        assert!(matches!(c.try_claim(KEY).unwrap(), Claimed::Mine(_)));
        assert_eq!(c.count(), (0, 0));
    }

    #[test]
    fn a_dead_holders_partial_is_resumed() {
        let (_d, c) = claims();
        let Claimed::Mine(mut g) = c.try_claim(KEY).unwrap() else {
            panic!("first claim")
        };
        let data: Vec<u8> = (0..(PARTIAL_CHUNK * 2 + 100)).map(|i| i as u8).collect();
        let mut p = g.resume_partial().unwrap();
        p.writer.append(&data[..1000]).unwrap();
        p.writer.append(&data[1000..]).unwrap();
        drop(p);
        // The holder dies: its lock goes, its files stay.
        drop(g.file.take());
        std::mem::forget(g);
        assert_eq!(c.count(), (0, 1));
        let Claimed::Mine(g) = c.try_claim(KEY).unwrap() else {
            panic!("a dead holder's claim is free")
        };
        assert_eq!(g.resume_partial().unwrap().verified, PARTIAL_CHUNK * 2);
    }

    #[test]
    fn partial_resume_cuts_a_corrupt_chunk() {
        let (_d, c) = claims();
        let Claimed::Mine(g) = c.try_claim(KEY).unwrap() else {
            panic!()
        };
        let data: Vec<u8> = (0..(PARTIAL_CHUNK * 3 + 100))
            .map(|i| (i * 7) as u8)
            .collect();
        let mut p = g.resume_partial().unwrap();
        p.writer.append(&data).unwrap();
        drop(p);
        let mut p = g.resume_partial().unwrap();
        assert_eq!(p.verified, PARTIAL_CHUNK * 3);
        let mut back = Vec::new();
        p.prefix.read_to_end(&mut back).unwrap();
        assert_eq!(back, data[..(PARTIAL_CHUNK * 3) as usize]);
        drop(p);
        // Flip a byte in chunk 1: only chunk 0 survives.
        let path = g.side(".partial");
        let mut bytes = fs::read(&path).unwrap();
        bytes[(PARTIAL_CHUNK + 5) as usize] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let mut p = g.resume_partial().unwrap();
        assert_eq!(p.verified, PARTIAL_CHUNK);
        assert_eq!(fs::metadata(&path).unwrap().len(), PARTIAL_CHUNK);
        p.writer.append(&data[PARTIAL_CHUNK as usize..]).unwrap();
        drop(p);
        assert_eq!(g.resume_partial().unwrap().verified, PARTIAL_CHUNK * 3);
        drop(g);
        assert!(
            !path.exists(),
            "dropping the guard removes the partial download"
        );
    }
}
