//! The transport's side of authentication: which credential a request carries, the
//! `Authorization` value for a host's challenge, and the token endpoint round trip (per
//! the distribution token spec). Nothing here formats a secret into a message.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{self, header, StatusCode};

use super::super::auth::{self, Challenge, TokenResponse};
use super::super::authfile::{self, Credential};
use super::super::error::RegistryError;
use super::{
    credential_registry, error_message, pct, redact_query, retryable, split_url, ClassifyMsg,
    Failure, Req, Transport,
};

impl Transport {
    pub(super) fn credential(
        &self,
        host: &str,
        repository: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        let registry = credential_registry(host);
        let key = format!("{registry}/{repository}");
        if let Some(c) = self.creds.lock().expect("creds lock").get(&key) {
            return Ok(c.clone());
        }
        let c = authfile::lookup(&self.opts.auth, registry, repository)?;
        self.creds
            .lock()
            .expect("creds lock")
            .insert(key, c.clone());
        Ok(c)
    }

    pub(super) fn user_of(&self, host: &str, repository: &str) -> Option<String> {
        match self.credential(host, repository) {
            Ok(Some(Credential::Basic { username, .. })) => Some(username),
            Ok(Some(Credential::IdentityToken(_))) => Some("<identity token>".into()),
            _ => None,
        }
    }

    /// The `Authorization` value for a request to `host`, from what the host asked for
    /// before (no challenge yet: none).
    pub(super) fn authorization(
        &self,
        req: &Req,
        challenge: &Challenge,
    ) -> Result<Option<String>, RegistryError> {
        let cred = self.credential(req.host, req.repository)?;
        match challenge {
            Challenge::Basic => Ok(match cred {
                Some(Credential::Basic { username, password }) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                )),
                _ => None,
            }),
            Challenge::Bearer { realm, service, .. } => {
                let Some((key, scopes)) = self.token_key(req, challenge) else {
                    return Ok(None);
                };
                if let Some(t) = self.tokens.get(&key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let (token, life) =
                    self.fetch_token(req, realm, service.as_deref(), &scopes, cred)?;
                self.tokens.put(key, token.clone(), life);
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(
        &self,
        req: &Req,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        cred: Option<Credential>,
    ) -> Result<(String, Duration), RegistryError> {
        let registry = req.host.to_string();
        let what = format!("token from {}", redact_query(realm));
        let Some((scheme, auth_host, _)) = split_url(realm) else {
            return Err(RegistryError::Protocol {
                registry,
                what: req.what.to_string(),
                why: format!("invalid token realm {realm:?}"),
            });
        };
        if scheme != "https" && scheme != "http" {
            return Err(RegistryError::Protocol {
                registry,
                what: req.what.to_string(),
                why: format!("invalid token realm {}", redact_query(realm)),
            });
        }
        // Credentials cross the network in the clear only where plain HTTP is allowed.
        if scheme == "http" && !self.plain_http_allowed(auth_host) {
            return Err(RegistryError::Protocol {
                registry,
                what: req.what.to_string(),
                why: format!(
                    "token realm {} is plain HTTP; refused (mark {auth_host} insecure to allow it)",
                    redact_query(realm)
                ),
            });
        }
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", pct(s)));
        }
        for s in scopes {
            query.push(format!("scope={}", pct(s)));
        }
        let agent = self.agent(auth_host)?;
        let user = match &cred {
            Some(Credential::Basic { username, .. }) => Some(username.clone()),
            Some(Credential::IdentityToken(_)) => Some("<identity token>".into()),
            None => None,
        };
        let mut attempt = 0;
        loop {
            let request = match &cred {
                Some(Credential::IdentityToken(t)) => {
                    let mut form = format!(
                        "grant_type=refresh_token&client_id=strata&refresh_token={}",
                        pct(t)
                    );
                    for q in &query {
                        form.push('&');
                        form.push_str(q);
                    }
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    agent.run(
                        http::Request::post(realm)
                            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(form.into_bytes())
                            .map_err(|e| self.proto(&registry, &what, e.to_string()))?,
                    )
                }
                _ => {
                    let sep = if realm.contains('?') { '&' } else { '?' };
                    let url = if query.is_empty() {
                        realm.to_string()
                    } else {
                        format!("{realm}{sep}{}", query.join("&"))
                    };
                    let mut b = http::Request::get(&url);
                    if let Some(Credential::Basic { username, password }) = &cred {
                        b = b.header(
                            header::AUTHORIZATION,
                            format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD
                                    .encode(format!("{username}:{password}"))
                            ),
                        );
                    }
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    agent.run(
                        b.body(())
                            .map_err(|e| self.proto(&registry, &what, e.to_string()))?,
                    )
                }
            };
            let failure = match request {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let mut body = Vec::new();
                        resp.into_body()
                            .into_with_config()
                            .limit(auth::MAX_TOKEN_RESPONSE)
                            .reader()
                            .read_to_end(&mut body)
                            .map_err(|_| RegistryError::TooLarge {
                                registry: registry.clone(),
                                what: what.clone(),
                                limit: auth::MAX_TOKEN_RESPONSE,
                            })?;
                        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                            self.proto(
                                &registry,
                                &what,
                                format!("invalid token response: {}", e.classify_msg()),
                            )
                        })?;
                        return parsed.into_token().ok_or_else(|| {
                            self.proto(&registry, &what, "token response has no token".into())
                        });
                    }
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(RegistryError::Unauthorized {
                            registry,
                            what: req.what.to_string(),
                            user,
                            message: {
                                let m = error_message(resp);
                                if m.is_empty() {
                                    format!("token server answered {status}")
                                } else {
                                    format!("token server: {m}")
                                }
                            },
                        });
                    }
                    match retryable(&resp) {
                        Some(after) => Failure::Retry {
                            cause: status.to_string(),
                            after,
                        },
                        None => {
                            return Err(RegistryError::Status {
                                registry,
                                what,
                                status: status.as_u16(),
                                message: error_message(resp),
                            })
                        }
                    }
                }
                Err(e) => self.classify(&registry, &what, e),
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Again => {}
                Failure::Retry { cause, after } => {
                    attempt += 1;
                    self.backoff(&registry, &what, attempt, cause, after)?;
                }
            }
        }
    }

    /// The token cache key and scopes a request needs under a Bearer challenge: the
    /// request's scopes plus any the registry asked for; keyed by registry host and user
    /// too, so that two registries sharing a realm never share a token.
    pub(super) fn token_key(
        &self,
        req: &Req,
        challenge: &Challenge,
    ) -> Option<(String, Vec<String>)> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = challenge
        else {
            return None;
        };
        let mut scopes = req.scopes.clone();
        if let Some(s) = scope {
            for one in s.split(' ').filter(|x| !x.is_empty()) {
                if !scopes.iter().any(|x| x == one) {
                    scopes.push(one.to_string());
                }
            }
        }
        let user = self.user_of(req.host, req.repository).unwrap_or_default();
        let key = format!(
            "{}\n{}\n{user}",
            auth::cache_key(realm, service.as_deref(), &scopes.join(" ")),
            req.host
        );
        Some((key, scopes))
    }
}
