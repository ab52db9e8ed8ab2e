//! Partial pulls of zstd:chunked layers (issue #11) against a real registry
//! (`docker-registry` on 127.0.0.1) with skopeo-pushed images, through the fault proxy
//! that counts every byte and injects the answers registries give to range requests.
//!
//! The oracles: the layout's own tars (`layer cat` must give them byte for byte), the
//! image id of `pull --full` of the same image into a fresh repository (and of
//! `pull oci:` of the layout), and the blob's TOC as skopeo wrote it, parsed here: it says
//! which byte ranges hold each file, so the bytes a partial pull may fetch are computed
//! independently of strata (TOC + the frames between files + the missing files' frames).
//!
//! The images: `a` has a base layer of 300 pseudo-random files of 1-64 KiB (plus a few
//! files of at most 64 bytes and an empty one) and a second layer of 40 more files and one
//! overwritten file; `s` is `a` squashed into one layer; `b` is `a`'s base layer rebuilt:
//! every mtime a day later and one file's contents changed.

mod common;

use std::path::Path;

use common::chunked::*;
use common::registry::{skopeo_copy, Fault, FaultKind, FaultProxy, Registry};
use common::sandbox::Sandbox as Env;
use serde_json::Value;
use sha2::Digest as _;

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn a_squashed_copy_of_pulled_layers_fetches_only_its_toc_and_headers() {
    if skip() {
        return;
    }
    let w = world("squashed");
    let s = w.layer("s");
    assert!(s.media_type.ends_with("+zstd"), "{}", s.media_type);
    assert_eq!(s.files.len(), 345, "non-empty regular files in s's TOC");
    let repo = w.repo_with_a("repo");

    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("s"), &["s"]);
    let p = only_partial(&v);
    eprintln!("partial: {p:#}");
    assert_eq!(p["digest"], Value::from(s.digest.clone()));
    assert_eq!(p["format"], "zstd:chunked");
    assert_eq!(u(p, "blob_bytes"), s.size);
    assert_eq!(u(p, "toc_bytes"), s.toc.1, "the TOC's compressed length");
    assert_eq!(
        u(p, "tar_split_bytes"),
        0,
        "the older form has no tar-split"
    );
    assert_eq!(u(p, "files_fetched"), 0, "every file of s is in a: {p}");
    assert_eq!(u(p, "file_bytes_fetched"), 0, "{p}");
    assert_eq!(u(p, "files_reused"), s.files.len() as u64, "{p}");
    let want_reused: u64 = s.files.iter().map(|f| f.size).sum();
    assert_eq!(u(p, "bytes_reused"), want_reused, "{p}");
    assert!(arr(&v, "full_pulls").is_empty(), "{v}");

    // What went over the wire for s's blob: its TOC and the frames between files.
    let sent = w.proxy.bytes_sent_for(&s.digest);
    let ranges = ranges_for(&w.proxy, &s.digest);
    let ideal = s.toc.1 + s.header_frames();
    let limit = ideal + s.tiny_payloads() + PART_OVERHEAD * ranges.len() as u64 + 1024;
    eprintln!(
        "s: blob {} B, TOC {} B, header frames {} B, sent {sent} B in {} ranges \
         ({} requests), report: {} B fetched, {} B headers",
        s.size,
        s.toc.1,
        s.header_frames(),
        ranges.len(),
        u(p, "requests"),
        u(p, "bytes_fetched"),
        u(p, "header_bytes"),
    );
    assert!(
        sent >= ideal,
        "sent {sent} B < TOC + headers {ideal} B: were some read from elsewhere?"
    );
    assert!(
        sent <= limit,
        "sent {sent} B for s's blob, more than TOC + header frames + overhead = {limit} B"
    );
    assert!(
        u(p, "header_bytes") >= s.header_frames()
            && u(p, "header_bytes") <= s.header_frames() + s.tiny_payloads(),
        "header_bytes {} vs the TOC's gaps {} (+ tiny payloads {})",
        u(p, "header_bytes"),
        s.header_frames(),
        s.tiny_payloads()
    );
    assert!(
        u(p, "bytes_fetched") <= sent,
        "report {} > sent {sent}",
        u(p, "bytes_fetched")
    );
    assert!(
        sent * 10 < s.size,
        "sent {sent} B is not a small share of {} B",
        s.size
    );
    // No file's payload was asked for, except those bridged over (≤ 512 bytes).
    for f in s.files.iter().filter(|f| f.end - f.start > 512) {
        assert!(
            !ranges.iter().any(|&(a, b)| a < f.end && b >= f.start),
            "{} ({}..{}) was fetched: {ranges:?}",
            f.name,
            f.start,
            f.end
        );
    }
    // The network figures agree with the proxy (which also counts multipart framing).
    let net = v["network"]["bytes_fetched"].as_u64().unwrap();
    let all = w.proxy.bytes_sent();
    assert!(
        net <= all && all - net <= PART_OVERHEAD * ranges.len() as u64 + 1024,
        "network.bytes_fetched {net} vs {all} B sent by the proxy"
    );

    // Same image and bytes as a full pull, and as the layout.
    let (full_id, full_repo) = w.full_pull("s");
    assert_eq!(image_id(&v), full_id, "partial vs full pull of s");
    assert_eq!(full_id, w.layout_id("s"), "full pull vs pull oci:");
    let partial_tar = layer_tars(&w.env, &repo, "s");
    let full_tar = layer_tars(&w.env, &full_repo, "s");
    assert!(partial_tar[0] == full_tar[0], "layer cat differs");
    assert!(
        partial_tar[0] == w.tars.s,
        "layer cat differs from the layout's tar"
    );
    fsck_clean(&w.env, &repo);
    fsck_clean(&w.env, &full_repo);
}

