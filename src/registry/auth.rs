//! Registry authentication on the wire: `WWW-Authenticate` challenges, the token endpoint's
//! answer, and the per-scope token cache.
//!
//! Per the distribution token spec: a registry that wants a token answers 401 with
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; the client asks the realm
//! (GET with `service` and `scope` query parameters, Basic credentials when it has some;
//! or, with an OAuth2 refresh token, POST `grant_type=refresh_token`) and gets JSON with
//! `token` or `access_token`, `expires_in` (default 60 s) and `issued_at`. `Basic realm=…`
//! asks for the credentials on every request instead.
//!
//! Tokens are cached per (realm, service, scope) until shortly before they expire. Nothing
//! here formats a token or a password into a message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token responses larger than this are refused (real ones are a few KiB).
pub const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Tokens are renewed this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// The token spec's default lifetime when the server gives none.
const DEFAULT_EXPIRES_IN: u64 = 60;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parse the first challenge we understand (Bearer, else Basic) from header values.
/// Parameters are `key=value` or `key="quoted, with \"escapes\""`, separated by commas.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for v in values {
        let v = v.trim();
        let (scheme, rest) = match v.find(char::is_whitespace) {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, ""),
        };
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(rest);
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            if let Some(realm) = get("realm") {
                return Some(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                });
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[k0..i].trim().to_string();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut val = Vec::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < b.len() && b[i] != b',' {
                val.push(b[i]);
                i += 1;
            }
            while val.last().is_some_and(|c| c.is_ascii_whitespace()) {
                val.pop();
            }
        }
        if !key.is_empty() {
            out.push((key, String::from_utf8_lossy(&val).into_owned()));
        }
    }
    out
}

/// The token endpoint's JSON answer.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token (`token` preferred, `access_token` otherwise) and its lifetime.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let t = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let secs = self.expires_in.unwrap_or(DEFAULT_EXPIRES_IN).max(1);
        Some((t, Duration::from_secs(secs)))
    }
}

/// Cached tokens, keyed by realm, service and scope.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "TokenCache({n} tokens)")
    }
}

pub fn cache_key(realm: &str, service: Option<&str>, scope: &str) -> String {
    format!("{realm}\n{}\n{scope}", service.unwrap_or(""))
}

impl TokenCache {
    pub fn get(&self, key: &str) -> Option<String> {
        let t = self.tokens.lock().expect("token cache lock");
        t.get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(tok, _)| tok.clone())
    }

    pub fn put(&self, key: String, token: String, lifetime: Duration) {
        // A server's expires_in is untrusted: capped at a day.
        let life = lifetime
            .min(Duration::from_secs(86_400))
            .saturating_sub(EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        let until = Instant::now() + life;
        self.tokens
            .lock()
            .expect("token cache lock")
            .insert(key, (token, until));
    }

    pub fn forget(&self, key: &str) {
        self.tokens.lock().expect("token cache lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quotes_and_commas() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn bearer_preferred_over_basic_and_case_insensitive() {
        let c = parse_challenges([
            r#"Basic realm="x""#,
            r#"bearer Realm=http://t/tok, Service = s"#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://t/tok".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenges(["Negotiate"]), None);
        assert_eq!(parse_challenges(["Bearer service=\"no realm\""]), None);
        assert_eq!(
            parse_challenges([r#"Bearer realm="a\"b""#]),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn token_response_fields() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"A","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("A".into(), Duration::from_secs(300))));
        let t: TokenResponse = serde_json::from_str(r#"{"token":"T","access_token":"A"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("T".into(), Duration::from_secs(60))));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn an_absurd_lifetime_does_not_overflow() {
        let c = TokenCache::default();
        c.put("k".into(), "t".into(), Duration::from_secs(u64::MAX));
        assert_eq!(c.get("k").as_deref(), Some("t"));
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"x","expires_in":18446744073709551615}"#).unwrap();
        let (tok, life) = t.into_token().unwrap();
        c.put("k2".into(), tok, life);
    }

    #[test]
    fn cache_expires() {
        let c = TokenCache::default();
        c.put("k".into(), "t".into(), Duration::from_secs(600));
        assert_eq!(c.get("k").as_deref(), Some("t"));
        c.forget("k");
        assert_eq!(c.get("k"), None);
    }
}
