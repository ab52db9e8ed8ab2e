//! The server engine shared by the fault proxy and the token gate.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// Shared server engine (fault proxy and token gate)
// ---------------------------------------------------------------------------

/// One request seen by a [`FaultProxy`] or [`TokenGate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// 0 = the main listener ([`FaultProxy::host`]), 1 = the second one.
    pub listener: usize,
    pub method: String,
    /// Path and query as the client sent them.
    pub target: String,
    /// Path without the query.
    pub path: String,
    /// Status sent to the client (0 until the response head went out).
    pub status: u16,
    /// Response body bytes written to the client.
    pub body_bytes: u64,
    /// The client's `Authorization` header (token gate: `Basic` values are
    /// replaced by `Basic <redacted>`).
    pub authorization: Option<String>,
    /// The client's `Range` header.
    pub range: Option<String>,
    /// Names of the faults applied to this request.
    pub faults: Vec<String>,
}

/// What a fault does. See [`FaultProxy::add_fault`].
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Forward, send the response head and `n` body bytes, then close.
    CutAfter(u64),
    /// Answer this status (e.g. 429 with `Retry-After`, 503) instead of forwarding.
    Status(u16, Option<u64>),
    /// Forward, but XOR 0xff into the body byte at this offset of the whole
    /// blob (a `206` body starting at N has that byte at `offset - N`).
    FlipByte(u64),
    /// Drop the request's `Range` header (upstream then sends 200 + all).
    IgnoreRange,
    /// Drop the `Range` header only if it asks for several ranges.
    RefuseMultiRange,
    /// Answer `307` with `Location: http://HOST/<original path and query>`.
    RedirectTo(String),
    /// Sleep this many milliseconds before handling the request.
    Delay(u64),
    /// Only for requests with a `Range` header naming this offset of the blob: forward,
    /// but XOR 0xff into the byte at this offset wherever the answer carries it (a `200`
    /// body, a single `206` part, or a part of a `multipart/byteranges` answer). The
    /// answer is buffered whole before it is sent.
    FlipByteRanged(u64),
    /// Like [`FlipByteRanged`](Self::FlipByteRanged), but overwrites the blob bytes at
    /// `offset..offset + bytes.len()` with `bytes` (requests naming `offset`).
    ReplaceRanged(u64, Vec<u8>),
    /// Answer this status (e.g. 400, 416) to requests asking for several ranges; others
    /// are forwarded.
    MultiRangeStatus(u16),
    /// Send the response body at about this many bytes per second (small writes, each
    /// flushed), so that a client's download is slow and little is in flight.
    Throttle(u64),
}

impl FaultKind {
    pub(crate) fn name(&self) -> String {
        match self {
            FaultKind::CutAfter(n) => format!("CutAfter({n})"),
            FaultKind::Status(s, r) => format!("Status({s},{r:?})"),
            FaultKind::FlipByte(o) => format!("FlipByte({o})"),
            FaultKind::IgnoreRange => "IgnoreRange".into(),
            FaultKind::RefuseMultiRange => "RefuseMultiRange".into(),
            FaultKind::RedirectTo(h) => format!("RedirectTo({h})"),
            FaultKind::Delay(ms) => format!("Delay({ms})"),
            FaultKind::FlipByteRanged(o) => format!("FlipByteRanged({o})"),
            FaultKind::ReplaceRanged(o, b) => format!("ReplaceRanged({o}, {} bytes)", b.len()),
            FaultKind::MultiRangeStatus(s) => format!("MultiRangeStatus({s})"),
            FaultKind::Throttle(r) => format!("Throttle({r})"),
        }
    }
}

/// A fault rule: requests whose method matches (`"*"` or `""` = any) and
/// whose path+query contains `path_contains` get `kind`, `times` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub method: String,
    pub path_contains: String,
    pub kind: FaultKind,
    pub times: usize,
}

