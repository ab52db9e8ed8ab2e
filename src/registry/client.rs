//! The distribution API for one image: manifests, blobs (whole, resumed or by range),
//! existence checks, and the upload calls pushes are made of.
//!
//! A [`Client`] is cheap to clone and shared by every thread of a pull: one transport,
//! one pool per host, one token cache. [`Client::image`] applies registries.conf (blocked
//! registries refused, prefixes rewritten, mirrors first); an [`ImageClient`] then tries
//! its endpoints in order and sticks to the first that answers.
//!
//! Nothing here verifies content against digests: callers (the `oci` sources) wrap what
//! they get in digest checks before anything is committed. What this module does bound is
//! memory: manifests are read into memory only up to the caller's limit.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ureq::http::{header, Method, StatusCode};

use super::conf::Endpoint;
use super::error::RegistryError;
use super::http::{
    error_message, header_str, ClientOptions, Event, Req, ReqBody, StatsSnapshot, Transport,
};
use super::reference::Reference;

/// Media types a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A registry client: transport, auth and configuration, shared.
#[derive(Clone)]
pub struct Client {
    t: Arc<Transport>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("opts", &self.t.opts)
            .finish()
    }
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub raw: Vec<u8>,
    /// `Content-Type`, without parameters.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`, when the registry sent one.
    pub digest: Option<String>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        Ok(Client {
            t: Arc::new(Transport::new(opts)?),
        })
    }

    /// The endpoints for `r` (mirrors first), or an error if registries.conf blocks it.
    pub fn image(&self, r: &Reference) -> Result<ImageClient, RegistryError> {
        let endpoints = self.t.conf.endpoints(r)?;
        Ok(ImageClient {
            client: self.clone(),
            reference: r.clone(),
            endpoints: Arc::new(endpoints),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A client for one endpoint without registries.conf (pushes go to the named place).
    pub fn image_direct(&self, r: &Reference) -> ImageClient {
        let host = Reference::endpoint_host(&r.registry).to_string();
        ImageClient {
            client: self.clone(),
            reference: r.clone(),
            endpoints: Arc::new(vec![Endpoint {
                insecure: self.t.conf.is_insecure(&host),
                host,
                repository: r.repository.clone(),
                mirror: false,
            }]),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.t.snapshot()
    }

    /// Check that the registry accepts the configured credentials (`GET /v2/`, answering
    /// its challenge). Used by `login`.
    pub fn check_login(&self, registry: &str) -> Result<(), RegistryError> {
        let host = Reference::endpoint_host(registry);
        let req = Req {
            method: Method::GET,
            host,
            path: "/v2/".into(),
            headers: vec![],
            body: ReqBody::None,
            scopes: vec![],
            repository: "",
            what: "login",
        };
        let resp = self.t.send(&req)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Status {
                registry: host.to_string(),
                what: "login".into(),
                status: resp.status().as_u16(),
                message: error_message(resp),
            })
        }
    }
}

/// One image's repository on its registry (and mirrors).
#[derive(Clone)]
pub struct ImageClient {
    client: Client,
    reference: Reference,
    endpoints: Arc<Vec<Endpoint>>,
    current: Arc<AtomicUsize>,
}

fn scope_pull(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn scope_push(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl ImageClient {
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoint in use (the one that last answered).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self
            .current
            .load(Ordering::Relaxed)
            .min(self.endpoints.len() - 1)]
    }

    /// Endpoint indexes to try: the current one first, then the others in order.
    fn order(&self) -> Vec<usize> {
        let cur = self.current.load(Ordering::Relaxed);
        let mut v = vec![cur];
        v.extend((0..self.endpoints.len()).filter(|&i| i != cur));
        v
    }

    /// Try `f` on each endpoint in turn; the first success becomes current. The primary's
    /// error (the last tried) is the one reported when all fail.
    fn each_endpoint<T>(
        &self,
        mut f: impl FnMut(&Endpoint) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut last = None;
        for i in self.order() {
            match f(&self.endpoints[i]) {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// GET a manifest by tag or digest, at most `limit` bytes.
    pub fn get_manifest(
        &self,
        reference: &str,
        limit: u64,
    ) -> Result<FetchedManifest, RegistryError> {
        self.each_endpoint(|ep| self.get_manifest_at(ep, reference, limit))
    }

    fn get_manifest_at(
        &self,
        ep: &Endpoint,
        reference: &str,
        limit: u64,
    ) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}:{reference}", ep.repository);
        let what = what.replacen(":sha256:", "@sha256:", 1);
        let req = Req {
            method: Method::GET,
            host: &ep.host,
            path: format!("/v2/{}/manifests/{reference}", ep.repository),
            headers: vec![(header::ACCEPT, MANIFEST_ACCEPT.to_string())],
            body: ReqBody::None,
            scopes: vec![scope_pull(&ep.repository)],
            repository: &ep.repository,
            what: &what,
        };
        let mut attempt = 0;
        loop {
            let resp = self.client.t.send(&req)?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    registry: ep.host.clone(),
                    what,
                    message: error_message(resp),
                });
            }
            if !status.is_success() {
                return Err(RegistryError::Status {
                    registry: ep.host.clone(),
                    what,
                    status: status.as_u16(),
                    message: error_message(resp),
                });
            }
            let media_type = header_str(&resp, header::CONTENT_TYPE)
                .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
                .filter(|v| !v.is_empty());
            let digest = header_str(&resp, "docker-content-digest".parse().expect("valid"))
                .map(|s| s.trim().to_string());
            if let Some(len) = resp.body().content_length() {
                if len > limit {
                    return Err(RegistryError::TooLarge {
                        registry: ep.host.clone(),
                        what,
                        limit,
                    });
                }
            }
            let mut raw = Vec::new();
            let read = resp
                .into_body()
                .into_with_config()
                .limit(limit.saturating_add(1))
                .reader()
                .take(limit + 1)
                .read_to_end(&mut raw);
            self.client
                .t
                .stats
                .bytes_fetched
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            if let Err(source) = read {
                // A connection cut while the manifest was read: ask again (bounded).
                attempt += 1;
                self.client
                    .t
                    .backoff(&ep.host, &what, attempt, source.to_string(), None)?;
                continue;
            }
            if raw.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    registry: ep.host.clone(),
                    what,
                    limit,
                });
            }
            return Ok(FetchedManifest {
                raw,
                media_type,
                digest,
            });
        }
    }

    /// Open a blob for streaming from byte `offset`; a connection cut mid-way is resumed
    /// with `Range` from where it stopped (restarting from zero only where the registry
    /// ignores `Range`). `size` is the descriptor's size: reading stops there.
    pub fn open_blob(&self, digest: &str, size: u64) -> Result<BlobStream, RegistryError> {
        self.open_blob_at(digest, size, 0)
    }

    /// Like [`open_blob`](Self::open_blob), from byte `offset` (`Range: bytes=offset-`):
    /// for a download resumed from bytes the caller already holds. The stream yields the
    /// blob's bytes from `offset` on.
    pub fn open_blob_at(
        &self,
        digest: &str,
        size: u64,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let mut s = BlobStream {
            image: self.clone(),
            digest: digest.to_string(),
            size,
            pos: offset,
            body: None,
            resumes: 0,
        };
        if offset < size {
            s.open_at(offset)?;
        }
        Ok(s)
    }

    /// GET `bytes=start-end` (inclusive) of a blob; `None` when the registry ignores Range
    /// (it answered 200 with the whole blob, which is then not read).
    pub fn get_blob_range(
        &self,
        digest: &str,
        start: u64,
        end_inclusive: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        if end_inclusive < start || end_inclusive == u64::MAX {
            return Err(RegistryError::Protocol {
                registry: self.endpoint().host.clone(),
                what: format!("blob {digest}"),
                why: format!("invalid range {start}-{end_inclusive}"),
            });
        }
        let len = end_inclusive - start + 1;
        let (resp, ep) = self.blob_get(digest, Some((start, Some(end_inclusive))))?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Ok(None);
        }
        if content_range_start(header_str(&resp, header::CONTENT_RANGE)) != Some(start) {
            return Err(RegistryError::Protocol {
                registry: ep,
                what: format!("blob {digest}"),
                why: format!("asked for bytes {start}-{end_inclusive}, got another range"),
            });
        }
        let mut v = Vec::with_capacity(len.min(64 << 20) as usize);
        resp.into_body()
            .into_with_config()
            .limit(len + 1)
            .reader()
            .take(len + 1)
            .read_to_end(&mut v)
            .map_err(|source| RegistryError::Io {
                registry: ep.clone(),
                what: format!("blob {digest}"),
                source,
            })?;
        if v.len() as u64 != len {
            return Err(RegistryError::Protocol {
                registry: ep,
                what: format!("blob {digest}"),
                why: format!("asked for {len} bytes, got {}", v.len()),
            });
        }
        self.client
            .t
            .stats
            .bytes_fetched
            .fetch_add(v.len() as u64, Ordering::Relaxed);
        Ok(Some(v))
    }

    /// A GET of a blob (optionally ranged) on the first endpoint that has it.
    fn blob_get(
        &self,
        digest: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), RegistryError> {
        let range = range.map(|(start, end)| match end {
            Some(e) => format!("bytes={start}-{e}"),
            None => format!("bytes={start}-"),
        });
        self.blob_get_with(digest, range)
    }

    /// A GET of a blob with an optional `Range` header value, on the first endpoint that
    /// has it. 200 and 206 are answers; other statuses are errors.
    pub(super) fn blob_get_with(
        &self,
        digest: &str,
        range: Option<String>,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), RegistryError> {
        self.each_endpoint(|ep| {
            let what = format!("blob {digest}");
            let mut headers = vec![];
            if let Some(v) = &range {
                headers.push((header::RANGE, v.clone()));
            }
            let req = Req {
                method: Method::GET,
                host: &ep.host,
                path: format!("/v2/{}/blobs/{digest}", ep.repository),
                headers,
                body: ReqBody::None,
                scopes: vec![scope_pull(&ep.repository)],
                repository: &ep.repository,
                what: &what,
            };
            let resp = self.client.t.send(&req)?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    registry: ep.host.clone(),
                    what,
                    message: error_message(resp),
                });
            }
            if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) {
                return Err(RegistryError::Status {
                    registry: ep.host.clone(),
                    what,
                    status: status.as_u16(),
                    message: error_message(resp),
                });
            }
            Ok((resp, ep.host.clone()))
        })
    }

    /// HEAD a blob: its size when the registry has it, `None` when not.
    pub fn blob_exists(&self, digest: &str) -> Result<Option<u64>, RegistryError> {
        let ep = self.endpoint().clone();
        let what = format!("blob {digest}");
        let req = Req {
            method: Method::HEAD,
            host: &ep.host,
            path: format!("/v2/{}/blobs/{digest}", ep.repository),
            headers: vec![],
            body: ReqBody::None,
            scopes: vec![scope_push(&ep.repository)],
            repository: &ep.repository,
            what: &what,
        };
        let resp = self.client.t.send(&req)?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                header_str(&resp, header::CONTENT_LENGTH)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(RegistryError::Status {
                registry: ep.host.clone(),
                what,
                status: s.as_u16(),
                message: String::new(),
            }),
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.client.t
    }
}