#[test]
fn a_rebuilt_base_fetches_only_the_changed_file() {
    if skip() {
        return;
    }
    let w = world("rebuilt");
    let b = w.layer("b");
    let changed = b.file(CHANGED).clone();
    assert_eq!(changed.size, w.tars.changed.len() as u64);
    let repo = w.repo_with_a("repo");

    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("b"), &["b"]);
    let p = only_partial(&v);
    eprintln!("partial: {p:#}");
    assert_eq!(p["format"], "zstd:chunked");
    assert_eq!(u(p, "files_fetched"), 1, "only {CHANGED}: {p}");
    assert_eq!(
        u(p, "file_bytes_fetched"),
        changed.end - changed.start,
        "{CHANGED}'s compressed bytes: {p}"
    );
    assert_eq!(u(p, "files_reused"), b.files.len() as u64 - 1, "{p}");
    let ranges = ranges_for(&w.proxy, &b.digest);
    assert!(
        ranges
            .iter()
            .any(|&(a, e)| a <= changed.start && changed.end - 1 <= e),
        "no range covers {CHANGED} ({}..{}): {ranges:?}",
        changed.start,
        changed.end
    );
    let sent = w.proxy.bytes_sent_for(&b.digest);
    let ideal = b.toc.1 + b.header_frames() + (changed.end - changed.start);
    let limit = ideal + b.tiny_payloads() + PART_OVERHEAD * ranges.len() as u64 + 1024;
    eprintln!(
        "b: blob {} B, TOC {} B, header frames {} B, {CHANGED} {} B, sent {sent} B in {} ranges",
        b.size,
        b.toc.1,
        b.header_frames(),
        changed.end - changed.start,
        ranges.len()
    );
    assert!(
        (ideal..=limit).contains(&sent),
        "sent {sent} B for b's blob, not within [{ideal}, {limit}]"
    );

    let (full_id, full_repo) = w.full_pull("b");
    assert_eq!(image_id(&v), full_id, "partial vs full pull of b");
    assert_eq!(full_id, w.layout_id("b"));
    let tars = layer_tars(&w.env, &repo, "b");
    assert!(
        tars[0] == w.tars.b,
        "layer cat differs from the layout's tar"
    );
    assert!(tars[0] == layer_tars(&w.env, &full_repo, "b")[0]);
    fsck_clean(&w.env, &repo);

    // Without --json: one line per partial layer on stderr.
    let repo2 = w.repo_with_a("repo2");
    let o = w.env.run(&repo2, &["pull", &w.src("b"), "b"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), full_id);
    let err = String::from_utf8_lossy(&o.stderr);
    let fetched = u(p, "bytes_fetched");
    let want = format!(
        "strata: layer {}: fetched {} of {} ({:.1} %), reused {} files",
        b.digest,
        indicatif::HumanBytes(fetched),
        indicatif::HumanBytes(b.size),
        100.0 * fetched as f64 / b.size as f64,
        b.files.len() - 1
    );
    assert!(
        err.lines().any(|l| l == want),
        "no line {want:?} in:\n{err}"
    );
}

