//! Minimal HTTP/1.1 plumbing for the test servers and clients.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 plumbing
// ---------------------------------------------------------------------------

pub(crate) const MAX_HEAD: usize = 64 * 1024;
pub(crate) const MAX_HEADERS: usize = 200;

/// A request or status line plus headers, in order.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    pub(crate) fn status(&self) -> u16 {
        self.line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Whether an Authorization value uses the Basic scheme.
pub(crate) fn is_basic(auth: &str) -> bool {
    auth.get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("basic "))
}

pub(crate) fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "HTTP head too large")
}

/// Reads up to and including `\n`, at most `limit` bytes.
pub(crate) fn read_line_limited(
    r: &mut impl BufRead,
    out: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let mut n = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if n + take > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        n += take;
        if done {
            return Ok(n);
        }
    }
}

/// Reads a request/response head; `None` on a clean EOF before any byte.
pub(crate) fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut total = 0;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = read_line_limited(r, &mut line, MAX_HEAD - total)?;
        if n == 0 {
            if total == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between messages
            }
            break;
        }
        if lines.len() > MAX_HEADERS {
            return Err(too_large());
        }
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    let mut it = lines.into_iter();
    let line = it.next().unwrap_or_default();
    let mut headers = Vec::new();
    for l in it {
        let Some((k, v)) = l.split_once(':') else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad header line",
            ));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some(Head { line, headers }))
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(crate) fn request_framing(h: &Head) -> io::Result<Framing> {
    if h.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match h.get("content-length") {
        Some(v) => v
            .parse()
            .map(Framing::Length)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")),
        None => Ok(Framing::Empty),
    }
}

pub(crate) fn response_framing(h: &Head, request_method: &str) -> Framing {
    let status = h.status();
    if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Framing::Empty;
    }
    if h.has_token("transfer-encoding", "chunked") {
        return Framing::Chunked;
    }
    match h.get("content-length").and_then(|v| v.parse().ok()) {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }
}

/// Feeds a message body to `f` piece by piece (chunked bodies de-chunked).
/// `f` returns false to stop early; then this returns `Ok(false)`.
pub(crate) fn read_body(
    r: &mut impl BufRead,
    framing: Framing,
    f: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    pub(crate) fn fixed(
        r: &mut impl BufRead,
        mut left: u64,
        f: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<bool> {
        while left > 0 {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = buf.len().min(left.min(usize::MAX as u64) as usize);
            let go = f(&buf[..k])?;
            r.consume(k);
            left -= k as u64;
            if !go {
                return Ok(false);
            }
        }
        Ok(true)
    }
    match framing {
        Framing::Empty => Ok(true),
        Framing::Length(n) => fixed(r, n, f),
        Framing::UntilClose => loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(true);
            }
            let k = buf.len();
            let go = f(buf)?;
            r.consume(k);
            if !go {
                return Ok(false);
            }
        },
        Framing::Chunked => loop {
            let mut line = Vec::new();
            if read_line_limited(r, &mut line, 4096)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let text = String::from_utf8_lossy(&line);
            let size_str = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers up to an empty line
                loop {
                    let mut t = Vec::new();
                    if read_line_limited(r, &mut t, MAX_HEAD)? == 0 || t == b"\r\n" || t == b"\n" {
                        return Ok(true);
                    }
                }
            }
            if !fixed(r, size, f)? {
                return Ok(false);
            }
            let mut crlf = Vec::new();
            read_line_limited(r, &mut crlf, 16)?;
        },
    }
}

/// A complete response as read by [`http_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One plain-HTTP request on a fresh connection (`Connection: close`).
pub fn http_request(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = Head {
        line: format!("{method} {target} HTTP/1.1"),
        headers: vec![
            ("Host".into(), host.into()),
            ("Connection".into(), "close".into()),
        ],
    };
    for (k, v) in headers {
        req.headers.push((k.to_string(), v.to_string()));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        req.set("Content-Length", &body.len().to_string());
    }
    let mut w = &s;
    let mut msg = req.to_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg)?;
    let mut r = BufReader::new(&s);
    read_http_response(&mut r, method)
}

/// Reads one response (skipping 1xx) for a request made with `method`.
pub fn read_http_response(r: &mut impl BufRead, method: &str) -> io::Result<HttpResponse> {
    let head = loop {
        let h = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if (100..200).contains(&h.status()) {
            continue;
        }
        break h;
    };
    let mut body = Vec::new();
    read_body(r, response_framing(&head, method), &mut |d| {
        body.extend_from_slice(d);
        Ok(true)
    })?;
    Ok(HttpResponse {
        status: head.status(),
        headers: head.headers,
        body,
    })
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub(crate) fn write_simple(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut h = Head {
        line: format!("HTTP/1.1 {status} {}", reason(status)),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    h.set("Content-Length", &body.len().to_string());
    if close {
        h.set("Connection", "close");
    }
    let mut msg = h.to_bytes();
    if !head_only {
        msg.extend_from_slice(body);
    }
    w.write_all(&msg)?;
    w.flush()
}

pub(crate) fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")
}

pub(crate) fn json_error(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]})
        .to_string()
        .into_bytes()
}

/// First byte offset of a `Range: bytes=N-…` request, 0 without Range;
/// `None` for several ranges or suffix ranges.
pub(crate) fn range_start(range: Option<&str>) -> Option<(u64, Option<u64>)> {
    let Some(r) = range else {
        return Some((0, None));
    };
    let spec = r.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((start, end))
}
