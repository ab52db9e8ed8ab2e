//! Repository behaviour through the CLI, on real filesystems: create-image,
//! images, dump, rm, gc, fsck (and what fsck must detect), crashes at random
//! moments, concurrent writers with gc, and bad input.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

fn strata(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "panic: {e}");
    e
}

/// A tree of `n` files, a few shared between trees with the same `seed`.
fn make_tree(dir: &Path, n: usize, seed: u32) {
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 17));
        fs::create_dir_all(&sub).unwrap();
        let body = if i % 3 == 0 {
            format!("shared content number {i} ").repeat(10 + i % 50)
        } else {
            format!("tree {seed} file {i} ").repeat(1 + i % 300)
        };
        fs::write(sub.join(format!("f{i}")), body).unwrap();
    }
    fs::write(dir.join("small"), b"x").unwrap();
    std::os::unix::fs::symlink("d0/f0", dir.join("link")).unwrap();
}

fn fsck_json(repo: &Path) -> (bool, serde_json::Value) {
    let o = strata(repo, &["--json", "fsck"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck --json output: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    (o.status.success(), v)
}

fn objects_of(repo: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        let d = d.unwrap();
        if d.file_type().unwrap().is_dir() {
            for f in fs::read_dir(d.path()).unwrap() {
                v.push(f.unwrap().path());
            }
        }
    }
    v.sort();
    v
}

/// Temporary filesystems to run on: tmpfs always; an ext4 loop filesystem when root.
struct Fs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Fs {
    fn tmpfs_or_dir() -> Fs {
        let dir = tempfile::Builder::new()
            .prefix("strata-repo-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Fs {
            dir,
            mounted: false,
        }
    }

    fn loop_fs(kind: &str, size_mb: u32) -> Option<Fs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: {kind} loop filesystem needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-fs-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let f = fs::File::create(&img).unwrap();
        f.set_len(size_mb as u64 * 1024 * 1024).unwrap();
        let mkfs = Command::new(format!("mkfs.{kind}"))
            .arg("-q")
            .arg(&img)
            .output();
        match mkfs {
            Ok(o) if o.status.success() => {}
            _ => {
                eprintln!("SKIP: mkfs.{kind} unavailable");
                return None;
            }
        }
        let m = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        if !m.status.success() {
            eprintln!(
                "SKIP: cannot loop-mount {kind}: {}",
                String::from_utf8_lossy(&m.stderr)
            );
            return None;
        }
        Some(Fs { dir, mounted: true })
    }

    fn path(&self) -> PathBuf {
        if self.mounted {
            self.dir.path().join("mnt")
        } else {
            self.dir.path().to_path_buf()
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg(self.dir.path().join("mnt"))
                .status();
        }
    }
}

