//! composefs C 1.0.8 conformance: the test vectors in tests/conformance/
//! (see its README) must give byte-identical images, pass fsck.erofs, and
//! survive read → write and dump → rebuild unchanged. The should-fail cases
//! must be refused by the mkcomposefs CLI with a clear message and no output.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use strata::dumpfile::{self, ParseMode};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// (file, expected sha256, min/max version, strict)
fn cases() -> Vec<(String, String, Option<u32>, bool)> {
    let lenient = [
        "honggfuzz-longlink-unterminated.dump",
        "longlink.dump",
        "no-newline.dump",
    ];
    let mut out = Vec::new();
    for e in fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(case) = name.strip_suffix(".sha256") else {
            continue;
        };
        let sha = fs::read_to_string(dir().join(&name)).unwrap();
        let sha = sha.split_whitespace().next().unwrap().to_string();
        let vfile = dir().join(format!("{}.version", case.trim_end_matches(".gz")));
        let version = fs::read_to_string(vfile)
            .ok()
            .map(|v| v.trim().parse().unwrap());
        out.push((case.to_string(), sha, version, !lenient.contains(&case)));
    }
    out.sort();
    assert_eq!(out.len(), 14, "expected 14 checksum cases");
    out
}

fn load(name: &str) -> Vec<u8> {
    let raw = fs::read(dir().join(name)).unwrap();
    if name.ends_with(".gz") {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut v)
            .unwrap();
        v
    } else {
        raw
    }
}

fn opts(version: Option<u32>) -> erofs::WriteOptions {
    match version {
        Some(v) => erofs::WriteOptions {
            min_version: v,
            max_version: v,
        },
        None => erofs::WriteOptions::default(),
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn checksum_cases_are_byte_identical() {
    let mut failures = Vec::new();
    for (name, expected, version, strict) in cases() {
        let mode = if strict {
            ParseMode::Strict
        } else {
            ParseMode::Lenient
        };
        let tree = match dumpfile::parse(&load(&name), mode) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: parse: {e}"));
                continue;
            }
        };
        let image = erofs::write_image(&tree, &opts(version)).unwrap();
        let got = sha(&image);
        if got != expected {
            failures.push(format!("{name}: sha256 {got}, expected {expected}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn images_survive_read_write_and_dump_rebuild() {
    for (name, _, version, strict) in cases() {
        let mode = if strict {
            ParseMode::Strict
        } else {
            ParseMode::Lenient
        };
        let tree = dumpfile::parse(&load(&name), mode).unwrap();
        let image = erofs::write_image(&tree, &opts(version)).unwrap();

        let read = erofs::read_image(&image).unwrap_or_else(|e| panic!("{name}: read back: {e}"));
        let again = erofs::write_image(&read.tree, &opts(version)).unwrap();
        assert!(again == image, "{name}: read → write changed the image");

        let mut dump = Vec::new();
        dumpfile::print_image(&read, &mut dump).unwrap();
        let reparsed = dumpfile::parse(&dump, ParseMode::Strict)
            .unwrap_or_else(|e| panic!("{name}: re-parse of our own dump: {e}"));
        let rebuilt = erofs::write_image(&reparsed, &opts(version)).unwrap();
        assert!(rebuilt == image, "{name}: dump → rebuild changed the image");
    }
}

#[test]
fn images_pass_fsck_erofs() {
    let Ok(out) = Command::new("fsck.erofs").arg("--help").output() else {
        eprintln!(
            "SKIP: fsck.erofs not installed (Debian package erofs-utils; tools/setup installs it)"
        );
        return;
    };
    let _ = out;
    let tmp = tempfile::tempdir().unwrap();
    for (name, _, version, strict) in cases() {
        let mode = if strict {
            ParseMode::Strict
        } else {
            ParseMode::Lenient
        };
        let tree = dumpfile::parse(&load(&name), mode).unwrap();
        let image = erofs::write_image(&tree, &opts(version)).unwrap();
        let p = tmp.path().join("img.cfs");
        fs::write(&p, &image).unwrap();
        let r = Command::new("fsck.erofs").arg(&p).output().unwrap();
        assert!(
            r.status.success(),
            "{name}: fsck.erofs failed:\n{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn should_fail_cases_are_rejected_without_output() {
    let bin = env!("CARGO_BIN_EXE_strata");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with("should-fail-") {
            continue;
        }
        n += 1;
        let out = tmp.path().join(format!("{name}.cfs"));
        let r = Command::new(bin)
            .args(["mkcomposefs", "--from-file"])
            .arg(dir().join(&name))
            .arg(&out)
            .env("CFS_PARSE_STRICT", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}: was accepted");
        assert_eq!(r.status.code(), Some(1), "{name}: exit status");
        assert!(!out.exists(), "{name}: left an output file behind");
        assert!(
            stderr.starts_with("strata mkcomposefs: ") && stderr.lines().count() == 1,
            "{name}: expected one clear error line, got: {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
    }
    assert_eq!(n, 14, "expected 14 should-fail cases");
    // Nothing else was left in the output directory either (no temp files).
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}
