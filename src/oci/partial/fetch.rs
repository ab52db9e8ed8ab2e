//! Fetching the ranges a plan names: coalesced into multi-range requests, a few at a
//! time, each part checked as it streams in.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::plan::{Item, Plan};
use super::{Content, PartialError, PartialStats, Progress, Shared};
use crate::oci::source::LayerDesc;
use crate::oci::tar::INLINE_MAX;
use crate::oci::toc::{Headers, LayerToc, Location, Sha256Sum};
use crate::registry::ranges::MAX_RANGE_HEADER;
use crate::registry::{BlobStream, ImageClient, RangesAnswer};
use crate::repo::Repository;

/// Ranges closer than this are fetched as one (the bytes between cost less than a part's
/// headers and bookkeeping).
pub const BRIDGE: u64 = 512;
/// Ranges asked for in one request until the registry says otherwise.
pub const RANGES_PER_REQUEST: usize = 256;
/// Requests in flight for one layer.
pub const PARALLEL_REQUESTS: usize = 4;
/// Largest decompressed run of headers between two files.
pub const MAX_GAP: u64 = 64 << 20;
/// Largest total of decompressed header runs kept for one layer.
pub const MAX_GAPS_TOTAL: u64 = 1 << 30;

/// The TOC and tar-split bytes, or the whole blob.
pub enum Meta {
    Bytes {
        toc: Vec<u8>,
        tar_split: Option<Vec<u8>>,
    },
    Whole(Box<BlobStream>),
}

/// Reads exactly `n` bytes.
fn read_n(r: &mut dyn Read, n: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n.min(64 << 20) as usize);
    r.take(n).read_to_end(&mut v)?;
    if v.len() as u64 != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "part cut short",
        ));
    }
    Ok(v)
}

/// Fetches the TOC and (newer form) the tar-split in one request.
pub fn fetch_meta(
    image: &ImageClient,
    layer: &LayerDesc,
    loc: &Location,
    stats: &mut PartialStats,
) -> Result<Meta, PartialError> {
    let mut wanted = vec![(loc.offset, loc.offset + loc.len)];
    if let Some((o, l, _)) = loc.tar_split {
        wanted.push((o, o + l));
    }
    wanted.sort_unstable();
    if wanted.len() == 2 && wanted[0].1 > wanted[1].0 {
        return Err(PartialError::Toc {
            layer: layer.digest.clone(),
            source: crate::oci::toc::TocError::Invalid("TOC and tar-split overlap".into()),
        });
    }
    // One range covering both when they are adjacent (they are, but for a skippable
    // frame's header): fewer parts, and registries that refuse multi-range still work.
    let span = if wanted.len() == 2 && wanted[1].0 - wanted[0].1 <= BRIDGE {
        vec![(wanted[0].0, wanted[1].1)]
    } else {
        wanted.clone()
    };
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut groups: Vec<Vec<(u64, u64)>> = vec![span];
    while let Some(g) = groups.pop() {
        stats.requests += 1;
        let mut sink = |s: u64, n: u64, r: &mut dyn Read| -> io::Result<()> {
            got.push((s, read_n(r, n)?));
            Ok(())
        };
        match image.get_blob_ranges(&layer.digest, layer.size, &g, &mut sink)? {
            RangesAnswer::Parts => {}
            RangesAnswer::Whole(stream) => return Ok(Meta::Whole(stream)),
            RangesAnswer::Refused { .. } if g.len() > 1 => {
                groups.extend(g.into_iter().map(|r| vec![r]));
            }
            RangesAnswer::Refused { status } => {
                return Err(PartialError::Registry(
                    crate::registry::RegistryError::Protocol {
                        registry: image.endpoint().host.clone(),
                        what: format!("blob {}", layer.digest),
                        why: format!("refused a single range request ({status})"),
                    },
                ))
            }
        }
    }
    let slice = |(s, e): (u64, u64)| -> Option<Vec<u8>> {
        got.iter().find_map(|(ps, data)| {
            let pe = ps + data.len() as u64;
            (*ps <= s && e <= pe).then(|| data[(s - ps) as usize..(e - ps) as usize].to_vec())
        })
    };
    let missing = || {
        PartialError::Registry(crate::registry::RegistryError::Protocol {
            registry: image.endpoint().host.clone(),
            what: format!("blob {}", layer.digest),
            why: "the TOC's bytes were not in the answer".into(),
        })
    };
    let toc = slice((loc.offset, loc.offset + loc.len)).ok_or_else(missing)?;
    let tar_split = match loc.tar_split {
        Some((o, l, _)) => Some(slice((o, o + l)).ok_or_else(missing)?),
        None => None,
    };
    stats.toc_bytes = loc.len;
    stats.tar_split_bytes = loc.tar_split.map_or(0, |t| t.1);
    stats.bytes_fetched += got.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    Ok(Meta::Bytes { toc, tar_split })
}

