//! The HTTP transport: one connection pool per host, TLS per host, authentication,
//! retries and redirects. Everything above it asks for `/v2/…` paths on a registry host.
//!
//! What a caller may rely on:
//! - **Pools**: one ureq agent per host (its TLS settings come from that host's certs.d),
//!   shared by every thread of the process; connections are kept alive and reused.
//! - **Scheme**: HTTPS first. Plain HTTP only for loopback hosts, registries marked
//!   `insecure = true`, or with `--tls-verify=false`, and only when the TLS handshake shows
//!   the server does not speak TLS; the choice is remembered per host.
//! - **Retries**: connection errors, timeouts, 429 and 500/502/503/504 are retried with
//!   exponential backoff and jitter, at most `retries` times; a `Retry-After` in seconds is
//!   honoured (capped). Other statuses are returned to the caller at once.
//! - **Auth**: a 401 challenge is answered once (token from the realm, or Basic); a host's
//!   challenge is remembered, so later requests carry their token from the start.
//!   Tokens are cached per scope until they expire.
//! - **Redirects** are followed (at most [`MAX_REDIRECTS`], loops refused);
//!   `Authorization` is sent only to the registry host itself, never to another host.
//! - **Secrets**: no credential or token is ever formatted into an error or event.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::http::{self, header, Method, Response, StatusCode};

use super::auth::{self, Challenge, TokenCache};
use super::authfile::{AuthOptions, Credential};
use super::conf::RegistriesConf;
use super::error::RegistryError;
use super::tls;

mod authz;

/// Redirect hops followed for one request.
pub const MAX_REDIRECTS: usize = 10;
/// Error bodies read for their message, at most.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Longest `Retry-After` we wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What the transport reports while it works (retries, resumes), for progress displays.
#[derive(Debug, Clone)]
pub enum Event {
    Retry {
        registry: String,
        what: String,
        attempt: u32,
        delay: Duration,
        cause: String,
    },
    Resume {
        registry: String,
        digest: String,
        offset: u64,
    },
}

pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Options shared by every request of a client.
#[derive(Clone)]
pub struct ClientOptions {
    pub auth: AuthOptions,
    /// `--cert-dir`: use only this directory's certificates for every registry.
    pub cert_dir: Option<std::path::PathBuf>,
    /// `--tls-verify=false` turns off certificate checks and allows plain HTTP.
    pub tls_verify: bool,
    /// `--registries-conf FILE` instead of the system files.
    pub registries_conf: Option<std::path::PathBuf>,
    /// Attempts after the first for a failing request.
    pub retries: u32,
    /// First backoff delay; doubles per attempt (plus jitter).
    pub retry_base: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    pub events: Option<EventSink>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            auth: AuthOptions::default(),
            cert_dir: None,
            tls_verify: true,
            registries_conf: None,
            retries: 5,
            retry_base: Duration::from_millis(400),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            events: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("auth", &self.auth)
            .field("cert_dir", &self.cert_dir)
            .field("tls_verify", &self.tls_verify)
            .field("registries_conf", &self.registries_conf)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// Counters over the client's life.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub retries: AtomicU64,
    pub resumes: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub bytes_fetched: u64,
    pub bytes_sent: u64,
    pub retries: u64,
    pub resumes: u64,
}

/// A request body that can be sent again (retries, redirects).
#[derive(Clone, Copy)]
pub enum ReqBody<'a> {
    None,
    Bytes(&'a [u8]),
}

/// One registry request.
pub struct Req<'a> {
    pub method: Method,
    /// The registry host (`host[:port]`) the path is on.
    pub host: &'a str,
    /// `/v2/…`, with its query string.
    pub path: String,
    pub headers: Vec<(header::HeaderName, String)>,
    pub body: ReqBody<'a>,
    /// Token scopes this request needs (`repository:NAME:pull`).
    pub scopes: Vec<String>,
    /// The repository credentials are looked up for (with `host`).
    pub repository: &'a str,
    /// For messages: "manifest foo:latest", "blob sha256:…".
    pub what: &'a str,
}

pub(crate) struct Transport {
    pub opts: ClientOptions,
    pub conf: RegistriesConf,
    agents: Mutex<HashMap<String, ureq::Agent>>,
    plain_http: Mutex<HashMap<String, bool>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: TokenCache,
    creds: Mutex<HashMap<String, Option<Credential>>>,
    pub stats: Stats,
}

