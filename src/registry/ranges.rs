//! Several byte ranges of a blob in one request (`multipart/byteranges`).
//!
//! Per RFC 9110 §14 a server may answer a multi-range request with one `206` whose body is
//! `multipart/byteranges` (one part per range, each with its own `Content-Range`; ranges
//! may be coalesced when they overlap or sit close together), with a single-part `206`
//! (it coalesced everything), with `200` and the whole blob (it ignores Range, or, like
//! Go's `http.ServeContent`, the ranges add up to more than the blob), or refuse with `416`
//! (or, in practice, `400`) when it dislikes the number of ranges. [`ImageClient::get_blob_ranges`]
//! reports which of these happened so that the caller can use a whole blob instead of
//! fetching it twice, or ask again with fewer ranges.
//!
//! The body is parsed as it streams: every line of part headers is bounded
//! ([`MAX_LINE`], [`MAX_PART_HEADERS`]), every part must lie inside the span that was asked
//! for, and at the end every requested byte must have arrived. Nothing is verified against
//! a digest here; the caller does that.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::Ordering;

use ureq::http::{header, StatusCode};

use super::client::{content_range_start, BlobStream, ImageClient};
use super::error::RegistryError;
use super::http::header_str;

/// Longest line accepted in a part's headers or between parts.
pub const MAX_LINE: usize = 4096;
/// Most header lines accepted per part.
pub const MAX_PART_HEADERS: usize = 32;
/// Longest `Range` header this client sends (servers commonly cap header size at 8 KiB).
pub const MAX_RANGE_HEADER: usize = 7000;

/// How the registry answered a multi-range request.
pub enum RangesAnswer {
    /// Every requested byte was handed to the sink.
    Parts,
    /// `200`: the whole blob is streaming, from its first byte.
    Whole(Box<BlobStream>),
    /// `400` or `416`: too many ranges for this registry; ask for fewer.
    Refused { status: u16 },
}

/// The `Range` header value for `ranges` (`start`, `end` exclusive).
pub fn range_header(ranges: &[(u64, u64)]) -> String {
    let mut v = String::from("bytes=");
    for (i, (s, e)) in ranges.iter().enumerate() {
        if i > 0 {
            v.push(',');
        }
        v.push_str(&format!("{s}-{}", e - 1));
    }
    v
}

/// Counts bytes read into the transport's statistics.
struct Counting<'a, R> {
    inner: R,
    stats: &'a std::sync::atomic::AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// `Content-Range: bytes S-E/T` → (S, E exclusive).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, _total) = v.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    (e >= s && e < u64::MAX).then_some((s, e + 1))
}

/// The `boundary` parameter of a `multipart/byteranges` content type.
fn boundary_of(content_type: &str) -> Option<String> {
    let mut it = content_type.split(';');
    let mt = it.next()?.trim();
    if !mt.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    for p in it {
        let (k, v) = p.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("boundary") {
            let b = v.trim().trim_matches('"').to_string();
            return (!b.is_empty() && b.len() <= 200).then_some(b);
        }
    }
    None
}

/// One line (without CRLF), at most [`MAX_LINE`] bytes; `None` at EOF.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "multipart line too long",
        ));
    }
    while buf.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// What has arrived, to check coverage at the end.
#[derive(Default)]
struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    fn add(&mut self, s: u64, e: u64) {
        self.0.push((s, e));
    }

    /// The first requested range not wholly delivered.
    fn first_gap(&mut self, wanted: &[(u64, u64)]) -> Option<(u64, u64)> {
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        wanted
            .iter()
            .find(|(s, e)| !merged.iter().any(|(ms, me)| ms <= s && e <= me))
            .copied()
    }
}