/// The error line of a failed pull of `b`, after checking that nothing was tagged and
/// fsck is clean.
fn failed_pull(w: &World, repo: &Path) -> String {
    let o = w.env.run(repo, &["pull", &w.src("b"), "b"]);
    assert_eq!(o.status.code(), Some(1), "the pull fails");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("created repository") && !l.contains("fs-verity is not"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    let images = String::from_utf8(w.env.ok(repo, &["images"])).unwrap();
    assert!(
        !images
            .lines()
            .any(|l| l.split_whitespace().next() == Some("b")),
        "nothing tagged: {images}"
    );
    fsck_clean(&w.env, repo);
    lines[0].to_string()
}

#[test]
fn a_corrupted_file_range_fails_the_pull_naming_the_file() {
    if skip() {
        return;
    }
    let w = world("corrupt");
    let b = w.layer("b");
    let changed = b.file(CHANGED).clone();
    let repo = w.repo_with_a("repo");
    let want_sha = hex::encode(sha2::Sha256::digest(&w.tars.changed));
    let prefix = format!(
        "strata: pull {}: layer {}: file {CHANGED}: ",
        w.src("b"),
        b.digest
    );

    // A flipped byte in the file's frame: zstd's frame checksum catches it.
    let at = (changed.start + changed.end) / 2;
    let flip = w
        .proxy
        .add_fault(Fault::new("GET", &b.digest, FaultKind::FlipByteRanged(at)).times(usize::MAX));
    let line = failed_pull(&w, &repo);
    assert!(w.proxy.fired(flip) >= 1, "the fault fired");
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.contains("cannot decompress"), "{line}");
    w.proxy.clear_faults();

    // A valid frame of other contents (zeros, then a skippable frame to the same length):
    // only the sha256 check catches it.
    let zeros = vec![0u8; changed.size as usize];
    let mut frame = zstd::encode_all(&zeros[..], 3).unwrap();
    let len = changed.end - changed.start;
    let pad = len as usize - frame.len() - 8;
    frame.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
    frame.extend_from_slice(&(pad as u32).to_le_bytes());
    frame.resize(len as usize, 0);
    assert_eq!(zstd::decode_all(&frame[..]).unwrap(), zeros);
    let replace = w.proxy.add_fault(
        Fault::new(
            "GET",
            &b.digest,
            FaultKind::ReplaceRanged(changed.start, frame),
        )
        .times(usize::MAX),
    );
    let line = failed_pull(&w, &repo);
    assert!(w.proxy.fired(replace) >= 1, "the fault fired");
    let zeros_sha = hex::encode(sha2::Sha256::digest(&zeros));
    assert_eq!(
        line,
        format!("{prefix}contents have sha256 sha256:{zeros_sha}, the TOC says sha256:{want_sha}")
    );

    // The registry's copy is fine: the same pull works, fetching the file again.
    w.proxy.clear_faults();
    let v = w.env.pull(&repo, &w.src("b"), &["b"]);
    assert_eq!(u(only_partial(&v), "files_fetched"), 1, "{v}");
    assert_eq!(image_id(&v), w.layout_id("b"));
    assert!(layer_tars(&w.env, &repo, "b")[0] == w.tars.b);
    fsck_clean(&w.env, &repo);
}

