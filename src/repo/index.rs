//! The content index: find an object by the sha256 of its contents.
//!
//! Objects are named by their fs-verity digest, but the tables of contents of zstd:chunked
//! and eStargz layers name files by the plain sha256 of their contents. The index maps one
//! to the other, in 256 append-only bucket files:
//!
//! ```text
//! REPO/index/sha256/XX   records of 32 + D bytes: sha256 of the contents, then the
//!                        object's fs-verity digest (D = 32 or 64, the repository's
//!                        algorithm); XX = the first byte of the sha256, in hex
//! ```
//!
//! (Files, not one symlink per entry: tens of thousands of inodes cost more to create than
//! the pull they speed up.)
//!
//! **It is a cache, filled lazily and verified.** A record is only ever written from bytes
//! this process hashed itself (a file fetched and checked against its TOC digest, or an
//! object hashed while looking for a content), so a registry cannot poison it. A full pull
//! costs nothing extra: when a partial pull looks for contents the index does not know,
//! [`ContentIndex::find`] lists the objects whose size matches one of the wanted contents,
//! hashes just those, and indexes every object it hashed under its real sha256. That covers
//! every way objects arrive (full pulls, partial pulls, containers-storage, `create-image`)
//! without any of them doing work up front.
//!
//! **Crash and concurrency rules.** Appends take the bucket's `flock` and write whole
//! records with one `write` (O_APPEND); a record torn by a power loss is a partial record
//! at the end of the file, which readers ignore and the next append cuts off. A reader
//! trusts a record only if its object exists with the expected size; the pull that uses it
//! verifies the re-serialised layer against its diff_id anyway, so a torn object after a
//! power loss can fail a pull, never produce a wrong image. `gc` (under the exclusive
//! repository lock) rewrites the buckets without the records of objects it deleted;
//! `fsck` re-hashes every record's object and `fsck --repair` rewrites the buckets without
//! wrong or dangling records.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use super::{ioe, RepoError, Repository};
use crate::fsverity::Digest;

/// A sha256 of file contents.
pub type Sha256Sum = [u8; 32];

/// The index of one repository.
pub struct ContentIndex<'a> {
    repo: &'a Repository,
}

/// What [`ContentIndex::find`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Wanted contents held by an object.
    pub objects: HashMap<Sha256Sum, Digest>,
    /// Objects hashed to find them (not in the index before).
    pub hashed: u64,
    pub hashed_bytes: u64,
}

/// One index entry as `fsck` sees it.
#[derive(Debug)]
pub enum EntryState {
    Good,
    /// The link does not name an object, or the object is missing.
    Dangling(PathBuf),
    /// The object's contents have another sha256.
    Wrong(PathBuf),
}

/// Follows the buckets of the content index as other processes append to them, for a
/// pull waiting for contents another pull stores: each [`Watch::take_found`] reads only
/// the records appended since the last (buckets only grow while pulls hold the shared
/// repository lock; gc, which rewrites them, cannot run meanwhile).
pub struct Watch<'a> {
    index: &'a ContentIndex<'a>,
    /// Per bucket: bytes already read (whole records).
    offsets: HashMap<u8, u64>,
}

impl Watch<'_> {
    /// Removes from `wanted` the contents the index now holds (object present with the
    /// right size). Read errors count as "not yet".
    pub fn take_found(&mut self, wanted: &mut Vec<(Sha256Sum, u64)>) {
        use std::io::{Seek, SeekFrom};
        let rec = self.index.record_size();
        let alg = self.index.repo.algorithm();
        let buckets: HashSet<u8> = wanted.iter().map(|(s, _)| s[0]).collect();
        let mut appended: HashMap<Sha256Sum, Vec<Digest>> = HashMap::new();
        for b in buckets {
            let off = self.offsets.entry(b).or_insert(0);
            let Ok(mut f) = fs::File::open(self.index.bucket(b)) else {
                continue;
            };
            let mut data = Vec::new();
            if f.seek(SeekFrom::Start(*off)).is_err() || f.read_to_end(&mut data).is_err() {
                continue;
            }
            let whole = data.len() - data.len() % rec;
            *off += whole as u64;
            for r in data[..whole].chunks_exact(rec) {
                let Ok(sha) = <Sha256Sum>::try_from(&r[..32]) else {
                    continue;
                };
                if let Ok(d) = Digest::from_bytes(alg, &r[32..]) {
                    appended.entry(sha).or_default().push(d);
                }
            }
        }
        wanted.retain(|(sha, size)| {
            !appended
                .get(sha)
                .is_some_and(|ds| ds.iter().any(|d| self.index.present(d, *size)))
        });
    }
}

