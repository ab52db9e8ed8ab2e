//! registries.conf (v2 TOML): prefix/location rewriting, insecure, blocked, mirrors.
//!
//! What a caller may rely on, as containers-registries.conf(5) describes it:
//!
//! - Files: `$CONTAINERS_REGISTRIES_CONF` alone when set. Otherwise, for a non-root user whose
//!   `$HOME/.config/containers/registries.conf` exists, that file plus its `.d` directory;
//!   else `/etc/containers/registries.conf`, then `/etc/containers/registries.conf.d/*.conf`
//!   (and, for non-root users, `$HOME/.config/containers/registries.conf.d/*.conf`), each
//!   directory in lexical order. A later file's `[[registry]]` with an already seen prefix
//!   replaces the earlier one in place; new prefixes are appended. Missing files and
//!   directories are fine; a file that is not valid TOML, or has a key of the wrong type, is
//!   an error naming the file and the line.
//! - Matching: the entry whose prefix matches the reference's `registry/repository` longest
//!   wins. A prefix matches only at a component boundary (`example.com/foo` matches
//!   `example.com/foo` and `example.com/foo/bar`, not `example.com/foobar`; `example.com`
//!   does not match `example.com:5000`). `*.example.com` matches any host under
//!   `example.com` (any port), never `example.com` itself; on equal length an exact prefix
//!   beats a wildcard.
//! - [`RegistriesConf::endpoints`]: a blocked match is an error naming the file; otherwise
//!   the eligible mirrors (`mirror-by-digest-only`, `pull-from-mirror`) in file order, then the
//!   primary location. The name tried is `location` + what follows the prefix, normalised as
//!   a reference (so `docker.io/x` becomes `docker.io/library/x`).
//! - The v1 format's `[registries.insecure]` / `[registries.block]` host lists become entries
//!   with that host as prefix; `[registries.search]`, `unqualified-search-registries`,
//!   `short-name-mode`, `[aliases]` and any unknown key are ignored (we never resolve short
//!   names against search registries).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::reference::{self, Reference};

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

/// The system-wide file and drop-in directory.
pub const SYSTEM_CONF: &str = "/etc/containers/registries.conf";
pub const SYSTEM_CONF_D: &str = "/etc/containers/registries.conf.d";
/// Beneath `$HOME`: the per-user file and drop-in directory.
pub const USER_CONF: &str = ".config/containers/registries.conf";
pub const USER_CONF_D: &str = ".config/containers/registries.conf.d";
/// A registries.conf larger than this is refused rather than read.
pub const MAX_CONF_SIZE: u64 = 4 << 20;

/// When a mirror may serve a pull (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFromMirror {
    /// Tag and digest pulls (the default).
    All,
    /// Only pulls by digest.
    DigestOnly,
    /// Only pulls by tag.
    TagOnly,
}

/// A `[[registry.mirror]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from_mirror: PullFromMirror,
}

/// A `[[registry]]` table after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// What references it applies to: `host[/path]` or `*.domain`.
    pub prefix: String,
    /// Where to fetch from: `host[/path]`; empty only for a wildcard prefix (use the
    /// reference's own name).
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<Mirror>,
    /// The file that (last) defined it.
    pub source: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct RegistriesConf {
    entries: Vec<RegistryEntry>,
}

/// The environment that decides which files are read (explicit, for tests).
#[derive(Debug, Clone, Default)]
pub struct ConfEnv {
    /// `$CONTAINERS_REGISTRIES_CONF`.
    pub override_file: Option<PathBuf>,
    /// `$HOME`, consulted only when `!is_root`.
    pub home: Option<PathBuf>,
    pub is_root: bool,
    /// Where the system file and drop-in directory are (`/etc/containers/…`).
    pub system_file: PathBuf,
    pub system_dir: PathBuf,
}

impl ConfEnv {
    /// The process environment.
    pub fn from_process() -> ConfEnv {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ConfEnv {
            override_file: var("CONTAINERS_REGISTRIES_CONF"),
            home: var("HOME"),
            is_root: rustix::process::geteuid().is_root(),
            system_file: PathBuf::from(SYSTEM_CONF),
            system_dir: PathBuf::from(SYSTEM_CONF_D),
        }
    }