/// What [`fetch_plan`] got.
pub enum Fetched {
    Done {
        /// Contents fetched (and stored) here.
        contents: HashMap<Sha256Sum, Content>,
        /// Decompressed header runs, by gap index (without a tar-split).
        gaps: Vec<Option<Vec<u8>>>,
    },
    Whole(Box<BlobStream>),
}

/// One coalesced range: its bytes and the plan items inside it.
struct Range {
    start: u64,
    end: u64,
    items: Vec<(Item, u64, u64)>,
}

/// Ranges one layer's fetch is coalesced into, at most: registries pay per range (a
/// seek and a part's headers), so past this the smallest gaps between ranges are bridged,
/// which keeps the extra bytes as few as the cap allows.
pub const MAX_RANGES: usize = 4096;

fn coalesce(items: &[(Item, u64, u64)]) -> Vec<Range> {
    let max_ranges = MAX_RANGES;
    // The gaps between consecutive items; bridge those up to BRIDGE, then the smallest
    // ones until at most `max_ranges` ranges remain.
    let gaps: Vec<u64> = items
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].2))
        .collect();
    let mut bridged = vec![false; gaps.len()];
    let mut open: Vec<usize> = Vec::new();
    for (i, g) in gaps.iter().enumerate() {
        if *g <= BRIDGE {
            bridged[i] = true;
        } else {
            open.push(i);
        }
    }
    if open.len() + 1 > max_ranges {
        open.sort_by_key(|&i| gaps[i]);
        let excess = open.len() + 1 - max_ranges;
        for &i in &open[..excess] {
            bridged[i] = true;
        }
    }
    let mut out: Vec<Range> = Vec::new();
    for (k, &(it, s, e)) in items.iter().enumerate() {
        match out.last_mut() {
            Some(r) if k > 0 && bridged[k - 1] => {
                r.end = e;
                r.items.push((it, s, e));
            }
            _ => out.push(Range {
                start: s,
                end: e,
                items: vec![(it, s, e)],
            }),
        }
    }
    out
}

/// Splits ranges into requests of at most `max` ranges and a bounded `Range` header.
fn requests(ranges: Vec<Range>, max: usize) -> VecDeque<Vec<Range>> {
    let mut out = VecDeque::new();
    let mut cur: Vec<Range> = Vec::new();
    let mut header = 6usize;
    for r in ranges {
        let len = format!("{}-{},", r.start, r.end - 1).len();
        if !cur.is_empty() && (cur.len() >= max || header + len > MAX_RANGE_HEADER) {
            out.push_back(std::mem::take(&mut cur));
            header = 6;
        }
        header += len;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push_back(cur);
    }
    out
}

/// State shared by the request threads of one layer.
struct Run<'a> {
    repo: &'a Repository,
    layer: &'a LayerDesc,
    toc: &'a LayerToc,
    shared: &'a Shared,
    progress: &'a dyn Progress,
    contents: Mutex<HashMap<Sha256Sum, Content>>,
    gaps: Mutex<Vec<Option<Vec<u8>>>>,
    stats: Mutex<PartialStats>,
    gap_bytes: std::sync::atomic::AtomicU64,
    error: Mutex<Option<PartialError>>,
    stop: AtomicBool,
}

