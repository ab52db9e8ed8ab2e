//! Cooperative fetching: concurrent pulls (processes, or threads of one `strata pull A B
//! C`) fetch each layer blob once.
//!
//! Before a pull fetches a blob it claims the blob's digest in the repository
//! ([`crate::repo::claims`]). A layer whose claim another pull holds is set aside, and the
//! pull's lanes go on with its other layers ([`run_queue`]); set-aside layers are retried
//! every [`POLL`] once nothing else is left, and taken up as soon as the claim is free:
//! either the holder published the layer (`refs/layers/<diff_id>`, read back instead of
//! fetched), or it died, and this pull fetches the blob itself, resuming from the dead
//! holder's verified partial download ([`open_claimed`]).
//!
//! Why it cannot deadlock: a lane holds at most one claim, and only while it is fetching;
//! it never waits for another blob's claim while holding one. A partial layer does wait,
//! under its claim, for pulls that announced the files it needs, but only for *earlier*
//! announcements (smaller sequence numbers, `repo/announce.rs`), so no pull waits for a
//! pull that waits for it.
//! Why nobody starves: a claim is held only by a pull working on that blob: fetching it,
//! or waiting (under the claim) for earlier announcers, which by induction on the
//! sequence numbers end too. Each ends (done, failed, or killed) and releases the claim;
//! every waiter looks again within [`POLL`].
//!
//! What a holder publishes before releasing: the splitstream object and every object it
//! references, flushed (`syncfs`), then `refs/layers/<diff_id>`; a waiter that finds the
//! ref may use it at once. The repository's shared lock, held by every pull from start to
//! end, keeps gc away meanwhile (`doc/concurrency.md`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::pull_error::PullError;
use super::source::ImageSource;
use crate::fsverity::Digest;
use crate::repo::claims::{ClaimGuard, Claimed, PartialWriter};
use crate::repo::{RepoError, Repository};

/// How often a set-aside layer looks at its claim again.
pub const POLL: Duration = Duration::from_millis(100);

/// What one attempt at a work item gave.
pub(crate) enum Outcome<T> {
    Done(T),
    /// Another pull holds the claim (its pid when known): come back later.
    Busy {
        pid: Option<u32>,
    },
}

/// Figures of the cooperation, for the pull report.
#[derive(Debug, Default)]
pub(crate) struct Coop {
    /// Bytes of partial downloads taken over from pulls that died.
    pub resumed_bytes: AtomicU64,
}

/// Claims `digest` (a blob) for fetching.
pub(crate) fn claim(repo: &Repository, digest: &str) -> Result<Claimed, PullError> {
    Ok(repo.claims().try_claim(digest)?)
}

/// Publishes a layer stored under a claim that another pull waits for: objects flushed,
/// then the ref the waiter looks for. With nobody waiting, nothing is done here: the ref is
/// written with the image, after the pull's one flush (a `syncfs` per layer costs a full
/// pull a tenth of its time). A pull that finds the claim free but no ref afterwards
/// fetches the layer itself: a duplicate fetch in that narrow window, never a wrong one.
pub(crate) fn publish_layer(
    repo: &Repository,
    diff_id_hex: &str,
    splitstream: &Digest,
    claim: &ClaimGuard,
) -> Result<(), PullError> {
    if !claim.wanted() {
        return Ok(());
    }
    repo.objects().sync().map_err(RepoError::from)?;
    repo.set_ref("layers", diff_id_hex, splitstream)?;
    Ok(())
}

/// The bytes of an image's config (digest and size from its manifest), fetched at most
/// once across pulls: claimed like a layer, stored as an object, made durable (one
/// fsync) and published as `refs/blobs/<hex>` before the claim is released. A pull that
/// finds the claim taken waits for it (it holds no claim meanwhile, so no cycle can form:
/// configs are read before any layer is claimed), then takes the published bytes, checked
/// against the digest; `None` when there is nothing usable (the caller reads the source).
pub(crate) fn config_once(
    repo: &Repository,
    src: &dyn ImageSource,
    digest: &str,
    size: u64,
    on_wait: Option<&super::fetch_progress::WaitHook>,
) -> Result<Option<Vec<u8>>, PullError> {
    let Ok(want) = super::verify::sha256_bytes(digest) else {
        return Ok(None);
    };
    let hex = digest
        .split_once(':')
        .map_or(digest, |(_, h)| h)
        .to_string();
    let published = || -> Option<Vec<u8>> {
        let obj = repo.get_ref("blobs", &hex)?;
        let raw = repo.read_object(&obj).ok()?;
        let got: [u8; 32] = sha2::Sha256::digest(&raw).into();
        (raw.len() as u64 == size && got == want).then_some(raw)
    };
    let mut told = false;
    loop {
        if let Some(raw) = published() {
            return Ok(Some(raw));
        }
        match claim(repo, digest)? {
            Claimed::Mine(guard) => {
                if let Some(raw) = published() {
                    return Ok(Some(raw));
                }
                let raw = super::source::read_json_blob(src, digest, size, "config")?;
                let (obj, _) = repo.objects().add_bytes(&raw).map_err(RepoError::from)?;
                // Durable before the ref names it (a few KiB: one fsync, not a syncfs).
                repo.objects().sync_one(&obj).map_err(RepoError::from)?;
                repo.set_ref("blobs", &hex, &obj)?;
                drop(guard);
                return Ok(Some(raw));
            }
            Claimed::Busy { pid } => {
                if let (Some(h), false) = (on_wait, told) {
                    (h.0)(digest, pid);
                }
                told = true;
                std::thread::sleep(POLL / 2);
            }
        }
    }
}