    /// The main file (if any) and the drop-in directories, in reading order.
    pub fn sources(&self) -> (Option<PathBuf>, Vec<PathBuf>) {
        if let Some(file) = &self.override_file {
            return (Some(file.clone()), Vec::new());
        }
        let user = self.home.as_ref().filter(|_| !self.is_root);
        if let Some(home) = user {
            let user_file = home.join(USER_CONF);
            if user_file.exists() {
                return (Some(user_file), vec![home.join(USER_CONF_D)]);
            }
        }
        let mut dirs = vec![self.system_dir.clone()];
        dirs.extend(user.map(|home| home.join(USER_CONF_D)));
        (Some(self.system_file.clone()), dirs)
    }
}

impl RegistriesConf {
    /// `/etc/containers/registries.conf` and `registries.conf.d/*.conf`; missing files are fine.
    pub fn load_default() -> Result<Self, ConfError> {
        Self::load_env(&ConfEnv::from_process())
    }

    /// The files `env` selects (see the module documentation).
    pub fn load_env(env: &ConfEnv) -> Result<Self, ConfError> {
        let (file, dirs) = env.sources();
        let mut conf = RegistriesConf::default();
        if let Some(file) = file {
            conf.merge_file(&file)?;
        }
        for dir in dirs {
            for file in dropins(&dir)? {
                conf.merge_file(&file)?;
            }
        }
        Ok(conf)
    }

    /// One file given by `--registries-conf` (its `.d` directory is not read).
    pub fn load_file(path: &Path) -> Result<Self, ConfError> {
        let mut conf = RegistriesConf::default();
        conf.merge_file(path)?;
        Ok(conf)
    }

    /// Parse registries.conf text; `path` only names it in errors and `Blocked`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfError> {
        let mut conf = RegistriesConf::default();
        for entry in parse_entries(text, path)? {
            conf.merge_entry(entry);
        }
        Ok(conf)
    }

    /// The entries in matching order of definition (for diagnostics).
    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }

    /// Where to fetch `r` from, in the order to try: matching mirrors, then the primary.
    pub fn endpoints(&self, r: &Reference) -> Result<Vec<Endpoint>, ConfError> {
        let name = r.name();
        let Some((entry, matched)) = self.best_match(&r.registry, &name) else {
            return Ok(vec![Endpoint {
                host: Reference::endpoint_host(&r.registry).to_string(),
                repository: r.repository.clone(),
                insecure: false,
                mirror: false,
            }]);
        };
        if entry.blocked {
            return Err(ConfError::Blocked {
                registry: name,
                path: entry.source.clone(),
            });
        }
        let remainder = &name[matched..];
        let by_digest = r.digest.is_some();
        let mut out = Vec::new();
        for m in &entry.mirrors {
            let eligible = if entry.mirror_by_digest_only {
                by_digest
            } else {
                match m.pull_from_mirror {
                    PullFromMirror::All => true,
                    PullFromMirror::DigestOnly => by_digest,
                    PullFromMirror::TagOnly => !by_digest,
                }
            };
            if eligible {
                out.push(rewrite(
                    entry,
                    &m.location,
                    remainder,
                    &name,
                    m.insecure,
                    true,
                )?);
            }
        }
        out.push(rewrite(
            entry,
            &entry.location,
            remainder,
            &name,
            entry.insecure,
            false,
        )?);
        Ok(out)
    }

    /// Is `host[:port]` marked `insecure = true`?
    pub fn is_insecure(&self, host: &str) -> bool {
        let host = reference::normalise_host(host);
        let location_host =
            |loc: &str| reference::normalise_host(loc.split('/').next().unwrap_or(""));
        self.entries.iter().any(|e| {
            let primary = if e.location.is_empty() {
                wildcard_matches(&e.prefix, &host)
            } else {
                location_host(&e.location) == host
            };
            (e.insecure && primary)
                || e.mirrors
                    .iter()
                    .any(|m| m.insecure && location_host(&m.location) == host)
        })
    }

    /// The entry with the longest prefix matching `name`, and the length matched.
    fn best_match(&self, registry: &str, name: &str) -> Option<(&RegistryEntry, usize)> {
        let mut best: Option<(&RegistryEntry, usize, bool)> = None;
        for e in &self.entries {
            let (len, wildcard) = if e.prefix.starts_with("*.") {
                if !wildcard_matches(&e.prefix, registry) {
                    continue;
                }
                (registry.len(), true)
            } else if name == e.prefix
                || (name.starts_with(&e.prefix) && name.as_bytes()[e.prefix.len()] == b'/')
            {
                (e.prefix.len(), false)
            } else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, blen, bwild)) => len > blen || (len == blen && bwild && !wildcard),
            };
            if better {
                best = Some((e, len, wildcard));
            }
        }
        best.map(|(e, len, _)| (e, len))
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), ConfError> {
        let Some(text) = read_bounded(path)? else {
            return Ok(());
        };
        for entry in parse_entries(&text, path)? {
            self.merge_entry(entry);
        }
        Ok(())
    }

    fn merge_entry(&mut self, entry: RegistryEntry) {
        match self.entries.iter_mut().find(|e| e.prefix == entry.prefix) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }
}

