//! The content index: find an object by the sha256 of its contents.
//!
//! Objects are named by their fs-verity digest, but the tables of contents of zstd:chunked
//! and eStargz layers name files by the plain sha256 of their contents. The index maps one
//! to the other:
//!
//! ```text
//! REPO/index/sha256/XX/<62 hex>   symlink → ../../../objects/YY/<rest>
//! ```
//!
//! **It is a cache, filled lazily and verified.** An entry is only ever written from bytes
//! this process hashed itself (a file fetched and checked against its TOC digest, or an
//! object hashed while looking for a content), so a registry cannot poison it. A full pull
//! costs nothing extra: when a partial pull looks for contents the index does not know,
//! [`ContentIndex::find`] lists the objects whose size matches one of the wanted contents,
//! hashes just those, and indexes every object it hashed under its real sha256. That covers
//! every way objects arrive (full pulls, partial pulls, containers-storage, `create-image`)
//! without any of them doing work up front.
//!
//! **Crash and concurrency rules.** An entry is written with one atomic rename of a symlink
//! made in `tmp/`; two writers of the same entry write the same (or an equally valid)
//! target. A reader trusts an entry only if its object exists with the expected size; the
//! pull that uses it verifies the re-serialised layer against its diff_id anyway, so a torn
//! object after a power loss can fail a pull, never produce a wrong image. `gc` (under the
//! exclusive lock) removes entries whose object it deleted; `fsck` re-hashes every entry's
//! object and `fsck --repair` deletes wrong or dangling entries.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use super::{ioe, symlink_atomic, RepoError, Repository};
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

impl Repository {
    /// The content index (sha256 of contents → object).
    pub fn content_index(&self) -> ContentIndex<'_> {
        ContentIndex { repo: self }
    }
}

fn hex32(s: &Sha256Sum) -> String {
    hex::encode(s)
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

    fn entry_path(&self, sha: &Sha256Sum) -> PathBuf {
        let h = hex32(sha);
        self.dir().join(&h[..2]).join(&h[2..])
    }

    /// The object holding contents `sha` of `size` bytes, if the index knows one that
    /// exists with that size.
    pub fn lookup(&self, sha: &Sha256Sum, size: u64) -> Option<Digest> {
        let t = fs::read_link(self.entry_path(sha)).ok()?;
        let d = Digest::from_object_path(t.to_str()?.trim_start_matches("../../../objects/"))
            .ok()
            .filter(|d| d.algorithm() == self.repo.algorithm())?;
        let m = fs::metadata(self.repo.objects.object_path(&d)).ok()?;
        (m.is_file() && m.len() == size).then_some(d)
    }

    /// Records that object `obj` holds contents `sha`. The caller hashed the bytes itself.
    pub fn insert(&self, sha: &Sha256Sum, obj: &Digest) -> Result<(), RepoError> {
        let p = self.entry_path(sha);
        let dir = p.parent().expect("entry has a parent");
        fs::create_dir_all(dir).map_err(|e| ioe(dir, "cannot create directory", e))?;
        symlink_atomic(
            &format!("../../../objects/{}", obj.object_path()),
            &p,
            &self.repo.root.join("tmp"),
        )
    }

    /// Finds objects for the wanted `(sha256, size)` contents: from the index first, then
    /// by hashing the objects whose size matches a content still missing (each object
    /// hashed is indexed under its real sha256, so it is never hashed again for the same
    /// content).
    pub fn find(&self, wanted: &[(Sha256Sum, u64)]) -> Result<Found, RepoError> {
        let mut found = Found::default();
        let mut missing: HashMap<u64, HashSet<Sha256Sum>> = HashMap::new();
        for (sha, size) in wanted {
            if found.objects.contains_key(sha) {
                continue;
            }
            match self.lookup(sha, *size) {
                Some(d) => {
                    found.objects.insert(*sha, d);
                }
                None => {
                    missing.entry(*size).or_default().insert(*sha);
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let candidates = self.objects_of_sizes(&missing)?;
        type Hashed = (Digest, u64, io::Result<(Sha256Sum, u64)>);
        let hashed: Vec<Hashed> = candidates
            .par_iter()
            .map(|(d, size)| {
                let p = self.repo.objects.object_path(d);
                (*d, *size, sha256_file(&p))
            })
            .collect();
        for (d, size, r) in hashed {
            // An object that vanished or cannot be read is simply not a candidate.
            let Ok((sha, n)) = r else { continue };
            if n != size {
                continue;
            }
            found.hashed += 1;
            found.hashed_bytes += n;
            self.insert(&sha, &d)?;
            if missing.get(&size).is_some_and(|s| s.contains(&sha)) {
                found.objects.insert(sha, d);
            }
        }
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

    /// Every entry: its sha256 (None when the name is not one) and path.
    pub fn entries(&self) -> Vec<(Option<Sha256Sum>, PathBuf)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir()) else {
            return out;
        };
        for sub in rd.flatten() {
            let prefix = sub.file_name().to_string_lossy().into_owned();
            let Ok(rd2) = fs::read_dir(sub.path()) else {
                continue;
            };
            for e in rd2.flatten() {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                let sha = hex::decode(&name)
                    .ok()
                    .and_then(|b| <Sha256Sum>::try_from(b.as_slice()).ok());
                out.push((sha, e.path()));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// The object an entry names, if it names one that exists.
    fn target(&self, path: &Path) -> Option<Digest> {
        let t = fs::read_link(path).ok()?;
        let d = Digest::from_object_path(t.to_str()?.trim_start_matches("../../../objects/"))
            .ok()
            .filter(|d| d.algorithm() == self.repo.algorithm())?;
        self.repo.objects.contains(&d).then_some(d)
    }

    /// Checks one entry by hashing its object.
    pub fn check(&self, sha: Option<&Sha256Sum>, path: &Path) -> EntryState {
        let (Some(sha), Some(d)) = (sha, self.target(path)) else {
            return EntryState::Dangling(path.to_path_buf());
        };
        match sha256_file(&self.repo.objects.object_path(&d)) {
            Ok((got, _)) if &got == sha => EntryState::Good,
            Ok(_) => EntryState::Wrong(path.to_path_buf()),
            Err(_) => EntryState::Dangling(path.to_path_buf()),
        }
    }

    /// Removes entries whose object is gone (cheap: no hashing). Returns how many.
    pub fn prune_dangling(&self) -> Result<u64, RepoError> {
        let mut n = 0;
        for (sha, path) in self.entries() {
            if sha.is_none() || self.target(&path).is_none() {
                remove_entry(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Deletes one index entry.
pub fn remove_entry(path: &Path) -> Result<(), RepoError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ioe(path, "cannot remove index entry", e)),
    }
}
