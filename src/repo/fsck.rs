//! Consistency check: every object's bytes match its name, every image and image name
//! (`refs/images`) resolves, every object an image references exists, deployment records
//! and content-index entries are sound.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use super::index::Sha256Sum;
use super::{image_redirects, ioe, RepoError, Repository};
use crate::fsverity::{self, Digest};

/// One problem fsck found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Problem {
    /// The object's content does not hash to its name (flipped byte, truncation).
    CorruptObject {
        path: PathBuf,
        actual: String,
    },
    /// fs-verity is enforced but the object has none, or the kernel's digest differs.
    VerityMismatch {
        path: PathBuf,
        detail: String,
    },
    /// A file in objects/ that is not named like an object.
    StrayFile {
        path: PathBuf,
    },
    /// An object an image references is missing.
    MissingObject {
        image: String,
        object: String,
    },
    /// images/<id> or a ref points at nothing.
    DanglingImage {
        path: PathBuf,
    },
    DanglingRef {
        name: String,
        target: String,
    },
    /// A deployment record that cannot be read, or whose image is missing.
    BadDeployment {
        path: PathBuf,
        why: String,
    },
    /// An image that cannot be parsed.
    CorruptImage {
        image: String,
        error: String,
    },
    /// A content-index entry whose object is missing (or whose name is not a sha256).
    DanglingIndexEntry {
        path: PathBuf,
    },
    /// A content-index entry whose object's contents have another sha256.
    WrongIndexEntry {
        path: PathBuf,
    },
    /// Objects could not be read.
    Unreadable {
        path: PathBuf,
        error: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptObject { path, actual } => {
                write!(
                    f,
                    "corrupt object {}: content hashes to {actual}",
                    path.display()
                )
            }
            Problem::VerityMismatch { path, detail } => {
                write!(f, "object {}: {detail}", path.display())
            }
            Problem::StrayFile { path } => {
                write!(f, "stray file {} (not an object name)", path.display())
            }
            Problem::MissingObject { image, object } => {
                write!(f, "image {image}: missing object {object}")
            }
            Problem::DanglingImage { path } => write!(f, "dangling image entry {}", path.display()),
            Problem::DanglingRef { name, target } => write!(f, "dangling ref {name} -> {target}"),
            Problem::CorruptImage { image, error } => write!(f, "image {image}: {error}"),
            Problem::BadDeployment { path, why } => {
                write!(f, "deployment record {}: {why}", path.display())
            }
            Problem::DanglingIndexEntry { path } => {
                write!(f, "{}: content-index entry names no object", path.display())
            }
            Problem::WrongIndexEntry { path } => write!(
                f,
                "{}: content-index entry names an object with other contents",
                path.display()
            ),
            Problem::Unreadable { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
        }
    }
}

/// What fsck checked and found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FsckReport {
    pub objects_checked: u64,
    pub images_checked: u64,
    pub index_entries_checked: u64,
    pub problems: Vec<Problem>,
    /// With --repair: objects removed, and images that are now incomplete.
    pub removed: Vec<PathBuf>,
    pub incomplete_images: Vec<String>,
}