impl Run<'_> {
    fn fail(&self, e: PartialError) -> io::Error {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        let msg = e.to_string();
        if g.is_none() {
            *g = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
        io::Error::other(msg)
    }

    /// One part of an answer: the items of `ranges` it covers.
    fn part(&self, ranges: &[Range], start: u64, len: u64, r: &mut dyn Read) -> io::Result<()> {
        let end = start + len;
        let mut pos = start;
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes_fetched += len;
        self.progress.fetched(len);
        for rg in ranges {
            for &(it, s, e) in &rg.items {
                if s < pos || e > end {
                    continue; // in another part (or already read)
                }
                io::copy(&mut r.take(s - pos), &mut io::sink())?;
                let mut limited = r.take(e - s);
                match it {
                    Item::Gap(i) => self.gap(i, &mut limited)?,
                    Item::File(i) => self.file(i, &mut limited)?,
                }
                // Whatever a frame reader left (trailing skippable frames).
                io::copy(&mut limited, &mut io::sink())?;
                pos = e;
            }
        }
        Ok(())
    }

    fn gap(&self, i: usize, r: &mut dyn Read) -> io::Result<()> {
        let mut out = Vec::new();
        let dec = zstd::stream::read::Decoder::new(r);
        let n = dec
            .and_then(|d| d.take(MAX_GAP + 1).read_to_end(&mut out))
            .map_err(|e| {
                self.fail(PartialError::Rebuild {
                    layer: self.layer.digest.clone(),
                    why: format!("tar headers before file #{i}: cannot decompress: {e}"),
                })
            })?;
        if n as u64 > MAX_GAP {
            return Err(self.fail(PartialError::Rebuild {
                layer: self.layer.digest.clone(),
                why: format!("tar headers before file #{i} exceed {MAX_GAP} bytes"),
            }));
        }
        let total = self.gap_bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > MAX_GAPS_TOTAL {
            return Err(self.fail(PartialError::Rebuild {
                layer: self.layer.digest.clone(),
                why: format!("tar headers exceed {MAX_GAPS_TOTAL} bytes in all"),
            }));
        }
        self.gaps.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(out);
        Ok(())
    }

    fn file(&self, i: usize, r: &mut dyn Read) -> io::Result<()> {
        let f = &self.toc.files[i];
        let file_err = |why: String| PartialError::File {
            layer: self.layer.digest.clone(),
            file: f.name.clone(),
            why,
        };
        let mut dec = zstd::stream::read::Decoder::new(r)
            .map_err(|e| self.fail(file_err(format!("cannot decompress: {e}"))))?
            .take(f.size + 1);
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        let content = if f.size <= INLINE_MAX {
            let mut data = Vec::new();
            dec.read_to_end(&mut data)
                .map_err(|e| self.fail(file_err(format!("cannot decompress: {e}"))))?;
            sha.update(&data);
            n = data.len() as u64;
            Some(data)
        } else {
            None
        };
        let mut writer = match content {
            Some(_) => None,
            None => Some(
                self.repo
                    .objects()
                    .writer()
                    .map_err(|e| self.fail(PartialError::Repo(e.into())))?,
            ),
        };
        if let Some(w) = writer.as_mut() {
            loop {
                let k = dec
                    .read(&mut buf)
                    .map_err(|e| self.fail(file_err(format!("cannot decompress: {e}"))))?;
                if k == 0 {
                    break;
                }
                sha.update(&buf[..k]);
                n += k as u64;
                w.write_all(&buf[..k])
                    .map_err(|e| self.fail(file_err(format!("cannot write object: {e}"))))?;
            }
        }
        let got: Sha256Sum = sha.finalize().into();
        if n != f.size || got != f.sha256 {
            return Err(self.fail(PartialError::FileDigest {
                layer: self.layer.digest.clone(),
                file: f.name.clone(),
                want: format!("sha256:{}", hex::encode(f.sha256)),
                got: if n != f.size {
                    format!("{n} bytes instead of {}", f.size)
                } else {
                    format!("sha256:{}", hex::encode(got))
                },
            }));
        }
        let c = match (content, writer) {
            (Some(data), _) => {
                let data = Arc::new(data);
                self.shared.publish_small(f.sha256, data.clone());
                Content::Inline(data)
            }
            (None, Some(w)) => {
                let (d, _) = w
                    .commit()
                    .map_err(|e| self.fail(PartialError::Repo(e.into())))?;
                self.repo
                    .content_index()
                    .insert(&f.sha256, &d)
                    .map_err(|e| self.fail(PartialError::Repo(e)))?;
                Content::Object(d)
            }
            (None, None) => unreachable!("one of them is set"),
        };
        {
            let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.files_fetched += 1;
            s.file_bytes_fetched += f.end - f.start;
        }
        self.contents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(f.sha256, c);
        Ok(())
    }
}

