//! The bearer-token gate in front of a registry.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// TokenGate
// ---------------------------------------------------------------------------

/// How a [`TokenGate`] issues tokens.
#[derive(Clone, Debug)]
pub struct TokenOpts {
    /// Credentials the token endpoint accepts (Basic auth). `None`: anyone
    /// gets every scope asked for.
    pub user: Option<(String, String)>,
    /// With `user` set: requests without credentials still get `pull`.
    pub anonymous_pull: bool,
    /// JSON key of the token: `"token"` or `"access_token"`.
    pub key: String,
    /// `expires_in` to announce (and enforce); `None`: field omitted, 60 s.
    pub expires_in: Option<u64>,
}

impl Default for TokenOpts {
    fn default() -> Self {
        TokenOpts {
            user: None,
            anonymous_pull: true,
            key: "token".into(),
            expires_in: Some(300),
        }
    }
}

/// One call of the token endpoint (no passwords kept).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// Whether Basic credentials came with the request.
    pub basic_given: bool,
    /// The user name of those credentials.
    pub user: Option<String>,
    pub status: u16,
    /// Scopes granted (`repository:NAME:ACTIONS`), empty on refusal.
    pub granted: Vec<String>,
}

pub(crate) struct Grant {
    /// (`repository:NAME`, actions)
    pub(crate) scopes: Vec<(String, Vec<String>)>,
    pub(crate) expires: Instant,
}

pub(crate) struct Gate {
    pub(crate) opts: TokenOpts,
    pub(crate) tokens: Mutex<HashMap<String, Grant>>,
    pub(crate) log: Mutex<Vec<TokenRequest>>,
    pub(crate) challenges: AtomicUsize,
}

pub(crate) fn query_params(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = if b[i] == b'%' && i + 2 < b.len() {
            std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        } else {
            None
        };
        match (b[i], hexval) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn random_token() -> String {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    hex::encode(b)
}

/// RFC 3339 UTC timestamp of `t`, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // days since 1970-01-01 -> civil date (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `(repository:NAME, action)` a `/v2/…` request needs; `None` for `/v2/`.
pub(crate) fn required_scope(method: &str, path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return None;
    }
    let action = if matches!(method, "GET" | "HEAD") {
        "pull"
    } else {
        "push"
    };
    if rest == "_catalog" {
        return Some(("registry:catalog".into(), "*".into()));
    }
    let name = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .map(|i| &rest[..i])
        .unwrap_or(rest.trim_end_matches('/'));
    Some((format!("repository:{name}"), action.into()))
}

