//! Announcements: which file contents a claimed blob's pull will store, so that pulls of
//! *different* blobs sharing files (a squashed image and its layered original, two
//! rebuilds of one base) fetch each shared file once.
//!
//! A blob claim ([`super::claims`]) makes pulls of the same blob cooperate. A pull of a
//! seekable layer knows, once it has the layer's TOC and before it decides what to
//! fetch, every content the layer holds; it announces them beside its claim
//! (`REPO/claims/<alg>-<hex>.contents`) and reads the announcements of the other live
//! claims, **in one step under `claims/contents.lock`**. That step orders announcements:
//! each gets a sequence number above every announcement file present (live or left by a
//! dead pull), and sees exactly the live ones announced before it. A pull then leaves to
//! an *earlier* announcer every content it announced too (waiting until the contents are
//! in the content index, or the announcer's claim ends, then finding the objects), and
//! fetches the rest itself. Earlier announcers never wait for later ones, so waits follow
//! strictly falling sequence numbers and cannot form a cycle, whatever the timing.
//!
//! The file lives exactly as long as the claim: the holder writes it while holding the
//! claim, keeps it `flock`ed (`LOCK_EX`, taken before it is renamed into place) and
//! [`super::claims::ClaimGuard`]'s drop removes it before releasing. Readers tell a live
//! announcement by that lock (a shared probe fails), never by probing the claim file, so
//! they cannot make a free claim look taken. A holder that died leaves the file behind,
//! unlocked, and readers ignore it. The blob's next holder
//! (its successor) reuses the dead holder's sequence number when it announces, instead of
//! taking a new one: pulls that waited for the dead holder now wait for the successor, and
//! since every announcement the successor sees as earlier has a lower number, it never
//! waits for them.
//!
//! Reading costs memory for shared contents only: of each earlier announcement, a reader
//! keeps the records it announced too. Announcing is an optimisation: a pull that cannot
//! read or write announcements (an I/O error) carries on without, and at worst fetches a
//! file another pull fetches too.
//!
//! File format: the line `strata-contents 1 SEQ\n`, then one 40-byte record per content:
//! sha256 (32 bytes) and size (u64, little endian). Anything malformed is ignored (the
//! announcement is then treated as absent: a duplicate fetch, never a wrong one).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::claims::{ClaimGuard, Claims};
use super::index::Sha256Sum;
use super::{ioe, RepoError};

const MAGIC: &str = "strata-contents 1 ";
const EXT: &str = ".contents";
const RECORD: usize = 40;
/// Longest announcement read: 8 million contents, far above any TOC strata accepts.
const MAX_FILE: u64 = 320 << 20;
const LOCK: &str = "contents.lock";
/// Highest sequence number believed: a file claiming more is ignored (so that `+ 1` can
/// never overflow, whatever a corrupt or hostile file says). 2^62 announcements at one a
/// nanosecond take a century.
const MAX_SEQ: u64 = 1 << 62;

/// Another pull's announcement, earlier than the caller's.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The claim key (the blob's digest).
    pub key: String,
    pub seq: u64,
    /// Its holder's pid, when written.
    pub pid: Option<u32>,
    /// Contents (sha256 → size) its pull will store that the caller announced too (the
    /// others are not kept; announcements sharing none are not returned at all).
    pub contents: HashMap<Sha256Sum, u64>,
}

/// What [`ClaimGuard::announce`] returns.
#[derive(Debug, Default)]
pub struct Announced {
    pub seq: u64,
    /// The live announcements made before this one that share contents with it, oldest
    /// first.
    pub earlier: Vec<Announcement>,
}

impl Announced {
    /// The earliest announcement holding `sha` of `size` bytes.
    pub fn owner_of(&self, sha: &Sha256Sum, size: u64) -> Option<usize> {
        self.earlier
            .iter()
            .position(|a| a.contents.get(sha) == Some(&size))
    }
}

fn read_header(r: &mut impl BufRead) -> Option<u64> {
    let mut line = String::new();
    r.by_ref().take(64).read_line(&mut line).ok()?;
    line.strip_prefix(MAGIC)?.strip_suffix('\n')?.parse().ok()
}