/// The first byte position of a `Content-Range: bytes START-END/TOTAL` header.
pub(super) fn content_range_start(v: Option<&str>) -> Option<u64> {
    let v = v?.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = v.split_once('-')?;
    start.trim().parse().ok()
}

/// A blob being read over HTTP, resumed with `Range` when the connection breaks.
pub struct BlobStream {
    pub(super) image: ImageClient,
    pub(super) digest: String,
    pub(super) size: u64,
    pub(super) pos: u64,
    pub(super) body: Option<ureq::BodyReader<'static>>,
    pub(super) resumes: u32,
}

impl BlobStream {
    fn open_at(&mut self, offset: u64) -> Result<(), RegistryError> {
        let range = (offset > 0).then_some((offset, None));
        let (resp, _host) = self.image.blob_get(&self.digest, range)?;
        let status = resp.status();
        // Where the bytes of this answer start: a 206 says so in Content-Range (it must
        // not start after what we asked for); a 200 is the whole blob.
        let start = if status == StatusCode::PARTIAL_CONTENT {
            content_range_start(header_str(&resp, header::CONTENT_RANGE)).unwrap_or(u64::MAX)
        } else {
            0
        };
        if start > offset {
            return Err(RegistryError::Protocol {
                registry: self.image.endpoint().host.clone(),
                what: format!("blob {}", self.digest),
                why: format!("asked for bytes from {offset}, got a range starting elsewhere"),
            });
        }
        let mut body = resp.into_body().into_reader();
        let skip_n = offset - start;
        if skip_n > 0 {
            // The registry ignored Range (or answered from earlier): skip what we already
            // have (those bytes were hashed on their first arrival).
            let mut skip = (&mut body).take(skip_n);
            let skipped =
                io::copy(&mut skip, &mut io::sink()).map_err(|source| RegistryError::Io {
                    registry: self.image.endpoint().host.clone(),
                    what: format!("blob {}", self.digest),
                    source,
                })?;
            self.image
                .transport()
                .stats
                .bytes_fetched
                .fetch_add(skipped, Ordering::Relaxed);
            if skipped < skip_n {
                return Err(RegistryError::Protocol {
                    registry: self.image.endpoint().host.clone(),
                    what: format!("blob {}", self.digest),
                    why: "shorter on a second request".into(),
                });
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// After a broken read: reopen at the current position, or give up.
    fn resume(&mut self, cause: &io::Error) -> io::Result<()> {
        self.body = None;
        let t = self.image.transport();
        if self.resumes >= t.opts.retries.max(1) * 2 {
            return Err(io::Error::other(RegistryError::GaveUp {
                registry: self.image.endpoint().host.clone(),
                what: format!("blob {}", self.digest),
                attempts: self.resumes + 1,
                last: cause.to_string(),
            }));
        }
        self.resumes += 1;
        t.stats.resumes.fetch_add(1, Ordering::Relaxed);
        t.event(Event::Resume {
            registry: self.image.endpoint().host.clone(),
            digest: self.digest.clone(),
            offset: self.pos,
        });
        let pause = t
            .opts
            .retry_base
            .saturating_mul(1 << (self.resumes - 1).min(6));
        std::thread::sleep(pause.min(std::time::Duration::from_secs(10)));
        self.open_at(self.pos).map_err(io::Error::other)
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos >= self.size {
                // Every expected byte is here: whatever the connection does now, the
                // verifier above decides (a longer blob shows as more data, not here).
                return match self.body.as_mut().map(|b| b.read(buf)) {
                    Some(Ok(n)) => {
                        self.pos += n as u64;
                        Ok(n)
                    }
                    _ => Ok(0),
                };
            }
            if self.body.is_none() {
                // A failed reopen leaves no body: try again (bounded by `resume`).
                let e = io::Error::other("reconnect");
                self.resume(&e)?;
            }
            let body = self.body.as_mut().expect("opened");
            match body.read(buf) {
                Ok(0) if self.pos < self.size => {
                    // Ended early without an error: treat as a cut connection.
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early");
                    self.resume(&e)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    self.image
                        .transport()
                        .stats
                        .bytes_fetched
                        .fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(&e)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::content_range_start;

    #[test]
    fn content_range_starts() {
        assert_eq!(content_range_start(Some("bytes 100-199/1000")), Some(100));
        assert_eq!(content_range_start(Some("bytes 0-9/*")), Some(0));
        assert_eq!(content_range_start(Some("items 1-2/3")), None);
        assert_eq!(content_range_start(Some("bytes */1000")), None);
        assert_eq!(content_range_start(None), None);
    }
}