/// The registry name credentials are stored under for a connection host.
pub fn credential_registry(host: &str) -> &str {
    if host == "registry-1.docker.io" || host == "index.docker.io" {
        "docker.io"
    } else {
        host
    }
}

/// Is `host[:port]` a loopback address or name?
pub fn is_loopback(host: &str) -> bool {
    let h = strip_port(host);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    // A bare IPv6 address has several colons and no port.
    if host.matches(':').count() > 1 {
        return host;
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// Percent-encode a query component.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The authority (`host[:port]`) and path of an absolute URL.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((scheme, auth, path))
}

/// Resolve a `Location` header against the URL it came from.
fn resolve_location(base: &str, loc: &str) -> Option<String> {
    // Absolute when it starts with a scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
    if let Some((scheme, _)) = loc.split_once(':') {
        let mut b = scheme.bytes();
        if b.next().is_some_and(|c| c.is_ascii_alphabetic())
            && b.all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
        {
            return Some(loc.to_string());
        }
    }
    let (scheme, auth, path) = split_url(base)?;
    if let Some(rest) = loc.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if loc.starts_with('/') {
        return Some(format!("{scheme}://{auth}{loc}"));
    }
    let dir = match path.split('?').next().unwrap_or("/").rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    Some(format!("{scheme}://{auth}{dir}{loc}"))
}

/// A response's OCI error message (`CODE: message; …`), read from a bounded body.
pub fn error_message(resp: Response<ureq::Body>) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(serde::Deserialize)]
    struct E {
        code: Option<String>,
        message: Option<String>,
    }
    let mut body = Vec::new();
    let _ = resp
        .into_body()
        .into_with_config()
        .limit(MAX_ERROR_BODY)
        .reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| {
                let code = e.code.as_deref().unwrap_or("");
                let msg = e.message.as_deref().unwrap_or("");
                match (code.is_empty(), msg.is_empty()) {
                    (false, false) => format!("{code}: {msg}"),
                    (false, true) => code.to_string(),
                    _ => msg.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect(),
        _ => String::new(),
    }
}