fn lifecycle(base: &Path) {
    let repo = base.join("repo");
    let src = base.join("src");
    make_tree(&src, 200, 1);
    let id = ok(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "one"],
    ))
    .trim()
    .to_string();
    assert_eq!(id.len(), 64);
    // The staging directory new objects were made in is gone.
    let staged: Vec<_> = fs::read_dir(repo.join("tmp")).unwrap().collect();
    assert!(staged.is_empty(), "left in tmp/: {staged:?}");
    // On ext4, tmp/ spreads the directories made in it (FS_TOPDIR_FL).
    let tmp_dir = fs::File::open(repo.join("tmp")).unwrap();
    if rustix::fs::fstatfs(&tmp_dir).unwrap().f_type == 0xEF53 {
        let flags = rustix::fs::ioctl_getflags(&tmp_dir).unwrap();
        assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "{flags:?}");
    }
    // Same tree again: same id, nothing new written.
    let before = objects_of(&repo);
    let id2 = ok(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "two"],
    ))
    .trim()
    .to_string();
    assert_eq!(id, id2);
    assert_eq!(before, objects_of(&repo));
    // The image id is the fs-verity digest of the stored image.
    let img = repo.join("objects").join(&id[..2]).join(&id[2..]);
    let m = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["composefs-info", "measure-file"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(ok(&m).trim(), id);

    let list = ok(&strata(&repo, &["images"]));
    assert!(
        list.contains("one") && list.contains("two") && list.contains(&id),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&strata(&repo, &["--json", "images"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["objects"].as_u64().unwrap() as usize, {
        // every file > 64 bytes, distinct contents
        let mut set = std::collections::BTreeSet::new();
        let files = common::non_dirs_under(&src)
            .into_iter()
            .filter(|p| fs::symlink_metadata(p).unwrap().is_file());
        for e in files {
            let b = fs::read(&e).unwrap();
            if b.len() > 64 {
                set.insert(b);
            }
        }
        set.len()
    });
    let dump = ok(&strata(&repo, &["dump", "one"]));
    assert!(
        dump.lines().any(|l| l.starts_with("/link 5 120777 ")),
        "{dump}"
    );
    assert!(
        dump.lines().any(|l| l.starts_with("/small 1 100")),
        "{dump}"
    );

    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    // gc keeps everything while a name reaches it.
    let g = ok(&strata(&repo, &["gc"]));
    assert!(g.starts_with("freed 0 objects"), "{g}");
    ok(&strata(&repo, &["rm", "one"]));
    let g = ok(&strata(&repo, &["gc"]));
    assert!(g.starts_with("freed 0 objects"), "{g}");
    ok(&strata(&repo, &["rm", "two"]));
    let dry = ok(&strata(&repo, &["gc", "--dry-run"]));
    assert!(!dry.starts_with("would free 0 objects"), "{dry}");
    assert_eq!(before, objects_of(&repo), "dry run removed something");
    ok(&strata(&repo, &["gc"]));
    assert!(
        objects_of(&repo).is_empty(),
        "gc left objects: {:?}",
        objects_of(&repo)
    );
    let e = err(&strata(&repo, &["dump", "one"]));
    assert!(e.contains("no image named \"one\""), "{e}");
}

#[test]
fn lifecycle_on_tmp_dir() {
    let fs = Fs::tmpfs_or_dir();
    lifecycle(&fs.path());
}

#[test]
fn lifecycle_on_tmpfs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("strata-tmpfs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(m.success());
    let fs = Fs { dir, mounted: true };
    lifecycle(&fs.path());
}

#[test]
fn init_require_verity_fails_clearly_and_leaves_nothing() {
    let fs = Fs::tmpfs_or_dir();
    let repo = fs.path().join("verity-repo");
    let o = strata(&repo, &["init", "--require-verity"]);
    if o.status.success() {
        eprintln!("SKIP: this filesystem supports fs-verity");
        return;
    }
    let e = err(&o);
    assert!(
        e.contains("fs-verity is required") && e.lines().count() == 1,
        "{e}"
    );
    assert!(
        !repo.exists(),
        "a refused init left {} behind",
        repo.display()
    );
    // Without --require-verity the repository is created and says it is not enforced.
    let out = ok(&strata(&repo, &["--json", "init"]));
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(meta["verity_enforced"], serde_json::Value::Bool(false));
}

#[test]
fn lifecycle_on_ext4_and_xfs() {
    for kind in ["ext4", "xfs"] {
        if let Some(fs) = Fs::loop_fs(kind, 300) {
            lifecycle(&fs.path());
        }
    }
}

#[test]
fn fsck_names_each_problem() {
    let fs = Fs::tmpfs_or_dir();
    let repo = fs.path().join("repo");
    let src = fs.path().join("src");
    make_tree(&src, 60, 2);
    ok(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "img"],
    ));
    // File objects only: the image itself is an object too, and breaking
    // it would be a different problem from the ones checked here.
    let images: Vec<String> = fs::read_dir(repo.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let objs: Vec<PathBuf> = objects_of(&repo)
        .into_iter()
        .filter(|p| fs::metadata(p).unwrap().len() > 200)
        .filter(|p| {
            let hex = format!(
                "{}{}",
                p.parent().unwrap().file_name().unwrap().to_string_lossy(),
                p.file_name().unwrap().to_string_lossy()
            );
            !images.contains(&hex)
        })
        .collect();
    assert!(objs.len() >= 4);
    let (flip, trunc, gone) = (&objs[0], &objs[1], &objs[2]);
    let mut b = fs::read(flip).unwrap();
    b[100] ^= 0x01;
    fs::set_permissions(flip, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(flip, &b).unwrap();
    fs::set_permissions(trunc, fs::Permissions::from_mode(0o644)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(trunc).unwrap();
    f.set_len(10).unwrap();
    fs::remove_file(gone).unwrap();
    std::os::unix::fs::symlink("../../images/00", repo.join("refs/images/dangling")).unwrap();

    let o = strata(&repo, &["fsck"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let e = err(&o);
    assert!(e.contains("problem(s) found"), "{e}");
    let rel = |p: &Path| {
        p.strip_prefix(repo.join("objects"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert!(
        out.contains(&format!("corrupt object {}", flip.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("corrupt object {}", trunc.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("missing object {}", rel(gone))),
        "{out}"
    );
    assert!(out.contains("dangling ref dangling"), "{out}");

    let (_, v) = fsck_json(&repo);
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "corrupt-object").count(),
        2,
        "{v}"
    );

    let o = strata(&repo, &["fsck", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("removed {}", flip.display())),
        "{out}"
    );
    assert!(out.contains("is now incomplete"), "{out}");
    assert!(!flip.exists() && !trunc.exists());
}

#[test]
fn crash_at_random_moments_leaves_repository_consistent() {
    let fs = Fs::tmpfs_or_dir();
    let repo = fs.path().join("repo");
    let src = fs.path().join("src");
    make_tree(&src, 3000, 3);
    // Reference run in another repository.
    let reference = ok(&strata(
        &fs.path().join("ref"),
        &["create-image", src.to_str().unwrap(), "x"],
    ))
    .trim()
    .to_string();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for round in 0..24 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_micros(rng % 400_000);
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--repo")
            .arg(&repo)
            .args(["-q", "create-image", src.to_str().unwrap(), "x"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !repo.join("meta.json").exists() {
            continue; // killed before the repository existed
        }
        let (clean, v) = fsck_json(&repo);
        assert!(clean, "round {round} ({delay:?}): fsck found problems: {v}");
    }
    let id = ok(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "x"],
    ))
    .trim()
    .to_string();
    assert_eq!(id, reference);
    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
    // tmp/ is cleaned when the repository is next opened alone.
    assert_eq!(fs::read_dir(repo.join("tmp")).unwrap().count(), 0);
}

#[test]
fn concurrent_writers_with_gc_loop() {
    let fs = Fs::tmpfs_or_dir();
    let repo = fs.path().join("repo");
    let mut srcs = Vec::new();
    for i in 0..4u32 {
        let s = fs.path().join(format!("src{i}"));
        make_tree(&s, 400, i); // every third file is shared by all four trees
        srcs.push(s);
    }
    ok(&strata(&repo, &["init"]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let stop = stop.clone();
        let repo = repo.clone();
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ok(&strata(&repo, &["-q", "gc"]));
                runs += 1;
            }
            runs
        })
    };
    let children: Vec<_> = srcs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Command::new(env!("CARGO_BIN_EXE_strata"))
                .arg("--repo")
                .arg(&repo)
                .args(["create-image", s.to_str().unwrap(), &format!("img{i}")])
                .output()
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc.join().unwrap();
    assert!(runs >= 1);
    for c in children {
        ok(&c.unwrap());
    }
    ok(&strata(&repo, &["gc"]));
    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
    // Each shared file is stored once.
    let shared = fs::read(srcs[0].join("d0/f0")).unwrap();
    let copies = objects_of(&repo)
        .iter()
        .filter(|p| fs::read(p).unwrap() == shared)
        .count();
    assert_eq!(copies, 1);
    let list = ok(&strata(&repo, &["images"]));
    for i in 0..4 {
        assert!(list.contains(&format!("img{i}")), "{list}");
    }
}

#[test]
fn bad_input_gives_one_clear_error_and_a_consistent_repository() {
    let fs = Fs::tmpfs_or_dir();
    let repo = fs.path().join("repo");
    let src = fs.path().join("src");
    make_tree(&src, 20, 4);
    ok(&strata(&repo, &["init"]));

    // Missing source.
    let e = err(&strata(&repo, &["create-image", "/nonexistent/dir", "x"]));
    assert!(
        e.contains("/nonexistent/dir") && e.lines().count() == 1,
        "{e}"
    );
    // Bad name.
    let e = err(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "../evil"],
    ));
    assert!(e.contains("invalid image name"), "{e}");
    // A path longer than PATH_MAX.
    let deep = fs.path().join("deep");
    let mut p = deep.clone();
    for _ in 0..20 {
        p = p.join("d".repeat(250));
    }
    fs::create_dir_all(&p).unwrap_or_else(|_| {
        // create_dir_all goes through full paths; build it step by step with chdir-free openat
        let mut cur = fs::File::open(fs.path()).unwrap();
        for name in std::iter::once("deep".to_string()).chain((0..20).map(|_| "d".repeat(250))) {
            let _ =
                rustix::fs::mkdirat(&cur, name.as_str(), rustix::fs::Mode::from_raw_mode(0o755));
            cur = rustix::fs::openat(
                &cur,
                name.as_str(),
                rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .map(fs::File::from)
            .unwrap();
        }
        let fd = rustix::fs::openat(
            &cur,
            "big",
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&fd, &[7u8; 1000]).unwrap();
    });
    let o = strata(&repo, &["create-image", deep.to_str().unwrap(), "deep"]);
    if !o.status.success() {
        let e = err(&o);
        assert!(e.lines().count() == 1 && e.contains("deep"), "{e}");
    }
    // An unreadable file. Root reads everything, so run as nobody then.
    let locked = src.join("locked");
    fs::write(&locked, vec![1u8; 500]).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let o = if rustix::process::geteuid().is_root() {
        let nrepo = fs.path().join("nobody-repo");
        fs::create_dir_all(&nrepo).unwrap();
        rustix::fs::chown(
            &nrepo,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .unwrap();
        fs::set_permissions(fs.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_strata"))
            .arg("--repo")
            .arg(&nrepo)
            .args(["-q", "create-image", src.to_str().unwrap(), "y"])
            .output()
            .unwrap()
    } else {
        strata(&repo, &["create-image", src.to_str().unwrap(), "y"])
    };
    let e = err(&o);
    assert!(
        e.contains("locked") && e.contains("ermission denied") && e.lines().count() == 1,
        "{e}"
    );
    fs::remove_file(&locked).unwrap();
    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
}

#[test]
fn full_disk_and_read_only_filesystem() {
    let Some(small) = Fs::loop_fs("ext4", 8) else {
        return;
    };
    let repo = small.path().join("repo");
    let fsd = Fs::tmpfs_or_dir();
    let src = fsd.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        let data: Vec<u8> = (0..400_000u32)
            .map(|j| (j.wrapping_mul(i + 7) % 251) as u8)
            .collect();
        fs::write(src.join(format!("big{i}")), data).unwrap();
    }
    ok(&strata(&repo, &["init"]));
    let e = err(&strata(
        &repo,
        &["create-image", src.to_str().unwrap(), "big"],
    ));
    assert!(
        e.contains("No space left on device") && e.lines().count() == 1,
        "{e}"
    );
    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
    assert!(!repo.join("refs/images/big").exists());

    // Read-only: remount and try again.
    let mnt = small.path();
    let r = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(r.success());
    let small_src = fsd.path().join("small-src");
    make_tree(&small_src, 5, 9);
    let e = err(&strata(
        &repo,
        &["create-image", small_src.to_str().unwrap(), "ro"],
    ));
    assert!(
        e.contains("Read-only file system") && e.lines().count() == 1,
        "{e}"
    );
    let (clean, v) = fsck_json(&repo);
    assert!(clean, "{v}");
}

/// A relative source directory, and `.`, are that directory: its own
/// xattrs become the image root's, from create-image and mkcomposefs alike.
#[test]
fn relative_source_directories() {
    let tmp = tempfile::Builder::new()
        .prefix("strata-rel-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    fs::create_dir_all(t.join("a/sub")).unwrap();
    fs::write(t.join("a/sub/f"), b"hello\n").unwrap();
    if rustix::fs::setxattr(
        t.join("a"),
        "user.rootmark",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        eprintln!("SKIP: no user xattrs on /var/tmp");
        return;
    }
    let run = |dir: &Path, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_strata"))
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        ok(&o)
    };
    let root_line = |dump: &str| dump.lines().next().unwrap().to_string();
    run(t, &["--repo", "r1", "create-image", "a", "x"]);
    let d1 = run(t, &["--repo", "r1", "dump", "x"]);
    assert!(root_line(&d1).ends_with(" user.rootmark=yes"), "{d1}");
    assert!(d1.contains("/sub/f "), "{d1}");
    run(&t.join("a"), &["--repo", "../r2", "create-image", ".", "y"]);
    let d2 = run(t, &["--repo", "r2", "dump", "y"]);
    assert_eq!(d1, d2);
    run(
        &t.join("a"),
        &["mkcomposefs", "--digest-store=../st", ".", "../o.cfs"],
    );
    let d3 = run(t, &["composefs-info", "dump", "o.cfs"]);
    assert_eq!(d1, d3);
}

#[test]
fn objects_are_world_readable_whatever_the_umask() {
    let fs = Fs::tmpfs_or_dir();
    let src = fs.path().join("src");
    make_tree(&src, 40, 7);
    // The last run lacks CAP_DAC_READ_SEARCH (when setpriv can drop it),
    // so objects are linked through /proc/self/fd instead of AT_EMPTY_PATH.
    let no_cap = if rustix::process::geteuid().is_root()
        && Command::new("setpriv").arg("--version").output().is_ok()
    {
        "setpriv --bounding-set=-dac_read_search"
    } else {
        ""
    };
    for (mask, repo, pre) in [
        ("077", "r077", ""),
        ("022", "r022", ""),
        ("000", "r000", ""),
        ("022", "r022-nocap", no_cap),
    ] {
        let repo = fs.path().join(repo);
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {mask} && exec {pre} \"$0\" --repo \"$1\" -q create-image \"$2\" x"
            ))
            .arg(env!("CARGO_BIN_EXE_strata"))
            .arg(&repo)
            .arg(&src)
            .output()
            .unwrap();
        ok(&o);
        let objects = objects_of(&repo);
        assert!(objects.len() > 10, "umask {mask}: {objects:?}");
        for p in objects {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o644, "umask {mask}: {}", p.display());
        }
    }
}
