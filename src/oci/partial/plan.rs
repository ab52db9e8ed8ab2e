//! What a partial pull reuses and what it fetches.
//!
//! Contents are looked up by sha256: objects through the content index (which hashes
//! objects of matching sizes on a miss, see [`crate::repo::index`]), and contents of at
//! most [`INLINE_MAX`] bytes (kept inline in splitstreams, not as objects) by reading the
//! splitstreams of the layers already stored, only when such a content is wanted.
//!
//! Each missing content is fetched once: the first of its entries is the one fetched,
//! and a content another layer of the same pull is already fetching is waited for
//! instead (see [`super::Shared`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{wait, Content, ContentClaim, PartialError, Shared, Slot};
use crate::oci::tar::INLINE_MAX;
use crate::oci::toc::{Headers, LayerToc, Sha256Sum};
use crate::oci::EntryData;
use crate::repo::claims::{ClaimGuard, Claimed};
use crate::repo::Repository;

/// One byte range of the blob to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Frames between files (headers, padding): `gaps[i]` precedes `files[i]`; the last
    /// one (index `files.len()`) runs to the end of the tar data.
    Gap(usize),
    /// The contents of `files[i]`.
    File(usize),
}

/// The plan for one layer.
pub struct Plan {
    /// Items to fetch with their byte ranges, in blob order.
    pub items: Vec<(Item, u64, u64)>,
    /// Contents already available.
    pub have: HashMap<Sha256Sum, Content>,
    /// Claims on the contents this layer fetches: in this process, and in the
    /// repository (so that other pulls wait for them too).
    pub claims: HashMap<Sha256Sum, (ContentClaim, ClaimGuard)>,
    /// Contents another layer of this pull is fetching.
    pub waits: Vec<(Sha256Sum, Arc<Slot>)>,
    /// Contents another process is fetching (their in-process claims are held here, so
    /// that this process's other layers wait for the outcome).
    pub other_pulls: Vec<(Sha256Sum, ContentClaim, Option<u32>)>,
}

/// The repository claim key of a content.
pub fn claim_key(sha: &Sha256Sum) -> String {
    format!("sha256:{}", hex::encode(sha))
}

impl Plan {
    pub fn fetch_bytes(&self) -> u64 {
        self.items.iter().map(|(_, s, e)| e - s).sum()
    }
}