pub fn header_str(resp: &Response<ureq::Body>, name: header::HeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

enum Failure {
    /// Send again at once (the scheme changed); not a retry.
    Again,
    /// Worth another attempt: connection trouble or a 429/5xx.
    Retry {
        cause: String,
        after: Option<Duration>,
    },
    Fatal(RegistryError),
}

impl Transport {
    pub fn new(opts: ClientOptions) -> Result<Transport, RegistryError> {
        let conf = match &opts.registries_conf {
            Some(p) => RegistriesConf::load_file(p)?,
            None => RegistriesConf::load_default()?,
        };
        Ok(Transport {
            opts,
            conf,
            agents: Mutex::default(),
            plain_http: Mutex::default(),
            challenges: Mutex::default(),
            tokens: TokenCache::default(),
            creds: Mutex::default(),
            stats: Stats::default(),
        })
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            resumes: s.resumes.load(Ordering::Relaxed),
        }
    }

    pub fn event(&self, e: Event) {
        if let Some(sink) = &self.opts.events {
            sink(&e);
        }
    }

    fn insecure(&self, host: &str) -> bool {
        !self.opts.tls_verify || self.conf.is_insecure(host)
    }

    fn plain_http_allowed(&self, host: &str) -> bool {
        self.insecure(host) || is_loopback(host)
    }

    fn agent(&self, host: &str) -> Result<ureq::Agent, RegistryError> {
        let mut agents = self.agents.lock().expect("agents lock");
        if let Some(a) = agents.get(host) {
            return Ok(a.clone());
        }
        let verify = !self.insecure(host);
        let tls = tls::config_for(host, self.opts.cert_dir.as_deref(), verify)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(self.opts.connect_timeout))
            .timeout_per_read(Some(self.opts.read_timeout))
            .max_idle_connections_per_host(16)
            .max_response_header_size(256 << 10)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        agents.insert(host.to_string(), agent.clone());
        Ok(agent)
    }

    fn scheme(&self, host: &str) -> &'static str {
        let m = self.plain_http.lock().expect("scheme lock");
        if m.get(host).copied().unwrap_or(false) {
            "http"
        } else {
            "https"
        }
    }

    fn proto(&self, registry: &str, what: &str, why: String) -> RegistryError {
        RegistryError::Protocol {
            registry: registry.to_string(),
            what: what.to_string(),
            why,
        }
    }

    fn classify(&self, registry: &str, what: &str, e: ureq::Error) -> Failure {
        let cause = describe(&e);
        match e {
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_) => Failure::Retry { cause, after: None },
            ureq::Error::HostNotFound => Failure::Fatal(RegistryError::Transport {
                registry: registry.to_string(),
                what: what.to_string(),
                cause: "host not found".into(),
            }),
            _ => Failure::Fatal(RegistryError::Transport {
                registry: registry.to_string(),
                what: what.to_string(),
                cause,
            }),
        }
    }

    /// Sleep before attempt `attempt` (1-based), or give up.
    pub(crate) fn backoff(
        &self,
        registry: &str,
        what: &str,
        attempt: u32,
        cause: String,
        after: Option<Duration>,
    ) -> Result<(), RegistryError> {
        if attempt > self.opts.retries {
            return Err(RegistryError::GaveUp {
                registry: registry.to_string(),
                what: what.to_string(),
                attempts: attempt,
                last: cause,
            });
        }
        let exp = self
            .opts
            .retry_base
            .saturating_mul(1 << (attempt - 1).min(10));
        let jitter = exp.mul_f64(fastrand::f64() * 0.5);
        let delay = match after {
            Some(a) => a.min(MAX_RETRY_AFTER),
            None => (exp + jitter).min(Duration::from_secs(30)),
        };
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.event(Event::Retry {
            registry: registry.to_string(),
            what: what.to_string(),
            attempt,
            delay,
            cause,
        });
        std::thread::sleep(delay);
        Ok(())
    }

    /// Send `req`, handling scheme choice, auth, redirects and retries. Returns the final
    /// response, whatever its status (other than the retried ones).
    pub fn send(&self, req: &Req) -> Result<Response<ureq::Body>, RegistryError> {
        let registry = req.host;
        let mut attempt = 0;
        let mut authed_after_401 = false;
        loop {
            match self.send_once(req) {
                Ok((resp, true))
                    if resp.status() == StatusCode::UNAUTHORIZED && !authed_after_401 =>
                {
                    let challenge = auth::parse_challenges(
                        resp.headers()
                            .get_all(header::WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok()),
                    );
                    let Some(challenge) = challenge else {
                        return Err(RegistryError::Unauthorized {
                            registry: registry.to_string(),
                            what: req.what.to_string(),
                            user: self.user_of(req.host, req.repository),
                            message: error_message(resp),
                        });
                    };
                    drop(resp);
                    // A token the server no longer accepts (expired or revoked early) is
                    // dropped, so the retry asks for a new one.
                    if let Some((key, _)) = self.token_key(req, &challenge) {
                        self.tokens.forget(&key);
                    }
                    self.challenges
                        .lock()
                        .expect("challenges lock")
                        .insert(req.host.to_string(), challenge);
                    authed_after_401 = true;
                }
                Ok((resp, _)) if resp.status() == StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Unauthorized {
                        registry: registry.to_string(),
                        what: req.what.to_string(),
                        user: self.user_of(req.host, req.repository),
                        message: error_message(resp),
                    });
                }
                Ok((resp, _)) if resp.status() == StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Denied {
                        registry: registry.to_string(),
                        what: req.what.to_string(),
                        user: self.user_of(req.host, req.repository),
                        message: error_message(resp),
                    });
                }
                Ok((resp, _)) => match retryable(&resp) {
                    Some(after) if req.method != Method::PATCH => {
                        let cause = resp.status().to_string();
                        drop(resp);
                        attempt += 1;
                        self.backoff(registry, req.what, attempt, cause, after)?;
                    }
                    _ => return Ok(resp),
                },
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Again) => {}
                // An upload piece may have been stored before the connection broke: sending
                // it again would be refused; the caller restarts the upload instead.
                Err(Failure::Retry { cause, .. }) if req.method == Method::PATCH => {
                    return Err(RegistryError::Transport {
                        registry: registry.to_string(),
                        what: req.what.to_string(),
                        cause,
                    });
                }
                Err(Failure::Retry { cause, after }) => {
                    attempt += 1;
                    self.backoff(registry, req.what, attempt, cause, after)?;
                }
            }
        }
    }

    /// One attempt: follow redirects, attach auth where it belongs.
    /// Returns the final response and whether it came from the registry itself (same
    /// scheme and host as asked): only then may its auth challenge be believed.
    fn send_once(&self, req: &Req) -> Result<(Response<ureq::Body>, bool), Failure> {
        let fatal = Failure::Fatal;
        let challenge = self
            .challenges
            .lock()
            .expect("challenges lock")
            .get(req.host)
            .cloned();
        let authz = match &challenge {
            Some(c) => self.authorization(req, c).map_err(|e| {
                // A token fetch that kept failing is as retryable as the request itself
                // would have been; everything else is final.
                fatal(e)
            })?,
            None => None,
        };
        let scheme = self.scheme(req.host);
        let mut url = format!("{scheme}://{}{}", req.host, req.path);
        let mut visited = HashSet::new();
        let mut method = req.method.clone();
        let mut body = req.body;
        for _hop in 0..=MAX_REDIRECTS {
            if !visited.insert(url.clone()) {
                return Err(fatal(RegistryError::RedirectLoop {
                    registry: req.host.to_string(),
                    what: req.what.to_string(),
                    url: redact_query(&url),
                }));
            }
            let (url_scheme, authority, _) = split_url(&url).ok_or_else(|| {
                fatal(self.proto(
                    req.host,
                    req.what,
                    format!("invalid URL {}", redact_query(&url)),
                ))
            })?;
            // Credentials go only to the registry itself, over the scheme it was reached by.
            let same_host = url_scheme == scheme && authority.eq_ignore_ascii_case(req.host);
            let agent = self.agent(authority).map_err(fatal)?;
            let mut b = http::Request::builder().method(method.clone()).uri(&url);
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            if same_host {
                if let Some(a) = &authz {
                    b = b.header(header::AUTHORIZATION, a);
                }
            }
            let result = match body {
                ReqBody::None => {
                    if method == Method::PUT || method == Method::POST || method == Method::PATCH {
                        b = b.header(header::CONTENT_LENGTH, "0");
                    }
                    b.body(())
                        .map_err(|e| fatal(self.proto(req.host, req.what, e.to_string())))
                        .map(|r| agent.run(r))?
                }
                ReqBody::Bytes(bytes) => {
                    self.stats
                        .bytes_sent
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    b.body(bytes)
                        .map_err(|e| fatal(self.proto(req.host, req.what, e.to_string())))
                        .map(|r| agent.run(r))?
                }
            };
            let resp = match result {
                Ok(r) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    r
                }
                Err(e) => {
                    if same_host && url.starts_with("https://") {
                        if let Some(f) = self.tls_failure(req, &e) {
                            return Err(f);
                        }
                    }
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    return Err(self.classify(req.host, req.what, e));
                }
            };
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(loc) = header_str(&resp, header::LOCATION) else {
                    return Ok((resp, same_host));
                };
                let Some(next) = resolve_location(&url, loc) else {
                    return Err(fatal(self.proto(
                        req.host,
                        req.what,
                        "invalid redirect".into(),
                    )));
                };
                if !(next.starts_with("https://") || next.starts_with("http://")) {
                    return Err(fatal(self.proto(
                        req.host,
                        req.what,
                        "redirect to a non-HTTP URL".into(),
                    )));
                }
                if let Some(("http", target, _)) = split_url(&next) {
                    if !self.plain_http_allowed(target) {
                        return Err(fatal(self.proto(
                            req.host,
                            req.what,
                            format!("redirect to plain HTTP at {target} refused"),
                        )));
                    }
                }
                if status == StatusCode::SEE_OTHER {
                    method = Method::GET;
                    body = ReqBody::None;
                }
                drop(resp);
                url = next;
                continue;
            }
            return Ok((resp, same_host));
        }
        Err(fatal(RegistryError::TooManyRedirects {
            registry: req.host.to_string(),
            what: req.what.to_string(),
            max: MAX_REDIRECTS,
        }))
    }

    /// A TLS failure on the first contact: switch to plain HTTP where that is allowed
    /// (then the caller's retry uses it at once), or explain.
    fn tls_failure(&self, req: &Req, e: &ureq::Error) -> Option<Failure> {
        let rustls_err = match e {
            ureq::Error::Rustls(r) => Some(r),
            ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        // Three kinds of TLS failure: our check of the server's certificate; the server
        // answering with a TLS alert (it speaks TLS but refused us, e.g. no client
        // certificate); bytes that are not TLS at all (a plain-HTTP server).
        enum Kind {
            Certificate,
            Refused,
            NotTls,
        }
        let kind = match (e, rustls_err) {
            (
                _,
                Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
            ) => Kind::Certificate,
            (_, Some(rustls::Error::AlertReceived(_))) => Kind::Refused,
            (_, Some(_)) | (ureq::Error::Tls(_), None) => Kind::NotTls,
            _ => return None,
        };
        match kind {
            Kind::Certificate => {
                return Some(Failure::Fatal(RegistryError::Transport {
                    registry: req.host.to_string(),
                    what: req.what.to_string(),
                    cause: format!(
                        "TLS: {} (add the registry's CA to /etc/containers/certs.d/{}/ or use --cert-dir; --tls-verify=false skips the check)",
                        describe(e),
                        req.host
                    ),
                }))
            }
            Kind::Refused => {
                return Some(Failure::Fatal(RegistryError::Transport {
                    registry: req.host.to_string(),
                    what: req.what.to_string(),
                    cause: format!(
                        "the registry refused the TLS handshake ({}); if it wants a client certificate, put NAME.cert and NAME.key in /etc/containers/certs.d/{}/ or --cert-dir",
                        describe(e),
                        req.host
                    ),
                }))
            }
            Kind::NotTls => {}
        }
        if self.plain_http_allowed(req.host) {
            // Another thread may have switched already; either way, send again over
            // HTTP. (A later redirect back to HTTPS is not "the same host" any more, so
            // this cannot loop.)
            self.plain_http
                .lock()
                .expect("scheme lock")
                .insert(req.host.to_string(), true);
            return Some(Failure::Again);
        }
        Some(Failure::Fatal(RegistryError::PlainHttpRefused {
            registry: req.host.to_string(),
        }))
    }
}