impl Fault {
    /// A rule firing once.
    pub fn new(method: &str, path_contains: &str, kind: FaultKind) -> Fault {
        Fault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            kind,
            times: 1,
        }
    }

    /// Fire `n` times instead of once (`usize::MAX`: always).
    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }

    pub(crate) fn matches(&self, method: &str, target: &str, range: Option<&str>) -> bool {
        if !(self.method.is_empty()
            || self.method == "*"
            || self.method.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if !target.contains(&self.path_contains) {
            return false;
        }
        match &self.kind {
            FaultKind::RefuseMultiRange => range.is_some_and(|r| r.contains(',')),
            FaultKind::MultiRangeStatus(_) => range.is_some_and(|r| r.contains(',')),
            FaultKind::FlipByteRanged(off) => range_covers(range, *off),
            FaultKind::ReplaceRanged(off, _) => range_covers(range, *off),
            FaultKind::FlipByte(off) => match range_start(range) {
                Some((start, end)) => *off >= start && end.is_none_or(|e| *off <= e),
                None => true,
            },
            _ => true,
        }
    }
}

/// Handle to an added fault, for [`FaultProxy::fired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(pub(crate) usize);

pub(crate) struct FaultSlot {
    pub(crate) fault: Fault,
    pub(crate) fired: usize,
}

pub(crate) struct Shared {
    pub(crate) upstream: String,
    /// Host names clients use for each listener (for Location rewriting).
    pub(crate) hosts: Vec<String>,
    pub(crate) stop: AtomicBool,
    pub(crate) log: Mutex<Vec<RequestRecord>>,
    pub(crate) log_start: AtomicUsize,
    pub(crate) faults: Mutex<Vec<FaultSlot>>,
    pub(crate) gate: Option<Gate>,
    pub(crate) conns: Mutex<HashMap<u64, TcpStream>>,
    pub(crate) next_conn: AtomicU64,
}

pub(crate) struct Server {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) accept: Vec<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(upstream: &str, second_listener: bool, gate: Option<Gate>) -> Server {
        let mut listeners = vec![TcpListener::bind("127.0.0.1:0").expect("bind proxy")];
        if second_listener {
            listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind second listener"));
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut hosts = vec![format!("127.0.0.1:{}", addrs[0].port())];
        if second_listener {
            hosts.push(format!("localhost:{}", addrs[1].port()));
        }
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            hosts,
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            log_start: AtomicUsize::new(0),
            faults: Mutex::new(Vec::new()),
            gate,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accept = listeners
            .into_iter()
            .enumerate()
            .map(|(idx, l)| {
                let sh = shared.clone();
                thread::Builder::new()
                    .name(format!("proxy-accept-{idx}"))
                    .spawn(move || accept_loop(sh, idx, l))
                    .unwrap()
            })
            .collect();
        Server {
            shared,
            addrs,
            accept,
        }
    }

    pub(crate) fn records(&self) -> Vec<RequestRecord> {
        let start = self.shared.log_start.load(Ordering::SeqCst);
        lock(&self.shared.log)[start..].to_vec()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for h in self.accept.drain(..) {
            let _ = h.join();
        }
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

pub(crate) fn accept_loop(shared: Arc<Shared>, idx: usize, l: TcpListener) {
    for conn in l.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let sh = shared.clone();
        let _ = thread::Builder::new()
            .name(format!("proxy-conn-{idx}"))
            .spawn(move || serve_conn(sh, idx, conn));
    }
}

pub(crate) fn serve_conn(shared: Arc<Shared>, lidx: usize, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(c) = stream.try_clone() {
        lock(&shared.conns).insert(id, c);
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(120)));
    if let (Ok(rs), Ok(ws)) = (stream.try_clone(), stream.try_clone()) {
        let mut rd = BufReader::with_capacity(64 * 1024, rs);
        let mut wr = BufWriter::with_capacity(64 * 1024, ws);
        // A TLS ClientHello (clients with TLS verification off try HTTPS
        // first): answer like Go's http server does, so that they fall back
        // to plain HTTP at once instead of waiting for a handshake timeout.
        if rd.fill_buf().is_ok_and(|b| b.first() == Some(&0x16)) {
            let _ = wr.write_all(
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            );
            let _ = wr.flush();
        } else {
            loop {
                let head = match read_head(&mut rd) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            let status = if e.to_string().contains("too large") {
                                431
                            } else {
                                400
                            };
                            let _ = write_simple(&mut wr, status, &[], b"", true, false);
                        }
                        break;
                    }
                };
                match shared.handle(lidx, head, &mut rd, &mut wr) {
                    Ok(true) => {}
                    _ => break,
                }
            }
        }
        let _ = wr.flush();
    }
    let _ = stream.shutdown(Shutdown::Both);
    lock(&shared.conns).remove(&id);
}