/// Does wildcard prefix `*.domain` match `host[:port]`'s host name?
fn wildcard_matches(prefix: &str, host: &str) -> bool {
    let Some(suffix) = prefix.strip_prefix('*') else {
        return false;
    };
    let name = if host.starts_with('[') {
        return false;
    } else {
        host.split(':').next().unwrap_or(host)
    };
    name.len() > suffix.len() && name.ends_with(suffix)
}

/// The endpoint for `location` + `remainder` (the reference's name after the prefix).
fn rewrite(
    entry: &RegistryEntry,
    location: &str,
    remainder: &str,
    name: &str,
    insecure: bool,
    mirror: bool,
) -> Result<Endpoint, ConfError> {
    let rewritten = if location.is_empty() {
        name.to_string()
    } else {
        format!("{location}{remainder}")
    };
    let invalid = |why: &str| ConfError::Invalid {
        path: entry.source.clone(),
        why: format!(
            "prefix {:?}: {name} rewritten to {rewritten:?}: {why}",
            entry.prefix
        ),
    };
    // The location's first component is a host whatever it looks like; the rest is normalised
    // as a reference's would be (docker.io's `library/`, the length limit).
    let (host, path) = rewritten
        .split_once('/')
        .ok_or_else(|| invalid("no repository left"))?;
    let host = reference::normalise_host(host);
    for component in path.split('/') {
        reference::check_component(component).map_err(invalid)?;
    }
    let repository = if host == reference::DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if host.len() + 1 + repository.len() > reference::NAME_TOTAL_LENGTH_MAX {
        return Err(invalid("name longer than 255 characters"));
    }
    Ok(Endpoint {
        host: Reference::endpoint_host(&host).to_string(),
        repository,
        insecure,
        mirror,
    })
}