/// Contents small enough to be inline, found in the layers already stored.
fn inline_contents(
    repo: &Repository,
    wanted: &HashSet<Sha256Sum>,
) -> HashMap<Sha256Sum, Arc<Vec<u8>>> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    for (_, ss) in repo.list_refs("layers") {
        let Some(ss) = ss else { continue };
        let Ok(bytes) = repo.read_object(&ss) else {
            continue;
        };
        let Ok(entries) = crate::oci::splitstream::read_entries(&bytes) else {
            continue;
        };
        for e in entries {
            if let Some(EntryData::Inline(data)) = e.data {
                if data.is_empty() {
                    continue;
                }
                let sha: Sha256Sum = Sha256::digest(&data).into();
                if wanted.contains(&sha) && !out.contains_key(&sha) {
                    out.insert(sha, Arc::new(data.to_vec()));
                }
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

/// Plans the fetches of one layer.
pub fn make(repo: &Repository, toc: &LayerToc, shared: &Shared) -> Result<Plan, PartialError> {
    let big: Vec<(Sha256Sum, u64)> = toc
        .files
        .iter()
        .filter(|f| f.size > INLINE_MAX)
        .map(|f| (f.sha256, f.size))
        .collect();
    let small: HashSet<Sha256Sum> = toc
        .files
        .iter()
        .filter(|f| f.size <= INLINE_MAX)
        .map(|f| f.sha256)
        .collect();
    let found = repo.content_index().find(&big)?;
    let mut have: HashMap<Sha256Sum, Content> = found
        .objects
        .into_iter()
        .map(|(k, d)| (k, Content::Object(d)))
        .collect();
    for (k, v) in inline_contents(repo, &small) {
        have.insert(k, Content::Inline(v));
    }
    let mut items = Vec::new();
    let mut claims: HashMap<Sha256Sum, (ContentClaim, ClaimGuard)> = HashMap::new();
    let mut waits = Vec::new();
    let mut other_pulls = Vec::new();
    let repo_claims = repo.claims();
    let mut seen: HashSet<Sha256Sum> = HashSet::new();
    let gaps = toc.headers == Headers::Gaps;
    let mut prev_end = 0u64;
    for (i, f) in toc.files.iter().enumerate() {
        if gaps && f.start > prev_end {
            items.push((Item::Gap(i), prev_end, f.start));
        }
        prev_end = f.end;
        if have.contains_key(&f.sha256) || !seen.insert(f.sha256) {
            continue;
        }
        match shared.claim(&f.sha256) {
            Ok(c) => match repo_claims.try_claim(&claim_key(&f.sha256))? {
                Claimed::Mine(g) => {
                    claims.insert(f.sha256, (c, g));
                    items.push((Item::File(i), f.start, f.end));
                }
                Claimed::Busy { pid } => other_pulls.push((f.sha256, c, pid)),
            },
            Err(slot) => waits.push((f.sha256, slot)),
        }
    }
    if gaps && toc.data_end > prev_end {
        items.push((Item::Gap(toc.files.len()), prev_end, toc.data_end));
    }
    Ok(Plan {
        items,
        have,
        claims,
        waits,
        other_pulls,
    })
}

/// Every content of a layer, once fetched.
pub struct Contents {
    pub map: HashMap<Sha256Sum, Content>,
    /// Contents this layer fetched itself.
    pub fetched_here: HashSet<Sha256Sum>,
    /// Contents another process fetched while this pull waited.
    pub from_other_pulls: HashSet<Sha256Sum>,
}

/// After this layer's own fetches: releases its claims, takes up what other layers
/// fetched meanwhile, and returns every content the rebuild needs; `None` when another
/// layer failed to fetch a content this one needs (the caller then pulls fully).
pub fn settle(
    repo: &Repository,
    toc: &LayerToc,
    plan: Plan,
    fetched: HashMap<Sha256Sum, Content>,
    shared: &Shared,
    progress: &dyn super::Progress,
) -> Option<Contents> {
    let mut from_other_pulls = HashSet::new();
    let Plan {
        have,
        claims,
        waits,
        other_pulls,
        ..
    } = plan;
    for (sha, (c, g)) in claims {
        // The object is stored and indexed (or not fetched): release the repository
        // claim first, so that other pulls find the result when they see it released.
        drop(g);
        c.finish(fetched.contains_key(&sha));
    }
    let fetched_here: HashSet<Sha256Sum> = fetched.keys().copied().collect();
    let mut map = have;
    map.extend(fetched);
    // Contents other processes were fetching: wait for their claims, then look again.
    let repo_claims = repo.claims();
    for (sha, c, pid) in other_pulls {
        let f = toc.files.iter().find(|f| f.sha256 == sha)?;
        progress.waiting(&claim_key(&sha), pid);
        let found = || {
            if f.size > INLINE_MAX {
                repo.content_index()
                    .lookup(&sha, f.size)
                    .map(Content::Object)
            } else {
                None
            }
        };
        let got = repo_claims
            .wait(
                &claim_key(&sha),
                std::time::Duration::from_millis(50),
                || found().is_some(),
                |_| {},
            )
            .ok()
            .and_then(|guard| match guard {
                None => found(),
                Some(_g) => found(), // the other pull died or failed: not there
            });
        c.finish(got.is_some());
        match got {
            Some(content) => {
                from_other_pulls.insert(sha);
                map.insert(sha, content);
            }
            None => return None,
        }
    }
    for (sha, slot) in waits {
        if !wait(&slot) {
            return None;
        }
        let f = toc.files.iter().find(|f| f.sha256 == sha)?;
        let found = if f.size > INLINE_MAX {
            repo.content_index()
                .lookup(&sha, f.size)
                .map(Content::Object)
        } else {
            shared.small(&sha).map(Content::Inline)
        };
        map.insert(sha, found?);
    }
    Some(Contents {
        map,
        fetched_here,
        from_other_pulls,
    })
}
