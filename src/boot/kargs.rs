//! Kernel arguments an image asks for: `/usr/lib/bootc/kargs.d/*.toml`,
//! read in file-name order, each
//!
//! ```toml
//! kargs = ["console=ttyS0", "quiet"]
//! match-architectures = ["x86_64"]   # optional: only on these
//! ```
//!
//! Architectures are Rust's names (`x86_64`, `aarch64`, `s390x`, …) and
//! are matched against the architecture strata runs on. Unknown keys are
//! an error (a misspelt `match-architecture` would silently apply kargs
//! everywhere).

use serde::Deserialize;

/// Where images keep their kernel argument files.
pub const KARGS_DIR: &str = "/usr/lib/bootc/kargs.d";
/// Largest kargs file read.
pub const MAX_KARGS_FILE: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KargsFile {
    #[serde(default)]
    kargs: Vec<String>,
    #[serde(default, rename = "match-architectures")]
    match_architectures: Option<Vec<String>>,
}

/// Parses one kargs file; returns the arguments that apply on `arch`.
pub fn parse(text: &str, arch: &str) -> Result<Vec<String>, String> {
    let f: KargsFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for k in &f.kargs {
        if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{k:?} is not a single kernel argument"));
        }
    }
    match &f.match_architectures {
        Some(archs) if !archs.iter().any(|a| a == arch) => Ok(Vec::new()),
        _ => Ok(f.kargs),
    }
}

/// The key of an argument (`root` of `root=UUID=…`, `quiet` of `quiet`).
pub fn key(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(k, _)| k)
}

/// `base` with `extra` applied: an extra argument replaces every earlier one
/// with the same key (`root=…` given again wins), others are appended.
pub fn merge(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for e in extra {
        let k = key(e);
        out.retain(|o| key(o) != k);
        out.push(e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files() {
        assert_eq!(
            parse("kargs = [\"console=ttyS0\", \"quiet\"]\n", "x86_64").unwrap(),
            ["console=ttyS0", "quiet"]
        );
        let only_arm = "kargs = [\"a=1\"]\nmatch-architectures = [\"aarch64\"]\n";
        assert!(parse(only_arm, "x86_64").unwrap().is_empty());
        assert_eq!(parse(only_arm, "aarch64").unwrap(), ["a=1"]);
        let e = parse("kargs = [\"a b\"]", "x86_64").unwrap_err();
        assert_eq!(e, "\"a b\" is not a single kernel argument");
        let e = parse("karg = [\"a\"]", "x86_64").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        assert!(parse("kargs = \"a\"", "x86_64").is_err());
    }

    #[test]
    fn merging() {
        let base = ["root=/dev/vda".to_string(), "quiet".to_string()];
        let got = merge(&base, &["root=UUID=1".into(), "rw".into()]);
        assert_eq!(got, ["quiet", "root=UUID=1", "rw"]);
    }
}