/// What to do after a request.
pub(crate) type KeepAlive = bool;

impl Shared {
    pub(crate) fn update(&self, idx: usize, f: impl FnOnce(&mut RequestRecord)) {
        if let Some(r) = lock(&self.log).get_mut(idx) {
            f(r);
        }
    }

    pub(crate) fn take_faults(
        &self,
        method: &str,
        target: &str,
        range: Option<&str>,
    ) -> Vec<FaultKind> {
        let mut out: Vec<FaultKind> = Vec::new();
        for slot in lock(&self.faults).iter_mut() {
            if slot.fired >= slot.fault.times
                || !slot.fault.matches(method, target, range)
                || out
                    .iter()
                    .any(|k| std::mem::discriminant(k) == std::mem::discriminant(&slot.fault.kind))
            {
                continue;
            }
            slot.fired += 1;
            out.push(slot.fault.kind.clone());
        }
        out
    }

    pub(crate) fn handle(
        &self,
        lidx: usize,
        mut req: Head,
        rd: &mut BufReader<TcpStream>,
        wr: &mut BufWriter<TcpStream>,
    ) -> io::Result<KeepAlive> {
        let mut parts = req.line.split_whitespace();
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            write_simple(wr, 400, &[], b"", true, false)?;
            return Ok(false);
        };
        let method = method.to_string();
        let version = version.to_string();
        // absolute-form targets become origin-form
        let mut target = target.to_string();
        if let Some(rest) = target.strip_prefix("http://") {
            target = rest
                .find('/')
                .map(|i| rest[i..].to_string())
                .unwrap_or("/".into());
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        let client_close = req.has_token("connection", "close")
            || (version == "HTTP/1.0" && !req.has_token("connection", "keep-alive"));
        let req_framing = request_framing(&req)?;
        let expect_continue = req.has_token("expect", "100-continue");
        req.remove("expect");
        let range = req.get("range").map(str::to_string);

        let mut auth = req.get("authorization").map(str::to_string);
        if self.gate.is_some() {
            auth = auth.map(|a| {
                if is_basic(&a) {
                    "Basic <redacted>".to_string()
                } else {
                    a
                }
            });
        }
        let idx = {
            let mut log = lock(&self.log);
            log.push(RequestRecord {
                listener: lidx,
                method: method.clone(),
                target: target.clone(),
                path: path.clone(),
                status: 0,
                body_bytes: 0,
                authorization: auth,
                range: range.clone(),
                faults: Vec::new(),
            });
            log.len() - 1
        };

        // Answer locally (draining the request body first, unless the client
        // is still waiting for 100-continue: then close afterwards).
        let answer = |rd: &mut BufReader<TcpStream>,
                      wr: &mut BufWriter<TcpStream>,
                      status: u16,
                      headers: &[(&str, String)],
                      body: &[u8]|
         -> io::Result<KeepAlive> {
            let has_body = req_framing != Framing::Empty;
            let close = client_close || (has_body && expect_continue);
            if has_body && !expect_continue {
                read_body(rd, req_framing, &mut |_| Ok(true))?;
            }
            let head_only = method.eq_ignore_ascii_case("HEAD");
            self.update(idx, |r| {
                r.status = status;
                r.body_bytes = if head_only { 0 } else { body.len() as u64 };
            });
            write_simple(wr, status, headers, body, close, head_only)?;
            Ok(!close)
        };

        if let Some(gate) = &self.gate {
            if path == "/token" {
                let (status, headers, body) =
                    gate.token_endpoint(&target, req.get("authorization"));
                return answer(rd, wr, status, &headers, &body);
            }
            if path == "/v2" || path.starts_with("/v2/") {
                if let Err(challenge) =
                    gate.check(&method, &path, req.get("authorization"), &self.hosts[0])
                {
                    gate.challenges.fetch_add(1, Ordering::SeqCst);
                    let body = json_error("UNAUTHORIZED", "authentication required");
                    let headers = [
                        ("WWW-Authenticate", challenge),
                        (
                            "Content-Type",
                            "application/json; charset=utf-8".to_string(),
                        ),
                        (
                            "Docker-Distribution-Api-Version",
                            "registry/2.0".to_string(),
                        ),
                    ];
                    return answer(rd, wr, 401, &headers, &body);
                }
            }
            req.remove("authorization");
        }

        // The second listener stands for another host (blob storage): it forwards as is.
        let faults = if lidx == 0 {
            self.take_faults(&method, &target, range.as_deref())
        } else {
            Vec::new()
        };
        if !faults.is_empty() {
            let names = faults.iter().map(FaultKind::name).collect();
            self.update(idx, |r| r.faults = names);
        }
        let mut cut = None;
        let mut flip = None;
        let mut flip_ranged = None;
        let mut replace_ranged = None;
        let mut throttle = None;
        for f in &faults {
            if let FaultKind::Delay(ms) = f {
                thread::sleep(Duration::from_millis(*ms));
            }
        }
        for f in &faults {
            match f {
                FaultKind::Status(code, retry_after) => {
                    let mut headers = vec![(
                        "Content-Type",
                        "application/json; charset=utf-8".to_string(),
                    )];
                    if let Some(s) = retry_after {
                        headers.push(("Retry-After", s.to_string()));
                    }
                    let (c, m) = match code {
                        429 => ("TOOMANYREQUESTS", "injected: too many requests"),
                        _ => ("UNAVAILABLE", "injected: service unavailable"),
                    };
                    return answer(rd, wr, *code, &headers, &json_error(c, m));
                }
                FaultKind::RedirectTo(host) => {
                    let headers = [("Location", format!("http://{host}{target}"))];
                    return answer(rd, wr, 307, &headers, b"");
                }
                FaultKind::IgnoreRange => req.remove("range"),
                FaultKind::RefuseMultiRange => req.remove("range"),
                FaultKind::CutAfter(n) => cut = Some(*n),
                FaultKind::FlipByte(o) => flip = Some(*o),
                FaultKind::Delay(_) => {}
                FaultKind::FlipByteRanged(o) => flip_ranged = Some(*o),
                FaultKind::ReplaceRanged(o, b) => replace_ranged = Some((*o, b.clone())),
                FaultKind::MultiRangeStatus(code) => {
                    let body = b"injected: multi-range requests are not supported\n";
                    return answer(rd, wr, *code, &[], body);
                }
                FaultKind::Throttle(r) => throttle = Some((*r).max(1)),
            }
        }

        // Forward on a fresh upstream connection.
        let up = match self
            .upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok())
        {
            Some(s) => s,
            None => {
                let body = json_error("UNAVAILABLE", "proxy: upstream unreachable");
                return answer(rd, wr, 502, &[], &body);
            }
        };
        let _ = up.set_nodelay(true);
        let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
        req.line = format!("{method} {target} HTTP/1.1");
        req.set("Host", &self.upstream);
        req.remove("connection");
        req.remove("keep-alive");
        req.remove("proxy-connection");
        req.set("Connection", "close");
        let mut uw = BufWriter::with_capacity(64 * 1024, up.try_clone()?);
        uw.write_all(&req.to_bytes())?;
        if expect_continue && req_framing != Framing::Empty {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            wr.flush()?;
        }
        let chunked_req = req_framing == Framing::Chunked;
        let mut upstream_write_failed = false;
        let sent = read_body(rd, req_framing, &mut |d| {
            let r = if chunked_req {
                write_chunk(&mut uw, d)
            } else {
                uw.write_all(d)
            };
            if r.is_err() {
                upstream_write_failed = true;
            }
            r.map(|_| true)
        });
        if sent.is_err() && !upstream_write_failed {
            return Ok(false); // the client went away or sent garbage
        }
        if !upstream_write_failed {
            if chunked_req {
                let _ = uw.write_all(b"0\r\n\r\n");
            }
            let _ = uw.flush();
        }
        let client_in_sync = sent.is_ok();