impl Repository {
    /// Checks the repository; with `repair`, removes corrupt objects.
    pub fn fsck(
        &self,
        repair: bool,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<FsckReport, RepoError> {
        let mut report = FsckReport::default();
        let objects = self.root.join("objects");
        let mut files = Vec::new();
        for sub in fs::read_dir(&objects).map_err(|e| ioe(&objects, "cannot read", e))? {
            let sub = sub.map_err(|e| ioe(&objects, "cannot read", e))?;
            let sname = sub.file_name().to_string_lossy().into_owned();
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                report
                    .problems
                    .push(Problem::StrayFile { path: sub.path() });
                continue;
            }
            for e in fs::read_dir(sub.path()).map_err(|e| ioe(sub.path(), "cannot read", e))? {
                let e = e.map_err(|e| ioe(sub.path(), "cannot read", e))?;
                let rel = format!("{sname}/{}", e.file_name().to_string_lossy());
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((rel, e.path(), size));
            }
        }
        if let Some(p) = progress {
            p.set_length(files.iter().map(|f| f.2).sum());
        }
        let alg = self.alg;
        let enforced = self.meta.verity_enforced;
        let mut found: Vec<Problem> = files
            .par_iter()
            .filter_map(|(rel, path, size)| {
                let r = check_object(alg, enforced, rel, path);
                if let Some(p) = progress {
                    p.inc(*size);
                }
                r
            })
            .collect();
        report.objects_checked = files.len() as u64;
        let corrupt: BTreeSet<String> = found
            .iter()
            .filter_map(|p| match p {
                Problem::CorruptObject { path, .. } | Problem::VerityMismatch { path, .. } => path
                    .strip_prefix(&objects)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        report.problems.append(&mut found);

        // images/ entries.
        let images_dir = self.root.join("images");
        let mut image_objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in fs::read_dir(&images_dir).map_err(|e| ioe(&images_dir, "cannot read", e))? {
            let e = e.map_err(|e| ioe(&images_dir, "cannot read", e))?;
            let hex = e.file_name().to_string_lossy().into_owned();
            let Ok(id) = Digest::from_hex(alg, &hex) else {
                report.problems.push(Problem::StrayFile { path: e.path() });
                continue;
            };
            if !self.objects.contains(&id) {
                report
                    .problems
                    .push(Problem::DanglingImage { path: e.path() });
                continue;
            }
            report.images_checked += 1;
            let image = match self.read_image(&id) {
                Ok(i) => i,
                Err(err) => {
                    report.problems.push(Problem::CorruptImage {
                        image: hex.clone(),
                        error: err.to_string(),
                    });
                    continue;
                }
            };
            let mut refs: Vec<String> = image_redirects(&image.tree)
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .collect();
            refs.sort();
            refs.dedup();
            for r in &refs {
                let present = rustix::fs::statat(
                    self.objects.dir_fd(),
                    r.as_str(),
                    rustix::fs::AtFlags::empty(),
                )
                .is_ok();
                if !present {
                    report.problems.push(Problem::MissingObject {
                        image: hex.clone(),
                        object: r.clone(),
                    });
                }
            }
            image_objects.insert(hex, refs);
        }
        for (name, target) in self.image_refs()? {
            let ok = target
                .as_ref()
                .map(|t| images_dir.join(t).exists())
                .unwrap_or(false);
            if !ok {
                report.problems.push(Problem::DanglingRef {
                    name,
                    target: target.unwrap_or_else(|| "?".into()),
                });
            }
        }
        // Deployment records: readable, and naming an image that exists.
        for hex in self.deployed_images() {
            let path = super::deployments::dir_of(&self.root).join(format!("{hex}.json"));
            let why = match self.deployment(&hex) {
                None => Some("not a readable record".to_string()),
                Some(r) if r.image != hex => Some(format!("names image {}", r.image)),
                Some(_) if !images_dir.join(&hex).exists() => {
                    Some(format!("image {hex} is not in the repository"))
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                report.problems.push(Problem::BadDeployment { path, why });
            }
        }
        // The content index: every record's object exists and hashes to its sha256.
        let index = self.content_index();
        let records = index.entries();
        let mut index_bad: Vec<Problem> = records
            .par_iter()
            .filter_map(|(b, i, sha, d)| match index.check(sha, d) {
                super::index::EntryState::Good => None,
                super::index::EntryState::Dangling(_) => Some(Problem::DanglingIndexEntry {
                    path: index.describe(*b, *i),
                }),
                super::index::EntryState::Wrong(_) => Some(Problem::WrongIndexEntry {
                    path: index.describe(*b, *i),
                }),
            })
            .collect();
        report.index_entries_checked = records.len() as u64;
        if repair && !index_bad.is_empty() {
            let bad: std::collections::HashSet<(Sha256Sum, Digest)> = records
                .iter()
                .filter(|(_, _, sha, d)| {
                    !matches!(index.check(sha, d), super::index::EntryState::Good)
                })
                .map(|(_, _, s, d)| (*s, *d))
                .collect();
            index.retain(|s, d| !bad.contains(&(*s, *d)))?;
        }
        report.problems.append(&mut index_bad);
        if repair {
            for rel in &corrupt {
                let p = objects.join(rel);
                fs::remove_file(&p).map_err(|e| ioe(&p, "cannot remove corrupt object", e))?;
                report.removed.push(p);
            }
            for (image, refs) in &image_objects {
                if refs.iter().any(|r| corrupt.contains(r))
                    || corrupt.contains(&format!("{}/{}", &image[..2], &image[2..]))
                {
                    report.incomplete_images.push(image.clone());
                }
            }
            self.objects.sync()?;
        }
        report.problems.sort();
        Ok(report)
    }
}

fn check_object(
    alg: fsverity::Algorithm,
    enforced: bool,
    rel: &str,
    path: &PathBuf,
) -> Option<Problem> {
    let Ok(expected) = Digest::from_object_path(rel) else {
        return Some(Problem::StrayFile { path: path.clone() });
    };
    if expected.algorithm() != alg {
        return Some(Problem::StrayFile { path: path.clone() });
    }
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Some(Problem::Unreadable {
                path: path.clone(),
                error: e.to_string(),
            })
        }
    };
    let actual = match fsverity::digest_file(alg, &f) {
        Ok(d) => d,
        Err(e) => {
            return Some(Problem::Unreadable {
                path: path.clone(),
                error: e.to_string(),
            })
        }
    };
    if actual != expected {
        return Some(Problem::CorruptObject {
            path: path.clone(),
            actual: actual.to_hex(),
        });
    }
    if enforced {
        match fsverity::measure(&f) {
            Ok(Some(d)) if d == expected => {}
            Ok(Some(d)) => {
                return Some(Problem::VerityMismatch {
                    path: path.clone(),
                    detail: format!("kernel fs-verity digest is {}", d.to_hex()),
                })
            }
            Ok(None) => {
                return Some(Problem::VerityMismatch {
                    path: path.clone(),
                    detail: "fs-verity is not enabled".into(),
                })
            }
            Err(e) => {
                return Some(Problem::VerityMismatch {
                    path: path.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }
    None
}
