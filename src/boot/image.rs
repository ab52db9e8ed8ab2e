//! Reading files out of a repository image without mounting it: the EROFS
//! is parsed (after its fs-verity digest is checked against the image id)
//! and a file's bytes come from its inline data or from its object, whose
//! digest is checked too. What this returns is therefore exactly what a
//! verity-protected mount would show.

use std::fs;

use erofs::format::{S_IFDIR, S_IFLNK, S_IFREG};
use erofs::tree::{Content, FileData, InodeId};

use super::DeployError;
use crate::fsverity::{self, Digest};
use crate::repo::Repository;

/// Symlinks followed in one lookup before giving up (as the kernel's 40).
const MAX_SYMLINKS: usize = 40;

/// An image opened for reading.
pub struct ImageFiles<'r> {
    repo: &'r Repository,
    pub id: Digest,
    pub tree: erofs::Tree,
}

impl<'r> ImageFiles<'r> {
    /// Reads image `id`, refusing it unless its bytes hash to its id.
    pub fn open(repo: &'r Repository, id: &Digest) -> Result<Self, DeployError> {
        let path = repo.image_path(id);
        let corrupt = |why: String| DeployError::CorruptImage {
            id: id.to_hex(),
            path: path.clone(),
            why,
        };
        let bytes = fs::read(&path).map_err(|e| corrupt(format!("cannot read: {e}")))?;
        let got = fsverity::par_digest_bytes(id.algorithm(), &bytes);
        if got != *id {
            return Err(corrupt(format!(
                "its fs-verity digest is {}, not its id",
                got.to_hex()
            )));
        }
        let image = erofs::read_image(&bytes).map_err(|e| corrupt(e.to_string()))?;
        Ok(ImageFiles {
            repo,
            id: *id,
            tree: image.tree,
        })
    }

    fn child(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        match &self.tree.inode(dir).content {
            Content::Directory(entries) => entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].inode),
            _ => None,
        }
    }

    /// The inode at `path` (absolute within the image), following symlinks
    /// in every component but the last one.
    pub fn lookup(&self, path: &str) -> Option<InodeId> {
        self.lookup_from(path, 0)
    }

    fn lookup_from(&self, path: &str, depth: usize) -> Option<InodeId> {
        if depth > MAX_SYMLINKS {
            return None;
        }
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        // the resolved directory chain, so `..` can step back
        let mut chain = vec![InodeId::ROOT];
        for (i, c) in comps.iter().enumerate() {
            let cur = *chain.last()?;
            match *c {
                "." => continue,
                ".." => {
                    if chain.len() > 1 {
                        chain.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let next = self.child(cur, c.as_bytes())?;
            let last = i + 1 == comps.len();
            if let (Content::Symlink(target), false) = (&self.tree.inode(next).content, last) {
                let target = std::str::from_utf8(target).ok()?;
                let rest = comps[i + 1..].join("/");
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    self.path_of(&chain)?
                };
                return self.lookup_from(&format!("{base}/{target}/{rest}"), depth + 1);
            }
            chain.push(next);
        }
        chain.last().copied()
    }

    fn path_of(&self, chain: &[InodeId]) -> Option<String> {
        let mut s = String::new();
        for w in chain.windows(2) {
            let Content::Directory(entries) = &self.tree.inode(w[0]).content else {
                return None;
            };
            let e = entries.iter().find(|e| e.inode == w[1])?;
            s.push('/');
            s.push_str(std::str::from_utf8(&e.name).ok()?);
        }
        Some(s)
    }

    /// Entries of the directory at `path` (names and inodes), if it is one.
    pub fn read_dir(&self, path: &str) -> Option<Vec<(String, InodeId)>> {
        let id = self.lookup(path)?;
        match &self.tree.inode(id).content {
            Content::Directory(entries) => Some(
                entries
                    .iter()
                    .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.inode))
                    .collect(),
            ),
            _ => None,
        }
    }

    pub fn is_dir(&self, id: InodeId) -> bool {
        self.tree.inode(id).stat.file_type() == S_IFDIR
    }

    pub fn is_file(&self, id: InodeId) -> bool {
        self.tree.inode(id).stat.file_type() == S_IFREG
    }

    pub fn is_symlink(&self, id: InodeId) -> bool {
        self.tree.inode(id).stat.file_type() == S_IFLNK
    }

    /// A regular file's bytes (at most `limit`), its object checked against
    /// its digest.
    pub fn read(&self, path: &str, id: InodeId, limit: u64) -> Result<Vec<u8>, DeployError> {
        let bad = |why: String| DeployError::ImageFile {
            image: self.id.to_hex(),
            path: path.to_string(),
            why,
        };
        let Content::Regular(f) = &self.tree.inode(id).content else {
            return Err(bad("not a regular file".into()));
        };
        if f.size > limit {
            return Err(bad(format!("{} bytes, more than {limit}", f.size)));
        }
        match &f.data {
            FileData::Inline(b) => Ok(b.clone()),
            FileData::External { redirect, .. } => {
                let r = redirect
                    .as_deref()
                    .ok_or_else(|| bad("no object named".into()))?;
                let r = std::str::from_utf8(r.strip_prefix(b"/").unwrap_or(r))
                    .map_err(|_| bad("object name is not UTF-8".into()))?;
                let d = Digest::from_object_path(r).map_err(|e| bad(format!("object {r}: {e}")))?;
                let p = self.repo.objects().object_path(&d);
                let bytes =
                    fs::read(&p).map_err(|e| bad(format!("object {}: {}", p.display(), e)))?;
                if bytes.len() as u64 != f.size {
                    return Err(bad(format!(
                        "object {} is {} bytes, the image says {}",
                        p.display(),
                        bytes.len(),
                        f.size
                    )));
                }
                let got = fsverity::par_digest_bytes(d.algorithm(), &bytes);
                if got != d {
                    return Err(bad(format!(
                        "object {} has digest {}, not its name",
                        p.display(),
                        got.to_hex()
                    )));
                }
                Ok(bytes)
            }
        }
    }

    /// Reads the file at `path` if it exists and is a regular file.
    pub fn read_path(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, DeployError> {
        match self.lookup(path) {
            Some(id) if self.is_file(id) => self.read(path, id, limit).map(Some),
            _ => Ok(None),
        }
    }
}