/// Fetches every item of `plan`; stores and indexes the files, keeps the header runs.
#[allow(clippy::too_many_arguments)]
pub fn fetch_plan(
    repo: &Repository,
    image: &ImageClient,
    layer: &LayerDesc,
    toc: &LayerToc,
    plan: &Plan,
    shared: &Shared,
    progress: &dyn Progress,
    stats: &mut PartialStats,
) -> Result<Fetched, PartialError> {
    let header_bytes: u64 = plan
        .items
        .iter()
        .filter(|(it, _, _)| matches!(it, Item::Gap(_)))
        .map(|(_, s, e)| e - s)
        .sum();
    let n_gaps = if toc.headers == Headers::Gaps {
        toc.files.len() + 1
    } else {
        0
    };
    let run = Run {
        repo,
        layer,
        toc,
        shared,
        progress,
        contents: Mutex::new(HashMap::new()),
        gaps: Mutex::new(vec![None; n_gaps]),
        stats: Mutex::new(PartialStats::default()),
        gap_bytes: std::sync::atomic::AtomicU64::new(0),
        error: Mutex::new(None),
        stop: AtomicBool::new(false),
    };
    let max = match shared.max_ranges.load(Ordering::Relaxed) {
        0 => RANGES_PER_REQUEST,
        n => n,
    };
    let queue = Mutex::new(requests(coalesce(&plan.items), max));
    let whole: Mutex<Option<Box<BlobStream>>> = Mutex::new(None);
    let n_requests = std::sync::atomic::AtomicU64::new(0);
    // One request: true when the queue should be worked on (more requests may follow).
    let one = || -> bool {
        if run.stop.load(Ordering::Relaxed) {
            return false;
        }
        let Some(req) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
            return false;
        };
        let wanted: Vec<(u64, u64)> = req.iter().map(|r| (r.start, r.end)).collect();
        n_requests.fetch_add(1, Ordering::Relaxed);
        let mut sink = |start: u64, len: u64, r: &mut dyn Read| run.part(&req, start, len, r);
        match image.get_blob_ranges(&layer.digest, layer.size, &wanted, &mut sink) {
            Ok(RangesAnswer::Parts) => {
                let _ = shared.max_ranges.compare_exchange(
                    0,
                    RANGES_PER_REQUEST,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Ok(RangesAnswer::Whole(stream)) => {
                let mut w = whole.lock().unwrap_or_else(|p| p.into_inner());
                if w.is_none() {
                    *w = Some(stream);
                }
                run.stop.store(true, Ordering::Relaxed);
            }
            Ok(RangesAnswer::Refused { .. }) if req.len() > 1 => {
                // Fewer ranges per request from now on, for every request still to make
                // and every layer of the pull.
                let half = (req.len() / 2).max(1);
                shared.max_ranges.store(half, Ordering::Relaxed);
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                let mut all: Vec<Range> = req;
                all.extend(q.drain(..).flatten());
                all.sort_by_key(|r| r.start);
                *q = requests(all, half);
            }
            Ok(RangesAnswer::Refused { status }) => {
                let _ = run.fail(PartialError::Registry(
                    crate::registry::RegistryError::Protocol {
                        registry: image.endpoint().host.clone(),
                        what: format!("blob {}", layer.digest),
                        why: format!("refused a single range request ({status})"),
                    },
                ));
            }
            Err(e) => {
                // The sink's typed error, if it set one, wins.
                let _ = run.fail(PartialError::Registry(e));
            }
        }
        true
    };
    // Until the registry's way with multi-range requests is known, ask once and wait:
    // parallel requests answered with whole blobs would fetch the blob several times.
    while shared.max_ranges.load(Ordering::Relaxed) == 0 && one() {}
    let threads = queue
        .lock()
        .map(|q| q.len())
        .unwrap_or(1)
        .clamp(1, PARALLEL_REQUESTS);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| while one() {});
        }
    });
    stats.requests += n_requests.load(Ordering::Relaxed);
    if let Some(e) = run.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    if let Some(stream) = whole.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Ok(Fetched::Whole(stream));
    }
    let s = run.stats.into_inner().unwrap_or_else(|p| p.into_inner());
    stats.bytes_fetched += s.bytes_fetched;
    stats.files_fetched += s.files_fetched;
    stats.file_bytes_fetched += s.file_bytes_fetched;
    stats.header_bytes += header_bytes;
    Ok(Fetched::Done {
        contents: run.contents.into_inner().unwrap_or_else(|p| p.into_inner()),
        gaps: run.gaps.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}