/// The raw bytes of a claimed blob: the verified prefix of a partial download left by a
/// holder that died, then the source's bytes from there on, each appended to the partial
/// download as it passes (so that whoever comes after a crash of ours resumes too).
/// Nothing is verified here: the caller's digest check covers prefix and rest alike.
pub(crate) fn open_claimed(
    src: &dyn ImageSource,
    digest: &str,
    size: u64,
    guard: &ClaimGuard,
    coop: &Coop,
) -> Result<Box<dyn Read + Send>, PullError> {
    let partial = guard.resume_partial()?;
    let held = partial.verified.min(size);
    coop.resumed_bytes.fetch_add(held, Ordering::Relaxed);
    let rest: Box<dyn Read + Send> = if held < size {
        src.open_raw_blob_at(digest, size, held)?
    } else {
        Box::new(io::empty())
    };
    Ok(Box::new(Teed {
        prefix: partial.prefix,
        rest,
        writer: partial.writer,
    }))
}

struct Teed {
    prefix: io::Take<File>,
    rest: Box<dyn Read + Send>,
    writer: PartialWriter,
}

impl Read for Teed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.prefix.limit() > 0 {
            let n = self.prefix.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // Shorter than verified (truncated under us): the digest check will say so.
            self.prefix.set_limit(0);
        }
        let n = self.rest.read(buf)?;
        self.writer.append(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
}

struct Queue {
    ready: VecDeque<usize>,
    /// Set aside because another pull holds their claim: (item, when to look again).
    waiting: Vec<(usize, Instant)>,
    stop: bool,
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `work` on every item with `lanes` threads. An item answering
/// [`Outcome::Busy`] goes to the back, is tried again no sooner than [`POLL`] later and
/// only when no ready item is left; `busy` hears about it each time. The first error
/// stops handing out items (running ones finish). Results come in completion order.
pub(crate) fn run_queue<T: Send>(
    items: &[usize],
    lanes: usize,
    work: impl Fn(usize) -> Result<Outcome<T>, PullError> + Sync,
    busy: impl Fn(usize, Option<u32>) + Sync,
) -> Vec<(usize, Result<T, PullError>)> {
    let q = Mutex::new(Queue {
        ready: items.iter().copied().collect(),
        waiting: Vec::new(),
        stop: false,
    });
    let cv = Condvar::new();
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..lanes.max(1) {
            s.spawn(|| loop {
                let item = {
                    let mut g = lock(&q);
                    loop {
                        if g.stop {
                            break None;
                        }
                        if let Some(i) = g.ready.pop_front() {
                            break Some(i);
                        }
                        let Some(k) = (0..g.waiting.len()).min_by_key(|&k| g.waiting[k].1) else {
                            break None;
                        };
                        let due = g.waiting[k].1;
                        let now = Instant::now();
                        if due <= now {
                            break Some(g.waiting.swap_remove(k).0);
                        }
                        g = cv
                            .wait_timeout(g, due - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                };
                let Some(i) = item else { break };
                let r = work(i);
                match r {
                    Ok(Outcome::Busy { pid }) => {
                        busy(i, pid);
                        lock(&q).waiting.push((i, Instant::now() + POLL));
                    }
                    Ok(Outcome::Done(v)) => {
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, Ok(v)));
                    }
                    Err(e) => {
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, Err(e)));
                        lock(&q).stop = true;
                    }
                }
                cv.notify_all();
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn busy_items_wait_at_the_back_without_holding_a_lane() {
        // Item 0 is busy for its first three tries; the others must all finish first.
        let tries = AtomicUsize::new(0);
        let order = Mutex::new(Vec::new());
        let res = run_queue(
            &[0, 1, 2, 3],
            1,
            |i| {
                if i == 0 && tries.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Ok(Outcome::Busy { pid: Some(7) });
                }
                order.lock().unwrap().push(i);
                Ok(Outcome::Done(i * 10))
            },
            |i, pid| assert_eq!((i, pid), (0, Some(7))),
        );
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 0]);
        assert_eq!(res.len(), 4);
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }
}
