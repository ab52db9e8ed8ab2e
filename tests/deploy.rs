//! `strata deploy`, `status`, `rollback` and deployment gc against scratch
//! `--sysroot` and `--boot` directories: entries, kernels, state, records,
//! the /etc three-way rule, gc's choices, failures that change nothing and
//! deploys killed with SIGKILL at random points.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
const KVER: &str = "6.1.0-test";

struct Scratch {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sys: PathBuf,
    boot: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::Builder::new()
            .prefix("strata-deploy-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = tmp.path().to_path_buf();
        let (sys, boot) = (root.join("sys"), root.join("boot"));
        fs::create_dir_all(&sys).unwrap();
        fs::create_dir_all(&boot).unwrap();
        Scratch {
            _tmp: tmp,
            root,
            sys,
            boot,
        }
    }

    fn repo(&self) -> PathBuf {
        self.sys.join("composefs")
    }

    fn cmdline(&self, booted: Option<&str>) -> PathBuf {
        let p = self.root.join("cmdline");
        let line = match booted {
            Some(id) => format!("console=ttyS0 composefs=?{id} quiet\n"),
            None => "console=ttyS0\n".into(),
        };
        fs::write(&p, line).unwrap();
        p
    }

    /// Runs strata with --sysroot/--boot (and --cmdline) added for the
    /// deployment commands.
    fn run(&self, args: &[&str], booted: Option<&str>) -> Output {
        let cl = self.cmdline(booted);
        let mut c = Command::new(STRATA);
        c.args(args);
        c.arg("--sysroot")
            .arg(&self.sys)
            .arg("--boot")
            .arg(&self.boot);
        c.arg("--cmdline").arg(cl);
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str], booted: Option<&str>) -> String {
        let r = self.run(args, booted);
        assert!(
            r.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8(r.stdout).unwrap().trim().to_string()
    }

    /// An image named `name` in the scratch repository, from a tree with a
    /// kernel (`kernel_bytes` long) and the /etc files given.
    fn image(&self, name: &str, kernel_bytes: usize, etc: &[(&str, &str)]) -> String {
        let t = self.root.join(format!("tree-{name}"));
        let _ = fs::remove_dir_all(&t);
        let m = t.join("usr/lib/modules").join(KVER);
        fs::create_dir_all(&m).unwrap();
        fs::create_dir_all(t.join("etc")).unwrap();
        fs::create_dir_all(t.join("usr/lib/bootc/kargs.d")).unwrap();
        fs::write(m.join("vmlinuz"), pseudo_random(name, kernel_bytes)).unwrap();
        fs::write(m.join("initramfs.img"), pseudo_random("initrd", 300_000)).unwrap();
        fs::write(
            t.join("usr/lib/bootc/kargs.d/10-console.toml"),
            "kargs = [\"console=ttyS0\", \"root=/dev/image\"]\n",
        )
        .unwrap();
        fs::write(
            t.join("usr/lib/bootc/kargs.d/20-other-arch.toml"),
            "kargs = [\"never=1\"]\nmatch-architectures = [\"s390x\", \"ppc64le\"]\n",
        )
        .unwrap();
        fs::write(
            t.join("etc/os-release"),
            format!("PRETTY_NAME=\"Test OS {name}\"\n"),
        )
        .unwrap();
        for (p, c) in etc {
            fs::write(t.join("etc").join(p), c).unwrap();
        }
        self.create_image(&t, name)
    }

    fn create_image(&self, tree: &Path, name: &str) -> String {
        let r = Command::new(STRATA)
            .arg("--repo")
            .arg(self.repo())
            .args(["-q", "create-image"])
            .arg(tree)
            .arg(name)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap().trim().to_string()
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.boot.join("loader/entries"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn status(&self, booted: Option<&str>) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "status"], booted)).unwrap()
    }
}

