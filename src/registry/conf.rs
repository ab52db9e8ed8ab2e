//! registries.conf (v2 TOML): prefix/location rewriting, insecure, blocked, mirrors.
//! (Stub: filled in by the reference/conf/auth-file/TLS work.)

use std::path::{Path, PathBuf};

use super::reference::Reference;

/// One place to try for a reference, in order: mirrors first, then the primary location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to (after `Reference::endpoint_host` for docker.io).
    pub host: String,
    /// The repository path on that host (prefix rewritten to the location's path).
    pub repository: String,
    /// Plain HTTP allowed / TLS errors tolerated for this endpoint (`insecure = true`).
    pub insecure: bool,
    /// A `[[registry.mirror]]` rather than the primary location.
    pub mirror: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("registry {registry} is blocked by {path}")]
    Blocked { registry: String, path: PathBuf },
}

#[derive(Debug, Clone, Default)]
pub struct RegistriesConf {}

impl RegistriesConf {
    /// `/etc/containers/registries.conf` and `registries.conf.d/*.conf`; missing files are fine.
    pub fn load_default() -> Result<Self, ConfError> {
        todo!()
    }

    /// One file given by `--registries-conf` (its `.d` directory is not read).
    pub fn load_file(_path: &Path) -> Result<Self, ConfError> {
        todo!()
    }

    /// Where to fetch `r` from, in the order to try: matching mirrors, then the primary.
    pub fn endpoints(&self, _r: &Reference) -> Result<Vec<Endpoint>, ConfError> {
        todo!()
    }

    /// Is `host[:port]` marked `insecure = true`?
    pub fn is_insecure(&self, _host: &str) -> bool {
        todo!()
    }
}