        let mut urd = BufReader::with_capacity(64 * 1024, up);
        let mut resp = loop {
            match read_head(&mut urd) {
                Ok(Some(h)) if (100..200).contains(&h.status()) && h.status() != 101 => continue,
                Ok(Some(h)) => break h,
                Ok(None) | Err(_) => {
                    // Nothing sent to the client yet: say what happened.
                    self.update(idx, |r| r.status = 502);
                    let body = json_error("UNAVAILABLE", "proxy: no response from upstream");
                    write_simple(wr, 502, &[], &body, true, method == "HEAD")?;
                    return Ok(false);
                }
            }
        };
        let status = resp.status();
        let framing = response_framing(&resp, &method);
        if let Some(loc) = resp.get("location").map(str::to_string) {
            for prefix in [
                format!("http://{}", self.upstream),
                format!("https://{}", self.upstream),
            ] {
                if let Some(rest) = loc.strip_prefix(&prefix) {
                    resp.set("Location", &format!("http://{}{rest}", self.hosts[lidx]));
                    break;
                }
            }
        }
        resp.remove("connection");
        resp.remove("keep-alive");
        let close_after =
            client_close || !client_in_sync || framing == Framing::UntilClose || cut.is_some();
        if close_after {
            resp.set("Connection", "close");
        }
        let body_start = if status == 206 {
            resp.get("content-range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        } else {
            0
        };
        self.update(idx, |r| r.status = status);
        if flip_ranged.is_some() || replace_ranged.is_some() {
            // Buffer the whole answer, change the bytes where they are, send it as one body.
            let mut body = Vec::new();
            read_body(&mut urd, framing, &mut |d| {
                body.extend_from_slice(d);
                Ok(true)
            })?;
            if let Some(off) = flip_ranged {
                flip_in_answer(&resp, status, &mut body, off);
            }
            if let Some((off, data)) = &replace_ranged {
                replace_in_answer(&resp, status, &mut body, *off, data);
            }
            resp.remove("transfer-encoding");
            resp.set("Content-Length", &body.len().to_string());
            wr.write_all(&resp.to_bytes())?;
            wr.write_all(&body)?;
            self.update(idx, |r| r.body_bytes += body.len() as u64);
            wr.flush()?;
            return Ok(!close_after);
        }
        wr.write_all(&resp.to_bytes())?;
        let chunked_resp = framing == Framing::Chunked;
        let mut pos: u64 = 0;
        let mut stopped = false;
        let done = read_body(&mut urd, framing, &mut |d| {
            let mut n = d.len();
            if let Some(limit) = cut {
                let left = limit.saturating_sub(pos);
                if (n as u64) >= left {
                    n = left as usize;
                    stopped = true;
                }
            }
            let mut piece = std::borrow::Cow::Borrowed(&d[..n]);
            if let Some(off) = flip {
                let abs = body_start + pos;
                if off >= abs && off < abs + n as u64 {
                    piece.to_mut()[(off - abs) as usize] ^= 0xff;
                }
            }
            if let Some(rate) = throttle {
                for part in piece.chunks(8192) {
                    if chunked_resp {
                        write_chunk(wr, part)?;
                    } else {
                        wr.write_all(part)?;
                    }
                    wr.flush()?;
                    self.update(idx, |r| r.body_bytes += part.len() as u64);
                    thread::sleep(Duration::from_micros(part.len() as u64 * 1_000_000 / rate));
                }
                pos += n as u64;
                return Ok(!stopped);
            }
            self.update(idx, |r| r.body_bytes += n as u64);
            if chunked_resp {
                write_chunk(wr, &piece)?;
            } else {
                wr.write_all(&piece)?;
            }
            pos += n as u64;
            Ok(!stopped)
        })?;
        if stopped || !done {
            wr.flush()?;
            let _ = wr.get_ref().shutdown(Shutdown::Both);
            return Ok(false);
        }
        if chunked_resp {
            wr.write_all(b"0\r\n\r\n")?;
        }
        wr.flush()?;
        Ok(!close_after)
    }
}