impl Gate {
    pub(crate) fn check(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        own_host: &str,
    ) -> Result<(), String> {
        let need = required_scope(method, path);
        let token = auth.and_then(|a| {
            let (scheme, t) = a.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| t.trim().to_string())
        });
        let mut insufficient = false;
        if let Some(t) = token {
            let tokens = lock(&self.tokens);
            if let Some(g) = tokens.get(&t).filter(|g| g.expires > Instant::now()) {
                match &need {
                    None => return Ok(()),
                    Some((res, action)) => {
                        if g.scopes.iter().any(|(r, acts)| {
                            r == res && acts.iter().any(|a| a == action || a == "*")
                        }) {
                            return Ok(());
                        }
                        insufficient = true;
                    }
                }
            }
        }
        let mut c = format!("Bearer realm=\"http://{own_host}/token\",service=\"{TOKEN_SERVICE}\"");
        if let Some((res, action)) = &need {
            let actions = if action == "push" {
                "pull,push"
            } else {
                action.as_str()
            };
            c.push_str(&format!(",scope=\"{res}:{actions}\""));
        }
        if insufficient {
            c.push_str(",error=\"insufficient_scope\"");
        }
        Err(c)
    }

    pub(crate) fn token_endpoint(
        &self,
        target: &str,
        auth: Option<&str>,
    ) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
        let params = query_params(target);
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let basic = auth.and_then(|a| {
            let (scheme, b64) = a.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            Some((u.to_string(), p.to_string()))
        });
        let basic_given = auth.is_some_and(is_basic);
        let mut rec = TokenRequest {
            service: service.clone(),
            scopes: scopes.clone(),
            basic_given,
            user: basic.as_ref().map(|(u, _)| u.clone()),
            status: 200,
            granted: Vec::new(),
        };
        let json = vec![("Content-Type", "application/json".to_string())];
        // Who is asking?
        let authenticated = match (&self.opts.user, &basic) {
            (None, _) => true,
            (Some(want), Some(got)) if want == got => true,
            (Some(_), Some(_)) => {
                rec.status = 401;
                lock(&self.log).push(rec);
                let mut h = json.clone();
                h.push((
                    "WWW-Authenticate",
                    "Basic realm=\"strata-test-token\"".into(),
                ));
                return (
                    401,
                    h,
                    json_error("UNAUTHORIZED", "invalid username or password"),
                );
            }
            (Some(_), None) if basic_given => {
                rec.status = 401;
                lock(&self.log).push(rec);
                return (
                    401,
                    json.clone(),
                    json_error("UNAUTHORIZED", "malformed credentials"),
                );
            }
            (Some(_), None) => false,
        };
        if !authenticated && !self.opts.anonymous_pull {
            rec.status = 401;
            lock(&self.log).push(rec);
            let mut h = json.clone();
            h.push((
                "WWW-Authenticate",
                "Basic realm=\"strata-test-token\"".into(),
            ));
            return (
                401,
                h,
                json_error("UNAUTHORIZED", "authentication required"),
            );
        }
        if service.as_deref().is_some_and(|s| s != TOKEN_SERVICE) {
            rec.status = 400;
            lock(&self.log).push(rec);
            return (400, json, json_error("DENIED", "unknown service"));
        }
        let mut grant = Vec::new();
        for s in &scopes {
            let (Some(first), Some(last)) = (s.find(':'), s.rfind(':')) else {
                continue;
            };
            if first == last {
                continue;
            }
            let resource = s[..last].to_string();
            let actions: Vec<String> = s[last + 1..]
                .split(',')
                .filter(|a| authenticated || *a == "pull")
                .map(str::to_string)
                .collect();
            if !actions.is_empty() {
                rec.granted
                    .push(format!("{resource}:{}", actions.join(",")));
                grant.push((resource, actions));
            }
        }
        let token = random_token();
        let lifetime = self.opts.expires_in.unwrap_or(60);
        lock(&self.tokens).insert(
            token.clone(),
            Grant {
                scopes: grant,
                expires: Instant::now() + Duration::from_secs(lifetime),
            },
        );
        let mut body = serde_json::Map::new();
        body.insert(self.opts.key.clone(), token.into());
        if let Some(e) = self.opts.expires_in {
            body.insert("expires_in".into(), e.into());
        }
        body.insert("issued_at".into(), rfc3339(SystemTime::now()).into());
        lock(&self.log).push(rec);
        (
            200,
            json,
            serde_json::Value::Object(body).to_string().into_bytes(),
        )
    }
}

/// A bearer-token auth front for a plain-HTTP [`Registry`] (without
/// htpasswd): challenges `/v2/…` requests, runs the token endpoint at
/// `/token`, forwards authorized requests (without their Authorization).
pub struct TokenGate {
    pub(crate) server: Server,
}

impl TokenGate {
    pub fn start(upstream_host: &str, opts: TokenOpts) -> TokenGate {
        let gate = Gate {
            opts,
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            challenges: AtomicUsize::new(0),
        };
        TokenGate {
            server: Server::start(upstream_host, false, Some(gate)),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.server.shared.hosts[0].clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("{}/token", self.url())
    }

    pub(crate) fn gate(&self) -> &Gate {
        self.server.shared.gate.as_ref().unwrap()
    }

    /// Every call of the token endpoint.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.gate().log).clone()
    }

    /// Number of token requests refused (401: wrong or missing credentials).
    pub fn token_refusals(&self) -> usize {
        lock(&self.gate().log)
            .iter()
            .filter(|t| t.status == 401)
            .count()
    }

    /// Number of 401 challenges sent for `/v2/…` requests.
    pub fn challenges(&self) -> usize {
        self.gate().challenges.load(Ordering::SeqCst)
    }

    /// Every request (token endpoint included); Basic values redacted.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server.records()
    }

    /// Number of tokens issued and not yet expired.
    pub fn live_tokens(&self) -> usize {
        let now = Instant::now();
        lock(&self.gate().tokens)
            .values()
            .filter(|g| g.expires > now)
            .count()
    }
}
