//! `strata setup-root` against the real kernel: an image becomes the root
//! of a (private) mount namespace the way an initramfs would use it, with
//! the per-deployment /etc overlay and /var, and the physical root below.
//! This host has no fs-verity, so the image is named with `composefs=?ID`;
//! the fs-verity-required path runs in the qemu guests (vm-tests/).
//! Needs root, util-linux `unshare` and a kernel with EROFS and overlayfs;
//! skips with a printed reason otherwise.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root");
    }
    let ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then_some("cannot make a mount namespace (unshare -m)")
}

/// Runs `script` with sh in a private mount namespace; `$S` is strata,
/// `$PHYS` the "physical root" (bind-mounted on itself to be a mount point).
fn in_namespace(phys: &Path, script: &str) -> Output {
    let full = format!("set -e\nmount --bind \"$PHYS\" \"$PHYS\"\n{script}");
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &full])
        .env("S", STRATA)
        .env("PHYS", phys)
        .output()
        .unwrap()
}

fn strata(args: &[&str]) -> String {
    let r = Command::new(STRATA).args(args).output().unwrap();
    assert!(
        r.status.success(),
        "strata {args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).unwrap().trim().to_string()
}

/// A physical root with a repository holding an image of `tree` (made by `fill`).
fn setup(fill: impl FnOnce(&Path)) -> (tempfile::TempDir, String) {
    let tmp = tempfile::Builder::new()
        .prefix("strata-setup-root-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fill(&tree);
    let phys = tmp.path().join("phys");
    let repo = phys.join("composefs");
    fs::create_dir_all(&phys).unwrap();
    let id = strata(&[
        "--repo",
        repo.to_str().unwrap(),
        "-q",
        "create-image",
        tree.to_str().unwrap(),
        "root",
    ]);
    (tmp, id)
}

fn root_tree(t: &Path) {
    for d in ["etc", "var", "sysroot", "usr/lib"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::write(t.join("etc/os-release"), "ID=setup-root-test\n").unwrap();
    fs::write(
        t.join("usr/lib/data"),
        "an object, longer than sixty-four bytes ".repeat(4),
    )
    .unwrap();
}

fn kernel_cannot(out: &Output) -> bool {
    let e = String::from_utf8_lossy(&out.stderr);
    e.contains("this kernel has no") || e.contains("EROFS refused")
}

#[test]
fn image_becomes_the_root_with_etc_and_var_from_state() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let (tmp, id) = setup(root_tree);
    let phys = tmp.path().join("phys");
    fs::write(
        tmp.path().join("cmdline"),
        format!("ro quiet composefs=?{id} --\n"),
    )
    .unwrap();
    let out = in_namespace(
        &phys,
        &format!(
            r#"
            $S setup-root --cmdline {cmdline} --sysroot "$PHYS"
            echo "root=$(findmnt -no FSTYPE,OPTIONS "$PHYS")"
            echo "etc=$(findmnt -no FSTYPE "$PHYS/etc")"
            echo "os=$(cat "$PHYS/etc/os-release")"
            echo written >"$PHYS/etc/hostname"
            echo kept >"$PHYS/var/log"
            touch "$PHYS/usr/new" 2>/dev/null && echo "usr=writable" || echo "usr=read-only"
            test -f "$PHYS/sysroot/composefs/meta.json" && echo "sysroot=ok"
            test -e "$PHYS.tmp" && echo "staging=left" || echo "staging=gone"
            "#,
            cmdline = tmp.path().join("cmdline").display()
        ),
    );
    if kernel_cannot(&out) {
        eprintln!("SKIP: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("composefs root {id}")), "{stdout}");
    assert!(stdout.contains("root=overlay ro,"), "{stdout}");
    assert!(stdout.contains("etc=overlay"), "{stdout}");
    assert!(stdout.contains("os=ID=setup-root-test"), "{stdout}");
    assert!(stdout.contains("usr=read-only"), "{stdout}");
    assert!(stdout.contains("sysroot=ok"), "{stdout}");
    assert!(stdout.contains("staging=gone"), "{stdout}");
    // What the booted system wrote is in the deployment's state, on the physical root.
    let state = phys.join("state/deploy").join(&id);
    assert_eq!(
        fs::read_to_string(state.join("etc-upper/hostname")).unwrap(),
        "written\n"
    );
    assert_eq!(fs::read_to_string(state.join("var/log")).unwrap(), "kept\n");
}

#[test]
fn refusals_are_one_line_and_leave_nothing_mounted() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    // An image without /var: found only after the image is mounted, so the
    // mount must be undone.
    let (tmp, id) = setup(|t| {
        fs::create_dir_all(t.join("etc")).unwrap();
        fs::create_dir_all(t.join("sysroot")).unwrap();
    });
    let phys = tmp.path().join("phys");
    let wrong = format!("{}{}", &id[..63], if id.ends_with('0') { "1" } else { "0" });
    let out = in_namespace(
        &phys,
        &format!(
            r#"
            for arg in "?{id}" "{id}" "?{wrong}" "{id}x"; do
                $S setup-root --image "$arg" --sysroot "$PHYS" 2>&1 && echo "UNEXPECTED SUCCESS $arg"
                echo "mounts=$(findmnt -rno TARGET | grep -c "^$PHYS")"
            done
            "#
        ),
    );
    if kernel_cannot(&out) {
        eprintln!("SKIP: {}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert_eq!(
        lines[0],
        format!("strata: image {id} has no /var directory to mount on")
    );
    assert!(
        lines[2].contains("fs-verity is required, but the repository"),
        "{stdout}"
    );
    assert!(lines[4].contains("is not in the repository"), "{stdout}");
    assert!(
        lines[6].starts_with(&format!("strata: composefs={id}x: ")),
        "{stdout}"
    );
    // only the bind mount of the physical root, every time
    for i in [1, 3, 5, 7] {
        assert_eq!(lines[i], "mounts=1", "{stdout}");
    }
}

/// Under a shared `/` (as systemd sets it up in an initramfs) mounts cannot
/// be moved: setup-root makes them private first, and says what is wrong
/// when told to leave propagation alone.
#[test]
fn shared_root_propagation_is_handled() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let (tmp, id) = setup(root_tree);
    let phys = tmp.path().join("phys");
    let run = |extra: &str| {
        in_namespace(
            &phys,
            &format!(
                r#"
                mount --make-rshared /
                $S setup-root --image '?{id}' --sysroot "$PHYS" {extra}
                echo "root=$(findmnt -no FSTYPE "$PHYS")"
                "#
            ),
        )
    };
    let out = run("--keep-propagation");
    if kernel_cannot(&out) {
        eprintln!("SKIP: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "moving under a shared / should fail");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("mount --make-rprivate /"), "{e}");
    let out = run("");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("root=overlay"), "{stdout}");
}
