//! Concurrent pulls cooperate (issue 12): several `strata pull` processes (and one process
//! pulling several images) against a real registry behind the counting `FaultProxy`
//! fetch every distinct blob once, survive the claim holder's SIGKILL by resuming its
//! partial download, never deadlock on layers reached in opposite orders, and a `gc` loop
//! running meanwhile removes nothing a finished image needs.
//!
//! Images are built here from shared layers (uncompressed tars, so a layer's digest is
//! its diff_id and `layer cat` must give back the exact tar), pushed with skopeo; every
//! pulled image id is compared with `strata pull oci:` of the same layout.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::registry::{
    curl, pseudo_random, sha256_digest, skopeo_copy, Fault, FaultKind, FaultProxy, Registry,
};
use common::sandbox::Sandbox as Env;
use serde_json::Value;

fn skip() -> bool {
    common::registry::missing_tools(&["docker-registry", "skopeo"])
}

/// One layer: a tar with one pseudo-random file of `size` bytes (plus a small one).
fn layer(name: &str, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        (format!("opt/{name}/data.bin"), pseudo_random(name, size)),
        (
            format!("opt/{name}/README"),
            format!("layer {name}\n").into_bytes(),
        ),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha256_digest(data);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

/// Writes a layout with `images` (tag → layers, bottom first). Returns the layer tars by
/// digest.
fn make_images(dir: &Path, images: &[(&str, Vec<&Vec<u8>>)]) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut tars = BTreeMap::new();
    let mut index = Vec::new();
    for (tag, layers) in images {
        let digests: Vec<String> = layers
            .iter()
            .map(|t| {
                let d = put_blob(dir, t);
                tars.insert(d.clone(), (*t).clone());
                d
            })
            .collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"tag": tag}},
            "rootfs": {"type": "layers", "diff_ids": digests},
        }))
        .unwrap();
        let cd = put_blob(dir, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd, "size": config.len()},
            "layers": digests.iter().zip(layers).map(|(d, t)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d, "size": t.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let md = put_blob(dir, &manifest);
        index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": index})).unwrap(),
    )
    .unwrap();
    tars
}

/// A registry with the layout's images pushed as `t/<tag>:v1`, behind a counting proxy.
struct Setup {
    env: Env,
    layout: PathBuf,
    tars: BTreeMap<String, Vec<u8>>,
    _reg: Registry,
    proxy: FaultProxy,
}

fn setup(images: &[(&str, Vec<&Vec<u8>>)]) -> Setup {
    let env = Env::new();
    let layout = env.path().join("layout");
    let tars = make_images(&layout, images);
    let reg = Registry::plain();
    for (tag, _) in images {
        skopeo_copy(
            &format!("oci:{}:{tag}", layout.display()),
            &reg.docker_ref(&format!("t/{tag}:v1")),
            &["--dest-tls-verify=false"],
        );
    }
    let proxy = FaultProxy::start(&reg.host());
    Setup {
        env,
        layout,
        tars,
        _reg: reg,
        proxy,
    }
}

impl Setup {
    fn src(&self, tag: &str) -> String {
        format!("docker://{}/t/{tag}:v1", self.proxy.host())
    }

    /// The image id `strata pull oci:` gives for `tag` (the oracle).
    fn want(&self, tag: &str) -> String {
        let repo = self.env.path().join(format!("ref-{tag}"));
        let v = self
            .env
            .pull(&repo, &format!("oci:{}:{tag}", self.layout.display()), &[]);
        v["image_id"].as_str().unwrap().to_string()
    }

