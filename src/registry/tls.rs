//! TLS settings per registry: the system trust store plus certs.d CAs and client certificates.
//!
//! What a caller may rely on, following containers-certs.d(5):
//!
//! - Directories for `host[:port]` ([`cert_dirs`]): only `cert_dir` when given; else, for a
//!   non-root user, `$HOME/.config/containers/certs.d/HOST` first, then
//!   `/etc/containers/certs.d/HOST` and `/etc/docker/certs.d/HOST`. Missing ones are skipped.
//!   Unlike containers/image, which uses only the first directory that exists, every one is
//!   read.
//! - In each directory, in lexical order ([`collect`]): every `*.crt` is a PEM file of one or
//!   more CA certificates, trusted in addition to the system store; `NAME.cert` (PEM chain)
//!   with `NAME.key` (PEM key: PKCS#8, PKCS#1 or SEC1) is a client certificate, the first
//!   pair (directory order, then name) being the one presented. A `.cert` without its `.key`
//!   or the reverse, a `.crt` without a certificate or any file that is not PEM is an error
//!   naming the file. Files over 1 MiB are refused. Other files are ignored.
//! - Roots ([`config_for`]): the system store (loaded once per process; unreadable entries in
//!   it are ignored) plus the extra CAs; when both are empty, the bundled WebPKI roots.
//!   `verify = false` turns certificate verification off entirely (`insecure = true`).
//! - Errors never include key material.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::files::{read_limited, ReadError};
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

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

/// System-wide certs.d directories, in reading order (after the user's).
pub const SYSTEM_CERTS_DIRS: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];
/// Beneath `$HOME`: the user's certs.d directory (non-root only).
pub const USER_CERTS_DIR: &str = ".config/containers/certs.d";
/// A certs.d file larger than this is refused rather than read.
pub const MAX_CERT_FILE_SIZE: u64 = 1 << 20;

/// What a list of certs.d directories holds.
#[derive(Debug, Clone, Default)]
pub struct CertsDirContents {
    /// Extra CA certificates from every `*.crt`, in reading order.
    pub cas: Vec<Certificate<'static>>,
    /// The `*.crt` files they came from.
    pub ca_files: Vec<PathBuf>,
    /// The client certificate chain and key of the first `NAME.cert` / `NAME.key` pair.
    pub client: Option<ClientCert>,
    /// That pair's files.
    pub client_files: Option<(PathBuf, PathBuf)>,
}

/// The ureq TLS configuration for `host[:port]`: system roots plus every `*.crt` of its
/// certs.d directories (or only `cert_dir` when given), a `*.cert`/`*.key` pair as client
/// certificate, verification off when `verify` is false.
pub fn config_for(
    host: &str,
    cert_dir: Option<&Path>,
    verify: bool,
) -> Result<TlsConfig, TlsError> {
    let dirs = match cert_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from);
            cert_dirs(host, home.as_deref(), rustix::process::geteuid().is_root())?
        }
    };
    Ok(build_config(system_roots(), collect(&dirs)?, verify))
}

/// The certs.d directories for `host[:port]`, in reading order.
pub fn cert_dirs(host: &str, home: Option<&Path>, is_root: bool) -> Result<Vec<PathBuf>, TlsError> {
    let bad = host.is_empty() || host == "." || host == ".." || host.contains(['/', '\0']);
    if bad {
        return Err(TlsError::Invalid {
            path: PathBuf::from(SYSTEM_CERTS_DIRS[0]),
            why: format!("registry host {host:?} cannot name a certs.d directory"),
        });
    }
    let mut dirs = Vec::new();
    if let Some(home) = home.filter(|_| !is_root) {
        dirs.push(home.join(USER_CERTS_DIR).join(host));
    }
    dirs.extend(SYSTEM_CERTS_DIRS.iter().map(|d| Path::new(d).join(host)));
    Ok(dirs)
}

/// The configuration from `system` roots and certs.d `contents`.
pub fn build_config(
    system: &[Certificate<'static>],
    contents: CertsDirContents,
    verify: bool,
) -> TlsConfig {
    let mut roots = system.to_vec();
    roots.extend(contents.cas);
    let roots = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::from(roots)
    };
    TlsConfig::builder()
        .root_certs(roots)
        .client_cert(contents.client)
        .disable_verification(!verify)
        .build()
}

/// The system trust store, read once; entries that fail to load are left out.
pub fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// The CAs and the first client certificate pair of `dirs` (missing directories are empty).
pub fn collect(dirs: &[PathBuf]) -> Result<CertsDirContents, TlsError> {
    let mut out = CertsDirContents::default();
    for dir in dirs {
        for name in list(dir)? {
            let path = dir.join(&name);
            if name.ends_with(".crt") {
                let certs = certificates(&path)?;
                out.cas.extend(certs);
                out.ca_files.push(path);
            } else if let Some(stem) = name.strip_suffix(".cert") {
                let key_path = dir.join(format!("{stem}.key"));
                if !key_path.is_file() {
                    let why = format!("client certificate without its key {stem}.key");
                    return Err(TlsError::Invalid { path, why });
                }
                // Every pair is read, so a broken one is reported even when not presented.
                let chain = certificates(&path)?;
                let key = private_key(&key_path)?;
                if out.client.is_none() {
                    out.client = Some(ClientCert::new_with_certs(&chain, key));
                    out.client_files = Some((path, key_path));
                }
            } else if let Some(stem) = name.strip_suffix(".key") {
                if !dir.join(format!("{stem}.cert")).is_file() {
                    let why = format!("client key without its certificate {stem}.cert");
                    return Err(TlsError::Invalid { path, why });
                }
            }
        }
    }
    Ok(out)
}

/// Names of the regular files (after symlinks) in `dir`, sorted; none when it is missing.
fn list(dir: &Path) -> Result<Vec<String>, TlsError> {
    let io = |source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(io(e)),
    };
    let mut names = Vec::new();
    for item in read {
        let item = item.map_err(io)?;
        let Ok(name) = item.file_name().into_string() else {
            continue; // Not UTF-8: cannot end in .crt/.cert/.key as we spell them.
        };
        if std::fs::metadata(item.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    read_limited(file, MAX_CERT_FILE_SIZE).map_err(|e| match e {
        ReadError::Io(e) => io(e),
        ReadError::TooLarge(why) => TlsError::Invalid {
            path: path.to_path_buf(),
            why,
        },
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>, TlsError> {
    let invalid = |why: &str| TlsError::Invalid {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let bytes = read_bounded(path)?;
    let mut certs = Vec::new();
    for item in parse_pem(&bytes) {
        match item.map_err(|_| invalid("not valid PEM"))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it"));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKey<'static>, TlsError> {
    let invalid = |why: &str| TlsError::Invalid {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let bytes = read_bounded(path)?;
    for item in parse_pem(&bytes) {
        // The PEM parser's messages can quote the input, which is key material here.
        if let PemItem::PrivateKey(key) = item.map_err(|_| invalid("not valid PEM"))? {
            return Ok(key);
        }
    }
    Err(invalid(
        "no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
    ))
}

#[cfg(test)]
mod tests;