/// An announcement file: its sequence number and, when `keep` is given, those of its
/// contents that are also in `keep` (only those: an announcement may list millions of
/// contents, and the caller only cares about the ones it shares). `None` when the file is
/// missing, too long, malformed, or its sequence number is absurd.
fn read_file(
    path: &Path,
    keep: Option<&HashSet<(Sha256Sum, u64)>>,
) -> Option<(u64, HashMap<Sha256Sum, u64>)> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len > MAX_FILE {
        return None;
    }
    // The header alone (every poll of a waiter) needs no big buffer.
    let cap = if keep.is_some() { 64 * 1024 } else { 128 };
    let mut r = io::BufReader::with_capacity(cap, f);
    let seq = read_header(&mut r)?;
    if seq > MAX_SEQ {
        return None;
    }
    let mut contents = HashMap::new();
    if let Some(keep) = keep {
        let mut r = r.take(MAX_FILE);
        let mut rec = [0u8; RECORD];
        loop {
            match read_record(&mut r, &mut rec)? {
                false => break,
                true => {
                    let sha: Sha256Sum = rec[..32].try_into().ok()?;
                    let size = u64::from_le_bytes(rec[32..].try_into().ok()?);
                    if keep.contains(&(sha, size)) {
                        contents.insert(sha, size);
                    }
                }
            }
        }
    }
    Some((seq, contents))
}

