//! Image references on the command line: `oci:PATH[:TAG|@DIGEST]` and
//! `oci-archive:FILE[:TAG|@DIGEST]`.
//!
//! # Parsing rule
//!
//! After the transport prefix (`oci:` or `oci-archive:`) comes a path, optionally followed by
//! a reference:
//!
//! 1. If the text contains `@` and what follows the **last** `@` is a valid digest
//!    (`sha256:` + 64 lowercase hex, or `sha512:` + 128 lowercase hex), that is a digest
//!    reference and the path is what precedes the `@`.
//! 2. Otherwise, if the text contains `:` and what follows the **last** `:` is a valid tag
//!    (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, hence no `/`), that is a tag and the path is what
//!    precedes the `:`.
//! 3. Otherwise the whole text is the path and there is no reference.
//!
//! So `oci:/a:b/dir` is the directory `/a:b/dir` (no tag), `oci:/a:b/dir:v1` is that
//! directory with tag `v1`, and `oci:dir:` (empty tag) is an error. This differs from
//! containers/image, which splits at the *first* `:` and so cannot name a path containing
//! `:`; for paths without `:` both rules agree. A directory whose name itself ends in
//! `:word` can be named without a tag by adding a trailing `/` (`oci:/x/name:word/`).

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A tag or digest naming one image inside a layout or archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Matched against the `org.opencontainers.image.ref.name` annotation of `index.json`.
    Tag(String),
    /// `algorithm:hex`, e.g. `sha256:ab…`.
    Digest(String),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => write!(f, ":{t}"),
            Reference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:PATH[:TAG|@DIGEST]`: an OCI image layout directory.
    Layout {
        path: PathBuf,
        reference: Option<Reference>,
    },
    /// `oci-archive:FILE[:TAG|@DIGEST]`: a tar file holding an OCI image layout.
    Archive {
        path: PathBuf,
        reference: Option<Reference>,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RefParseError {
    #[error(
        "unknown transport in {0:?} (expected oci:PATH[:TAG|@DIGEST] or oci-archive:FILE[:TAG])"
    )]
    UnknownTransport(String),
    #[error("empty path in {0:?}")]
    EmptyPath(String),
    #[error("empty tag in {0:?}")]
    EmptyTag(String),
    #[error(
        "invalid digest {digest:?} in {input:?} (expected sha256:<64 hex> or sha512:<128 hex>)"
    )]
    InvalidDigest { input: String, digest: String },
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, RefParseError> {
        let (archive, rest) = if let Some(r) = s.strip_prefix("oci:") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("oci-archive:") {
            (true, r)
        } else {
            return Err(RefParseError::UnknownTransport(s.to_string()));
        };
        let (path, reference) = split_reference(s, rest)?;
        if path.is_empty() {
            return Err(RefParseError::EmptyPath(s.to_string()));
        }
        let path = PathBuf::from(path);
        Ok(if archive {
            ImageRef::Archive { path, reference }
        } else {
            ImageRef::Layout { path, reference }
        })
    }

    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageRef::Layout { path, .. } | ImageRef::Archive { path, .. } => path,
        }
    }

    pub fn reference(&self) -> Option<&Reference> {
        match self {
            ImageRef::Layout { reference, .. } | ImageRef::Archive { reference, .. } => {
                reference.as_ref()
            }
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = RefParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, p, r) = match self {
            ImageRef::Layout { path, reference } => ("oci", path, reference),
            ImageRef::Archive { path, reference } => ("oci-archive", path, reference),
        };
        write!(f, "{t}:{}", p.display())?;
        if let Some(r) = r {
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn split_reference<'a>(
    input: &str,
    rest: &'a str,
) -> Result<(&'a str, Option<Reference>), RefParseError> {
    if let Some(at) = rest.rfind('@') {
        let d = &rest[at + 1..];
        if is_valid_digest(d) {
            return Ok((&rest[..at], Some(Reference::Digest(d.to_string()))));
        }
        // `path@sha256:junk` is a typo for a digest rather than a file name.
        if d.starts_with("sha256:") || d.starts_with("sha512:") {
            return Err(RefParseError::InvalidDigest {
                input: input.to_string(),
                digest: d.to_string(),
            });
        }
    }
    if let Some(colon) = rest.rfind(':') {
        let t = &rest[colon + 1..];
        if t.is_empty() {
            return Err(RefParseError::EmptyTag(input.to_string()));
        }
        if is_valid_tag(t) {
            return Ok((&rest[..colon], Some(Reference::Tag(t.to_string()))));
        }
    }
    Ok((rest, None))
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (the OCI distribution tag grammar).
pub fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
pub fn is_valid_digest(d: &str) -> bool {
    let hex_ok = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    if let Some(h) = d.strip_prefix("sha256:") {
        hex_ok(h, 64)
    } else if let Some(h) = d.strip_prefix("sha512:") {
        hex_ok(h, 128)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(p: &str, r: Option<Reference>) -> ImageRef {
        ImageRef::Layout {
            path: p.into(),
            reference: r,
        }
    }

    #[test]
    fn parse_rules() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(ImageRef::parse("oci:/x/y").unwrap(), layout("/x/y", None));
        assert_eq!(
            ImageRef::parse("oci:/x/y:v1.0").unwrap(),
            layout("/x/y", Some(Reference::Tag("v1.0".into())))
        );
        assert_eq!(
            ImageRef::parse("oci:/a:b/dir").unwrap(),
            layout("/a:b/dir", None)
        );
        assert_eq!(
            ImageRef::parse("oci:/a:b/dir:latest").unwrap(),
            layout("/a:b/dir", Some(Reference::Tag("latest".into())))
        );
        assert_eq!(
            ImageRef::parse(&format!("oci:/a:b/dir@{d}")).unwrap(),
            layout("/a:b/dir", Some(Reference::Digest(d.clone())))
        );
        assert_eq!(
            ImageRef::parse("oci-archive:img.tar:py").unwrap(),
            ImageRef::Archive {
                path: "img.tar".into(),
                reference: Some(Reference::Tag("py".into()))
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/x/y:").unwrap_err(),
            RefParseError::EmptyTag("oci:/x/y:".into())
        );
        assert!(matches!(
            ImageRef::parse("oci:/x@sha256:abc").unwrap_err(),
            RefParseError::InvalidDigest { .. }
        ));
        assert!(matches!(
            ImageRef::parse("docker://x").unwrap_err(),
            RefParseError::UnknownTransport(_)
        ));
        assert!(matches!(
            ImageRef::parse("oci::tag").unwrap_err(),
            RefParseError::EmptyPath(_)
        ));
        // A tail that is not a tag stays part of the path.
        assert_eq!(
            ImageRef::parse("oci:/x:.hidden").unwrap(),
            layout("/x:.hidden", None)
        );
        let s = format!("oci:/a:b/dir@{d}");
        assert_eq!(ImageRef::parse(&s).unwrap().to_string(), s);
    }
}
