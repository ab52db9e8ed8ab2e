//! What a partial pull reuses and what it fetches.
//!
//! Contents are looked up by sha256: objects through the content index (which hashes
//! objects of matching sizes on a miss, see [`crate::repo::index`]), and contents of at
//! most [`INLINE_MAX`] bytes (kept inline in splitstreams, not as objects) by reading the
//! splitstreams of the layers already stored, only when such a content is wanted.
//!
//! Each missing content is fetched once: the first of its entries is the one fetched,
//! and a content another layer of the same pull is already fetching is waited for
//! instead (see [`super::Shared`]). A content that another pull announced earlier (it
//! pulls a different blob holding the same file, [`crate::repo::announce`]) is left to
//! that pull: this one fetches everything else, then waits for it and takes the object.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{wait, Content, ContentClaim, PartialError, Shared, Slot};
use crate::oci::tar::INLINE_MAX;
use crate::oci::toc::{Headers, LayerToc, Sha256Sum};
use crate::oci::EntryData;
use crate::repo::announce::Announced;
use crate::repo::Repository;

/// How often a pull waiting for another one looks at its claim.
const WAIT_POLL: Duration = Duration::from_millis(50);

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
    /// Claims (in this process) on the contents this layer fetches. Across processes
    /// the announcements order the pulls instead (see [`crate::repo::announce`]).
    pub claims: HashMap<Sha256Sum, ContentClaim>,
    /// Contents another layer of this pull is fetching.
    pub waits: Vec<(Sha256Sum, Arc<Slot>)>,
    /// Contents left to pulls that announced them earlier: (content, size, index into
    /// `announced.earlier`).
    pub deferred: Vec<(Sha256Sum, u64, usize)>,
    /// Compressed bytes of the deferred contents' frames.
    pub deferred_bytes: u64,
    pub announced: Announced,
}

impl Plan {
    pub fn fetch_bytes(&self) -> u64 {
        self.items.iter().map(|(_, s, e)| e - s).sum()
    }

    /// A plan fetching just `items` (contents a pull waited for in vain).
    pub fn refetch(items: Vec<(Item, u64, u64)>) -> Plan {
        Plan {
            items,
            have: HashMap::new(),
            claims: HashMap::new(),
            waits: Vec::new(),
            deferred: Vec::new(),
            deferred_bytes: 0,
            announced: Announced::default(),
        }
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
pub fn make(
    repo: &Repository,
    toc: &LayerToc,
    shared: &Shared,
    announced: Announced,
) -> Result<Plan, PartialError> {
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
    let mut claims: HashMap<Sha256Sum, ContentClaim> = HashMap::new();
    let mut waits = Vec::new();
    let mut deferred = Vec::new();
    let mut deferred_bytes = 0;
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
        if f.size > INLINE_MAX {
            if let Some(owner) = announced.owner_of(&f.sha256, f.size) {
                // No claim of ours on it: the earlier pull never waits for this one.
                deferred.push((f.sha256, f.size, owner));
                deferred_bytes += f.end - f.start;
                continue;
            }
        }
        match shared.claim(&f.sha256) {
            Ok(c) => {
                claims.insert(f.sha256, c);
                items.push((Item::File(i), f.start, f.end));
            }
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
        deferred,
        deferred_bytes,
        announced,
    })
}

/// Every content of a layer, once fetched.
pub struct Contents {
    pub map: HashMap<Sha256Sum, Content>,
    /// Contents this layer fetched itself.
    pub fetched_here: HashSet<Sha256Sum>,
    /// Contents another pull fetched while this one waited.
    pub from_other_pulls: HashSet<Sha256Sum>,
    /// Files left to another pull that did not store them after all (it failed or was
    /// killed): this layer fetches them itself.
    pub missing: Vec<(Item, u64, u64)>,
}

/// After this layer's own fetches: releases its claims, takes up what other layers and
/// pulls fetched meanwhile, and returns every content the rebuild needs but `missing`;
/// `None` when another layer of this pull failed to fetch a content this one needs (the
/// caller then pulls fully).
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
        deferred,
        announced,
        ..
    } = plan;
    for (sha, c) in claims {
        c.finish(fetched.contains_key(&sha));
    }
    let fetched_here: HashSet<Sha256Sum> = fetched.keys().copied().collect();
    let mut map = have;
    map.extend(fetched);
    // Contents left to earlier announcers: wait for each to end, then find the objects.
    let mut by_owner: HashMap<usize, Vec<(Sha256Sum, u64)>> = HashMap::new();
    for (sha, size, owner) in deferred {
        by_owner.entry(owner).or_default().push((sha, size));
    }
    let mut owners: Vec<_> = by_owner.into_iter().collect();
    owners.sort_by_key(|(o, _)| *o);
    let repo_claims = repo.claims();
    let mut missing = Vec::new();
    let index = repo.content_index();
    for (owner, wanted) in owners {
        let a = &announced.earlier[owner];
        let mut waited = false;
        // Until the announcer has stored every content wanted from it (a partial announcer
        // indexes each file as it is stored, so this can end long before its layer does;
        // a full pull indexes nothing), or it stops working on them (finished, failed or
        // dead: what it left is fetched here).
        // Each look reads only the index records appended since the previous one.
        let mut remaining = wanted.clone();
        let mut watch = index.watch();
        while let Some(pid) = repo_claims.still_working(a) {
            watch.take_found(&mut remaining);
            if remaining.is_empty() {
                break;
            }
            progress.waiting(&a.key, pid);
            waited = true;
            std::thread::sleep(WAIT_POLL);
        }
        if waited {
            progress.waited();
        }
        let found = index.find(&wanted).unwrap_or_default();
        for (sha, _) in &wanted {
            match found.objects.get(sha) {
                Some(d) => {
                    from_other_pulls.insert(*sha);
                    map.insert(*sha, Content::Object(*d));
                }
                None => {
                    let (i, f) = toc
                        .files
                        .iter()
                        .enumerate()
                        .find(|(_, f)| f.sha256 == *sha)?;
                    missing.push((Item::File(i), f.start, f.end));
                }
            }
        }
    }
    missing.sort_by_key(|m| m.1);
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
        missing,
    })
}
