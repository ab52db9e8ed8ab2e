//! `strata pull containers-storage:…` against real stores made by podman (`podman pull`
//! from a docker-registry on 127.0.0.1, `podman load` of an archive made by skopeo).
//!
//! The oracle is strata's own registry or layout pull of the same image: the image id, the
//! splitstream object of every layer (`refs/layers/<diff_id>`) and `layer cat` (sha256 ==
//! diff_id) must be the same. Zero copy is measured on an xfs loop image with reflink: the
//! free blocks before and after the import.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::registry::{
    make_layout, run_with_timeout, sha256_digest, skopeo_copy, Registry, TestImage,
};
use common::sandbox::Sandbox;
use serde_json::Value;

/// Missing tools make the tests skip, saying so (tools/setup installs them).
fn skip() -> bool {
    common::registry::missing_tools(&["podman", "skopeo", "docker-registry"])
}

/// A hermetic environment ([`Sandbox`]) that also runs podman.
struct Env {
    sb: Sandbox,
}

impl std::ops::Deref for Env {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

impl Env {
    fn new() -> Env {
        Env::new_in(None)
    }

    fn new_in(parent: Option<&Path>) -> Env {
        Env {
            sb: Sandbox::new_in(parent),
        }
    }

    /// Unmounts whatever podman left mounted below this environment (its overlay driver
    /// bind-mounts `ROOT/overlay` on itself, and a failing podman may leave it).
    fn unmount_leftovers(&self) {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(self.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg(p).status();
        }
    }

