//! The `composefs=` kernel argument.
//!
//! `composefs=<hex image id>` names the image to boot, with fs-verity
//! required on the image and every object; `composefs=?<hex image id>` boots
//! it even where fs-verity is missing (the image's digest is still checked).
//! The id is the image's fs-verity digest: 64 hex digits (SHA-256) or 128
//! (SHA-512).

use super::BootError;
use crate::fsverity::{Algorithm, Digest};

/// Whether the image and its objects must be fs-verity protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityPolicy {
    /// `composefs=ID`: refuse to boot without fs-verity.
    Required,
    /// `composefs=?ID`: use fs-verity where present.
    Optional,
}

/// A parsed `composefs=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposefsArg {
    pub id: Digest,
    pub verity: VerityPolicy,
}

impl std::fmt::Display for ComposefsArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = if self.verity == VerityPolicy::Optional {
            "?"
        } else {
            ""
        };
        write!(f, "composefs={q}{}", self.id.to_hex())
    }
}

/// Splits a kernel command line into parameters the way the kernel does:
/// on whitespace, with double quotes grouping (and removed). Parameters
/// after a lone `--` belong to init and are not returned.
pub fn split_cmdline(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    out.push(std::mem::take(&mut cur));
                    has_token = false;
                }
            }
            c => {
                cur.push(c);
                has_token = true;
            }
        }
    }
    if has_token {
        out.push(cur);
    }
    if let Some(end) = out.iter().position(|p| p == "--") {
        out.truncate(end);
    }
    out
}

/// Parses the value of `composefs=` (`ID` or `?ID`).
pub fn parse_value(value: &str) -> Result<ComposefsArg, BootError> {
    let bad = |why: &str| BootError::BadImageId {
        value: value.to_string(),
        why: why.to_string(),
    };
    let (verity, hex) = match value.strip_prefix('?') {
        Some(rest) => (VerityPolicy::Optional, rest),
        None => (VerityPolicy::Required, value),
    };
    let alg = match hex.len() {
        0 => return Err(bad("empty image id")),
        64 => Algorithm::Sha256,
        128 => Algorithm::Sha512,
        n => {
            return Err(bad(&format!(
                "an image id is 64 (sha256) or 128 (sha512) hex digits, not {n}"
            )))
        }
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("not a hex digest"));
    }
    let id = Digest::from_hex(alg, &hex.to_ascii_lowercase()).map_err(|e| bad(&e.to_string()))?;
    Ok(ComposefsArg { id, verity })
}

/// Finds `composefs=` on a kernel command line. The same argument given twice
/// is accepted; two different ones are an error (which one would boot is
/// not obvious).
pub fn parse_cmdline(line: &str) -> Result<ComposefsArg, BootError> {
    let mut found: Option<(String, ComposefsArg)> = None;
    for p in split_cmdline(line) {
        let Some(value) = p.strip_prefix("composefs=") else {
            continue;
        };
        let arg = parse_value(value)?;
        match &found {
            Some((first, prev)) if *prev != arg => {
                return Err(BootError::ConflictingArgs {
                    first: first.clone(),
                    second: value.to_string(),
                })
            }
            Some(_) => {}
            None => found = Some((value.to_string(), arg)),
        }
    }
    found.map(|(_, a)| a).ok_or(BootError::NoComposefsArg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "03ffcd5736b5f21d262dbf902eb2c9a13e149751a3fac0fd2600ee7487a89f6b";

    #[test]
    fn required_and_optional() {
        let a = parse_cmdline(&format!("console=ttyS0 composefs={ID} quiet\n")).unwrap();
        assert_eq!(a.id.to_hex(), ID);
        assert_eq!(a.verity, VerityPolicy::Required);
        let a = parse_cmdline(&format!("composefs=?{ID}")).unwrap();
        assert_eq!(a.verity, VerityPolicy::Optional);
        assert_eq!(a.to_string(), format!("composefs=?{ID}"));
    }

    #[test]
    fn sha512_and_uppercase() {
        let long = ID.repeat(2);
        let a = parse_cmdline(&format!("composefs={}", long.to_uppercase())).unwrap();
        assert_eq!(a.id.algorithm(), Algorithm::Sha512);
        assert_eq!(a.id.to_hex(), long);
    }

    #[test]
    fn quotes_and_init_args() {
        let a = parse_cmdline(&format!(
            "foo=\"a b\" \"composefs={ID}\" -- composefs=?{ID}"
        ))
        .unwrap();
        assert_eq!(a.verity, VerityPolicy::Required);
        assert_eq!(
            split_cmdline("a=\"x y\"  b \"\" -- c"),
            vec!["a=x y", "b", ""]
        );
        // only after `--`: init's, not ours
        assert!(matches!(
            parse_cmdline(&format!("root=/dev/vda -- composefs={ID}")),
            Err(BootError::NoComposefsArg)
        ));
    }

    #[test]
    fn missing_malformed_conflicting() {
        assert!(matches!(
            parse_cmdline("root=/dev/vda ro"),
            Err(BootError::NoComposefsArg)
        ));
        // a prefix of the name is another parameter
        assert!(matches!(
            parse_cmdline(&format!("xcomposefs={ID} composefsx={ID}")),
            Err(BootError::NoComposefsArg)
        ));
        for bad in [
            "composefs=",
            "composefs=?",
            "composefs=abc",
            &format!("composefs={}g", &ID[1..]),
        ] {
            let e = parse_cmdline(bad).unwrap_err();
            assert!(matches!(e, BootError::BadImageId { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("composefs="), "{e}");
        }
        let other = ID.replace('0', "1");
        let e = parse_cmdline(&format!("composefs={ID} composefs={other}")).unwrap_err();
        assert!(matches!(e, BootError::ConflictingArgs { .. }), "{e}");
        let e = parse_cmdline(&format!("composefs={ID} composefs=?{ID}")).unwrap_err();
        assert!(matches!(e, BootError::ConflictingArgs { .. }), "{e}");
        // the same one twice is fine
        parse_cmdline(&format!("composefs={ID} composefs={ID}")).unwrap();
    }
}
