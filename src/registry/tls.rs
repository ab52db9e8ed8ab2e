//! TLS settings per registry: the system trust store plus certs.d CAs and client certificates.
//! (Stub: filled in by the reference/conf/auth-file/TLS work.)

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The ureq TLS configuration for `host[:port]`: system roots plus every `*.crt` of its
/// certs.d directories (or only `cert_dir` when given), a `*.cert`/`*.key` pair as client
/// certificate, verification off when `verify` is false.
pub fn config_for(
    _host: &str,
    _cert_dir: Option<&Path>,
    _verify: bool,
) -> Result<ureq::tls::TlsConfig, TlsError> {
    todo!()
}