impl ImageClient {
    /// GETs `ranges` (sorted, disjoint; `start`, `end` exclusive; within `size`) of blob
    /// `digest` in one request. Each part the registry sends is handed to `sink(start,
    /// len, reader)` (parts may cover several requested ranges and the bytes between
    /// them); the sink must read the part or fail.
    pub fn get_blob_ranges(
        &self,
        digest: &str,
        size: u64,
        ranges: &[(u64, u64)],
        sink: &mut dyn FnMut(u64, u64, &mut dyn Read) -> io::Result<()>,
    ) -> Result<RangesAnswer, RegistryError> {
        let registry = || self.endpoint().host.clone();
        let what = || format!("blob {digest}");
        let protocol = |why: String| RegistryError::Protocol {
            registry: registry(),
            what: what(),
            why,
        };
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(RangesAnswer::Parts);
        };
        if ranges.windows(2).any(|w| w[0].1 > w[1].0) || ranges.iter().any(|(s, e)| s >= e) {
            return Err(protocol("ranges to fetch overlap or are empty".into()));
        }
        if last.1 > size {
            return Err(protocol(format!(
                "range ends at {} past the blob's {size} bytes",
                last.1
            )));
        }
        let (span_start, span_end) = (first.0, last.1);
        let (resp, host) = match self.blob_get_with(digest, Some(range_header(ranges))) {
            Ok(r) => r,
            Err(RegistryError::Status { status, .. }) if status == 400 || status == 416 => {
                return Ok(RangesAnswer::Refused { status });
            }
            Err(e) => return Err(e),
        };
        if resp.status() == StatusCode::OK {
            return Ok(RangesAnswer::Whole(Box::new(BlobStream {
                image: self.clone(),
                digest: digest.to_string(),
                size,
                pos: 0,
                body: Some(resp.into_body().into_reader()),
                resumes: 0,
            })));
        }
        let io_err = |source: io::Error| RegistryError::Io {
            registry: host.clone(),
            what: what(),
            source,
        };
        let content_type = header_str(&resp, header::CONTENT_TYPE).map(str::to_string);
        let single = header_str(&resp, header::CONTENT_RANGE).map(str::to_string);
        let stats = &self.transport().stats.bytes_fetched;
        let body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut body = BufReader::with_capacity(256 << 10, Counting { inner: body, stats });
        let mut covered = Coverage::default();
        let mut part = |s: u64, e: u64, r: &mut dyn Read| -> Result<(), RegistryError> {
            if s < span_start || e > span_end {
                return Err(protocol(format!(
                    "sent bytes {s}-{} outside the ranges asked for",
                    e - 1
                )));
            }
            let mut limited = r.take(e - s);
            sink(s, e - s, &mut limited).map_err(io_err)?;
            // Whatever the sink left of the part.
            let rest = io::copy(&mut limited, &mut io::sink()).map_err(io_err)?;
            let _ = rest;
            if limited.limit() > 0 {
                return Err(protocol(format!("part {s}-{} cut short", e - 1)));
            }
            covered.add(s, e);
            Ok(())
        };
        match content_type.as_deref().and_then(boundary_of) {
            None => {
                // One part: the whole answer is the range Content-Range names.
                let (s, e) = single
                    .as_deref()
                    .and_then(parse_content_range)
                    .ok_or_else(|| protocol("206 without a valid Content-Range".into()))?;
                if content_range_start(single.as_deref()) != Some(s) {
                    return Err(protocol("invalid Content-Range".into()));
                }
                part(s, e, &mut body)?;
            }
            Some(boundary) => {
                let delim = format!("--{boundary}");
                let end = format!("--{boundary}--");
                let mut parts = 0usize;
                loop {
                    let line = read_line(&mut body).map_err(io_err)?.ok_or_else(|| {
                        protocol("multipart body ended before its last part".into())
                    })?;
                    let line = line.trim_end();
                    if line == end {
                        break;
                    }
                    if line != delim {
                        // Preamble or the CRLF after a part.
                        if line.is_empty() || parts == 0 {
                            continue;
                        }
                        return Err(protocol("malformed multipart body".into()));
                    }
                    parts += 1;
                    if parts > ranges.len() {
                        return Err(protocol(format!(
                            "sent more parts than the {} ranges asked for",
                            ranges.len()
                        )));
                    }
                    let mut cr = None;
                    for n in 0.. {
                        let h = read_line(&mut body)
                            .map_err(io_err)?
                            .ok_or_else(|| protocol("multipart part headers cut short".into()))?;
                        if h.is_empty() {
                            break;
                        }
                        if n >= MAX_PART_HEADERS {
                            return Err(protocol("too many part headers".into()));
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.trim().eq_ignore_ascii_case("content-range") {
                                cr = parse_content_range(v);
                            }
                        }
                    }
                    let (s, e) =
                        cr.ok_or_else(|| protocol("a part without a valid Content-Range".into()))?;
                    part(s, e, &mut body)?;
                }
            }
        }
        if let Some((s, e)) = covered.first_gap(ranges) {
            return Err(protocol(format!(
                "left out bytes {s}-{} that were asked for",
                e - 1
            )));
        }
        Ok(RangesAnswer::Parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(range_header(&[(0, 10), (20, 21)]), "bytes=0-9,20-20");
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 10)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 10)));
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(
            boundary_of("multipart/byteranges; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary_of("application/octet-stream"), None);
    }

    #[test]
    fn coverage() {
        let mut c = Coverage::default();
        c.add(0, 10);
        c.add(10, 30);
        assert_eq!(c.first_gap(&[(0, 5), (12, 30)]), None);
        assert_eq!(c.first_gap(&[(0, 5), (25, 31)]), Some((25, 31)));
    }
}