    /// A podman store at `store` (`root/`, `run/` inside).
    fn podman_cmd(&self, store: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .arg("--tmpdir")
            .arg(store.join("tmp"))
            .args([
                "--storage-driver",
                "overlay",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        self.envs(&mut c);
        c
    }

    fn podman_output(&self, store: &Path, args: &[&str]) -> Output {
        let o = run_with_timeout(self.podman_cmd(store, args), Duration::from_secs(180));
        eprintln!(
            "podman {args:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    fn podman(&self, store: &Path, args: &[&str]) -> String {
        let o = self.podman_output(store, args);
        assert!(o.status.success(), "podman {args:?} failed");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `podman pull` with this environment's policy (registries on 127.0.0.1 without TLS).
    fn podman_pull(&self, store: &Path, source: &str) -> String {
        let policy = self.path().join("policy.json");
        let policy = policy.to_str().unwrap();
        let out = self.podman(
            store,
            &[
                "pull",
                "-q",
                "--tls-verify=false",
                "--signature-policy",
                policy,
                source,
            ],
        );
        out.lines().last().unwrap_or("").to_string()
    }
}

/// Pushes tag `tag` of `layout` to a new registry on 127.0.0.1 (gzip layers) and has
/// podman pull it into `store`: (the registry, its docker:// reference, podman's image id).
fn podman_pull_layout(
    env: &Env,
    store: &Path,
    layout: &Path,
    tag: &str,
) -> (Registry, String, String) {
    let reg = Registry::plain();
    let docker = reg.docker_ref(&format!("t/{tag}:v1"));
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &docker,
        &[
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ],
    );
    let id = env.podman_pull(store, &docker);
    assert_eq!(id.len(), 64, "podman printed the image id: {id}");
    (reg, docker, id)
}

impl Drop for Env {
    fn drop(&mut self) {
        self.unmount_leftovers();
    }
}

fn image_id(v: &Value) -> String {
    v["image_id"].as_str().unwrap().to_string()
}

fn fsck_clean(env: &Env, repo: &Path) {
    let v: Value = serde_json::from_slice(&env.ok(repo, &["--json", "fsck"])).unwrap();
    let problems = v["problems"].as_array().map_or(0, |p| p.len());
    assert_eq!(problems, 0, "fsck: {v}");
}

fn cs(store: &Path, image: &str) -> String {
    format!(
        "containers-storage:[overlay@{}+{}]{image}",
        store.join("root").display(),
        store.join("run").display()
    )
}

/// `refs/layers/<diff_id>` → the splitstream object it names.
fn layer_refs(repo: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(repo.join("refs/layers"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::canonicalize(e.path()).unwrap();
            let rel = target.strip_prefix(repo).unwrap().to_path_buf();
            (e.file_name().into_string().unwrap(), rel)
        })
        .collect();
    v.sort();
    v
}

/// Checks an imported image against the registry/layout pull `oracle` of the same image.
fn same_as(env: &Env, repo: &Path, name: &str, oracle: &Path) {
    let info: Value = serde_json::from_slice(&env.ok(repo, &["--json", "inspect", name])).unwrap();
    assert!(
        info["source"]
            .as_str()
            .unwrap()
            .starts_with("containers-storage:[overlay@"),
        "inspect shows the source: {info}"
    );
    for l in info["layers"].as_array().unwrap() {
        let diff_id = l["diff_id"].as_str().unwrap();
        let tar = env.ok(repo, &["layer", "cat", diff_id]);
        assert_eq!(sha256_digest(&tar), diff_id, "layer cat is byte-exact");
    }
    assert_eq!(
        layer_refs(repo),
        layer_refs(oracle),
        "each layer's splitstream is the same object as the oracle's"
    );
    let images = String::from_utf8(env.ok(repo, &["images"])).unwrap();
    assert!(
        images.contains("containers-storage:[overlay@"),
        "images shows the source: {images}"
    );
    fsck_clean(env, repo);
}

#[test]
fn podman_pull_from_a_registry_imports_the_registry_image() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app")]);
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("t/app:v1"),
        &[
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ],
    );
    let docker = reg.docker_ref("t/app:v1");
    let oracle = env.path().join("repo-registry");
    let want = image_id(&env.pull(&oracle, &docker, &["--tls-verify=false"]));

    let store = env.path().join("store");
    let podman_id = env.podman_pull(&store, &docker);
    assert_eq!(
        podman_id.len(),
        64,
        "podman printed the image id: {podman_id}"
    );

    // By name (normalised), by full id and by a unique id prefix.
    let host = reg.host();
    for (i, image) in [
        format!("{host}/t/app:v1"),
        podman_id.clone(),
        podman_id[..12].to_string(),
    ]
    .iter()
    .enumerate()
    {
        let repo = env.path().join(format!("repo-{i}"));
        let got = env.pull(&repo, &cs(&store, image), &["--name", "app"]);
        assert_eq!(
            image_id(&got),
            want,
            "{image}: image id differs from the registry pull"
        );
        assert_eq!(got["layers_imported"], 2);
        same_as(&env, &repo, "app", &oracle);
    }

    // Config and diff_ids as the registry pull recorded them; a present layer is not read.
    let repo = env.path().join("repo-0");
    let a: Value = serde_json::from_slice(&env.ok(&repo, &["--json", "inspect", "app"])).unwrap();
    let b: Value = serde_json::from_slice(&env.ok(&oracle, &["--json", "inspect", &want])).unwrap();
    assert_eq!(a["config_digest"], b["config_digest"]);
    assert_eq!(a["manifest_digest"], b["manifest_digest"]);
    let diff = |v: &Value| -> Vec<Value> {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["diff_id"].clone())
            .collect()
    };
    assert_eq!(diff(&a), diff(&b));
}

#[test]
fn podman_load_of_an_archive_imports_the_layout_image() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app").salt("load")]);
    let src = format!("oci:{}:app", layout.display());
    let oracle = env.path().join("repo-layout");
    let want = image_id(&env.pull(&oracle, &src, &["--name", "app"]));
    let store = env.path().join("store");
    for (kind, name) in [
        ("docker-archive", "t/loaded:v1"),
        ("oci-archive", "t/loaded-oci:v1"),
    ] {
        let archive = env.path().join(format!("{kind}.tar"));
        skopeo_copy(&src, &format!("{kind}:{}:{name}", archive.display()), &[]);
        let out = env.podman(&store, &["load", "-i", archive.to_str().unwrap()]);
        let image = out
            .lines()
            .find_map(|l| l.split_once("Loaded image")?.1.split_once(": "))
            .map(|(_, n)| n.trim().to_string())
            .unwrap_or_else(|| panic!("podman load names the image: {out}"));
        let repo = env.path().join(format!("repo-{kind}"));
        let got = env.pull(&repo, &cs(&store, &image), &["--name", "app"]);
        assert_eq!(
            image_id(&got),
            want,
            "{kind}: image id differs from pull oci:"
        );
        same_as(&env, &repo, "app", &oracle);
        // Into the layout pull's repository: another manifest (docker-archive), the same
        // diff_ids, so no layer is read again.
        let again = env.pull(&oracle, &cs(&store, &image), &[]);
        assert_eq!(image_id(&again), want);
        if again["already_present"] == false {
            assert_eq!(again["layers_reused"], 2, "{kind}: {again}");
            assert_eq!(again["layers_imported"], 0, "{kind}: {again}");
        }
    }
}