#[test]
fn a_registry_answering_multi_range_with_the_whole_blob_is_read_once() {
    if skip() {
        return;
    }
    let w = world("whole");
    let b = w.layer("b");
    let repo = w.repo_with_a("repo");
    let strip = w
        .proxy
        .add_fault(Fault::new("GET", &b.digest, FaultKind::RefuseMultiRange).times(usize::MAX));
    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("b"), &["b"]);
    assert!(w.proxy.fired(strip) >= 1, "a multi-range request was made");
    assert_eq!(image_id(&v), w.layout_id("b"));
    assert!(arr(&v, "partial").is_empty(), "{v}");
    let full = arr(&v, "full_pulls");
    assert_eq!(full.len(), 1, "{v}");
    assert_eq!(full[0]["digest"], Value::from(b.digest.clone()));
    assert!(
        full[0]["why"].as_str().unwrap().contains("whole blob"),
        "{v}"
    );
    let sent = w.proxy.bytes_sent_for(&b.digest);
    let whole = w
        .proxy
        .matching("GET", &b.digest)
        .iter()
        .filter(|r| r.status == 200)
        .count();
    eprintln!(
        "b: blob {} B, sent {sent} B, {whole} whole-blob answers, statuses {:?}",
        b.size,
        w.proxy.statuses("GET", &b.digest)
    );
    assert!(
        sent <= b.size + b.toc.1 + 1024,
        "sent {sent} B for a {}-byte blob: fetched twice?",
        b.size
    );
    let tars = layer_tars(&w.env, &repo, "b");
    assert!(tars[0] == w.tars.b);
    fsck_clean(&w.env, &repo);
}

#[test]
fn a_registry_refusing_multi_range_with_400_gets_fewer_ranges_per_request() {
    if skip() {
        return;
    }
    let w = world("four-hundred");
    let b = w.layer("b");
    let want = w.layout_id("b");

    // Multi-range allowed: the baseline.
    let repo = w.repo_with_a("repo");
    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("b"), &["b"]);
    assert_eq!(image_id(&v), want);
    let base_requests = u(only_partial(&v), "requests");
    let base_sent = w.proxy.bytes_sent_for(&b.digest);
    let base_http = w.proxy.count("GET", &b.digest);

    let repo = w.repo_with_a("repo-400");
    let refuse = w.proxy.add_fault(
        Fault::new("GET", &b.digest, FaultKind::MultiRangeStatus(400)).times(usize::MAX),
    );
    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("b"), &["b"]);
    assert!(w.proxy.fired(refuse) >= 1, "a multi-range request was made");
    assert_eq!(image_id(&v), want);
    let p = only_partial(&v);
    assert_eq!(u(p, "files_fetched"), 1, "{p}");
    let statuses = w.proxy.statuses("GET", &b.digest);
    let refused = statuses.iter().filter(|&&s| s == 400).count();
    let ok = w
        .proxy
        .matching("GET", &b.digest)
        .iter()
        .filter(|r| r.status == 206)
        .count();
    let sent = w.proxy.bytes_sent_for(&b.digest)
        - refused as u64 * b"injected: multi-range requests are not supported\n".len() as u64;
    eprintln!(
        "b: baseline {base_requests} range requests ({base_http} HTTP), {base_sent} B; \
         with 400s: {} range requests, {refused} refused, {ok} answered, {sent} B",
        u(p, "requests")
    );
    assert!(
        ok > base_http,
        "{ok} answered requests with 400s vs {base_http} without"
    );
    assert!(
        u(p, "requests") > base_requests,
        "report: {} requests vs {base_requests}",
        u(p, "requests")
    );
    // Single-range answers carry no multipart framing: no more bytes than before.
    assert!(sent <= base_sent, "{sent} B with 400s vs {base_sent} B");
    let tars = layer_tars(&w.env, &repo, "b");
    assert!(tars[0] == w.tars.b);
    fsck_clean(&w.env, &repo);
}

