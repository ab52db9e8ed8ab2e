//! The [`Digest`] value type: an algorithm plus its digest bytes.

use std::fmt;
use std::str::FromStr;

use super::{Algorithm, MAX_DIGEST_SIZE};

/// An fs-verity file digest (or any hash produced by one of the fs-verity
/// algorithms): the algorithm together with its 32 or 64 digest bytes.
///
/// `Display` prints lowercase hex without a prefix (the form used in
/// composefs object names and `trusted.overlay.metacopy`); see
/// [`Digest::to_prefixed`] for the `sha256:…` form printed by `fsverity
/// digest`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    alg: Algorithm,
    /// Digest bytes; bytes beyond `alg.digest_size()` are always zero, so the
    /// derived comparisons and hash are correct.
    bytes: [u8; MAX_DIGEST_SIZE],
}

/// Error parsing a [`Digest`] from text or bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    /// The input has the wrong length for the (given or inferred) algorithm.
    #[error("invalid fs-verity digest length {len} (expected {expected})")]
    Length {
        /// Length of the input (hex characters or bytes).
        len: usize,
        /// Accepted length(s), human readable.
        expected: &'static str,
    },
    /// A character is not a hex digit.
    #[error("invalid hex in fs-verity digest")]
    Hex,
    /// The `alg:` prefix names an unknown algorithm.
    #[error("unknown fs-verity hash algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// An object path was not of the form `XX/YYYY…`.
    #[error("invalid object path {0:?} (expected XX/YYYY...)")]
    ObjectPath(String),
}

impl Digest {
    /// Builds a digest from raw bytes, which must be exactly
    /// `alg.digest_size()` long.
    pub fn from_bytes(alg: Algorithm, bytes: &[u8]) -> Result<Digest, ParseDigestError> {
        if bytes.len() != alg.digest_size() {
            return Err(ParseDigestError::Length {
                len: bytes.len(),
                expected: expected_bytes(alg),
            });
        }
        let mut d = Digest {
            alg,
            bytes: [0; MAX_DIGEST_SIZE],
        };
        d.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(d)
    }

    /// Parses lowercase or uppercase hex of exactly `2 * alg.digest_size()`
    /// characters.
    pub fn from_hex(alg: Algorithm, hex: &str) -> Result<Digest, ParseDigestError> {
        let n = alg.digest_size();
        if hex.len() != 2 * n {
            return Err(ParseDigestError::Length {
                len: hex.len(),
                expected: expected_hex(alg),
            });
        }
        let mut bytes = [0u8; MAX_DIGEST_SIZE];
        hex::decode_to_slice(hex, &mut bytes[..n]).map_err(|_| ParseDigestError::Hex)?;
        Ok(Digest { alg, bytes })
    }

    /// Parses an object path `XX/YYYY…` (as produced by
    /// [`Digest::object_path`]); the algorithm is inferred from the length.
    /// A leading directory part (`objects/ab/cd…`) is ignored.
    pub fn from_object_path(path: &str) -> Result<Digest, ParseDigestError> {
        let bad = || ParseDigestError::ObjectPath(path.to_owned());
        let mut parts = path.rsplit('/');
        let rest = parts.next().ok_or_else(bad)?;
        let dir = parts.next().ok_or_else(bad)?;
        if dir.len() != 2 {
            return Err(bad());
        }
        let mut joined = String::with_capacity(2 + rest.len());
        joined.push_str(dir);
        joined.push_str(rest);
        let alg = alg_for_hex_len(joined.len()).ok_or_else(bad)?;
        Digest::from_hex(alg, &joined).map_err(|_| bad())
    }

    /// The hash algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The digest bytes (32 or 64 of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.digest_size()]
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// `alg:hex`, e.g. `sha256:37061e…`, as printed by `fsverity digest`.
    pub fn to_prefixed(&self) -> String {
        format!("{}:{}", self.alg.name(), self)
    }

    /// Object path inside a composefs repository: first byte as a directory,
    /// the rest as the file name, e.g. `37/061ef2ac…`.
    pub fn object_path(&self) -> String {
        let hex = self.to_hex();
        let mut s = String::with_capacity(hex.len() + 1);
        s.push_str(&hex[..2]);
        s.push('/');
        s.push_str(&hex[2..]);
        s
    }
}

fn expected_hex(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Sha256 => "64",
        Algorithm::Sha512 => "128",
    }
}

fn expected_bytes(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Sha256 => "32",
        Algorithm::Sha512 => "64",
    }
}

fn alg_for_hex_len(len: usize) -> Option<Algorithm> {
    Algorithm::ALL
        .into_iter()
        .find(|a| a.digest_size() * 2 == len)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}:{})", self.alg.name(), self)
    }
}

/// Parses `sha256:HEX`, `sha512:HEX`, or bare hex (64 characters → SHA-256,
/// 128 → SHA-512).
impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Digest, ParseDigestError> {
        if let Some((name, hex)) = s.split_once(':') {
            let alg = Algorithm::from_name(name)
                .ok_or_else(|| ParseDigestError::UnknownAlgorithm(name.to_owned()))?;
            return Digest::from_hex(alg, hex);
        }
        let alg = alg_for_hex_len(s.len()).ok_or(ParseDigestError::Length {
            len: s.len(),
            expected: "64 or 128",
        })?;
        Digest::from_hex(alg, s)
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}