impl Repository {
    /// The content index (sha256 of contents → object).
    pub fn content_index(&self) -> ContentIndex<'_> {
        ContentIndex { repo: self }
    }
}

/// sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256Sum, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

impl ContentIndex<'_> {
    fn dir(&self) -> PathBuf {
        self.repo.root.join("index").join("sha256")
    }

    fn bucket(&self, b: u8) -> PathBuf {
        self.dir().join(format!("{b:02x}"))
    }

    fn record_size(&self) -> usize {
        32 + self.repo.algorithm().digest_size()
    }

    /// The whole records of one bucket, in file order.
    fn read_bucket(&self, b: u8) -> Vec<(Sha256Sum, Digest)> {
        let Ok(data) = fs::read(self.bucket(b)) else {
            return Vec::new();
        };
        let alg = self.repo.algorithm();
        data.chunks_exact(self.record_size())
            .filter_map(|r| {
                let sha: Sha256Sum = r[..32].try_into().ok()?;
                let d = Digest::from_bytes(alg, &r[32..]).ok()?;
                (sha[0] == b).then_some((sha, d))
            })
            .collect()
    }

    /// Whether object `d` exists with `size` bytes.
    fn present(&self, d: &Digest, size: u64) -> bool {
        fs::metadata(self.repo.objects.object_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// The object holding contents `sha` of `size` bytes, if the index knows one that
    /// exists with that size.
    pub fn lookup(&self, sha: &Sha256Sum, size: u64) -> Option<Digest> {
        self.read_bucket(sha[0])
            .into_iter()
            .rev()
            .find(|(s, d)| s == sha && self.present(d, size))
            .map(|(_, d)| d)
    }

    /// Records that object `obj` holds contents `sha`. The caller hashed the bytes itself.
    pub fn insert(&self, sha: &Sha256Sum, obj: &Digest) -> Result<(), RepoError> {
        self.insert_many(&[(*sha, *obj)])
    }

    /// [`insert`](Self::insert) for many records: one locked append per bucket.
    pub fn insert_many(&self, records: &[(Sha256Sum, Digest)]) -> Result<(), RepoError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut by_bucket: HashMap<u8, Vec<u8>> = HashMap::new();
        for (sha, d) in records {
            let v = by_bucket.entry(sha[0]).or_default();
            v.extend_from_slice(sha);
            v.extend_from_slice(d.as_bytes());
        }
        if by_bucket.is_empty() {
            return Ok(());
        }
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(|e| ioe(&dir, "cannot create directory", e))?;
        let rec = self.record_size() as u64;
        for (b, bytes) in by_bucket {
            let p = self.bucket(b);
            let res = (|| -> io::Result<()> {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(&p)?;
                rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
                // A record torn by a power loss: cut it off so that records stay aligned.
                let len = f.metadata()?.len();
                if len % rec != 0 {
                    f.set_len(len - len % rec)?;
                }
                f.write_all(&bytes)
            })();
            res.map_err(|e| ioe(&p, "cannot append to the content index", e))?;
        }
        Ok(())
    }

    /// Watches the index for contents other processes are storing: see [`Watch`].
    pub fn watch(&self) -> Watch<'_> {
        Watch {
            index: self,
            offsets: HashMap::new(),
        }
    }

    /// Finds objects for the wanted `(sha256, size)` contents: from the index first, then
    /// by hashing the objects whose size matches a content still missing (each object
    /// hashed is indexed under its real sha256, so it is never hashed again for the same
    /// content).
    pub fn find(&self, wanted: &[(Sha256Sum, u64)]) -> Result<Found, RepoError> {
        let mut found = Found::default();
        let buckets: HashSet<u8> = wanted.iter().map(|(s, _)| s[0]).collect();
        let known: HashMap<Sha256Sum, Vec<Digest>> = buckets
            .par_iter()
            .map(|b| self.read_bucket(*b))
            .collect::<Vec<_>>()
            .into_iter()
            .flatten()
            .fold(HashMap::new(), |mut m, (s, d)| {
                m.entry(s).or_insert_with(Vec::new).push(d);
                m
            });
        let mut missing: HashMap<u64, HashSet<Sha256Sum>> = HashMap::new();
        for (sha, size) in wanted {
            if found.objects.contains_key(sha) {
                continue;
            }
            let hit = known
                .get(sha)
                .and_then(|ds| ds.iter().rev().find(|d| self.present(d, *size)));
            match hit {
                Some(d) => {
                    found.objects.insert(*sha, *d);
                }
                None => {
                    missing.entry(*size).or_default().insert(*sha);
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let indexed: HashSet<Digest> = known.values().flatten().copied().collect();
        let candidates: Vec<(Digest, u64)> = self
            .objects_of_sizes(&missing)?
            .into_iter()
            .filter(|(d, _)| !indexed.contains(d))
            .collect();
        type Hashed = (Digest, u64, io::Result<(Sha256Sum, u64)>);
        let hashed: Vec<Hashed> = candidates
            .par_iter()
            .map(|(d, size)| {
                let p = self.repo.objects.object_path(d);
                (*d, *size, sha256_file(&p))
            })
            .collect();
        let mut new_records = Vec::new();
        for (d, size, r) in hashed {
            // An object that vanished or cannot be read is simply not a candidate.
            let Ok((sha, n)) = r else { continue };
            if n != size {
                continue;
            }
            found.hashed += 1;
            found.hashed_bytes += n;
            new_records.push((sha, d));
            if missing.get(&size).is_some_and(|s| s.contains(&sha)) {
                found.objects.insert(sha, d);
            }
        }
        self.insert_many(&new_records)?;
        Ok(found)
    }

    /// Objects whose size is a key of `sizes` (one pass over the object directory).
    fn objects_of_sizes(
        &self,
        sizes: &HashMap<u64, HashSet<Sha256Sum>>,
    ) -> Result<Vec<(Digest, u64)>, RepoError> {
        let root = self.repo.objects.path().to_path_buf();
        let alg = self.repo.algorithm();
        let prefixes: Vec<PathBuf> = match fs::read_dir(&root) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.file_name().len() == 2)
                .map(|e| e.path())
                .collect(),
            Err(e) => return Err(ioe(&root, "cannot list objects", e)),
        };
        let out: Vec<(Digest, u64)> = prefixes
            .par_iter()
            .flat_map_iter(|dir| {
                let prefix = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let mut v = Vec::new();
                if let Ok(rd) = fs::read_dir(dir) {
                    for e in rd.flatten() {
                        let Ok(m) = e.metadata() else { continue };
                        if !m.is_file() || !sizes.contains_key(&m.len()) {
                            continue;
                        }
                        let name = e.file_name();
                        let Some(rest) = name.to_str() else { continue };
                        if let Ok(d) = Digest::from_hex(alg, &format!("{prefix}{rest}")) {
                            v.push((d, m.len()));
                        }
                    }
                }
                v
            })
            .collect();
        Ok(out)
    }

    /// Every record: bucket, position, sha256 and object.
    pub fn entries(&self) -> Vec<(u8, usize, Sha256Sum, Digest)> {
        (0..=255u8)
            .flat_map(|b| {
                self.read_bucket(b)
                    .into_iter()
                    .enumerate()
                    .map(move |(i, (s, d))| (b, i, s, d))
            })
            .collect()
    }

    /// Where a record is, for messages.
    pub fn describe(&self, bucket: u8, pos: usize) -> PathBuf {
        self.bucket(bucket).join(format!("#{pos}"))
    }

    /// Checks one record by hashing its object.
    pub fn check(&self, sha: &Sha256Sum, d: &Digest) -> EntryState {
        let p = self.repo.objects.object_path(d);
        match sha256_file(&p) {
            Ok((got, _)) if &got == sha => EntryState::Good,
            Ok(_) => EntryState::Wrong(p),
            Err(_) => EntryState::Dangling(p),
        }
    }

    /// Rewrites every bucket keeping the records `keep` accepts (once each). Callers hold
    /// the exclusive repository lock. Returns how many records were dropped.
    pub fn retain(&self, keep: impl Fn(&Sha256Sum, &Digest) -> bool) -> Result<u64, RepoError> {
        let mut dropped = 0;
        let tmp = self.repo.root.join("tmp");
        for b in 0..=255u8 {
            let p = self.bucket(b);
            if !p.exists() {
                continue;
            }
            let records = self.read_bucket(b);
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for (s, d) in &records {
                if seen.insert((*s, *d)) && keep(s, d) {
                    out.extend_from_slice(s);
                    out.extend_from_slice(d.as_bytes());
                }
            }
            let kept = out.len() / self.record_size();
            if kept == records.len()
                && fs::metadata(&p).is_ok_and(|m| m.len() as usize == out.len())
            {
                continue;
            }
            dropped += (records.len() - kept) as u64;
            if out.is_empty() {
                remove_entry(&p)?;
            } else {
                super::write_atomic(&p, &out, &tmp)?;
            }
        }
        Ok(dropped)
    }

    /// Drops records whose object is gone (cheap: no hashing). Returns how many.
    pub fn prune_dangling(&self) -> Result<u64, RepoError> {
        self.retain(|_, d| self.repo.objects.contains(d))
    }
}