/// Deterministic bytes that do not compress or repeat.
fn pseudo_random(seed: &str, n: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(n + 32);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < n {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(n);
    out
}

fn role(s: &serde_json::Value, r: &str) -> Option<String> {
    s[r]["image"].as_str().map(String::from)
}

/// Every path under `p` with its type and contents (symlink targets, device
/// numbers): a picture to compare before and after.
fn snapshot(p: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return;
        };
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        let ft = m.file_type();
        let v = if ft.is_dir() {
            for e in fs::read_dir(p).unwrap().flatten() {
                walk(base, &e.path(), out);
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("-> {}", fs::read_link(p).unwrap().display())
        } else if ft.is_file() {
            use sha2::{Digest, Sha256};
            format!("file {}", hex::encode(Sha256::digest(fs::read(p).unwrap())))
        } else {
            format!("special {:o} {}", m.mode(), m.rdev())
        };
        out.insert(rel, v);
    }
    walk(p, p, &mut out);
    out
}

#[test]
fn deploy_writes_entry_kernel_state_and_record() {
    let s = Scratch::new();
    let a = s.image("a", 100_000, &[("hostname", "a\n")]);
    let out = s.ok(
        &["deploy", "a", "--karg", "rw", "--karg", "root=/dev/local"],
        None,
    );
    assert_eq!(out, a);
    let entries = s.entries();
    let name = format!("strata-00000001-{a}.conf");
    assert_eq!(entries, std::slice::from_ref(&name));
    let text = fs::read_to_string(s.boot.join("loader/entries").join(&name)).unwrap();
    let kdir = text
        .lines()
        .find_map(|l| l.strip_prefix("linux /strata/"))
        .and_then(|l| l.strip_suffix("/vmlinuz"))
        .unwrap()
        .to_string();
    assert!(kdir.starts_with(&format!("{KVER}-")), "{kdir}");
    // the image's kargs (x86_64 ones only), --karg replacing the image's root=
    assert_eq!(
        text,
        format!(
            "title Test OS a (a)\nversion 1\nsort-key strata\nlinux /strata/{kdir}/vmlinuz\n\
             initrd /strata/{kdir}/initramfs.img\n\
             options composefs=?{a} console=ttyS0 rw root=/dev/local\n"
        )
    );
    let kd = s.boot.join("strata").join(&kdir);
    assert_eq!(
        fs::read(kd.join("vmlinuz")).unwrap(),
        pseudo_random("a", 100_000)
    );
    assert_eq!(
        fs::read(kd.join("initramfs.img")).unwrap(),
        pseudo_random("initrd", 300_000)
    );
    let st = s.sys.join("state/deploy").join(&a);
    assert!(st.join("etc-upper").is_dir() && st.join("etc-work").is_dir());
    assert_eq!(
        fs::read_link(st.join("var")).unwrap(),
        Path::new("../../var")
    );
    assert!(s.sys.join("state/var").is_dir());
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(s.repo().join("deployments").join(format!("{a}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["image"], a.as_str());
    assert_eq!(rec["name"], "a");
    assert_eq!(rec["source"], "a");
    assert_eq!(rec["kernel_version"], KVER);
    assert_eq!(
        rec["image_kargs"],
        serde_json::json!(["console=ttyS0", "root=/dev/image"])
    );
    assert_eq!(
        rec["local_kargs"],
        serde_json::json!(["rw", "root=/dev/local"])
    );
    // fsck checks records: clean now, a record naming a missing image is named
    let fsck = |s: &Scratch| {
        Command::new(STRATA)
            .arg("--repo")
            .arg(s.repo())
            .arg("fsck")
            .output()
            .unwrap()
    };
    assert!(fsck(&s).status.success());
    let bogus = s
        .repo()
        .join("deployments")
        .join(format!("{}.json", "ab".repeat(32)));
    fs::write(&bogus, b"{").unwrap();
    let out = String::from_utf8(fsck(&s).stdout).unwrap();
    assert_eq!(
        out,
        format!(
            "deployment record {}: not a readable record\n",
            bogus.display()
        )
    );
    fs::remove_file(&bogus).unwrap();
    let st = s.status(Some(&a));
    assert_eq!(st["booted"], a.as_str());
    assert_eq!(role(&st, "default").as_deref(), Some(a.as_str()));
    assert!(st["rollback"].is_null());
    assert_eq!(st["default"]["booted"], true);

    // the next deployment inherits the local kargs; the same kernel is shared
    let b = s.image("b", 100_000, &[]);
    assert_ne!(a, b);
    s.ok(&["deploy", "b", "--karg", "quiet"], Some(&a));
    let text = fs::read_to_string(
        s.boot
            .join("loader/entries")
            .join(format!("strata-00000002-{b}.conf")),
    )
    .unwrap();
    assert!(text.contains(&format!(
        "options composefs=?{b} console=ttyS0 rw root=/dev/local quiet\n"
    )));
    // a different kernel (seed "b"), so a second kernel directory
    assert_eq!(fs::read_dir(s.boot.join("strata")).unwrap().count(), 2);
}

#[test]
fn order_rollback_and_status() {
    let s = Scratch::new();
    let a = s.image("a", 50_000, &[]);
    let b = s.image("b", 50_000, &[]);
    s.ok(&["deploy", "a"], None);
    s.ok(&["deploy", "b"], Some(&a));
    let st = s.status(Some(&a));
    assert_eq!(role(&st, "default"), Some(b.clone()));
    assert_eq!(role(&st, "rollback"), Some(a.clone()));
    assert_eq!(st["booted"], a.as_str());
    assert_eq!(st["deployments"].as_array().unwrap().len(), 2);
    assert_eq!(st["deployments"][1]["booted"], true);
    assert_eq!(st["default"]["source"], "b");

    s.ok(&["rollback"], Some(&a));
    let st = s.status(Some(&a));
    assert_eq!(role(&st, "default"), Some(a.clone()));
    assert_eq!(role(&st, "rollback"), Some(b.clone()));
    assert_eq!(
        s.entries(),
        [
            format!("strata-00000002-{b}.conf"),
            format!("strata-00000003-{a}.conf")
        ]
    );
    s.ok(&["rollback"], Some(&a));
    let st = s.status(None);
    assert_eq!(role(&st, "default"), Some(b.clone()));
    assert!(st["booted"].is_null());

    // redeploying an image already deployed puts it on top, once
    s.ok(&["deploy", "a"], None);
    let st = s.status(None);
    assert_eq!(role(&st, "default"), Some(a.clone()));
    assert_eq!(s.entries().len(), 2);

    // with one deployment there is nothing to roll back to
    let s1 = Scratch::new();
    s1.image("a", 50_000, &[]);
    s1.ok(&["deploy", "a"], None);
    let r = s1.run(&["rollback"], None);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.starts_with("strata: no rollback deployment: ")
            && err.ends_with("holds 1 strata deployment(s)\n"),
        "{err}"
    );
}

#[test]
fn etc_three_way_rule() {
    let s = Scratch::new();
    let a = s.image(
        "a",
        50_000,
        &[
            ("test.conf", "setting=base\n"),
            ("hostname", "host-a\n"),
            ("motd", "motd a\n"),
            ("removed", "the user deletes this\n"),
        ],
    );
    s.ok(&["deploy", "a"], None);
    // what a running system would leave in A's upper
    let up = s.sys.join("state/deploy").join(&a).join("etc-upper");
    fs::write(up.join("test.conf"), "setting=user\n").unwrap(); // changed
    fs::write(up.join("hostname"), "host-a\n").unwrap(); // copied up, same bytes
    fs::write(up.join("local.conf"), "mine\n").unwrap(); // new
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("removed"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap(); // whiteout: deleted
    fs::create_dir_all(up.join("ssh")).unwrap();
    fs::write(up.join("ssh/key"), "secret\n").unwrap();
    let b = s.image(
        "b",
        50_000,
        &[
            ("test.conf", "setting=new-default\n"), // changed by both: user wins
            ("hostname", "host-b\n"),               // changed by the image only
            ("motd", "motd b\n"),
            ("removed", "the user deletes this\n"),
        ],
    );
    let r = s.ok(&["--json", "deploy", "b"], Some(&a));
    let rep: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(rep["etc_from"], a.as_str());
    assert_eq!(
        rep["etc"]["kept"],
        serde_json::json!([
            "/etc/local.conf",
            "/etc/removed",
            "/etc/ssh/key",
            "/etc/test.conf"
        ])
    );
    assert_eq!(rep["etc"]["dropped"], serde_json::json!(["/etc/hostname"]));
    assert_eq!(
        rep["etc"]["conflicts"],
        serde_json::json!(["/etc/test.conf"])
    );
    let nb = s.sys.join("state/deploy").join(&b).join("etc-upper");
    assert_eq!(
        fs::read_to_string(nb.join("test.conf")).unwrap(),
        "setting=user\n"
    );
    assert!(!nb.join("hostname").exists(), "unchanged copy-up carried");
    assert_eq!(fs::read_to_string(nb.join("local.conf")).unwrap(), "mine\n");
    assert_eq!(fs::read_to_string(nb.join("ssh/key")).unwrap(), "secret\n");
    let m = fs::symlink_metadata(nb.join("removed")).unwrap();
    assert!(
        m.file_type().is_char_device() && m.rdev() == 0,
        "whiteout kept"
    );
    // A's own state is untouched
    assert_eq!(
        fs::read_to_string(up.join("test.conf")).unwrap(),
        "setting=user\n"
    );
}

#[test]
fn gc_keeps_booted_default_and_rollback() {
    let s = Scratch::new();
    let ids: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| s.image(n, 40_000, &[]))
        .collect();
    for n in ["a", "b", "c", "d"] {
        s.ok(&["deploy", n], None);
    }
    // names are GC roots of their own: drop them, deployments must hold
    for n in ["a", "b", "c", "d"] {
        Command::new(STRATA)
            .arg("--repo")
            .arg(s.repo())
            .args(["rm", n])
            .output()
            .unwrap();
    }
    // a plain repository gc (no deployment pruning: wrong --boot) keeps every deployed image
    let empty = s.root.join("empty-boot");
    fs::create_dir_all(&empty).unwrap();
    let r = Command::new(STRATA)
        .arg("--repo")
        .arg(s.repo())
        .args(["gc", "--boot"])
        .arg(&empty)
        .arg("--sysroot")
        .arg(&s.sys)
        .args(["--cmdline", "/dev/null"])
        .output()
        .unwrap();
    assert!(r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no strata entries in"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    for id in &ids {
        assert!(s.repo().join("images").join(id).exists());
    }
    assert_eq!(s.entries().len(), 4);

    // booted: b (order d, c, b, a): gc keeps d (default), c (rollback), b (booted)
    let out = s.ok(&["gc", "--repo", s.repo().to_str().unwrap()], Some(&ids[1]));
    assert!(
        out.contains(&format!("removed deployment {}", ids[0])),
        "{out}"
    );
    assert_eq!(out.matches("removed deployment").count(), 1, "{out}");
    assert_eq!(s.entries().len(), 3);
    assert!(!s.repo().join("images").join(&ids[0]).exists());
    assert!(!s.sys.join("state/deploy").join(&ids[0]).exists());
    assert!(!s
        .repo()
        .join("deployments")
        .join(format!("{}.json", ids[0]))
        .exists());
    // a's kernel (its own bytes) is gone, the others' stay
    assert_eq!(fs::read_dir(s.boot.join("strata")).unwrap().count(), 3);
    for id in &ids[1..] {
        assert!(s.repo().join("images").join(id).exists());
    }
    // booted d now: b goes; --keep 3 would have kept it
    let out = s.ok(&["gc", "--dry-run", "--keep", "3"], Some(&ids[3]));
    assert!(!out.contains("removed deployment"), "{out}");
    let out = s.ok(&["gc"], Some(&ids[3]));
    assert!(
        out.contains(&format!("removed deployment {}", ids[1])),
        "{out}"
    );
    let st = s.status(Some(&ids[3]));
    assert_eq!(role(&st, "default"), Some(ids[3].clone()));
    assert_eq!(role(&st, "rollback"), Some(ids[2].clone()));
    assert_eq!(st["deployments"].as_array().unwrap().len(), 2);
    // and never below two, whatever --keep says
    s.ok(&["gc", "--keep", "0"], None);
    assert_eq!(s.entries().len(), 2);
}

/// The error of a failed deploy: exit 1, one line on stderr.
fn one_line_error(r: &Output) -> String {
    assert!(!r.status.success());
    let err = String::from_utf8(r.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn failures_change_nothing() {
    let s = Scratch::new();
    s.image("a", 50_000, &[]);
    s.ok(&["deploy", "a"], None);
    let picture = |s: &Scratch| (snapshot(&s.boot), snapshot(&s.sys.join("state")));
    let deployments = |s: &Scratch| snapshot(&s.repo().join("deployments"));
    let (before, dep_before) = (picture(&s), deployments(&s));

    // no kernel
    let t = s.root.join("tree-nokernel");
    fs::create_dir_all(t.join("etc")).unwrap();
    fs::write(t.join("etc/os-release"), "ID=x\n").unwrap();
    let nk = s.create_image(&t, "nokernel");
    let err = one_line_error(&s.run(&["deploy", "nokernel"], None));
    assert_eq!(
        err,
        format!("strata: deploy nokernel: image {nk} has no kernel to boot: no /usr/lib/modules directory\n")
    );
    // an initramfs missing
    fs::create_dir_all(t.join("usr/lib/modules/1.0")).unwrap();
    fs::write(
        t.join("usr/lib/modules/1.0/vmlinuz"),
        pseudo_random("k", 5000),
    )
    .unwrap();
    let ni = s.create_image(&t, "noinitrd");
    let err = one_line_error(&s.run(&["deploy", "noinitrd"], None));
    assert_eq!(
        err,
        format!("strata: deploy noinitrd: image {ni} has no kernel to boot: no /usr/lib/modules/1.0/initramfs.img\n")
    );
    assert_eq!(picture(&s), before);
    assert_eq!(deployments(&s), dep_before);

    // a corrupt image: one byte of its EROFS flipped
    let c = s.image("corrupt", 50_000, &[("x", "y")]);
    let img = fs::canonicalize(s.repo().join("images").join(&c)).unwrap();
    let mut bytes = fs::read(&img).unwrap();
    bytes[1100] ^= 0x40;
    fs::write(&img, bytes).unwrap();
    let err = one_line_error(&s.run(&["deploy", "corrupt"], None));
    assert!(
        err.starts_with(&format!("strata: deploy corrupt: image {c} ("))
            && err.contains("): corrupt: its fs-verity digest is "),
        "{err}"
    );
    assert_eq!(picture(&s), before);
    assert_eq!(deployments(&s), dep_before);

    // a corrupt kernel object
    let k = s.image("badobject", 60_000, &[]);
    let kernel_obj = {
        let d = Command::new(STRATA)
            .args(["composefs-info", "measure-file"])
            .arg(
                s.root
                    .join("tree-badobject/usr/lib/modules")
                    .join(KVER)
                    .join("vmlinuz"),
            )
            .output()
            .unwrap();
        let h = String::from_utf8(d.stdout)
            .unwrap()
            .trim()
            .trim_start_matches("sha256:")
            .to_string();
        s.repo().join("objects").join(&h[..2]).join(&h[2..])
    };
    let mut kb = fs::read(&kernel_obj).unwrap();
    kb[10] ^= 1;
    fs::write(&kernel_obj, kb).unwrap();
    let err = one_line_error(&s.run(&["deploy", "badobject"], None));
    assert!(
        err.starts_with(&format!(
            "strata: deploy badobject: image {k}: /usr/lib/modules/{KVER}/vmlinuz: object "
        )) && err.contains("has digest"),
        "{err}"
    );
    assert_eq!(picture(&s), before);
    assert_eq!(deployments(&s), dep_before);

    // neither a name nor a source
    let err = one_line_error(&s.run(&["deploy", "nosuch"], None));
    assert_eq!(err, "strata: deploy nosuch: nosuch: not an image in the repository nor a pull source (docker://, oci:, oci-archive:, containers-storage:)\n");
}

#[test]
fn full_boot_partition_changes_nothing() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let s = Scratch::new();
    s.image("a", 200_000, &[]);
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&s.boot)
        .status()
        .unwrap();
    assert!(st.success());
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(s.boot.clone());
    s.ok(&["deploy", "a"], None);
    let before = (snapshot(&s.boot), snapshot(&s.sys.join("state")));
    let dep_before = snapshot(&s.repo().join("deployments"));
    // 2 MB of kernel does not fit in what is left of 1 MB
    s.image("big", 2_000_000, &[]);
    let err = one_line_error(&s.run(&["deploy", "big"], Some("0")));
    assert!(
        err.starts_with("strata: deploy big: write ")
            && err.ends_with(": No space left on device (nothing was changed; `strata gc` removes old deployments)\n"),
        "{err}"
    );
    assert_eq!((snapshot(&s.boot), snapshot(&s.sys.join("state"))), before);
    assert_eq!(snapshot(&s.repo().join("deployments")), dep_before);
}

/// Files every strata entry names exist whole (as the image has them).
fn entries_boot(s: &Scratch) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for name in s.entries() {
        if !name.ends_with(".conf") {
            continue; // a temporary file is no entry
        }
        let text = fs::read_to_string(s.boot.join("loader/entries").join(&name))
            .map_err(|e| format!("{name}: {e}"))?;
        for l in text.lines() {
            for key in ["linux ", "initrd "] {
                if let Some(p) = l.strip_prefix(key) {
                    let f = s.boot.join(p.trim_start_matches('/'));
                    let len = fs::metadata(&f)
                        .map_err(|e| format!("{name}: {p}: {e}"))?
                        .len();
                    if len == 0 {
                        return Err(format!("{name}: {p} is empty"));
                    }
                }
            }
        }
        let id = name
            .rsplit('-')
            .next()
            .unwrap()
            .trim_end_matches(".conf")
            .to_string();
        if !s.repo().join("images").join(&id).exists() {
            return Err(format!("{name}: image {id} missing"));
        }
        if !s
            .sys
            .join("state/deploy")
            .join(&id)
            .join("etc-upper")
            .is_dir()
        {
            return Err(format!("{name}: state of {id} missing"));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[test]
fn sigkill_during_deploy_keeps_the_old_default() {
    let s = Scratch::new();
    let a = s.image("a", 100_000, &[]);
    s.ok(&["deploy", "a"], None);
    let a_entry = s.entries()[0].clone();
    let a_text = fs::read(s.boot.join("loader/entries").join(&a_entry)).unwrap();
    let a_kernel = snapshot(&s.boot.join("strata"));
    // a big kernel, so that a deploy takes long enough to be killed inside
    let b = s.image("b", 24_000_000, &[]);
    // how long one deploy of b takes (in a scratch copy of its own)
    let t = {
        let m = Scratch::new();
        m.image("b", 24_000_000, &[]);
        let t0 = Instant::now();
        m.ok(&["deploy", "b"], None);
        t0.elapsed()
    };
    let mut rng = fastrand::Rng::with_seed(14);
    let (mut killed, mut finished) = (0, 0);
    for i in 0..40 {
        let cl = s.cmdline(Some(&a));
        let mut child = Command::new(STRATA)
            .args(["-q", "deploy", "b", "--sysroot"])
            .arg(&s.sys)
            .arg("--boot")
            .arg(&s.boot)
            .arg("--cmdline")
            .arg(cl)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = t.mul_f64(rng.f64() * 1.1);
        std::thread::sleep(delay);
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            finished += 1;
        } else {
            killed += 1;
        }
        // the old default's entry and what it names: untouched
        assert_eq!(
            fs::read(s.boot.join("loader/entries").join(&a_entry)).unwrap(),
            a_text,
            "round {i}: A's entry changed"
        );
        let now = snapshot(&s.boot.join("strata"));
        for (k, v) in &a_kernel {
            assert_eq!(now.get(k), Some(v), "round {i}: A's kernel {k:?}");
        }
        let ids = entries_boot(&s).unwrap_or_else(|e| panic!("round {i} ({delay:?}): {e}"));
        assert!(ids.contains(&a), "round {i}: A's entry gone");
        // the default is A, or B complete
        let st = s.status(Some(&a));
        let def = role(&st, "default").unwrap();
        assert!(def == a || def == b, "round {i}: default {def}");
        if def == b {
            // start over from A as the default for the next round
            for e in s.entries() {
                if e.contains(&b) {
                    fs::remove_file(s.boot.join("loader/entries").join(e)).unwrap();
                }
            }
        }
    }
    eprintln!(
        "deploy of a 24 MB kernel takes {:?}; {killed} deploys killed, {finished} finished",
        t
    );
    assert!(
        killed >= 10,
        "only {killed} of 40 deploys were killed inside"
    );
    // gc removes the leftovers: no records, state or kernels without an entry
    s.ok(&["gc"], Some(&a));
    let recs: Vec<_> = fs::read_dir(s.repo().join("deployments"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(recs, [format!("{a}.json")]);
    let states: Vec<_> = fs::read_dir(s.sys.join("state/deploy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(states, std::slice::from_ref(&a));
    assert_eq!(snapshot(&s.boot.join("strata")), a_kernel);
    // and a deploy after all that works
    s.ok(&["deploy", "b"], Some(&a));
    assert_eq!(role(&s.status(None), "default"), Some(b));
}
