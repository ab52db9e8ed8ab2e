//! Concurrent pulls of *different* zstd:chunked blobs that share most of their files
//! (issue #12): a squashed image (`s`, one layer) and its layered original (`a`, two
//! layers), started together in an empty repository, against a real docker-registry
//! behind the counting proxy.
//!
//! The oracle for the bytes is the same two pulls made one after the other into one
//! repository: `a` fully, then `s` partially (its TOC and headers only, every file being
//! there). Pulled at once, whichever pull announces a shared file first fetches it and
//! the other waits for it, so the bytes from the registry must stay within 1.10× of that
//! union, and each image must get the id a full pull of it gets.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::chunked::*;
use common::registry::{sha256_digest, Fault, FaultKind};
use serde_json::Value;

fn spawn_pull(w: &World, repo: &std::path::Path, tag: &str) -> Child {
    spawn_pull_with(w, repo, tag, &[])
}

fn spawn_pull_with(w: &World, repo: &std::path::Path, tag: &str, opts: &[&str]) -> Child {
    let src = w.src(tag);
    let mut args = opts.to_vec();
    args.extend(["--json", "pull", &src, tag]);
    w.env
        .cmd(repo, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, what: &str) -> (Value, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {}\n{stderr}", out.status);
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

/// Files a report says came from other pulls, over its partial layers.
fn from_others(v: &Value) -> u64 {
    arr(v, "partial")
        .iter()
        .map(|p| u(p, "files_from_other_pulls"))
        .sum()
}

#[test]
fn a_squashed_image_and_its_layered_original_pulled_at_once_fetch_shared_files_once() {
    if skip() {
        return;
    }
    let w = world("together");
    let (id_a, full_a) = w.full_pull("a");
    let (id_s, full_s) = w.full_pull("s");
    // skopeo rewrites the tars it compresses: the oracle is what a full pull stores.
    assert_eq!(id_a, id_s, "one tree, so one image id");
    let (tars_a, tars_s) = (
        layer_tars(&w.env, &full_a, "a"),
        layer_tars(&w.env, &full_s, "s"),
    );

    // The union: one after the other, `s` reusing everything `a` brought.
    let seq = w.repo("one-after-the-other");
    w.proxy.reset_stats();
    let va = w.env.pull(&seq, &w.src("a"), &["a"]);
    let vs = w.env.pull(&seq, &w.src("s"), &["s"]);
    let union = w.proxy.bytes_sent();
    assert_eq!(image_id(&va), id_a);
    assert_eq!(image_id(&vs), id_s);
    assert_eq!(u(only_partial(&vs), "files_fetched"), 0, "{vs:#}");
    let s_blob = w.layer("s").size;
    assert!(
        union > s_blob,
        "union {union} holds at least s's blob {s_blob}"
    );

    // Blobs at 40 MB/s per connection: each pull takes long enough that the two overlap
    // whatever the start-up jitter.
    w.proxy
        .add_fault(Fault::new("GET", "/blobs/", FaultKind::Throttle(40 << 20)).times(usize::MAX));
    for round in 0..3 {
        let repo = w.repo(&format!("together-{round}"));
        w.proxy.reset_stats();
        let t = Instant::now();
        let (ca, cs) = (spawn_pull(&w, &repo, "a"), spawn_pull(&w, &repo, "s"));
        let ((ra, ea), (rs, es)) = (finish(ca, "pull a"), finish(cs, "pull s"));
        let took = t.elapsed();
        let total = w.proxy.bytes_sent();
        eprintln!(
            "round {round}: {total} bytes from the registry, union {union} ({:.3}x), {:?}; \
             files from the other pull: a {}, s {}\n--- a:\n{ea}--- s:\n{es}",
            total as f64 / union as f64,
            took,
            from_others(&ra),
            from_others(&rs),
        );
        assert_eq!(image_id(&ra), id_a, "a, round {round}");
        assert_eq!(image_id(&rs), id_s, "s, round {round}");
        assert!(
            total as f64 <= 1.10 * union as f64,
            "round {round}: {total} bytes fetched, over 1.10x the union {union}\n{ra:#}\n{rs:#}"
        );
        assert!(
            from_others(&ra) + from_others(&rs) > 0,
            "round {round}: the pulls did not cooperate (one ran after the other?)\n{ra:#}\n{rs:#}"
        );
        assert!(took < Duration::from_secs(120), "round {round}: {took:?}");
        fsck_clean(&w.env, &repo);
        // (a and s have one tree, so one image id: compare layers by diff_id)
        for tar in tars_a.iter().chain(&tars_s) {
            let d = sha256_digest(tar);
            let got = w.env.ok(&repo, &["layer", "cat", &d]);
            assert!(got == *tar, "round {round}: layer {d} differs");
        }
    }
}

/// Announcement files (`claims/*.contents`) in `repo`.
fn announcements(repo: &std::path::Path) -> usize {
    std::fs::read_dir(repo.join("claims"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".contents"))
                .count()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn files_left_to_a_pull_that_is_killed_are_fetched_by_the_waiter() {
    if skip() {
        return;
    }
    let w = world("killed");
    let (id_a, _) = w.full_pull("a");
    let a_layers = remote_layers(&w.reg, "t/a", "v1");
    let a_blobs: u64 = a_layers.iter().map(|l| l.size).sum();
    let a_files: usize = a_layers.iter().map(|l| l.files.len()).sum();
    // Slow blobs, so that `s` is still fetching when it is killed.
    w.proxy
        .add_fault(Fault::new("GET", "/blobs/", FaultKind::Throttle(1 << 20)).times(usize::MAX));
    let repo = w.repo("repo");
    // `s` announces its files first; then both layers of `a` announce theirs, every one
    // of which is in `s`, and wait for it.
    let mut s = spawn_pull(&w, &repo, "s");
    wait_for("s's announcement", Duration::from_secs(30), || {
        announcements(&repo) == 1
    });
    w.proxy.reset_stats();
    let a = spawn_pull_with(&w, &repo, "a", &["-v"]);
    wait_for("a's announcements", Duration::from_secs(30), || {
        announcements(&repo) == 3
    });
    std::thread::sleep(Duration::from_millis(300));
    let s_pid = s.id();
    s.kill().unwrap();
    let out = s.wait_with_output().unwrap();
    assert!(!out.status.success(), "s was killed");
    let (ra, ea) = finish(a, "pull a");
    // `-v` tells of the wait, once per layer of `a`, naming the pull and its blob.
    let line = format!(
        "waiting for another pull (pid {s_pid}): {}",
        w.layer("s").digest
    );
    assert_eq!(ea.matches(&line).count(), 2, "stderr of a:\n{ea}");
    assert_eq!(image_id(&ra), id_a);
    let p = arr(&ra, "partial");
    assert_eq!(p.len(), 2, "both layers of a pulled partially: {ra:#}");
    // Whatever `s` stored before it died is used; the rest `a` fetched itself.
    let fetched: u64 = p.iter().map(|p| u(p, "files_fetched")).sum();
    let others: u64 = p.iter().map(|p| u(p, "files_from_other_pulls")).sum();
    assert_eq!(
        fetched + others,
        a_files as u64,
        "every file of a accounted for: {ra:#}"
    );
    assert!(fetched > 0, "s died before storing everything: {ra:#}");
    // Every byte a fetched went to a's blobs, each byte range once.
    let bytes = w.proxy.bytes_sent();
    assert!(
        bytes <= a_blobs + a_blobs / 10,
        "a fetched {bytes} bytes for blobs of {a_blobs}"
    );
    fsck_clean(&w.env, &repo);
    assert!(
        announcements(&repo) <= 1,
        "only the dead pull's announcement is left"
    );
}
