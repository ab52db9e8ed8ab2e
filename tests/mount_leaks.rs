//! Mount/unmount cycles leave nothing behind: no mount (overlay, EROFS or
//! private lower directory), no loop device bound to the image, no
//! `.strata-lower-*` directory, no EROFS superblock, no file descriptor. 200 cycles through the
//! library in-process (default path, forced loop device, private lower
//! directory, writable overlay) and 40 through the CLI. Needs root and a
//! kernel with EROFS and overlayfs; skips with a printed reason otherwise.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata::mount::{mount_composefs, unmount, ErofsSource, LowerAttach, MountOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Default,
    Loop,
    Private,
    Writable,
}

const MODES: [Mode; 4] = [Mode::Default, Mode::Loop, Mode::Private, Mode::Writable];

/// Mount points (field 5 of mountinfo) and options, one per mount.
fn mounts() -> Vec<(String, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4].to_owned(), l.to_owned())
        })
        .collect()
}

/// Mounts under `dir` or at a private lower directory.
fn our_mounts(dir: &Path) -> Vec<String> {
    let d = dir.to_str().unwrap();
    mounts()
        .into_iter()
        .filter(|(mp, _)| mp.starts_with(d) || mp.contains("/.strata-lower-"))
        .map(|(_, l)| l)
        .collect()
}

/// `.strata-lower-*` entries where the library makes them.
fn lower_dirs() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for base in [PathBuf::from("/run"), std::env::temp_dir()] {
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(".strata-lower-")
                {
                    out.insert(e.path());
                }
            }
        }
    }
    out
}

/// Loop devices whose backing file is under `dir`.
fn our_loops(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()).starts_with(dir) {
                out.push(format!("{name} -> {}", b.trim()));
            }
        }
    }
    out
}

/// EROFS superblocks alive on the machine (`/sys/fs/erofs/<name>`).
fn erofs_superblocks() -> BTreeSet<String> {
    fs::read_dir("/sys/fs/erofs")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "features")
                .collect()
        })
        .unwrap_or_default()
}

