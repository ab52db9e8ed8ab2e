//! What can go wrong talking to a registry. Every error names the registry (and the manifest
//! or blob when there is one) and the cause in one line. No variant carries a credential:
//! passwords and tokens never reach an error, whatever the server sent.

use super::authfile::AuthFileError;
use super::conf::ConfError;
use super::reference::ReferenceError;
use super::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server answered with an error status; `message` is its OCI error (code: message).
    #[error("registry {registry}: {what}: {status}{}", message_suffix(.message))]
    Status {
        registry: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("registry {registry}: {what}: not found{}", message_suffix(.message))]
    NotFound {
        registry: String,
        what: String,
        message: String,
    },
    #[error("registry {registry}: {what}: authentication refused{}{}", user_suffix(.user), message_suffix(.message))]
    Unauthorized {
        registry: String,
        what: String,
        user: Option<String>,
        message: String,
    },
    #[error("registry {registry}: {what}: access denied{}{}", user_suffix(.user), message_suffix(.message))]
    Denied {
        registry: String,
        what: String,
        user: Option<String>,
        message: String,
    },
    #[error("registry {registry}: {what}: {cause}")]
    Transport {
        registry: String,
        what: String,
        cause: String,
    },
    #[error("registry {registry}: {what}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        registry: String,
        what: String,
        attempts: u32,
        last: String,
    },
    #[error("registry {registry}: {what}: response larger than {limit} bytes")]
    TooLarge {
        registry: String,
        what: String,
        limit: u64,
    },
    #[error("registry {registry}: {what}: {why}")]
    Protocol {
        registry: String,
        what: String,
        why: String,
    },
    #[error("registry {registry}: {what}: redirect loop at {url}")]
    RedirectLoop {
        registry: String,
        what: String,
        url: String,
    },
    #[error("registry {registry}: {what}: more than {max} redirects")]
    TooManyRedirects {
        registry: String,
        what: String,
        max: usize,
    },
    #[error("registry {registry}: serves only plain HTTP; allow it with --tls-verify=false or `insecure = true` in registries.conf")]
    PlainHttpRefused { registry: String },
    #[error("registry {registry}: {what}: {source}")]
    Io {
        registry: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn message_suffix(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(" ({m})")
    }
}

fn user_suffix(u: &Option<String>) -> String {
    match u {
        Some(u) => format!(" for user {u:?}"),
        None => " (no credentials)".to_string(),
    }
}

impl RegistryError {
    /// True when a resource is simply absent (manifest or blob unknown), as opposed to a
    /// failure to ask.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}
