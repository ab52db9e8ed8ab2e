//! Image references of the `docker://` transport, normalised as the containers tools do.
//!
//! [`Reference::parse`] accepts `[docker://]NAME[:TAG][@DIGEST]` and returns the one canonical
//! form the rest of the registry code relies on:
//!
//! - `registry` is always present and lower-case: the first path component when it looks like
//!   a host (contains `.` or `:`, or is `localhost`; IPv4, `[v6]:port` and `name:port` all
//!   qualify), else `docker.io`. `index.docker.io` is folded into `docker.io`.
//! - `repository` is the rest, checked against the distribution grammar (lower-case
//!   `[a-z0-9]+` runs joined by `.`, `_`, `__` or `-`s; components joined by `/`); a
//!   one-component docker.io name becomes `library/NAME`. `registry/repository` is at most
//!   255 bytes.
//! - `tag` matches `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`; `digest` is `sha256:` + 64 or
//!   `sha512:` + 128 lower-case hex digits. Both may be given (the digest is what is fetched,
//!   the tag is kept for display); `latest` is filled in only when neither is.
//!
//! Bad input is an error with a short reason, never a panic. Parsing is pure: no I/O, no
//! configuration (registries.conf rewriting happens later, in [`super::conf`]).

use std::fmt;

/// The registry used for names without a host part.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually answers.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Longest `registry/repository` accepted (distribution's `NameTotalLengthMax`).
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest tag accepted.
pub const TAG_LENGTH_MAX: usize = 128;

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
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |why: &'static str| ReferenceError::Invalid {
            input: s.to_string(),
            why,
        };
        // `docker://X`, or `//X` when a caller already split off the `docker:` transport.
        let body = s.strip_prefix("docker:").unwrap_or(s);
        let body = match body.strip_prefix("//") {
            Some(body) => body,
            None => s,
        };
        if body.is_empty() {
            return Err(invalid("empty reference"));
        }
        if body
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(invalid("contains whitespace or control characters"));
        }

        // NAME[:TAG][@DIGEST]: the digest follows the first `@` (no other part may hold one).
        let (rest, digest) = match body.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(invalid)?;
                (rest, Some(digest.to_string()))
            }
            None => (body, None),
        };
        // A `:` after the last `/` starts the tag; one before it belongs to a host's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (name, tag) = (&rest[..last_slash + i], &rest[last_slash + i + 1..]);
                check_tag(tag).map_err(invalid)?;
                (name, Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("empty repository name"));
        }

        let (registry, path) = split_host(name);
        let registry = match registry {
            Some(host) => {
                check_host(host).map_err(invalid)?;
                normalise_host(host)
            }
            None => DOCKER_HUB.to_string(),
        };
        for component in path.split('/') {
            check_component(component).map_err(invalid)?;
        }
        if registry == DOCKER_HUB && !path.contains('/') && is_hex_id(path) && digest.is_none() {
            // `docker pull <64 hex>` means an image ID, which a registry cannot serve.
            return Err(invalid(
                "a 64-hex-digit name is an image ID, not a repository",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid("name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest endpoint is asked for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest,
            (None, Some(tag)) => tag,
            // Only a hand-built Reference can have neither; `latest` is what parse would give.
            (None, None) => "latest",
        }
    }

    /// The host to connect to for `registry` (`docker.io` → `registry-1.docker.io`).
    pub fn endpoint_host(registry: &str) -> &str {
        if registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            registry
        }
    }

    /// `registry/repository`, the name registries.conf prefixes and auth keys match against.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `(Some(host), path)` when the first component of `name` is a registry host.
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), path)
        }
        _ => (None, name),
    }
}

/// Lower-cased, with Docker Hub's historical aliases folded into `docker.io`.
pub(crate) fn normalise_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => host,
    }
}

/// `host[:port]`, where host is DNS labels (IPv4 fits), `localhost`, or `[IPv6]`.
pub(crate) fn check_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("unterminated [ in the registry host")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address in the registry host");
        }
        match after {
            "" => ("", None),
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err("junk after ] in the registry host"),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if !host.starts_with('[') {
        if name.is_empty() {
            return Err("empty registry host");
        }
        for label in name.split('.') {
            let bytes = label.as_bytes();
            let ok = !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-';
            if !ok {
                return Err("invalid registry host name");
            }
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err("invalid registry port");
        }
    }
    Ok(())
}

/// One repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub(crate) fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component in the repository name");
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.iter().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lower-case");
    }
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return Err("repository name component must start and end with [a-z0-9]");
        }
        if i == bytes.len() {
            return Ok(());
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let sep_ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !sep_ok {
            return Err("invalid character or separator in the repository name");
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), &'static str> {
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => return Err("empty tag"),
        Some(b) if !(b.is_ascii_alphanumeric() || *b == b'_') => {
            return Err("tag must start with [A-Za-z0-9_]")
        }
        Some(_) => {}
    }
    if bytes.len() > TAG_LENGTH_MAX {
        return Err("tag longer than 128 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("invalid character in the tag");
    }
    Ok(())
}

/// `sha256:` + 64 or `sha512:` + 128 lower-case hex digits.
pub(crate) fn check_digest(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or("digest has no algorithm: part")?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm (sha256 and sha512 are)"),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("digest is not the right number of lower-case hex digits");
    }
    Ok(())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests;
