//! Credentials as containers-auth.json(5) finds them; `login` / `logout` write auth.json.
//!
//! What a caller may rely on:
//!
//! - Search order ([`AuthEnv::search_files`]): `--creds` wins outright; else `--authfile` alone,
//!   else `$REGISTRY_AUTH_FILE` alone, else `$XDG_RUNTIME_DIR/containers/auth.json` (root
//!   without `XDG_RUNTIME_DIR`: `/run/containers/0/auth.json`),
//!   `$HOME/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` (or
//!   `$HOME/.docker/config.json`), `$HOME/.dockercfg` (legacy: the whole file is the `auths`
//!   map). Missing files are skipped; the first file that yields a credential wins.
//! - In one file: `credHelpers[registry]` runs that helper; else the longest `auths` key that
//!   covers `registry/repository` on a component boundary (`host`, `host/ns`, `host/ns/repo`;
//!   URL-style keys such as `https://index.docker.io/v1/` count as their host) with `auth`
//!   (base64 `user:password`) or `identitytoken`; entries with neither fall through, finally
//!   to the global `credsStore` helper.
//! - Helpers follow the docker-credential-helpers protocol: `docker-credential-NAME get` from
//!   `$PATH`, the registry host on stdin, `{"ServerURL","Username","Secret"}` on stdout (at
//!   most 1 MiB); user `<token>` means an identity token; "credentials not found" is `None`.
//! - Secrets never appear in errors or `Debug` output: errors name the file, key or helper
//!   and the cause, never the file's or the helper's output. Files over 4 MiB are refused.
//! - `login` / `logout` rewrite the file atomically (temporary file in the same directory,
//!   fsync, rename; mode 0600, a missing parent directory is created 0700) and keep every
//!   other key of the JSON. Two concurrent logins to one file: the last rename wins.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

use super::files::{read_limited, ReadError};
use super::reference;

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

/// An auth file larger than this is refused rather than read.
pub const MAX_AUTH_FILE_SIZE: u64 = 4 << 20;
/// A credential helper printing more than this is cut off and treated as failed.
pub const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// How a file in the search path is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFileFormat {
    /// `{"auths": {...}, "credHelpers": {...}, "credsStore": "..."}` (auth.json, config.json).
    Json,
    /// `~/.dockercfg`: the top-level object is the `auths` map.
    LegacyDockercfg,
}