/// `DIR/*.conf` in lexical order; a missing directory has none.
fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for item in read {
        let item = item.map_err(|source| ConfError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = item.path();
        if path.extension().is_some_and(|x| x == "conf") && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file's text, `None` when it does not exist.
fn read_bounded(path: &Path) -> Result<Option<String>, ConfError> {
    use super::files::{read_limited, ReadError};
    let io = |source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let bytes = read_limited(file, MAX_CONF_SIZE).map_err(|e| match e {
        ReadError::Io(e) => io(e),
        ReadError::TooLarge(why) => ConfError::Invalid {
            path: path.to_path_buf(),
            why,
        },
    })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ConfError::Invalid {
            path: path.to_path_buf(),
            why: "not UTF-8".into(),
        })
}

// The TOML as written; unknown keys are ignored by serde's default.

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct FileToml {
    #[serde(default)]
    registry: Vec<RegistryToml>,
    #[serde(default)]
    registries: V1Toml,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RegistryToml {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorToml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct MirrorToml {
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(Deserialize, Default)]
struct V1Toml {
    #[serde(default)]
    insecure: V1List,
    #[serde(default)]
    block: V1List,
}

#[derive(Deserialize, Default)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// The entries of one file, defaults applied and values checked.
fn parse_entries(text: &str, path: &Path) -> Result<Vec<RegistryEntry>, ConfError> {
    let invalid = |why: String| ConfError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let file: FileToml = toml::from_str(text).map_err(|e| invalid(toml_error(text, &e)))?;
    let mut out: Vec<RegistryEntry> = Vec::new();
    for (i, reg) in file.registry.into_iter().enumerate() {
        let at = |why: &str| invalid(format!("[[registry]] #{}: {why}", i + 1));
        let location = strip_location(reg.location.as_deref().unwrap_or(""));
        let prefix = match reg.prefix.as_deref() {
            Some(p) if !p.is_empty() => strip_location(p),
            _ if location.is_empty() => return Err(at("neither prefix nor location is set")),
            _ => location.clone(),
        };
        check_prefix(&prefix).map_err(|why| at(&format!("prefix {prefix:?}: {why}")))?;
        let location = if location.is_empty() && !prefix.starts_with("*.") {
            prefix.clone()
        } else {
            location
        };
        if !location.is_empty() {
            check_location(&location)
                .map_err(|why| at(&format!("location {location:?}: {why}")))?;
        }
        let mut mirrors = Vec::new();
        for m in reg.mirror {
            let loc = strip_location(m.location.as_deref().unwrap_or(""));
            if loc.is_empty() {
                return Err(at("a [[registry.mirror]] has no location"));
            }
            check_location(&loc).map_err(|why| at(&format!("mirror location {loc:?}: {why}")))?;
            let pull_from_mirror = match m.pull_from_mirror.as_deref() {
                None | Some("") | Some("all") => PullFromMirror::All,
                Some("digest-only") => PullFromMirror::DigestOnly,
                Some("tag-only") => PullFromMirror::TagOnly,
                Some(other) => {
                    let why = format!(
                        "pull-from-mirror {other:?} is not \"all\", \"digest-only\" or \"tag-only\""
                    );
                    return Err(at(&why));
                }
            };
            mirrors.push(Mirror {
                location: loc,
                insecure: m.insecure,
                pull_from_mirror,
            });
        }
        let entry = RegistryEntry {
            prefix,
            location,
            insecure: reg.insecure,
            blocked: reg.blocked,
            mirror_by_digest_only: reg.mirror_by_digest_only,
            mirrors,
            source: path.to_path_buf(),
        };
        match out.iter_mut().find(|e| e.prefix == entry.prefix) {
            Some(old) => *old = entry,
            None => out.push(entry),
        }
    }
    // v1: a host in `[registries.insecure]` / `[registries.block]` is an entry for that host.
    let v1 = [
        (file.registries.insecure.registries, true),
        (file.registries.block.registries, false),
    ];
    for (hosts, insecure_list) in v1 {
        for host in hosts {
            let host = strip_location(&host);
            check_prefix(&host).map_err(|why| invalid(format!("[registries] {host:?}: {why}")))?;
            let index = match out.iter().position(|e| e.prefix == host) {
                Some(index) => index,
                None => {
                    out.push(RegistryEntry {
                        prefix: host.clone(),
                        location: if host.starts_with("*.") {
                            String::new()
                        } else {
                            host.clone()
                        },
                        insecure: false,
                        blocked: false,
                        mirror_by_digest_only: false,
                        mirrors: Vec::new(),
                        source: path.to_path_buf(),
                    });
                    out.len() - 1
                }
            };
            let entry = &mut out[index];
            if insecure_list {
                entry.insecure = true;
            } else {
                entry.blocked = true;
            }
        }
    }
    Ok(out)
}

/// Without a `http(s)://` scheme or trailing `/`, host part normalised.
fn strip_location(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let s = s.trim_end_matches('/');
    match s.split_once('/') {
        Some((host, path)) => format!("{}/{path}", reference::normalise_host(host)),
        None => reference::normalise_host(s),
    }
}

/// `*.domain`, or a `host[/path]` location.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    match prefix.strip_prefix("*.") {
        Some(domain) if domain.contains('/') || domain.contains('*') => {
            Err("a wildcard prefix is *.domain with no path")
        }
        Some(domain) => reference::check_host(domain),
        None => check_location(prefix),
    }
}

fn check_location(location: &str) -> Result<(), &'static str> {
    if location.contains('*') {
        return Err("a wildcard is only allowed as *.domain at the start of a prefix");
    }
    let (host, path) = match location.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (location, None),
    };
    reference::check_host(host)?;
    for component in path.into_iter().flat_map(|p| p.split('/')) {
        reference::check_component(component)?;
    }
    Ok(())
}

/// toml's message on one line, with the line and column its span starts at.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests;
