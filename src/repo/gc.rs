//! Garbage collection: removes what no ref reaches.
//!
//! Runs under the exclusive repository lock, so no writer is between writing
//! objects and the ref that will reference them: every writer holds the
//! shared lock from its first object to its last ref. That includes pulls
//! waiting for another pull's claim: they hold the shared lock while they wait,
//! so the layer a claim holder publishes cannot be collected before the waiter
//! records it. Fetch claims and partial downloads (`claims/`) are all stale
//! under the exclusive lock (only pulls hold claims), and are removed here.
//!
//! Roots: every image a name (`refs/images/`) reaches, every image in
//! `in_use` (mounted, booted) and every image with a deployment record
//! (`deployments/<image id>.json`, see `deployments.rs`). A live image's records (each
//! under `refs/records/<image id>`, `refs/manifests/<hex>` or `refs/names/<name>`) keep
//! what they list.

use std::collections::HashSet;
use std::fs;

use serde::Serialize;

use super::{image_redirects, ioe, LockMode, RepoError, Repository};
use crate::fsverity::Digest;

/// What gc removed (or would remove, with `dry_run`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub images_removed: Vec<String>,
    pub objects_removed: u64,
    pub bytes_freed: u64,
    pub objects_kept: u64,
    pub refs_removed: u64,
    /// Content-index entries whose object was removed.
    pub index_entries_removed: u64,
    /// Stale claim files and partial downloads of dead pulls removed.
    pub claim_files_removed: u64,
    /// Import records (under `refs/manifests` or `refs/names`) that could not be read or
    /// parsed: kept, with their refs, and skipped.
    pub records_unreadable: u64,
    /// Images kept only because they are mounted or booted.
    pub images_in_use: u64,
    /// Images kept only because a deployment record names them.
    pub images_deployed: u64,
}