#[test]
fn non_chunked_layers_and_full_pulls_fetch_whole_blobs() {
    if skip() {
        return;
    }
    let w = world("non-chunked");
    // b, gzip, in a registry of its own (skopeo would reuse the zstd:chunked blob).
    let greg = Registry::plain();
    push(&greg, &w.layout, "b", "gzip");
    let gproxy = FaultProxy::start(&greg.host());
    let gb = remote_layers(&greg, "t/b", "v1").remove(0);
    assert!(gb.media_type.ends_with("+gzip"), "{}", gb.media_type);

    let repo = w.repo_with_a("repo");
    let v = w
        .env
        .pull(&repo, &format!("docker://{}/t/b:v1", gproxy.host()), &["b"]);
    assert!(arr(&v, "partial").is_empty(), "{v}");
    assert!(arr(&v, "full_pulls").is_empty(), "{v}");
    assert_eq!(
        gproxy.bytes_sent_for(&gb.digest),
        gb.size,
        "gzip: whole blob once"
    );
    assert!(
        gproxy
            .matching("GET", &gb.digest)
            .iter()
            .all(|r| r.range.is_none()),
        "no range requests"
    );
    assert_eq!(image_id(&v), w.layout_id("b"));

    // --full on a zstd:chunked image: the whole blob, once, no ranges.
    let b = w.layer("b");
    let repo = w.repo_with_a("repo-full");
    w.proxy.reset_stats();
    let v = w.env.pull(&repo, &w.src("b"), &["b", "--full"]);
    assert!(arr(&v, "partial").is_empty(), "{v}");
    assert!(arr(&v, "full_pulls").is_empty(), "{v}");
    assert_eq!(
        w.proxy.bytes_sent_for(&b.digest),
        b.size,
        "--full: whole blob once"
    );
    assert!(
        w.proxy
            .matching("GET", &b.digest)
            .iter()
            .all(|r| r.range.is_none()),
        "--full: no range requests"
    );
    assert_eq!(image_id(&v), w.layout_id("b"));
    let tars = layer_tars(&w.env, &repo, "b");
    assert!(tars[0] == w.tars.b);
    fsck_clean(&w.env, &repo);
}