fn fd_count() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Polls `f` until it returns an empty list or `limit` passes; returns the
/// last list and how long it took.
fn settle<T>(limit: Duration, mut f: impl FnMut() -> Vec<T>) -> (Vec<T>, Duration) {
    let t0 = Instant::now();
    loop {
        let v = f();
        if v.is_empty() || t0.elapsed() >= limit {
            return (v, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Unmounts whatever a failed run left on `mnt`.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        while rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_ok() {}
    }
}

/// Checks that nothing of ours is left; waits up to 2 s for the kernel's
/// asynchronous parts (autoclear loop release, deferred mntput).
fn assert_clean(t: &Path, before: &(BTreeSet<PathBuf>, BTreeSet<String>), what: &str) {
    let (lowers_before, sbs_before) = before;
    let limit = Duration::from_secs(2);
    let (left, _) = settle(limit, || our_mounts(t));
    assert!(left.is_empty(), "{what}: mounts left:\n{}", left.join("\n"));
    let (left, waited) = settle(limit, || our_loops(t));
    assert!(left.is_empty(), "{what}: loop devices left: {left:?}");
    eprintln!("  {what}: loop devices released {waited:.2?} after the last unmount");
    let (left, _) = settle(limit, || {
        lower_dirs()
            .difference(lowers_before)
            .cloned()
            .collect::<Vec<_>>()
    });
    assert!(left.is_empty(), "{what}: lower directories left: {left:?}");
    // Other users' EROFS mounts may come and go meanwhile: only ones that
    // stay count, and they are global, so allow them longer to go.
    let (left, _) = settle(Duration::from_secs(5), || {
        erofs_superblocks()
            .difference(sbs_before)
            .cloned()
            .collect::<Vec<_>>()
    });
    assert!(left.is_empty(), "{what}: EROFS superblocks left: {left:?}");
}

#[test]
fn mount_umount_cycles_leave_nothing() {
    if let Some(why) = common::mount_skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("strata-mount-leaks-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    let (src, repo, mnt) = (t.join("src"), t.join("repo"), t.join("mnt"));
    let (upper, work) = (t.join("upper"), t.join("work"));
    for d in [&src.join("etc"), &mnt, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    let payload = b"an object: longer than sixty-four bytes, so not inline\n".repeat(100);
    fs::write(src.join("etc/data"), &payload).unwrap();
    fs::write(src.join("small"), b"inline\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(&repo)
        .args(["-q", "create-image"])
        .arg(&src)
        .arg("leaks")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let image = repo.join("images").join(&id);
    let _guard = Guard(mnt.clone());

    let before = (lower_dirs(), erofs_superblocks());
    assert!(our_loops(t).is_empty());
    let fds_before = fd_count();

    // In-process: 200 cycles through the library.
    let mut times: Vec<(Mode, Duration, Duration)> = Vec::new();
    let mut max_loops_right_after = 0;
    for i in 0..200 {
        let mode = MODES[i % MODES.len()];
        let opts = MountOptions {
            basedirs: vec![repo.join("objects")],
            upperdir: (mode == Mode::Writable).then(|| upper.clone()),
            workdir: (mode == Mode::Writable).then(|| work.clone()),
            readonly: mode != Mode::Writable,
            erofs_source: if mode == Mode::Loop {
                ErofsSource::Loop
            } else {
                ErofsSource::Auto
            },
            lower_attach: if mode == Mode::Private {
                LowerAttach::Private
            } else {
                LowerAttach::Auto
            },
            ..MountOptions::default()
        };
        let t0 = Instant::now();
        mount_composefs(&image, &mnt, &opts)
            .unwrap_or_else(|e| panic!("cycle {i} ({mode:?}): mount: {e}"));
        let t_mount = t0.elapsed();
        assert_eq!(
            fs::read(mnt.join("etc/data")).unwrap(),
            payload,
            "cycle {i}"
        );
        if i < MODES.len() {
            // The mode did what it says.
            let d = mnt.to_str().unwrap();
            let line = mounts().into_iter().find(|(mp, _)| mp == d).unwrap().1;
            match mode {
                Mode::Loop => assert!(!our_loops(t).is_empty(), "no loop device: {line}"),
                Mode::Private => assert!(line.contains("/.strata-lower-"), "{line}"),
                _ => assert!(line.contains("lowerdir"), "{line}"),
            }
            if mode != Mode::Loop {
                assert!(our_loops(t).is_empty(), "{mode:?} used a loop device");
            }
        }
        if mode == Mode::Writable {
            fs::write(mnt.join(format!("new-{i}")), b"x").unwrap();
            assert!(upper.join(format!("new-{i}")).exists());
        }
        let t1 = Instant::now();
        unmount(&mnt).unwrap_or_else(|e| panic!("cycle {i} ({mode:?}): unmount: {e}"));
        let t_umount = t1.elapsed();
        times.push((mode, t_mount, t_umount));
        if mode == Mode::Loop {
            max_loops_right_after = max_loops_right_after.max(our_loops(t).len());
        }
    }
    let lib_time = started.elapsed();
    eprintln!("200 library cycles in {lib_time:.2?} (since start, incl. setup):");
    for mode in MODES {
        let mut m: Vec<_> = times.iter().filter(|x| x.0 == mode).map(|x| x.1).collect();
        let mut u: Vec<_> = times.iter().filter(|x| x.0 == mode).map(|x| x.2).collect();
        eprintln!(
            "  {mode:?}: {} cycles, median mount {:.2?}, umount {:.2?}",
            m.len(),
            median(&mut m),
            median(&mut u)
        );
    }
    eprintln!(
        "  loop devices still bound right after a loop-mode unmount: at most {max_loops_right_after}"
    );
    assert_clean(t, &before, "library");
    assert_eq!(fd_count(), fds_before, "file descriptors leaked");

    // Through the CLI: 40 more cycles, every flag combination.
    let cli = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 0..40 {
        let mode = MODES[i % MODES.len()];
        let mut args: Vec<&std::ffi::OsStr> = vec!["mount".as_ref(), "leaks".as_ref()];
        args.push(mnt.as_os_str());
        match mode {
            Mode::Default => {}
            Mode::Loop => args.push("--force-loop".as_ref()),
            Mode::Private => args.push("--private-lower".as_ref()),
            Mode::Writable => {
                args.extend(["--upperdir".as_ref(), upper.as_os_str()]);
                args.extend(["--workdir".as_ref(), work.as_os_str()]);
            }
        }
        cli(&args);
        assert_eq!(
            fs::read(mnt.join("etc/data")).unwrap(),
            payload,
            "CLI cycle {i}"
        );
        cli(&["umount".as_ref(), mnt.as_os_str()]);
    }
    assert_clean(t, &before, "CLI");
    assert_eq!(fd_count(), fds_before, "file descriptors leaked");
    eprintln!("leak test total: {:.2?}", started.elapsed());
}