#[test]
fn a_file_changed_in_the_store_is_named() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app").salt("changed")]);
    let store = env.path().join("store");
    let (_reg, _, id) = podman_pull_layout(&env, &store, &layout, "app");
    // Flip one byte of big.bin in the store's diff directory (same size, so only the
    // contents tell).
    let big = std::fs::read_dir(store.join("root/overlay"))
        .unwrap()
        .map(|e| e.unwrap().path().join("diff/usr/bin/big.bin"))
        .find(|p| p.is_file())
        .expect("big.bin in a diff dir");
    let mut data = std::fs::read(&big).unwrap();
    data[1000] ^= 1;
    std::fs::write(&big, &data).unwrap();
    let repo = env.path().join("repo");
    let e = env.err(&repo, &["pull", &cs(&store, &id)]);
    assert!(
        e.contains(&format!(
            "{}: contents differ from the layer's (file changed in the store)",
            big.display()
        )),
        "{e}"
    );
    assert!(e.starts_with("strata: pull containers-storage:"), "{e}");
    // A shorter file is caught as soon as it is opened.
    std::fs::write(&big, &data[..100]).unwrap();
    let e = env.err(&repo, &["pull", &cs(&store, &id)]);
    assert!(
        e.contains(&format!(
            "{}: is 100 bytes but the layer's file is",
            big.display()
        )),
        "{e}"
    );
    // Nothing was tagged; what was written is garbage for gc, and fsck is clean.
    assert!(!repo.join("refs/layers").exists() || layer_refs(&repo).len() <= 1);
    fsck_clean(&env, &repo);
}

#[test]
fn owners_and_modes_come_from_the_tar_split_not_the_files() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app").salt("owners")]);
    let oracle = env.path().join("repo-layout");
    let want = image_id(&env.pull(&oracle, &format!("oci:{}:app", layout.display()), &[]));
    let store = env.path().join("store");
    let (_reg, _, id) = podman_pull_layout(&env, &store, &layout, "app");
    // What a rootless store looks like from outside its user namespace: every file owned
    // by a sub-uid, and modes as a force_mask would leave them.
    for d in std::fs::read_dir(store.join("root/overlay")).unwrap() {
        let diff = d.unwrap().path().join("diff");
        if !diff.is_dir() {
            continue;
        }
        let o = Command::new("chown")
            .args(["-R", "-h", "100000:100000"])
            .arg(&diff)
            .output()
            .unwrap();
        assert!(o.status.success());
        let o = Command::new("find")
            .arg(&diff)
            .args(["-type", "f", "-exec", "chmod", "0600", "{}", "+"])
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let repo = env.path().join("repo");
    let got = env.pull(&repo, &cs(&store, &id), &["--name", "app"]);
    assert_eq!(
        image_id(&got),
        want,
        "owners/modes taken from the files on disk"
    );
    same_as(&env, &repo, "app", &oracle);
}