    fn spawn_pull(&self, repo: &Path, tag: &str, extra: &[&str]) -> Child {
        let src = self.src(tag);
        let mut args = vec!["--json", "pull", &src, tag, "--tls-verify=false"];
        args.extend_from_slice(extra);
        self.env
            .cmd(repo, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Slows every blob download down to `rate` bytes/s.
    fn throttle(&self, rate: u64) {
        self.proxy
            .add_fault(Fault::new("GET", "/blobs/", FaultKind::Throttle(rate)).times(usize::MAX));
    }

    /// GETs per blob path (every blob request, whatever its status).
    fn blob_gets(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.proxy.matching("GET", "/blobs/sha256:") {
            *m.entry(r.path.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Every layer of the finished images is in the repository byte for byte, and fsck
    /// finds nothing.
    fn check_repo(&self, repo: &Path) {
        let v: Value = serde_json::from_slice(&self.env.ok(repo, &["--json", "fsck"])).unwrap();
        assert_eq!(
            v["problems"].as_array().map_or(0, |p| p.len()),
            0,
            "fsck: {v}"
        );
        for (digest, tar) in &self.tars {
            let got = self.env.ok(repo, &["layer", "cat", digest]);
            assert!(got == *tar, "layer cat {digest}: not the pushed tar");
        }
    }
}

fn finish(child: Child, what: &str, limit: Duration) -> Value {
    let t = Instant::now();
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            while t.elapsed() < limit {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    eprintln!(
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed or exceeded {limit:?} (took {:?})",
        t.elapsed()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `f` while a thread runs `strata gc` on `repo` in a loop; returns `f`'s result.
fn with_gc_loop<T>(env: &Env, repo: &Path, f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                let o = env.cmd(repo, &["gc"]).output().unwrap();
                assert!(
                    o.status.success(),
                    "gc: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                runs += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            runs
        });
        let r = f();
        stop.store(true, Ordering::SeqCst);
        eprintln!("gc ran {} times", h.join().unwrap());
        r
    })
}

/// The registry's blob digest of the biggest layer of `t/<tag>:v1`.
fn biggest_blob(s: &Setup, tag: &str) -> (String, u64) {
    let r = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        &format!("{}/v2/t/{tag}/manifests/v1", s.proxy.url()),
    ]);
    let m: Value = serde_json::from_slice(&r.body).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .max_by_key(|(_, n)| *n)
        .unwrap()
}

const MIB: usize = 1 << 20;

#[test]
fn four_processes_sharing_a_base_fetch_each_blob_once() {
    if skip() {
        return;
    }
    let base = layer("base", 2 * MIB);
    let py = layer("python", MIB);
    let slim = layer("python-slim", MIB / 2);
    let (m, p, d) = (
        layer("min-app", 4096),
        layer("py-app", 8192),
        layer("dev-tools", MIB),
    );
    let s = setup(&[
        ("min", vec![&base, &m]),
        ("py", vec![&base, &py, &p]),
        ("py-slim", vec![&base, &slim]),
        ("dev", vec![&base, &py, &d]),
    ]);
    let tags = ["min", "py", "py-slim", "dev"];
    let want: Vec<String> = tags.iter().map(|t| s.want(t)).collect();
    let repo = s.env.path().join("repo");
    s.env.ok(&repo, &["init"]);
    s.throttle(2 << 20);
    let reports: Vec<Value> = with_gc_loop(&s.env, &repo, || {
        let children: Vec<Child> = tags.iter().map(|t| s.spawn_pull(&repo, t, &[])).collect();
        children
            .into_iter()
            .zip(tags)
            .map(|(c, t)| finish(c, &format!("pull {t}"), Duration::from_secs(120)))
            .collect()
    });
    for ((r, w), t) in reports.iter().zip(&want).zip(tags) {
        assert_eq!(r["image_id"].as_str().unwrap(), w, "{t}: image id");
    }
    let gets = s.blob_gets();
    // 6 distinct layers + 4 configs, each fetched exactly once.
    assert_eq!(gets.len(), 10, "{gets:?}");
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob fetched twice: {gets:?}"
    );
    let from_others: u64 = reports
        .iter()
        .map(|r| r["layers_from_other_pulls"].as_u64().unwrap())
        .sum();
    // base is fetched by one pull and taken by 3, python by one and taken by the other.
    assert_eq!(from_others, 4, "layers obtained from other pulls");
    let fetched: u64 = reports
        .iter()
        .map(|r| r["network"]["bytes_fetched"].as_u64().unwrap())
        .sum();
    let blobs: u64 = s.proxy.bytes_sent_for("/blobs/");
    assert!(
        fetched >= blobs && fetched <= s.proxy.bytes_sent(),
        "--json bytes_fetched {fetched} vs the proxy's blob bytes {blobs}"
    );
    s.check_repo(&repo);
}

#[test]
fn a_killed_claim_holder_is_taken_over_from_its_partial_download() {
    if skip() {
        return;
    }
    let big = layer("big", 8 * MIB);
    let (k1, k2) = (layer("k1", 4096), layer("k2", 4096));
    let s = setup(&[("one", vec![&big, &k1]), ("two", vec![&big, &k2])]);
    let want = s.want("two");
    let repo = s.env.path().join("repo");
    s.env.ok(&repo, &["init"]);
    s.throttle(2 << 20);
    let (big_digest, big_size) = biggest_blob(&s, "one");
    let claims = repo.join("claims");
    let partial = claims.join(format!("sha256-{}.partial", &big_digest[7..]));
    let (r, held, sent_before_kill) = with_gc_loop(&s.env, &repo, || {
        let mut holder = s.spawn_pull(&repo, "one", &["--jobs", "1"]);
        let t = Instant::now();
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 3 * MIB as u64 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no partial download grew"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let waiter = s.spawn_pull(&repo, "two", &["-v"]);
        std::thread::sleep(Duration::from_millis(700));
        let held = std::fs::metadata(&partial).unwrap().len();
        holder.kill().unwrap();
        let _ = holder.wait();
        let sent_before_kill = s.proxy.bytes_sent_for(&big_digest);
        let r = finish(waiter, "pull two", Duration::from_secs(60));
        (r, held, sent_before_kill)
    });
    assert_eq!(
        r["image_id"].as_str().unwrap(),
        want,
        "image id after takeover"
    );
    let total = s.proxy.bytes_sent_for(&big_digest);
    eprintln!(
        "big blob {big_size} bytes; partial at kill {held}; sent before kill {sent_before_kill}, in all {total}"
    );
    assert!(
        r["bytes_from_other_pulls"].as_u64().unwrap() >= 2 * MIB as u64,
        "resumed from the partial download: {r}"
    );
    assert!(
        (total as f64) <= big_size as f64 * 1.1,
        "fetched {total} bytes of a {big_size} byte blob across the kill (> 1.1×)"
    );
    // Nothing stale blocks a later pull; fsck is clean.
    let again = s
        .env
        .pull(&repo, &s.src("one"), &["one", "--tls-verify=false"]);
    assert_eq!(again["image_id"].as_str().unwrap(), s.want("one"));
    s.check_repo(&repo);
}

#[test]
fn shared_layers_in_opposite_orders_do_not_deadlock() {
    if skip() {
        return;
    }
    let (l1, l2) = (layer("l1", MIB), layer("l2", MIB));
    let (a, b) = (layer("a", 4096), layer("b", 4096));
    let s = setup(&[("a", vec![&l1, &l2, &a]), ("b", vec![&l2, &l1, &b])]);
    let (wa, wb) = (s.want("a"), s.want("b"));
    let repo = s.env.path().join("repo");
    s.env.ok(&repo, &["init"]);
    s.throttle(4 << 20);
    let (ra, rb) = with_gc_loop(&s.env, &repo, || {
        // One lane each: each process walks its layers in its own order.
        let pa = s.spawn_pull(&repo, "a", &["--jobs", "1"]);
        let pb = s.spawn_pull(&repo, "b", &["--jobs", "1"]);
        let ra = finish(pa, "pull a", Duration::from_secs(60));
        let rb = finish(pb, "pull b", Duration::from_secs(60));
        (ra, rb)
    });
    assert_eq!(ra["image_id"].as_str().unwrap(), wa);
    assert_eq!(rb["image_id"].as_str().unwrap(), wb);
    let gets = s.blob_gets();
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob fetched twice: {gets:?}"
    );
    s.check_repo(&repo);
}

#[test]
fn one_command_pulls_several_images_sharing_blobs_once() {
    if skip() {
        return;
    }
    let base = layer("base", MIB);
    let (x, y, z) = (layer("x", 8192), layer("y", 8192), layer("z", 8192));
    let s = setup(&[
        ("x", vec![&base, &x]),
        ("y", vec![&base, &y]),
        ("z", vec![&base, &z]),
    ]);
    let want: Vec<String> = ["x", "y", "z"].iter().map(|t| s.want(t)).collect();
    let repo = s.env.path().join("repo");
    s.throttle(8 << 20);
    let (sx, sy, sz) = (s.src("x"), s.src("y"), s.src("z"));
    let out = s.env.ok(
        &repo,
        &["--json", "pull", &sx, &sy, &sz, "--tls-verify=false"],
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (img, (w, tag)) in images.iter().zip(want.iter().zip(["x", "y", "z"])) {
        assert_eq!(img["image_id"].as_str().unwrap(), w);
        assert_eq!(img["name"].as_str().unwrap(), format!("{tag}:v1"));
    }
    assert_eq!(v["layers_from_other_pulls"].as_u64().unwrap(), 2, "{v}");
    let gets = s.blob_gets();
    assert_eq!(gets.len(), 7, "{gets:?}");
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob fetched twice: {gets:?}"
    );
    // The names are GC roots.
    s.env.ok(&repo, &["gc"]);
    s.check_repo(&repo);
    // --name names one image only.
    let e = s.env.err(&repo, &["pull", &sx, &sy, "--name", "n"]);
    assert_eq!(
        e,
        "strata: pull: --name names one image, but 2 sources were given (each is named after its reference)"
    );
}

#[test]
fn three_processes_pulling_one_image_fetch_its_config_and_layers_once() {
    if skip() {
        return;
    }
    let (base, app) = (layer("base", 2 * MIB), layer("app", MIB));
    let s = setup(&[("app", vec![&base, &app])]);
    let want = s.want("app");
    let repo = s.env.path().join("repo");
    s.env.ok(&repo, &["init"]);
    s.throttle(2 << 20);
    let src = s.src("app");
    let names = ["one", "two", "three"];
    let children: Vec<Child> = names
        .iter()
        .map(|n| {
            s.env
                .cmd(&repo, &["--json", "pull", &src, n, "--tls-verify=false"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (c, n) in children.into_iter().zip(names) {
        let r = finish(c, &format!("pull {n}"), Duration::from_secs(120));
        assert_eq!(r["image_id"].as_str().unwrap(), want, "{n}: image id");
    }
    let gets = s.blob_gets();
    // 2 layers + the config, each fetched exactly once.
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(
        gets.values().all(|&n| n == 1),
        "a blob fetched twice: {gets:?}"
    );
    s.check_repo(&repo);
    let images: Value = serde_json::from_slice(&s.env.ok(&repo, &["--json", "images"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 3, "{images}");
    assert!(images.to_string().matches(&want).count() >= 3, "{images}");
}