/// Whether a `Range` header (`bytes=a-b,c-,…`) names blob offset `off`.
pub(crate) fn range_covers(range: Option<&str>, off: u64) -> bool {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return false;
    };
    spec.split(',').any(|part| {
        let Some((a, b)) = part.trim().split_once('-') else {
            return false;
        };
        let Ok(a) = a.trim().parse::<u64>() else {
            return false;
        };
        let b = b.trim();
        off >= a && (b.is_empty() || b.parse::<u64>().is_ok_and(|b| off <= b))
    })
}

/// Where an answer's body carries blob bytes: `(blob offset, body offset, length)` for a
/// `200` body, a `206` single part (`Content-Range`) or each `multipart/byteranges` part.
pub(crate) fn answer_segments(resp: &Head, status: u16, body: &[u8]) -> Vec<(u64, u64, u64)> {
    let parse_cr = |v: &str| -> Option<(u64, u64)> {
        let v = v.trim().strip_prefix("bytes ")?;
        let (r, _) = v.split_once('/')?;
        let (a, b) = r.split_once('-')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    match status {
        200 => return vec![(0, 0, body.len() as u64)],
        206 => {}
        _ => return Vec::new(),
    }
    let multipart = resp
        .get("content-type")
        .is_some_and(|t| t.to_ascii_lowercase().contains("multipart/byteranges"));
    if !multipart {
        return resp
            .get("content-range")
            .and_then(parse_cr)
            .map(|(a, b)| vec![(a, 0, b - a + 1)])
            .unwrap_or_default();
    }
    // Each part's Content-Range header, then the blank line ending its headers.
    let lower = body.to_ascii_lowercase();
    let needle = b"content-range:";
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let Some(p) = lower[i..].windows(needle.len()).position(|w| w == needle) else {
            break;
        };
        let h = i + p + needle.len();
        let eol = lower[h..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(body.len(), |e| h + e);
        let value = String::from_utf8_lossy(&body[h..eol]).into_owned();
        let Some(end_of_headers) = lower[h..].windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let data = h + end_of_headers + 4;
        match parse_cr(&value) {
            Some((a, b)) => {
                out.push((a, data as u64, b - a + 1));
                i = data + (b - a + 1) as usize;
            }
            None => i = data,
        }
    }
    out
}

/// XORs 0xff into the byte at blob offset `off` wherever an answer's body carries it.
pub(crate) fn flip_in_answer(resp: &Head, status: u16, body: &mut [u8], off: u64) {
    for (blob, at, len) in answer_segments(resp, status, body) {
        if (blob..blob + len).contains(&off) {
            if let Some(b) = body.get_mut((at + off - blob) as usize) {
                *b ^= 0xff;
            }
        }
    }
}

/// Overwrites the blob bytes at `off..off + data.len()` wherever an answer's body
/// carries them.
pub(crate) fn replace_in_answer(resp: &Head, status: u16, body: &mut [u8], off: u64, data: &[u8]) {
    for (blob, at, len) in answer_segments(resp, status, body) {
        for (k, &d) in data.iter().enumerate() {
            let o = off + k as u64;
            if (blob..blob + len).contains(&o) {
                if let Some(b) = body.get_mut((at + o - blob) as usize) {
                    *b = d;
                }
            }
        }
    }
}