#[test]
fn missing_image_and_unsupported_driver_say_so_in_one_line() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app").salt("errors")]);
    let store = env.path().join("store");
    podman_pull_layout(&env, &store, &layout, "app");
    let repo = env.path().join("repo");
    let root = store.join("root");
    let e = env.err(&repo, &["pull", &cs(&store, "no/such:image")]);
    assert_eq!(
        e,
        format!(
            "strata: pull {}: {}: no image \"no/such:image\" in the store",
            cs(&store, "no/such:image"),
            root.display()
        )
    );
    let vfs = format!(
        "containers-storage:[vfs@{}+{}]app",
        root.display(),
        store.join("run").display()
    );
    let e = env.err(&repo, &["pull", &vfs]);
    assert_eq!(
        e,
        format!(
            "strata: pull {vfs}: {}: unsupported storage driver \"vfs\" (strata reads overlay stores only)",
            root.display()
        )
    );
    // A vfs store named without a driver is recognised as one.
    let vstore = env.path().join("vstore");
    let o = env.podman_output(&vstore, &["--storage-driver", "vfs", "images"]);
    if o.status.success() {
        let e = env.err(
            &repo,
            &[
                "pull",
                &format!(
                    "containers-storage:[{}+/run/x]app",
                    vstore.join("root").display()
                ),
            ],
        );
        assert!(
            e.ends_with("unsupported storage driver \"vfs\" (strata reads overlay stores only)"),
            "{e}"
        );
    }
}

#[test]
fn a_store_locked_by_a_writer_is_busy_not_half_read() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(&layout, &[TestImage::single("app").salt("busy")]);
    let store = env.path().join("store");
    let (_reg, _, id) = podman_pull_layout(&env, &store, &layout, "app");
    // Hold the layer store's write lock as containers-storage's writers do (a POSIX
    // record lock on the whole file).
    let lock_path = store.join("root/overlay-layers/layers.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    rustix::fs::fcntl_lock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let repo = env.path().join("repo");
    let mut c = env.cmd(&repo, &["pull", &cs(&store, &id)]);
    c.env("STRATA_STORAGE_LOCK_TIMEOUT", "1");
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains(&format!(
            "{}: store busy: a writer (podman?) held the lock for more than 1 s",
            lock_path.display()
        )),
        "{e}"
    );
    // Released: the import goes through.
    rustix::fs::fcntl_lock(&lock, rustix::fs::FlockOperation::Unlock).unwrap();
    env.pull(&repo, &cs(&store, &id), &[]);
    fsck_clean(&env, &repo);
}

#[test]
fn podman_rmi_racing_the_import_never_leaves_a_partial_image() {
    if skip() {
        return;
    }
    let env = Env::new();
    let layout = env.path().join("layout");
    make_layout(
        &layout,
        &[TestImage::single("app").salt("race").big_size(16 << 20)],
    );
    let src = format!("oci:{}:app", layout.display());
    let oracle = env.path().join("repo-layout");
    let want = image_id(&env.pull(&oracle, &src, &[]));
    let store = env.path().join("store");
    let mut outcomes = Vec::new();
    let (_reg, docker, _) = podman_pull_layout(&env, &store, &layout, "app");
    for round in 0..4 {
        let id = env.podman_pull(&store, &docker);
        let repo = env.path().join(format!("repo-{round}"));
        let mut rmi = env.podman_cmd(&store, &["rmi", "-f", &id]);
        let mut pull = env.cmd(&repo, &["--json", "pull", &cs(&store, &id)]);
        // Alternate who starts first; each round the other runs meanwhile.
        let (pull_out, rmi_out) = if round % 2 == 0 {
            let p = pull
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(20 * round as u64));
            let r = rmi.output().unwrap();
            (p.wait_with_output().unwrap(), r)
        } else {
            let r = rmi
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(10 * round as u64));
            let p = pull.output().unwrap();
            (p, r.wait_with_output().unwrap())
        };
        assert!(
            rmi_out.status.success(),
            "podman rmi: {}",
            String::from_utf8_lossy(&rmi_out.stderr)
        );
        let err = String::from_utf8_lossy(&pull_out.stderr).into_owned();
        if pull_out.status.success() {
            let v: Value = serde_json::from_slice(&pull_out.stdout).unwrap();
            assert_eq!(image_id(&v), want, "round {round}: wrong image");
            outcomes.push("imported");
        } else {
            let lines: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("created repository") && !l.contains("fs-verity"))
                .collect();
            assert_eq!(lines.len(), 1, "round {round}: one clear line: {err}");
            assert!(lines[0].contains("no image"), "round {round}: {err}");
            outcomes.push("image gone");
        }
        fsck_clean(&env, &repo);
    }
    eprintln!("outcomes: {outcomes:?}");
}