/// Reads one whole record: `Some(true)`, or `Some(false)` at a clean end of file; `None`
/// for a torn record or a read error.
fn read_record(r: &mut impl Read, rec: &mut [u8; RECORD]) -> Option<bool> {
    let mut got = 0;
    while got < RECORD {
        match r.read(&mut rec[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    match got {
        0 => Some(false),
        RECORD => Some(true),
        _ => None,
    }
}

/// Whether the announcement at `contents` is locked by its live holder (a shared `flock`
/// probe fails), and the holder's pid from its claim file `claim`.
fn holder(contents: &Path, claim: &Path) -> Option<Option<u32>> {
    let f = File::open(contents).ok()?;
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => None,
        Err(_) => {
            let mut s = String::new();
            let _ = File::open(claim).map(|c| c.take(32).read_to_string(&mut s));
            Some(s.trim().parse().ok())
        }
    }
}

/// `<alg>-<hex>.contents` → (`<alg>-<hex>`, key `alg:hex`).
fn claim_of(name: &str) -> Option<(String, String)> {
    let base = name.strip_suffix(EXT)?;
    let (alg, hex) = base.split_once('-')?;
    Some((base.to_string(), format!("{alg}:{hex}")))
}

impl ClaimGuard {
    /// Announces that this claim's pull will store `contents` (sha256, size), and returns
    /// the live announcements made before it. See the module documentation.
    pub fn announce(
        &self,
        claims: &Claims,
        contents: &[(Sha256Sum, u64)],
    ) -> Result<Announced, RepoError> {
        let dir = claims.dir();
        let lock_path = dir.join(LOCK);
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| ioe(&lock_path, "cannot open", e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| ioe(&lock_path, "cannot lock", e))?;
        let own = self.side(EXT);
        let own_name = own.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut max_seq = 0;
        let mut kept_seq = None;
        let mut earlier = Vec::new();
        let rd = fs::read_dir(dir).map_err(|e| ioe(dir, "cannot read", e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((base, key)) = claim_of(&name) else {
                continue;
            };
            if Some(&name) == own_name.as_ref() {
                // Left by a holder of this blob that died: keep its place in the order.
                kept_seq = read_file(&e.path(), None).map(|(s, _)| s);
                continue;
            }
            let Some((seq, _)) = read_file(&e.path(), None) else {
                continue;
            };
            max_seq = max_seq.max(seq);
            if let Some(pid) = holder(&e.path(), &dir.join(&base)) {
                earlier.push((seq, key, pid, e.path()));
            }
        }
        let seq = match kept_seq {
            Some(s) => s,
            // Readers would ignore a number above MAX_SEQ: refuse rather than announce
            // unseen (the caller then plans without announcing).
            None if max_seq >= MAX_SEQ => {
                return Err(ioe(
                    dir,
                    "cannot announce",
                    io::Error::other("sequence numbers exhausted (run gc)"),
                ))
            }
            None => max_seq + 1,
        };
        let keep: HashSet<(Sha256Sum, u64)> = contents.iter().copied().collect();
        let mut out = Announced {
            seq,
            earlier: Vec::new(),
        };
        for (s, key, pid, path) in earlier {
            if s >= seq {
                continue; // later than ours (we are a dead holder's successor)
            }
            if let Some((s2, shared)) = read_file(&path, Some(&keep)) {
                if s2 == s && !shared.is_empty() {
                    out.earlier.push(Announcement {
                        key,
                        seq: s,
                        pid,
                        contents: shared,
                    });
                }
            }
        }
        out.earlier.sort_by_key(|a| a.seq);
        let file = write_file(&own, seq, contents)?;
        *self.announcement.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
        drop(lock);
        Ok(out)
    }
}

/// Writes an announcement (staged, renamed into place) and returns it open and locked
/// (`LOCK_EX`, taken before the rename: no reader ever sees it unlocked while its holder
/// lives).
fn write_file(path: &Path, seq: u64, contents: &[(Sha256Sum, u64)]) -> Result<File, RepoError> {
    let mut tmp = PathBuf::from(path.as_os_str().to_owned());
    tmp.set_extension("contents-new");
    let mut buf = Vec::with_capacity(32 + contents.len() * RECORD);
    buf.extend_from_slice(format!("{MAGIC}{seq}\n").as_bytes());
    for (sha, size) in contents {
        buf.extend_from_slice(sha);
        buf.extend_from_slice(&size.to_le_bytes());
    }
    let mut f = File::create(&tmp).map_err(|e| ioe(&tmp, "cannot create", e))?;
    rustix::fs::flock(&f, FlockOperation::LockExclusive)
        .map_err(|e| ioe(&tmp, "cannot lock", e))?;
    f.write_all(&buf)
        .map_err(|e| ioe(&tmp, "cannot write", e))?;
    fs::rename(&tmp, path).map_err(|e| ioe(path, "cannot rename into place", e))?;
    Ok(f)
}

impl Claims {
    /// Whether the pull that made announcement `a` still works on it: its claim is held
    /// and the announcement is still the same one. The holder's pid when it does.
    pub fn still_working(&self, a: &Announcement) -> Option<Option<u32>> {
        let base = a.key.replacen(':', "-", 1);
        let path = self.dir().join(format!("{base}{EXT}"));
        let (seq, _) = read_file(&path, None)?;
        if seq != a.seq {
            return None;
        }
        holder(&path, &self.dir().join(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::claims::Claimed;

    fn key(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn mine(c: &Claims, k: &str) -> ClaimGuard {
        match c.try_claim(k).unwrap() {
            Claimed::Mine(g) => g,
            Claimed::Busy { .. } => panic!("{k} busy"),
        }
    }

    #[test]
    fn later_announcements_see_earlier_live_ones_only() {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        let (x, y, z) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let a = mine(&c, &key(1));
        let ra = a.announce(&c, &[(x, 100), (y, 200)]).unwrap();
        assert!(ra.earlier.is_empty());
        let b = mine(&c, &key(2));
        let rb = b.announce(&c, &[(y, 200), (z, 300)]).unwrap();
        assert!(rb.seq > ra.seq);
        assert_eq!(rb.earlier.len(), 1);
        assert_eq!(rb.earlier[0].key, key(1));
        assert_eq!(rb.earlier[0].pid, Some(std::process::id()));
        assert_eq!(rb.owner_of(&y, 200), Some(0));
        assert_eq!(rb.owner_of(&y, 201), None, "same sha, other size");
        assert_eq!(rb.owner_of(&z, 300), None);
        assert!(c.still_working(&rb.earlier[0]).is_some());
        // The first pull ends: its announcement goes with its claim.
        drop(a);
        assert!(c.still_working(&rb.earlier[0]).is_none());
        let a2 = mine(&c, &key(1));
        let r2 = a2.announce(&c, &[(x, 100), (z, 300)]).unwrap();
        assert_eq!(r2.earlier.len(), 1, "b is live and earlier now");
        assert_eq!(
            r2.earlier[0].contents.len(),
            1,
            "only the shared content is kept"
        );
        assert_eq!(r2.owner_of(&z, 300), Some(0));
        let d2 = mine(&c, &key(3));
        let r3 = d2.announce(&c, &[([9; 32], 9)]).unwrap();
        assert!(r3.earlier.is_empty(), "nothing shared: nothing returned");
        drop(d2);
        assert!(r2.seq > rb.seq);
        drop(b);
    }

    #[test]
    fn a_dead_holders_successor_keeps_its_place() {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        let a = mine(&c, &key(1));
        let ra = a.announce(&c, &[([1; 32], 100)]).unwrap();
        let b = mine(&c, &key(2));
        let rb = b.announce(&c, &[([1; 32], 100)]).unwrap();
        assert_eq!(rb.earlier.len(), 1);
        a.die();
        assert!(c.still_working(&rb.earlier[0]).is_none(), "dead");
        let x = mine(&c, &key(3));
        let rx = x.announce(&c, &[([1; 32], 100)]).unwrap();
        assert_eq!(rx.earlier.len(), 1, "the dead one is ignored");
        assert_eq!(rx.earlier[0].key, key(2));
        let succ = mine(&c, &key(1));
        let r = succ.announce(&c, &[([1; 32], 100)]).unwrap();
        assert_eq!(r.seq, ra.seq, "the successor keeps the dead holder's place");
        assert!(r.earlier.is_empty(), "and never waits for later ones");
        assert!(
            c.still_working(&rb.earlier[0]).is_some(),
            "those that waited for the dead holder wait for its successor"
        );
    }

    #[test]
    fn malformed_announcements_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        let a = mine(&c, &key(1));
        a.announce(&c, &[([1; 32], 100)]).unwrap();
        let path = c
            .dir()
            .join(format!("{}{EXT}", key(1).replacen(':', "-", 1)));
        let mut bytes = fs::read(&path).unwrap();
        bytes.push(0); // not a whole record
        fs::write(&path, &bytes).unwrap();
        let b = mine(&c, &key(2));
        let rb = b.announce(&c, &[([1; 32], 100)]).unwrap();
        assert!(rb.earlier.is_empty());
    }

    /// Runs [`free_claims_stay_free_under_readers`] in a process of its own: other tests of
    /// this binary spawn children, and a child forked while a claim file is open holds
    /// that open file (and its lock) until it execs, which would make claims look taken
    /// for reasons of their own.
    #[test]
    fn readers_never_make_a_free_claim_look_taken() {
        let name = "repo::announce::tests::free_claims_stay_free_under_readers";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                name,
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by readers_never_make_a_free_claim_look_taken, in a process of its own"]
    fn free_claims_stay_free_under_readers() {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        // A holder of key 1 announced and died: its claim file and announcement stay.
        let dead = mine(&c, &key(1));
        dead.announce(&c, &[([1; 32], 100)]).unwrap();
        dead.die();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let busy = std::thread::scope(|s| {
            // Another pull announcing over and over: each time it reads key 1's
            // announcement and asks whether its holder lives.
            s.spawn(|| {
                let g = mine(&c, &key(2));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    g.announce(&c, &[([1; 32], 100)]).unwrap();
                }
            });
            let mut busy = 0;
            for _ in 0..1000 {
                // No second look: any "busy" would be the reader's doing.
                match c.try_claim_with(&key(1), false).unwrap() {
                    Claimed::Mine(g) => g.die(), // and again: the files stay
                    Claimed::Busy { .. } => busy += 1,
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            busy
        });
        assert_eq!(busy, 0, "a free claim looked taken {busy} times");
    }

    #[test]
    fn absurd_sequence_numbers_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let c = Claims::new(d.path().join("claims"));
        fs::create_dir_all(c.dir()).unwrap();
        let dead = c
            .dir()
            .join(format!("{}{EXT}", key(7).replacen(':', "-", 1)));
        fs::write(&dead, format!("{MAGIC}{}\n", u64::MAX)).unwrap();
        let a = mine(&c, &key(1));
        let ra = a.announce(&c, &[([1; 32], 100)]).unwrap();
        assert_eq!(ra.seq, 1, "the u64::MAX file is not counted");
    }
}