/// The newer zstd:chunked form (Debian 13's skopeo, with a tar-split): a squashed copy of
/// pulled layers fetches its TOC and tar-split and nothing else — no header frames, no
/// files — and ends in the same image and bytes as a full pull.
#[test]
fn the_newer_form_fetches_only_its_toc_and_tar_split() {
    if skip() {
        return;
    }
    let Some(()) = common::registry::skopeo_v2_ready() else {
        return;
    };
    let w = world("newer");
    for tag in ["a", "s"] {
        common::registry::skopeo_v2_copy(
            &format!("oci:{}:{tag}", w.layout.display()),
            &w.reg.docker_ref(&format!("t/{tag}2:v1")),
            &[
                "--dest-tls-verify=false",
                "--dest-compress",
                "--dest-compress-format",
                "zstd:chunked",
            ],
        );
    }
    let layers = remote_layers(&w.reg, "t/s2", "v1");
    assert_eq!(layers.len(), 1);
    let s2 = &layers[0];
    let m = remote_manifest(&w.reg.host(), "t/s2", "v1");
    let ann = &m["layers"][0]["annotations"];
    let ts: Vec<u64> = ann["io.github.containers.zstd-chunked.tarsplit-position"]
        .as_str()
        .expect("the newer form has a tar-split")
        .split(':')
        .map(|x| x.parse().unwrap())
        .collect();
    let repo = w.repo("repo");
    let v = w
        .env
        .pull(&repo, &w.reg.docker_ref("t/a2:v1"), &["a2", "--full"]);
    assert!(arr(&v, "partial").is_empty(), "{v}");

    w.proxy.reset_stats();
    let v = w.env.pull(
        &repo,
        &format!("docker://{}/t/s2:v1", w.proxy.host()),
        &["s2"],
    );
    let p = only_partial(&v);
    eprintln!("partial: {p:#}");
    assert_eq!(p["format"], "zstd:chunked with tar-split");
    assert_eq!(
        u(p, "header_bytes"),
        0,
        "headers come from the tar-split: {p}"
    );
    assert_eq!(u(p, "tar_split_bytes"), ts[1], "{p}");
    assert_eq!(u(p, "files_fetched"), 0, "{p}");
    assert_eq!(
        u(p, "files_reused"),
        345,
        "s's non-empty regular files: {p}"
    );
    // TOC + tar-split, plus the 8-byte skippable-frame header between them at most.
    let ideal = u(p, "toc_bytes") + u(p, "tar_split_bytes");
    assert!(
        u(p, "bytes_fetched") >= ideal && u(p, "bytes_fetched") <= ideal + 8,
        "fetched {} vs TOC + tar-split {ideal}",
        u(p, "bytes_fetched")
    );
    let sent = w.proxy.bytes_sent_for(&s2.digest);
    assert!(
        sent <= ideal + 1024,
        "sent {sent} B for the blob, TOC + tar-split = {ideal} B"
    );
    let (full_id, full_repo) = {
        let repo = w.repo("full-s2");
        let v = w
            .env
            .pull(&repo, &w.reg.docker_ref("t/s2:v1"), &["s2", "--full"]);
        (image_id(&v), repo)
    };
    assert_eq!(image_id(&v), full_id, "partial vs full pull of s2");
    let partial_tar = layer_tars(&w.env, &repo, "s2");
    assert!(partial_tar[0] == layer_tars(&w.env, &full_repo, "s2")[0]);
    assert!(
        partial_tar[0] == w.tars.s,
        "layer cat differs from the layout's tar"
    );
    fsck_clean(&w.env, &repo);
}

/// eStargz layers are recognised and pulled fully, saying why once; the image is right.
#[test]
fn estargz_layers_are_pulled_fully_saying_why() {
    if skip() {
        return;
    }
    let Some(()) = common::registry::estargz_ready() else {
        return;
    };
    let env = Env::new();
    let layout = env.path().join("esgz");
    let img = common::registry::make_estargz_layout(
        &layout,
        &common::registry::TestImage::single("e"),
        &[],
    );
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:e", layout.display()),
        &reg.docker_ref("t/e:v1"),
        &["--dest-tls-verify=false", "--preserve-digests"],
    );
    let repo = env.path().join("repo");
    let v = env.pull(&repo, &reg.docker_ref("t/e:v1"), &["e"]);
    assert!(arr(&v, "partial").is_empty(), "{v}");
    let full = arr(&v, "full_pulls");
    assert_eq!(full.len(), img.layers.len(), "{v}");
    assert!(full[0]["why"].as_str().unwrap().contains("eStargz"), "{v}");
    let oci_repo = env.path().join("oci");
    let src = format!("oci:{}:e", layout.display());
    assert_eq!(image_id(&v), image_id(&env.pull(&oci_repo, &src, &["e"])));
    let tars = layer_tars(&env, &repo, "e");
    for (t, l) in tars.iter().zip(&img.layers) {
        assert!(t == &l.tar, "layer cat differs from the eStargz tar");
    }
    fsck_clean(&env, &repo);
}
