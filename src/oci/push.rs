//! Pushing an image to a registry: the blobs of an OCI layout (config, layers), then its
//! manifest under the tag. `strata export NAME docker://…` writes the layout from the
//! repository's splitstreams first (same config, same diff_ids), then calls this.
//!
//! Blobs go up in parallel (`jobs` at once); a blob the registry has is not sent again;
//! the manifest goes last, so a failed push never leaves a tag pointing at missing blobs.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::ImageManifest;

use super::error::SourceError;
use super::layout::OciSource;
use super::manifest::{MAX_JSON_SIZE, MT_OCI_MANIFEST};
use super::reference::Reference as LayoutRef;
use crate::registry::push::PushOutcome;
use crate::registry::{ImageClient, StatsSnapshot};

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub destination: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_existing: usize,
    pub blobs_mounted: usize,
    pub network: StatsSnapshot,
}

/// Push the image tagged `tag` in the layout at `dir` to `dest` under `dest_tag`.
pub fn push_layout(
    dir: &Path,
    tag: &str,
    dest: &ImageClient,
    dest_tag: &str,
    mount_from: Option<&str>,
    jobs: usize,
) -> Result<PushReport, SourceError> {
    let before = dest.client().stats();
    let src = OciSource::open_layout(dir)?;
    let img = src.resolve(Some(&LayoutRef::Tag(tag.to_string())), None)?;
    if img.manifest.raw.len() as u64 > MAX_JSON_SIZE {
        return Err(SourceError::JsonTooLarge {
            digest: img.manifest_digest.clone(),
            what: "manifest",
            size: img.manifest.raw.len() as u64,
        });
    }
    let manifest: &ImageManifest = &img.manifest.parsed;
    let mut blobs = vec![(
        manifest.config().digest().to_string(),
        manifest.config().size(),
    )];
    for l in manifest.layers() {
        let d = l.digest().to_string();
        if !blobs.iter().any(|(b, _)| *b == d) {
            blobs.push((d, l.size()));
        }
    }
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Result<PushOutcome, SourceError>>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, blobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((digest, size)) = blobs.get(i) else {
                    break;
                };
                let r = (|| {
                    let hex = digest
                        .strip_prefix("sha256:")
                        .ok_or_else(|| SourceError::UnsupportedDigest(digest.clone()))?;
                    let path = dir.join("blobs/sha256").join(hex);
                    let mut f = File::open(&path).map_err(SourceError::io(&path))?;
                    Ok(dest.push_blob(digest, *size, &mut f, mount_from)?)
                })();
                let failed = r.is_err();
                outcomes.lock().expect("no panics").push(r);
                if failed {
                    next.store(blobs.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let (mut up, mut ex, mut mo) = (0, 0, 0);
    for r in outcomes.into_inner().expect("no panics") {
        match r? {
            PushOutcome::Uploaded => up += 1,
            PushOutcome::Existed => ex += 1,
            PushOutcome::Mounted => mo += 1,
        }
    }
    let mt = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| MT_OCI_MANIFEST.to_string());
    dest.put_manifest(dest_tag, &mt, &img.manifest.raw)?;
    let after = dest.client().stats();
    Ok(PushReport {
        destination: format!("docker://{}", dest.reference()),
        manifest_digest: img.manifest_digest.clone(),
        config_digest: img.config_digest.clone(),
        blobs_uploaded: up,
        blobs_existing: ex,
        blobs_mounted: mo,
        network: StatsSnapshot {
            requests: after.requests - before.requests,
            bytes_fetched: after.bytes_fetched - before.bytes_fetched,
            bytes_sent: after.bytes_sent - before.bytes_sent,
            retries: after.retries - before.retries,
            resumes: after.resumes - before.resumes,
        },
    })
}