/// The environment that decides which files are read and where helpers are found. Explicit
/// so that tests need not change the process environment.
#[derive(Debug, Clone, Default)]
pub struct AuthEnv {
    /// `$REGISTRY_AUTH_FILE`.
    pub registry_auth_file: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$DOCKER_CONFIG`.
    pub docker_config: Option<PathBuf>,
    /// Effective user is root.
    pub is_root: bool,
    /// `$PATH`, searched for `docker-credential-NAME`.
    pub path: Option<OsString>,
}

impl AuthEnv {
    /// The process environment (empty variables count as unset).
    pub fn from_process() -> AuthEnv {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        AuthEnv {
            registry_auth_file: var("REGISTRY_AUTH_FILE").map(PathBuf::from),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
            is_root: rustix::process::geteuid().is_root(),
            path: var("PATH"),
        }
    }

    /// The files `lookup` reads, in order.
    pub fn search_files(&self, authfile: Option<&Path>) -> Vec<(PathBuf, AuthFileFormat)> {
        if let Some(file) = authfile.or(self.registry_auth_file.as_deref()) {
            return vec![(file.to_path_buf(), AuthFileFormat::Json)];
        }
        let mut files = Vec::new();
        if let Some(runtime) = self.runtime_auth_file() {
            files.push((runtime, AuthFileFormat::Json));
        }
        if let Some(home) = &self.home {
            files.push((
                home.join(".config/containers/auth.json"),
                AuthFileFormat::Json,
            ));
        }
        match (&self.docker_config, &self.home) {
            (Some(dir), _) => files.push((dir.join("config.json"), AuthFileFormat::Json)),
            (None, Some(home)) => {
                files.push((home.join(".docker/config.json"), AuthFileFormat::Json))
            }
            (None, None) => {}
        }
        if let Some(home) = &self.home {
            files.push((home.join(".dockercfg"), AuthFileFormat::LegacyDockercfg));
        }
        files
    }

    /// The file `login` and `logout` write.
    pub fn login_file(&self, authfile: Option<&Path>) -> Result<PathBuf, AuthFileError> {
        if let Some(file) = authfile.or(self.registry_auth_file.as_deref()) {
            return Ok(file.to_path_buf());
        }
        if let Some(runtime) = self.runtime_auth_file() {
            return Ok(runtime);
        }
        match &self.home {
            Some(home) => Ok(home.join(".config/containers/auth.json")),
            None => Err(AuthFileError::Invalid {
                path: PathBuf::from("auth.json"),
                why: "neither XDG_RUNTIME_DIR nor HOME is set to place it".into(),
            }),
        }
    }

    fn runtime_auth_file(&self) -> Option<PathBuf> {
        match &self.xdg_runtime_dir {
            Some(dir) => Some(dir.join("containers/auth.json")),
            None if self.is_root => Some(PathBuf::from("/run/containers/0/auth.json")),
            None => None,
        }
    }
}

/// The credential for `registry` (`host[:port]`) and `repository`: `--creds`, else the first
/// file in the search order holding a matching key (longest `host[/namespace]` wins),
/// consulting `credHelpers` / `credsStore`.
pub fn lookup(
    opts: &AuthOptions,
    registry: &str,
    repository: &str,
) -> Result<Option<Credential>, AuthFileError> {
    lookup_with(&AuthEnv::from_process(), opts, registry, repository)
}

/// [`lookup`] in an explicit environment.
pub fn lookup_with(
    env: &AuthEnv,
    opts: &AuthOptions,
    registry: &str,
    repository: &str,
) -> Result<Option<Credential>, AuthFileError> {
    if let Some(creds) = &opts.creds {
        return Ok(Some(creds.clone()));
    }
    let registry = reference::normalise_host(registry);
    let name = format!("{registry}/{repository}");
    for (path, format) in env.search_files(opts.authfile.as_deref()) {
        let Some(root) = read_json(&path)? else {
            continue;
        };
        if let Some(cred) = lookup_in_file(env, &path, format, &root, &registry, &name)? {
            return Ok(Some(cred));
        }
    }
    Ok(None)
}

/// One file's answer for `registry` / `name` (`registry/repository`).
fn lookup_in_file(
    env: &AuthEnv,
    path: &Path,
    format: AuthFileFormat,
    root: &Map<String, Value>,
    registry: &str,
    name: &str,
) -> Result<Option<Credential>, AuthFileError> {
    let invalid = |why: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let legacy = format == AuthFileFormat::LegacyDockercfg;
    if !legacy {
        if let Some(helpers) = object_field(root, "credHelpers").map_err(invalid)? {
            for (key, helper) in helpers {
                if normalise_key(key, false) != registry {
                    continue;
                }
                let helper = helper
                    .as_str()
                    .ok_or_else(|| invalid(format!("credHelpers[{key:?}] is not a string")))?;
                if let Some(cred) = run_helper(env, helper, registry)? {
                    return Ok(Some(cred));
                }
            }
        }
    }
    let auths = if legacy {
        Some(root)
    } else {
        object_field(root, "auths").map_err(invalid)?
    };
    if let Some(auths) = auths {
        // (matched length, written in normal form) → longest first, exact spelling on ties.
        let mut candidates: Vec<(usize, bool, &String, &Value)> = auths
            .iter()
            .filter_map(|(key, value)| {
                let k = normalise_key(key, legacy);
                let covers =
                    name == k || (name.starts_with(&k) && name[k.len()..].starts_with('/'));
                covers.then_some((k.len(), k == *key, key, value))
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
        for (_, _, key, value) in candidates {
            if let Some(cred) = entry_credential(key, value).map_err(invalid)? {
                return Ok(Some(cred));
            }
        }
    }
    if !legacy {
        match root.get("credsStore") {
            None | Some(Value::Null) => {}
            Some(Value::String(helper)) if helper.is_empty() => {}
            Some(Value::String(helper)) => return run_helper(env, helper, registry),
            Some(_) => return Err(invalid("credsStore is not a string".into())),
        }
    }
    Ok(None)
}

/// `root[field]` as an object; absent or null is `None`.
fn object_field<'a>(
    root: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match root.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(format!("{field} is not an object")),
    }
}

/// An `auths` entry's credential; `None` when it has neither `auth` nor `identitytoken`.
fn entry_credential(key: &str, value: &Value) -> Result<Option<Credential>, String> {
    let Value::Object(entry) = value else {
        return Err(format!("auths[{key:?}] is not an object"));
    };
    let field = |name: &str| -> Result<Option<&str>, String> {
        match entry.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("auths[{key:?}].{name} is not a string")),
        }
    };
    if let Some(token) = field("identitytoken")? {
        return Ok(Some(Credential::IdentityToken(token.to_string())));
    }
    let Some(auth) = field("auth")? else {
        return Ok(None);
    };
    let bad = || format!("auths[{key:?}].auth is not base64 of USER:PASSWORD");
    let decoded = BASE64_LENIENT.decode(auth.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    }))
}

/// Standard alphabet, padding optional (docker writes it; not every tool does).
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `auths` key → `host[:port][/path]`: `http(s)://` URLs keep only their host (docker's
/// `https://index.docker.io/v1/`); legacy `.dockercfg` keys too; Docker Hub aliases fold into
/// `docker.io`.
pub fn normalise_key(key: &str, legacy: bool) -> String {
    let stripped = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let (rest, host_only) = match stripped {
        Some(rest) => (rest, true),
        None => (key, legacy),
    };
    let rest = rest.trim_end_matches('/');
    match rest.split_once('/') {
        Some((host, _)) if host_only => reference::normalise_host(host),
        Some((host, path)) => format!("{}/{path}", reference::normalise_host(host)),
        None => reference::normalise_host(rest),
    }
}

/// `docker-credential-NAME get` for `server`.
fn run_helper(
    env: &AuthEnv,
    helper: &str,
    server: &str,
) -> Result<Option<Credential>, AuthFileError> {
    use std::process::{Command, Stdio};
    let fail = |why: String| AuthFileError::Helper {
        helper: helper.to_string(),
        why,
    };
    if helper.is_empty() || helper.contains('/') || helper.contains('\0') {
        return Err(fail("not a valid helper name".into()));
    }
    let program = format!("docker-credential-{helper}");
    let exe = env
        .path
        .as_ref()
        .and_then(|path| {
            std::env::split_paths(path)
                .map(|dir| dir.join(&program))
                .find(|p| is_executable(p))
        })
        .ok_or_else(|| fail("not found on $PATH".into()))?;
    let spawn = || {
        Command::new(&exe)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // ETXTBSY: a just-written helper can still be open for writing in a child forked by
    // another thread that has not reached exec yet; that passes within milliseconds.
    let mut tries = 0;
    let mut child = loop {
        match spawn() {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && tries < 5 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => {
                break other.map_err(|e| fail(format!("cannot run {}: {e}", exe.display())))?
            }
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE; its exit status tells the rest.
        let _ = stdin.write_all(server.as_bytes());
    }
    let stderr = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let _ = (&mut stderr).take(64 << 10).read_to_end(&mut head);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            head
        })
    });
    let mut out = Vec::new();
    let read = match child.stdout.take() {
        Some(stdout) => stdout
            .take(MAX_HELPER_OUTPUT + 1)
            .read_to_end(&mut out)
            .map(|_| ()),
        None => Ok(()),
    };
    if read.is_err() || out.len() as u64 > MAX_HELPER_OUTPUT {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    let err_head = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    read.map_err(|e| fail(format!("reading its output: {e}")))?;
    if out.len() as u64 > MAX_HELPER_OUTPUT {
        return Err(fail(format!(
            "output larger than {} MiB",
            MAX_HELPER_OUTPUT >> 20
        )));
    }
    if !status.success() {
        let not_found = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .to_ascii_lowercase()
                .contains("credentials not found")
        };
        if not_found(&out) || not_found(&err_head) {
            return Ok(None);
        }
        return Err(fail(format!("`get` failed ({status})")));
    }
    let reply: Value =
        serde_json::from_slice(&out).map_err(|_| fail("`get` printed no JSON object".into()))?;
    let text = |field: &str| {
        reply
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if !reply.is_object() {
        return Err(fail("`get` printed no JSON object".into()));
    }
    let (username, secret) = (text("Username"), text("Secret"));
    Ok(match (username.as_str(), secret.is_empty()) {
        (_, true) => None,
        ("<token>", false) => Some(Credential::IdentityToken(secret)),
        (_, false) => Some(Credential::Basic {
            username,
            password: secret,
        }),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The file's top-level object; `None` when it does not exist. An empty file is `{}`.
fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, AuthFileError> {
    let io = |source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let bytes = read_limited(file, MAX_AUTH_FILE_SIZE).map_err(|e| match e {
        ReadError::Io(e) => io(e),
        ReadError::TooLarge(why) => invalid(why),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    // serde_json's messages can quote the input; only its position is reported.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(invalid("not a JSON object".into())),
        Err(e) if e.is_eof() => Err(invalid("truncated JSON".into())),
        Err(e) => Err(invalid(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Store `cred` for `key` (`host[:port][/namespace]`) in the auth file that `login` writes
/// (`--authfile`, `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`);
/// atomic, mode 0600. Returns the file written.
pub fn login(
    authfile: Option<&Path>,
    key: &str,
    cred: &Credential,
) -> Result<PathBuf, AuthFileError> {
    login_with(&AuthEnv::from_process(), authfile, key, cred)
}

/// [`login`] in an explicit environment.
pub fn login_with(
    env: &AuthEnv,
    authfile: Option<&Path>,
    key: &str,
    cred: &Credential,
) -> Result<PathBuf, AuthFileError> {
    let path = env.login_file(authfile)?;
    let invalid = |why: String| AuthFileError::Invalid {
        path: path.clone(),
        why,
    };
    check_key(key).map_err(|why| invalid(format!("login key {key:?}: {why}")))?;
    let mut root = read_json(&path)?.unwrap_or_default();
    let auths = root
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(invalid("auths is not an object".into()));
    };
    let entry = auths
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(entry) = entry {
        entry.remove("auth");
        entry.remove("identitytoken");
        match cred {
            Credential::Basic { username, password } => {
                let auth = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                entry.insert("auth".into(), Value::String(auth));
            }
            Credential::IdentityToken(token) => {
                entry.insert("identitytoken".into(), Value::String(token.clone()));
            }
        }
    }
    write_atomic(&path, &root)?;
    Ok(path)
}

/// Remove `key` from that auth file. Returns whether it was there.
pub fn logout(authfile: Option<&Path>, key: &str) -> Result<bool, AuthFileError> {
    logout_with(&AuthEnv::from_process(), authfile, key)
}

/// [`logout`] in an explicit environment. Keys spelled differently for the same place
/// (`https://index.docker.io/v1/` for `docker.io`) go too.
pub fn logout_with(
    env: &AuthEnv,
    authfile: Option<&Path>,
    key: &str,
) -> Result<bool, AuthFileError> {
    let path = env.login_file(authfile)?;
    let Some(mut root) = read_json(&path)? else {
        return Ok(false);
    };
    let target = normalise_key(key, false);
    let removed = match root.get_mut("auths") {
        Some(Value::Object(auths)) => {
            let before = auths.len();
            auths.retain(|k, _| k != key && normalise_key(k, false) != target);
            auths.len() != before
        }
        None | Some(Value::Null) => false,
        Some(_) => {
            return Err(AuthFileError::Invalid {
                path,
                why: "auths is not an object".into(),
            })
        }
    };
    if removed {
        write_atomic(&path, &root)?;
    }
    Ok(removed)
}

/// `host[:port][/namespace...]`.
fn check_key(key: &str) -> Result<(), &'static str> {
    let (host, path) = match key.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (key, None),
    };
    reference::check_host(host)?;
    for component in path.into_iter().flat_map(|p| p.split('/')) {
        reference::check_component(component)?;
    }
    Ok(())
}

/// Replace `path` with `root`: temporary file beside it, mode 0600, fsync, rename, fsync dir.
fn write_atomic(path: &Path, root: &Map<String, Value>) -> Result<(), AuthFileError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AuthFileError::Io { path: p, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".auth.json.")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(tmp.path()))?;
    let mut text =
        serde_json::to_vec_pretty(root).map_err(|e| io(path)(std::io::Error::other(e)))?;
    text.push(b'\n');
    tmp.write_all(&text).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// `--creds USER[:PASS]` (an empty password is allowed).
pub fn parse_creds(s: &str) -> Credential {
    let (username, password) = s.split_once(':').unwrap_or((s, ""));
    Credential::Basic {
        username: username.to_string(),
        password: password.to_string(),
    }
}

#[cfg(test)]
mod tests;