/// Deletes one index file.
pub fn remove_entry(path: &Path) -> Result<(), RepoError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ioe(path, "cannot remove index entry", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsverity::Algorithm;

    fn sha(data: &[u8]) -> Sha256Sum {
        Sha256::digest(data).into()
    }

    #[test]
    fn a_watch_sees_records_appended_since_its_last_look() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = Repository::init(&dir.path().join("r"), Algorithm::Sha256, false).unwrap();
        let (a, b) = (vec![1u8; 300], vec![2u8; 400]);
        let (da, _) = repo.objects().add_bytes(&a).unwrap();
        let (db, _) = repo.objects().add_bytes(&b).unwrap();
        let idx = repo.content_index();
        let mut watch = idx.watch();
        let mut wanted = vec![(sha(&a), 300), (sha(&b), 400), ([5; 32], 10)];
        watch.take_found(&mut wanted);
        assert_eq!(wanted.len(), 3, "nothing indexed yet");
        idx.insert(&sha(&a), &da).unwrap();
        // A torn tail (a writer mid-append) is not read past.
        let bucket = idx.bucket(sha(&b)[0]);
        fs::create_dir_all(bucket.parent().unwrap()).unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&bucket)
            .unwrap();
        std::io::Write::write_all(&mut f, &sha(&b)[..20]).unwrap();
        watch.take_found(&mut wanted);
        assert_eq!(wanted, vec![(sha(&b), 400), ([5; 32], 10)]);
        idx.insert(&sha(&b), &db).unwrap(); // cuts the torn tail, appends whole
                                            // A record whose size does not match is not taken.
        idx.insert(&[5; 32], &db).unwrap();
        watch.take_found(&mut wanted);
        assert_eq!(wanted, vec![([5; 32], 10)]);
    }

    #[test]
    fn finds_by_hashing_then_by_record_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = Repository::init(&dir.path().join("r"), Algorithm::Sha256, false).unwrap();
        let a = vec![7u8; 5000];
        let b = vec![9u8; 5000]; // same size: a candidate too
        let (da, _) = repo.objects().add_bytes(&a).unwrap();
        let (db, _) = repo.objects().add_bytes(&b).unwrap();
        let idx = repo.content_index();
        assert_eq!(
            idx.lookup(&sha(&a), 5000),
            None,
            "nothing indexed by adding objects"
        );

        // A miss hashes both same-size objects and records both.
        let f = idx.find(&[(sha(&a), 5000), ([1; 32], 5000)]).unwrap();
        assert_eq!(f.objects.get(&sha(&a)), Some(&da));
        assert_eq!(f.objects.len(), 1, "no object holds the unknown content");
        assert_eq!(f.hashed, 2);
        assert_eq!(
            idx.lookup(&sha(&b), 5000),
            Some(db),
            "b recorded while hashing"
        );
        // Known now: nothing is hashed again.
        assert_eq!(idx.find(&[(sha(&a), 5000)]).unwrap().hashed, 0);
        // The wrong size is not trusted.
        assert_eq!(idx.lookup(&sha(&a), 4999), None);

        // A torn record at the end of a bucket is ignored, and cut off by the next append.
        let bucket = idx.bucket(sha(&a)[0]);
        let len = fs::metadata(&bucket).unwrap().len();
        let mut f = fs::OpenOptions::new().append(true).open(&bucket).unwrap();
        std::io::Write::write_all(&mut f, &[0xaa; 10]).unwrap();
        assert_eq!(idx.lookup(&sha(&a), 5000), Some(da));
        let c = vec![3u8; 100];
        let (dc, _) = repo.objects().add_bytes(&c).unwrap();
        let mut fake = sha(&c);
        fake[0] = sha(&a)[0]; // same bucket as a
        idx.insert(&fake, &dc).unwrap();
        assert_eq!(fs::metadata(&bucket).unwrap().len() % 64, 0);
        assert_eq!(idx.lookup(&fake, 100), Some(dc));
        assert!(fs::metadata(&bucket).unwrap().len() >= len + 64);

        // fsck's check: the fake record is wrong; retain drops it and keeps the rest.
        assert!(matches!(idx.check(&fake, &dc), EntryState::Wrong(_)));
        assert!(matches!(idx.check(&sha(&a), &da), EntryState::Good));
        let dropped = idx
            .retain(|s, d| matches!(idx.check(s, d), EntryState::Good))
            .unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(idx.lookup(&fake, 100), None);
        assert_eq!(idx.lookup(&sha(&a), 5000), Some(da));

        // A removed object's record is pruned.
        fs::remove_file(repo.objects().object_path(&db)).unwrap();
        assert_eq!(idx.prune_dangling().unwrap(), 1);
        assert_eq!(idx.entries().len(), 1);
    }
}
