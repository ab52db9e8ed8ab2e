//! Credentials as containers-auth.json(5) finds them; `login` / `logout` write auth.json.
//! (Stub: filled in by the reference/conf/auth-file/TLS work.)

use std::path::{Path, PathBuf};

/// A credential. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// `--authfile` (else `$REGISTRY_AUTH_FILE`, else the default search path).
    pub authfile: Option<PathBuf>,
    /// `--creds USER[:PASS]`, overriding every file.
    pub creds: Option<Credential>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("credential helper docker-credential-{helper}: {why}")]
    Helper { helper: String, why: String },
}

/// The credential for `registry` (`host[:port]`) and `repository`: `--creds`, else the first
/// file in the search order holding a matching key (longest `host[/namespace]` wins),
/// consulting `credHelpers` / `credsStore`.
pub fn lookup(
    _opts: &AuthOptions,
    _registry: &str,
    _repository: &str,
) -> Result<Option<Credential>, AuthFileError> {
    todo!()
}

/// Store `cred` for `key` (`host[:port][/namespace]`) in the auth file that `login` writes
/// (`--authfile`, `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`);
/// atomic, mode 0600. Returns the file written.
pub fn login(
    _authfile: Option<&Path>,
    _key: &str,
    _cred: &Credential,
) -> Result<PathBuf, AuthFileError> {
    todo!()
}

/// Remove `key` from that auth file. Returns whether it was there.
pub fn logout(_authfile: Option<&Path>, _key: &str) -> Result<bool, AuthFileError> {
    todo!()
}

/// `--creds USER[:PASS]` (an empty password is allowed).
pub fn parse_creds(_s: &str) -> Credential {
    todo!()
}