impl Repository {
    /// Removes unreferenced images and objects. `in_use` are images kept
    /// whether or not a name reaches them (mounted, booted).
    pub fn gc(&self, dry_run: bool, in_use: &[Digest]) -> Result<GcReport, RepoError> {
        self.relock(LockMode::Exclusive)?;
        let mut report = GcReport {
            dry_run,
            ..Default::default()
        };
        // Roots: every image a ref names.
        let mut live_images: HashSet<String> = HashSet::new();
        for (_, id) in self.image_refs()? {
            if let Some(id) = id {
                live_images.insert(id);
            }
        }
        for id in in_use {
            if self.root.join("images").join(id.to_hex()).exists()
                && live_images.insert(id.to_hex())
            {
                report.images_in_use += 1;
            }
        }
        // Deployments (`deployments/<image id>.json`, even unreadable ones):
        // a boot entry may point at them.
        for hex in self.deployed_images() {
            if live_images.insert(hex) {
                report.images_deployed += 1;
            }
        }
        let mut live: HashSet<Vec<u8>> = HashSet::new();
        // Records of live images keep their objects and refs. An image has one record
        // per way it was imported: `refs/records/<image id>` names the latest, and
        // `refs/manifests/<hex>` each OCI manifest's (two manifests whose layers differ
        // can build one tree, e.g. a squashed copy: both keep their layers).
        // `refs/names/<name>` stays while the name still names the record's image.
        let names: std::collections::HashMap<String, String> = self
            .image_refs()?
            .into_iter()
            .filter_map(|(n, id)| Some((n, id?)))
            .collect();
        let mut live_refs: HashSet<(String, String)> = HashSet::new();
        let mut seen_records = HashSet::new();
        // Several refs often name one record: each is read and parsed once.
        let mut parsed_records: std::collections::HashMap<Digest, Result<super::Record, String>> =
            std::collections::HashMap::new();
        for ns in ["records", "manifests", "names"] {
            for (name, d) in self.list_refs(ns) {
                let Some(d) = d.filter(|d| self.objects.contains(d)) else {
                    continue;
                };
                if ns == "records" && !live_images.contains(&name) {
                    continue;
                }
                let parsed = parsed_records.entry(d).or_insert_with(|| {
                    let bytes = self.read_object(&d).map_err(|e| e.to_string())?;
                    serde_json::from_slice::<super::Record>(&bytes).map_err(|e| e.to_string())
                });
                let record = match parsed {
                    Ok(r) => r.clone(),
                    // A live image's own record must be whole: stop rather than guess.
                    Err(why) if ns == "records" => {
                        return Err(ioe(
                            self.objects.object_path(&d),
                            "corrupt record",
                            std::io::Error::other(why.clone()),
                        ))
                    }
                    // Another import's record that cannot be read: whose image it is, and
                    // what it keeps, is unknown. Keep it and its ref (for fsck and the
                    // user to look at) and go on.
                    Err(_) => {
                        report.records_unreadable += 1;
                        live.insert(d.object_path().into_bytes());
                        live_refs.insert((ns.to_string(), name));
                        continue;
                    }
                };
                if !live_images.contains(&record.image)
                    || (ns == "names" && names.get(&name) != Some(&record.image))
                {
                    continue;
                }
                live_refs.insert((ns.to_string(), name));
                if !seen_records.insert(d) {
                    continue;
                }
                live.insert(d.object_path().into_bytes());
                live.extend(record.keeps.iter().map(|k| k.as_bytes().to_vec()));
                live_refs.extend(record.refs.iter().cloned());
            }
        }
        // Refs outside refs/images that no live record claims.
        let refs_dir = self.root.join("refs");
        for ns in fs::read_dir(&refs_dir)
            .map_err(|e| ioe(&refs_dir, "cannot read", e))?
            .flatten()
        {
            let ns = ns.file_name().to_string_lossy().into_owned();
            if ns == "images" {
                continue;
            }
            for (name, _) in self.list_refs(&ns) {
                if !live_refs.contains(&(ns.clone(), name.clone())) {
                    if !dry_run {
                        self.remove_ns_ref(&ns, &name)?;
                    }
                    report.refs_removed += 1;
                }
            }
        }
        for hex in &live_images {
            let Ok(id) = Digest::from_hex(self.alg, hex) else {
                continue;
            };
            if !self.objects.contains(&id) {
                continue; // dangling ref: fsck reports it
            }
            live.insert(id.object_path().into_bytes());
            let image = self.read_image(&id)?;
            live.extend(image_redirects(&image.tree));
        }
        // Unreferenced entries in images/.
        let images_dir = self.root.join("images");
        for e in fs::read_dir(&images_dir).map_err(|e| ioe(&images_dir, "cannot read", e))? {
            let e = e.map_err(|e| ioe(&images_dir, "cannot read", e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live_images.contains(&name) {
                if !dry_run {
                    fs::remove_file(e.path()).map_err(|err| ioe(e.path(), "cannot remove", err))?;
                }
                report.images_removed.push(name);
            }
        }
        // Objects nothing reaches.
        let objects = self.root.join("objects");
        for sub in fs::read_dir(&objects).map_err(|e| ioe(&objects, "cannot read", e))? {
            let sub = sub.map_err(|e| ioe(&objects, "cannot read", e))?;
            let sname = sub.file_name().to_string_lossy().into_owned();
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let rd = fs::read_dir(sub.path()).map_err(|e| ioe(sub.path(), "cannot read", e))?;
            for e in rd {
                let e = e.map_err(|e| ioe(sub.path(), "cannot read", e))?;
                let rel = format!("{sname}/{}", e.file_name().to_string_lossy());
                if live.contains(rel.as_bytes()) {
                    report.objects_kept += 1;
                    continue;
                }
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    fs::remove_file(e.path()).map_err(|err| ioe(e.path(), "cannot remove", err))?;
                }
                report.objects_removed += 1;
                report.bytes_freed += size;
            }
        }
        if !dry_run {
            report.claim_files_removed = self.claims().remove_all()?;
            self.objects.sync()?;
            // Content-index entries of the objects just removed.
            report.index_entries_removed = self.content_index().prune_dangling()?;
        }
        report.images_removed.sort();
        Ok(report)
    }
}
