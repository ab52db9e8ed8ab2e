//! Image references of the `docker://` transport, normalised as the containers tools do.
//! (Stub: filled in by the reference/conf/auth-file/TLS work.)

use std::fmt;

/// A fully normalised reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, lower-case host; `docker.io` when none was given (`index.docker.io` too).
    pub registry: String,
    /// Path components joined by `/`; `library/NAME` for one-component docker.io names.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `algorithm:hex` when pinned by digest.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: {why}")]
    Invalid { input: String, why: &'static str },
}

impl Reference {
    /// Parse what follows `docker://` (the prefix itself is also accepted and stripped).
    pub fn parse(_s: &str) -> Result<Reference, ReferenceError> {
        todo!()
    }

    /// What the manifest endpoint is asked for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        todo!()
    }

    /// The host to connect to for `registry` (`docker.io` → `registry-1.docker.io`).
    pub fn endpoint_host(registry: &str) -> &str {
        let _ = registry;
        todo!()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}