/// An xfs filesystem with reflink on a loop device, mounted for the test's duration.
struct XfsLoop {
    mnt: PathBuf,
}

impl XfsLoop {
    fn new(dir: &Path, size_mib: u64) -> Result<XfsLoop, String> {
        let img = dir.join("xfs.img");
        let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        let o = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .output()
            .map_err(|e| format!("mkfs.xfs: {e}"))?;
        if !o.status.success() {
            return Err(format!("mkfs.xfs: {}", String::from_utf8_lossy(&o.stderr)));
        }
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let o = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mount -o loop: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(XfsLoop { mnt })
    }

    fn free_bytes(&self) -> u64 {
        rustix::fs::sync();
        let s = rustix::fs::statfs(&self.mnt).unwrap();
        s.f_bfree * s.f_bsize as u64
    }
}

impl Drop for XfsLoop {
    fn drop(&mut self) {
        // Recursively: a store on it may still have podman's bind mount.
        let _ = Command::new("umount").arg("-R").arg(&self.mnt).status();
    }
}

#[test]
fn zero_copy_on_a_reflink_filesystem() {
    if skip() {
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let fs = match XfsLoop::new(outer.path(), 1024) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping: no xfs loop filesystem ({why})");
            return;
        }
    };
    let env = Env::new_in(Some(&fs.mnt));
    let layout = outer.path().join("layout");
    const BIG: usize = 64 << 20;
    make_layout(
        &layout,
        &[TestImage::single("big").salt("zero-copy").big_size(BIG)],
    );
    let store = env.path().join("store");
    let (_reg, _, id) = podman_pull_layout(&env, &store, &layout, "big");
    let repo = env.path().join("repo");
    env.ok(&repo, &["init"]);
    let before = fs.free_bytes();
    let got = env.pull(&repo, &cs(&store, &id), &["--name", "big"]);
    let after = fs.free_bytes();
    let used = before.saturating_sub(after);
    eprintln!(
        "zero copy: free before {before} after {after}: {used} bytes used for a {BIG}-byte file ({:.2} %)",
        used as f64 * 100.0 / BIG as f64
    );
    assert!(
        (used as f64) < BIG as f64 * 0.10,
        "the import used {used} bytes of data blocks for a {BIG}-byte file: not zero copy"
    );
    let tar = env.ok(&repo, &["layer", "cat", &got_diff_id(&env, &repo)]);
    assert!(tar.len() > BIG);
    // The object really is the file's contents.
    let oracle = outer.path().join("repo-layout");
    let want = image_id(&env.pull(&oracle, &format!("oci:{}:big", layout.display()), &[]));
    assert_eq!(image_id(&got), want);
    fsck_clean(&env, &repo);
}

/// The diff_id of the image's first layer (the one holding big.bin).
fn got_diff_id(env: &Env, repo: &Path) -> String {
    let info: Value = serde_json::from_slice(&env.ok(repo, &["--json", "inspect", "big"])).unwrap();
    info["layers"][0]["diff_id"].as_str().unwrap().to_string()
}