/// Drop the query string (signed URLs carry credentials) from a URL for a message.
fn redact_query(url: &str) -> String {
    match url.find('?') {
        Some(i) => format!("{}?…", &url[..i]),
        None => url.to_string(),
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Rustls(r) => format!("TLS: {r}"),
        // Its text holds the whole URI, which may carry a signed query.
        ureq::Error::BadUri(_) => "invalid URL".into(),
        other => other.to_string(),
    }
}

/// Retry-worthy statuses, with the server's `Retry-After` (seconds) when it gave one.
fn retryable(resp: &Response<ureq::Body>) -> Option<Option<Duration>> {
    let s = resp.status().as_u16();
    if s == 429 || s == 500 || s == 502 || s == 503 || s == 504 {
        let after = header_str(resp, header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Some(after)
    } else {
        None
    }
}

trait ClassifyMsg {
    fn classify_msg(&self) -> String;
}

impl ClassifyMsg for serde_json::Error {
    /// serde_json's message without echoing input (a token response may hold secrets).
    fn classify_msg(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "127.0.0.2",
            "localhost:80",
            "[::1]:5000",
            "::1",
            "a.localhost",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "10.0.0.1:5000",
            "example.com",
            "[2001:db8::1]:443",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn locations_resolve() {
        let base = "https://r.example:5000/v2/a/blobs/uploads/x?y=1";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/z").unwrap(),
            "https://r.example:5000/v2/a/blobs/uploads/z"
        );
        assert_eq!(
            resolve_location(base, "http://other/x?sig=1").unwrap(),
            "http://other/x?sig=1"
        );
        assert_eq!(resolve_location(base, "//cdn/x").unwrap(), "https://cdn/x");
        // A URL inside the query does not make a relative location absolute.
        assert_eq!(
            resolve_location(base, "/v2/a?u=https://y").unwrap(),
            "https://r.example:5000/v2/a?u=https://y"
        );
        assert_eq!(
            resolve_location(base, "z?q").unwrap(),
            "https://r.example:5000/v2/a/blobs/uploads/z?q"
        );
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(
            pct("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            redact_query("https://s3/x?X-Amz-Signature=secret"),
            "https://s3/x?…"
        );
    }
}
