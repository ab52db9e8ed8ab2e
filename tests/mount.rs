//! Real kernel mounts: an image built by `strata mkcomposefs --digest-store`
//! mounted as file-backed EROFS + overlayfs (object store as data-only lower)
//! must show the source tree exactly. Needs root and a kernel with EROFS and
//! overlayfs; skips with a printed reason otherwise.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata::mount::{mount_composefs, unmount, MountOptions};

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    mtime: (i64, i64),
    data: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        out.insert(
            rel.clone(),
            Seen {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                rdev: md.rdev(),
                mtime: (md.mtime(), md.mtime_nsec()),
                data: ft.is_file().then(|| fs::read(&p).unwrap()),
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                xattrs: common::xattrs(&p),
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

fn make_source(src: &Path) {
    fs::create_dir_all(src.join("usr/lib/deep/er/still")).unwrap();
    fs::write(src.join("small"), b"tiny file, stays inline\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("exactly64"), [b'x'; 64]).unwrap();
    fs::write(src.join("sixty-five"), [b'y'; 65]).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("usr/lib/big.bin"), &big).unwrap();
    fs::write(src.join("usr/lib/deep/er/still/copy.bin"), &big).unwrap(); // same object
    fs::write(
        src.join("name with spaces & = signs"),
        b"odd name\n".repeat(20),
    )
    .unwrap();
    symlink("usr/lib", src.join("lib")).unwrap();
    symlink("x".repeat(1000), src.join("longlink")).unwrap();
    let exe = src.join("usr/lib/tool");
    fs::write(
        &exe,
        b"#!/bin/sh\necho this script is longer than sixty-four bytes, so it is an object\n",
    )
    .unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("usr/lib/deep"), fs::Permissions::from_mode(0o700)).unwrap();
    rustix::fs::chown(
        src.join("usr/lib/big.bin"),
        Some(rustix::fs::Uid::from_raw(100_000)),
        Some(rustix::fs::Gid::from_raw(70_000)),
    )
    .unwrap();
    for (path, name, value) in [
        ("small", "user.note", &b"hello"[..]),
        ("usr/lib/big.bin", "user.shared", b"same"),
        ("usr/lib/tool", "user.shared", b"same"),
        ("usr", "user.bin", &[0u8, 1, 2, 255]),
    ] {
        rustix::fs::lsetxattr(src.join(path), name, value, rustix::fs::XattrFlags::empty())
            .unwrap();
    }
    Command::new("mkfifo")
        .arg(src.join("fifo"))
        .status()
        .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null-like"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    // A pre-1970 mtime and a nanosecond one.
    Command::new("touch")
        .args(["-h", "-d", "1960-01-02 03:04:05.123456789"])
        .arg(src.join("small"))
        .status()
        .unwrap();
}

#[test]
fn mounted_image_matches_source_tree() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: mount test needs root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("strata-mount-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let src = tmp.path().join("src");
    let store = tmp.path().join("objects");
    let image = tmp.path().join("image.cfs");
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    make_source(&src);

    let r = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["mkcomposefs", "--digest-store"])
        .arg(&store)
        .arg(&src)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "mkcomposefs failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Identical files were stored once.
    let objects: Vec<_> = common::non_dirs_under(&store);
    assert_eq!(objects.len(), 4, "objects: {objects:?}");

    let opts = MountOptions {
        basedirs: vec![store.clone()],
        readonly: true,
        ..Default::default()
    };
    match mount_composefs(&image, &mnt, &opts) {
        Ok(()) => {}
        Err(e @ strata::mount::MountError::NoFilesystem { .. }) => {
            eprintln!("SKIP: kernel cannot mount composefs here: {e}");
            return;
        }
        Err(e) => panic!("mount failed: {e}"),
    }
    let seen = std::panic::catch_unwind(|| walk(&mnt));
    unmount(&mnt).unwrap();
    let mounted = seen.unwrap();
    let source = walk(&src);
    assert_eq!(mounted.len(), source.len());
    for (path, want) in &source {
        let got = mounted
            .get(path)
            .unwrap_or_else(|| panic!("{} missing in mount", path.display()));
        if path.as_os_str().is_empty() {
            // The root's times and xattrs are the image's; compare ownership and mode.
            assert_eq!(
                (got.mode, got.uid, got.gid),
                (want.mode, want.uid, want.gid)
            );
            continue;
        }
        assert_eq!(got, want, "{} differs", path.display());
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scratch directory on disk for a mount test, or None (with a SKIP
/// line) when not root.
fn root_tmp(prefix: &str) -> Option<tempfile::TempDir> {
    if !is_root() {
        eprintln!("SKIP: mount test needs root");
        return None;
    }
    Some(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .unwrap(),
    )
}

/// Mounts `image` (objects in `objects`) on `mnt` and diffs the mounted tree
/// against the image's own tree. `real` says the objects are the real ones
/// (compare whole contents) rather than placeholders.
fn mount_and_diff(image: &Path, objects: &Path, mnt: &Path, real: bool) -> Vec<String> {
    let bytes = fs::read(image).unwrap();
    let read = erofs::read_image(&bytes).unwrap();
    let opts = MountOptions {
        basedirs: vec![objects.to_path_buf()],
        verity: strata::mount::Verity::Off,
        ..Default::default()
    };
    mount_composefs(image, mnt, &opts)
        .unwrap_or_else(|e| panic!("mounting {}: {e}", image.display()));
    // Detached even if the comparison or the unmount panics.
    let guard = Mounted(mnt);
    let diffs = common::diff_mount(mnt, &read, real.then_some(objects));
    unmount(mnt).unwrap();
    std::mem::forget(guard);
    diffs
}

/// Every conformance vector's image, mounted by the kernel, shows exactly
/// the tree the image holds (objects are placeholders: the vectors carry
/// digests, not contents).
#[test]
fn conformance_images_mount_as_their_trees() {
    if !is_root() {
        eprintln!("SKIP: mount test needs root");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let tmp = tempfile::Builder::new()
        .prefix("strata-mount-vectors-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut checked = 0;
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sha256"))
        .collect();
    names.sort();
    for name in names {
        let t0 = std::time::Instant::now();
        let case = name.trim_end_matches(".sha256");
        let mut dump = fs::read(dir.join(case)).unwrap();
        if case.ends_with(".gz") {
            let mut out = Vec::new();
            use std::io::Read;
            flate2::read::GzDecoder::new(&dump[..])
                .read_to_end(&mut out)
                .unwrap();
            dump = out;
        }
        let plain = tmp.path().join(case.trim_end_matches(".gz"));
        fs::write(&plain, &dump).unwrap();
        let image = tmp.path().join(format!("{case}.cfs"));
        let version =
            fs::read_to_string(dir.join(format!("{}.version", case.trim_end_matches(".gz"))))
                .ok()
                .map(|v| format!("--min-version={}", v.trim()));
        let r = Command::new(env!("CARGO_BIN_EXE_strata"))
            .env_remove("CFS_PARSE_STRICT")
            .args(["mkcomposefs", "--from-file"])
            .args(version)
            .arg(&plain)
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let tree = erofs::read_image(&fs::read(&image).unwrap()).unwrap().tree;
        let objects = tmp.path().join(format!("{case}.objects"));
        fs::create_dir_all(&objects).unwrap();
        let n = common::make_placeholder_objects(&tree, &objects);
        let diffs = mount_and_diff(&image, &objects, &mnt, false);
        assert!(
            diffs.is_empty(),
            "{case}: mounted tree differs from the image:\n{}",
            diffs[..diffs.len().min(30)].join("\n")
        );
        eprintln!(
            "{case}: {} inodes, {n} objects: mount matches ({:.2} s)",
            tree.bfs_order().len(),
            t0.elapsed().as_secs_f64()
        );
        checked += 1;
    }
    assert_eq!(checked, 14);
}

fn strata(repo: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "strata failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected failure, got success");
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "one error line expected: {e}");
    e
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// A root-only scratch directory holding the test source tree (`src/`), a
/// repository (`repo/`) where it is image "img", and an empty `mnt/`.
struct ImageSetup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    repo: PathBuf,
    mnt: PathBuf,
    /// The image id.
    id: String,
}

fn image_setup(prefix: &str) -> Option<ImageSetup> {
    let tmp = root_tmp(prefix)?;
    let t = tmp.path();
    let (src, repo, mnt) = (t.join("src"), t.join("repo"), t.join("mnt"));
    fs::create_dir_all(&mnt).unwrap();
    make_source(&src);
    let id = ok(&strata(&repo, os!["create-image", src.as_os_str(), "img"]));
    Some(ImageSetup {
        tmp,
        src,
        repo,
        mnt,
        id,
    })
}

/// Leaves no mount behind even when an assertion fails.
struct Mounted<'a>(&'a Path);
impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A repository image mounted with `strata mount`, through each way of
/// reaching the EROFS (file, loop device, private lower), shows the
/// source tree byte for byte; the image's own tree matches too.
#[test]
fn strata_mount_shows_repository_image() {
    let Some(tmp) = root_tmp("strata-mount-repo-") else {
        return;
    };
    let (src, repo, mnt) = (
        tmp.path().join("src"),
        tmp.path().join("repo"),
        tmp.path().join("mnt"),
    );
    fs::create_dir_all(&mnt).unwrap();
    make_source(&src);
    fs::hard_link(src.join("sixty-five"), src.join("usr/hardlinked")).unwrap();
    // By default a hard link is a file of its own (as with composefs C).
    ok(&strata(
        &repo,
        os!["create-image", src.as_os_str(), "plain"],
    ));
    let dump = ok(&strata(&repo, os!["dump", "plain"]));
    let line = |p: &str| {
        dump.lines()
            .find(|l| l.starts_with(&format!("{p} ")))
            .unwrap_or_else(|| panic!("{p} missing: {dump}"))
            .to_string()
    };
    for p in ["/sixty-five", "/usr/hardlinked"] {
        let l = line(p);
        let fields: Vec<&str> = l.split(' ').collect();
        assert!(!fields[2].starts_with('@'), "{p} became a link: {dump}");
        assert_eq!(fields[3], "1", "{p}: nlink");
    }
    // With --hardlinks, the links stay one inode.
    let id = ok(&strata(
        &repo,
        os!["create-image", "--hardlinks", src.as_os_str(), "img"],
    ));
    assert!(
        ok(&strata(&repo, os!["dump", "img"])).contains("/usr/hardlinked 65 @100"),
        "--hardlinks kept no link"
    );
    let source = walk(&src);
    let image = repo.join("images").join(&id);
    let read = erofs::read_image(&fs::read(&image).unwrap()).unwrap();
    for extra in [
        &[][..],
        os!["--force-loop"],
        os!["--private-lower"],
        os!["--verity", "off"],
    ] {
        let mut args: Vec<&std::ffi::OsStr> = os!["mount"].to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(os![id.as_str(), mnt.as_os_str()]);
        ok(&strata(&repo, &args));
        let guard = Mounted(&mnt);
        let mounted = walk(&mnt);
        let diffs = common::diff_mount(&mnt, &read, Some(&repo.join("objects")));
        let a = fs::metadata(mnt.join("sixty-five")).unwrap();
        let b = fs::metadata(mnt.join("usr/hardlinked")).unwrap();
        ok(&strata(&repo, os!["umount", mnt.as_os_str()]));
        std::mem::forget(guard);
        assert!(diffs.is_empty(), "{extra:?}: {}", diffs.join("\n"));
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hardlink identity");
        for (path, want) in &source {
            if path.as_os_str().is_empty() {
                continue;
            }
            assert_eq!(
                mounted.get(path),
                Some(want),
                "{extra:?}: {}",
                path.display()
            );
        }
        assert_eq!(mounted.len(), source.len());
    }
    // The `lowerdir=L::D` string form (kernels without `lowerdir+`), from
    // the library, on a path that needs escaping.
    let odd = tmp.path().join("objects, with: odd chars");
    fs::rename(repo.join("objects"), &odd).unwrap();
    for attach in [
        strata::mount::LowerAttach::Detached,
        strata::mount::LowerAttach::Private,
    ] {
        let opts = MountOptions {
            basedirs: vec![odd.clone()],
            lowerdir_string: true,
            lower_attach: attach,
            ..Default::default()
        };
        mount_composefs(&odd.join(&id[..2]).join(&id[2..]), &mnt, &opts).unwrap();
        let guard = Mounted(&mnt);
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let diffs = common::diff_mount(&mnt, &read, Some(&odd));
        drop(guard);
        assert!(
            diffs.is_empty(),
            "lowerdir string, {attach:?}: {}",
            diffs.join("\n")
        );
        assert!(info.contains("lowerdir=") && info.contains("::"), "{info}");
    }
    fs::rename(&odd, repo.join("objects")).unwrap();

    // The comparison can fail: a changed object shows up as different bytes.
    let obj = {
        let mut objs = common::non_dirs_under(&repo.join("objects"));
        objs.retain(|p| fs::metadata(p).unwrap().len() == 65);
        objs.pop().unwrap()
    };
    fs::write(&obj, [b'z'; 65]).unwrap();
    ok(&strata(&repo, os!["mount", "img", mnt.as_os_str()]));
    let guard = Mounted(&mnt);
    let diffs = common::diff_mount(&mnt, &read, None);
    drop(guard);
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("sixty-five") && d.contains("bytes read differ")),
        "{diffs:?}"
    );
}

/// `--upperdir/--workdir`: writes land in the upper directory, the
/// repository stays as it was (fsck clean, objects unchanged).
#[test]
fn writable_mount_keeps_repository_untouched() {
    let Some(tmp) = root_tmp("strata-mount-rw-") else {
        return;
    };
    let t = tmp.path();
    let (src, repo, mnt, upper, work) = (
        t.join("src"),
        t.join("repo"),
        t.join("mnt"),
        t.join("upper"),
        t.join("work"),
    );
    for d in [&mnt, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    make_source(&src);
    ok(&strata(&repo, os!["create-image", src.as_os_str(), "img"]));
    let before = snapshot_files(&repo);
    ok(&strata(
        &repo,
        os![
            "mount",
            "--upperdir",
            upper.as_os_str(),
            "--workdir",
            work.as_os_str(),
            "img",
            mnt.as_os_str()
        ],
    ));
    let guard = Mounted(&mnt);
    fs::write(mnt.join("new-file"), b"written in the container\n").unwrap();
    // Appending to a file whose data is an object copies it up first.
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("usr/lib/big.bin"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    fs::remove_file(mnt.join("small")).unwrap();
    fs::set_permissions(mnt.join("usr/lib/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    let big = fs::read(mnt.join("usr/lib/big.bin")).unwrap();
    drop(guard);
    assert_eq!(&big[big.len() - 8..], b"appended");
    assert_eq!(
        fs::read(upper.join("new-file")).unwrap(),
        b"written in the container\n"
    );
    assert_eq!(fs::read(upper.join("usr/lib/big.bin")).unwrap(), big);
    let wh = fs::symlink_metadata(upper.join("small")).unwrap();
    assert_eq!(
        (wh.file_type().is_char_device(), wh.rdev()),
        (true, 0),
        "whiteout in upper"
    );
    let after = snapshot_files(&repo);
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "repository changed: {changed:?}");
    let fsck = strata(&repo, os!["fsck"]);
    ok(&fsck);
    // The read-only default refuses writes.
    ok(&strata(&repo, os!["mount", "img", mnt.as_os_str()]));
    let guard = Mounted(&mnt);
    let e = fs::write(mnt.join("nope"), b"x").unwrap_err();
    drop(guard);
    assert_eq!(e.raw_os_error(), Some(30), "EROFS (read-only fs): {e}");
}

use std::os::unix::fs::FileTypeExt;

/// Every file under the repository with its size and contents.
fn snapshot_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::non_dirs_under(root)
        .into_iter()
        // The lock, and mount records (`strata mount` notes the mount so
        // that gc keeps the image), are not content.
        .filter(|p| !p.ends_with("lock") && !p.components().any(|c| c.as_os_str() == "mounts"))
        .map(|p| {
            let data = fs::read(&p).unwrap_or_default();
            (p, data)
        })
        .collect()
}

/// Failures are one line naming the cause: no such image, missing mount
/// point, missing object directory, a corrupt image (the kernel's refusal
/// reported), a wrong digest, a lone --upperdir.
#[test]
fn mount_errors_are_clear() {
    let Some(ImageSetup {
        tmp,
        src: _,
        repo,
        mnt,
        id,
    }) = image_setup("strata-mount-err-")
    else {
        return;
    };
    let t = tmp.path();

    let e = err(&strata(&repo, os!["mount", "nosuch", mnt.as_os_str()]));
    assert!(e.contains("no image named \"nosuch\""), "{e}");
    let missing = t.join("missing");
    let e = err(&strata(&repo, os!["mount", "img", missing.as_os_str()]));
    assert!(
        e.contains("missing: mount point") && e.contains("No such file"),
        "{e}"
    );
    let e = err(&strata(
        &repo,
        os!["mount", "--verity", "require", "img", mnt.as_os_str()],
    ));
    assert!(e.contains("not verity-enforced"), "{e}");
    let wrong = "1".repeat(64);
    let e = err(&strata(
        &repo,
        os!["mount", "--digest", &wrong, "img", mnt.as_os_str()],
    ));
    assert!(
        e.contains(&format!("fs-verity digest is {id}, expected {wrong}")),
        "{e}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--repo"])
        .arg(&repo)
        .args(["mount", "--upperdir", "/tmp", "img"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--workdir"));

    // The helper, on plain files.
    let image = repo.join("images").join(&id);
    let helper = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("mount-helper")
            .args(args)
            .output()
            .unwrap()
    };
    let nodir = t.join("no-objects");
    let o = helper(os![
        image.as_os_str(),
        mnt.as_os_str(),
        "-o",
        &format!("basedir={}", nodir.display())
    ]);
    let e = err(&o);
    assert!(
        e.contains("no-objects: object directory") && e.contains("No such file"),
        "{e}"
    );
    let o = helper(os![
        t.join("nope.cfs").as_os_str(),
        mnt.as_os_str(),
        "-o",
        "basedir=/"
    ]);
    let e = err(&o);
    assert!(e.contains("nope.cfs: cannot open image"), "{e}");
    let not_cfs = t.join("not.cfs");
    fs::write(&not_cfs, vec![0u8; 8192]).unwrap();
    let e = err(&helper(os![not_cfs.as_os_str(), mnt.as_os_str()]));
    assert!(
        e.contains("not.cfs: not a composefs image (bad composefs magic)"),
        "{e}"
    );
    // A composefs header on a corrupt EROFS: the kernel refuses it, and
    // says why.
    let mut bytes = fs::read(&image).unwrap();
    for b in &mut bytes[1024..1024 + 128] {
        *b ^= 0x5a;
    }
    let corrupt = t.join("corrupt.cfs");
    fs::write(&corrupt, &bytes).unwrap();
    let e = err(&helper(os![
        corrupt.as_os_str(),
        mnt.as_os_str(),
        "-o",
        "basedir=/"
    ]));
    assert!(e.contains("corrupt.cfs: EROFS refused the image"), "{e}");
    assert!(e.contains("kernel: "), "the kernel's own message: {e}");
    let e = err(&helper(os![
        image.as_os_str(),
        mnt.as_os_str(),
        "-o",
        "basedir=/,bogus"
    ]));
    assert_eq!(
        e,
        "mount.composefs: option bogus: not a composefs mount option"
            .replace("mount.composefs", "strata mount-helper")
    );
    let e = err(&strata(&repo, os!["umount", mnt.as_os_str()]));
    assert!(e.ends_with("mnt: mount point: not a mount point"), "{e}");
    // Nothing was left mounted.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(t.to_str().unwrap()), "{mounts}");
}

/// util-linux `mount -t composefs` runs strata as /sbin/mount.composefs:
/// the image made by `strata mkcomposefs --digest-store` mounts the same
/// way, read-only and writable.
#[test]
fn util_linux_mount_t_composefs() {
    if !is_root() {
        eprintln!("SKIP: mount test needs root");
        return;
    }
    let helper = Path::new("/sbin/mount.composefs");
    let ours = Path::new(env!("CARGO_BIN_EXE_strata"));
    match fs::read_link(helper) {
        Ok(t) if t == ours => {}
        Ok(_) | Err(_) if helper.symlink_metadata().is_ok() => {
            eprintln!(
                "SKIP: {} exists and is not this build's strata",
                helper.display()
            );
            return;
        }
        _ => symlink(ours, helper).unwrap(),
    }
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = Remove(helper);
    let tmp = tempfile::Builder::new()
        .prefix("strata-mount-util-linux-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    let (src, store, image, mnt) = (
        t.join("src"),
        t.join("objects"),
        t.join("img.cfs"),
        t.join("mnt"),
    );
    fs::create_dir_all(&mnt).unwrap();
    make_source(&src);
    let r = Command::new(ours)
        .arg("mkcomposefs")
        .arg(format!("--digest-store={}", store.display()))
        .arg(&src)
        .arg(&image)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let read = erofs::read_image(&fs::read(&image).unwrap()).unwrap();
    let mount = |opts: String| {
        let r = Command::new("mount")
            .args(["-t", "composefs", "-o", &opts])
            .arg(&image)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "mount -o {opts}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    };
    mount(format!("basedir={}", store.display()));
    let guard = Mounted(&mnt);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .unwrap()
        .to_string();
    let diffs = common::diff_mount(&mnt, &read, Some(&store));
    let walked = walk(&mnt);
    drop(guard);
    assert!(
        line.contains(" ro,") && line.contains("overlay composefs"),
        "{line}"
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let source = walk(&src);
    for (p, want) in &source {
        if !p.as_os_str().is_empty() {
            assert_eq!(walked.get(p), Some(want), "{}", p.display());
        }
    }
    // Writable, as an fstab line would say it.
    let (upper, work) = (t.join("upper"), t.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    mount(format!(
        "basedir={},upperdir={},workdir={},rw",
        store.display(),
        upper.display(),
        work.display()
    ));
    let guard = Mounted(&mnt);
    fs::write(mnt.join("hello"), b"hi").unwrap();
    drop(guard);
    assert_eq!(fs::read(upper.join("hello")).unwrap(), b"hi");
    // A bad option is reported through mount(8).
    let r = Command::new("mount")
        .args(["-t", "composefs", "-o", "basedir=/nonexistent-objects"])
        .arg(&image)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("/nonexistent-objects: object directory"), "{e}");
}

/// `idmap=`: the image's owners are shown through a user namespace's id
/// mapping (an idmapped EROFS layer), contents unchanged.
#[test]
fn idmapped_mount_shifts_owners() {
    let Some(ImageSetup {
        tmp,
        src,
        repo,
        mnt,
        id,
    }) = image_setup("strata-mount-idmap-")
    else {
        return;
    };
    let t = tmp.path();
    // A process in a new user namespace mapping 0..65536 to 200000..265536.
    let pidfile = t.join("ns.pid");
    let mut holder = match Command::new("unshare")
        .args(["-U", "--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 60", pidfile.display()))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP: cannot run unshare: {e}");
            return;
        }
    };
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Kill(&mut holder);
    let mut pid = String::new();
    for _ in 0..200 {
        pid = fs::read_to_string(&pidfile).unwrap_or_default();
        if pid.ends_with('\n') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = pid.trim().to_string();
    assert!(!pid.is_empty(), "unshare did not start");
    let ns = PathBuf::from(format!("/proc/{pid}/ns/user"));
    if fs::read_link(&ns).unwrap() == fs::read_link("/proc/self/ns/user").unwrap() {
        eprintln!("SKIP: user namespaces unavailable");
        return;
    }
    fs::write(format!("/proc/{pid}/uid_map"), "0 200000 65536\n").unwrap();
    fs::write(format!("/proc/{pid}/gid_map"), "0 200000 65536\n").unwrap();
    let image = repo.join("images").join(&id);
    let o = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("mount-helper")
        .arg(&image)
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "basedir={},idmap={}",
            repo.join("objects").display(),
            ns.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let guard = Mounted(&mnt);
    let root = fs::metadata(&mnt).unwrap();
    let small = fs::symlink_metadata(mnt.join("small")).unwrap();
    // big.bin is 100000:70000 in the source: outside the 0..65536 range,
    // so it has no mapping and shows as the overflow id.
    let big = fs::metadata(mnt.join("usr/lib/big.bin")).unwrap();
    let data = fs::read(mnt.join("usr/lib/big.bin")).unwrap();
    drop(guard);
    drop(holder);
    let src_small = fs::symlink_metadata(src.join("small")).unwrap();
    assert_eq!(
        (root.uid(), root.gid()),
        (
            200000 + fs::metadata(&src).unwrap().uid(),
            200000 + fs::metadata(&src).unwrap().gid()
        )
    );
    assert_eq!(small.uid(), 200000 + src_small.uid());
    assert_eq!(
        (big.uid(), big.gid()),
        (65534, 65534),
        "unmapped ids show as overflow"
    );
    assert_eq!(data, fs::read(src.join("usr/lib/big.bin")).unwrap());
}

/// gc keeps what is mounted: removing an image's name while it is mounted
/// (here, in this namespace and in another one) does not free its objects;
/// once it is unmounted (by `strata umount`, umount(8), or its namespace
/// ending) gc frees them.
#[test]
fn gc_keeps_mounted_images() {
    let Some(ImageSetup {
        tmp,
        src,
        repo,
        mnt,
        id: _,
    }) = image_setup("strata-mount-gc-")
    else {
        return;
    };
    let t = tmp.path();
    let gc = || ok(&strata(&repo, os!["gc"]));
    let big = fs::read(src.join("usr/lib/big.bin")).unwrap();

    // Mounted here; the name goes away; gc keeps everything.
    ok(&strata(&repo, os!["mount", "img", mnt.as_os_str()]));
    let guard = Mounted(&mnt);
    ok(&strata(&repo, os!["rm", "img"]));
    let out = gc();
    assert!(
        out.contains("freed 0 objects") && out.contains("1 unnamed image(s) kept"),
        "{out}"
    );
    assert_eq!(fs::read(mnt.join("usr/lib/big.bin")).unwrap(), big);
    // Unmounted behind strata's back: the record is stale, gc frees all.
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).unwrap();
    drop(guard);
    let out = gc();
    assert!(out.contains("freed 5 objects"), "{out}");
    assert_eq!(fs::read_dir(repo.join("mounts")).unwrap().count(), 0);

    // Mounted in another mount namespace, held by a process there.
    let id = ok(&strata(&repo, os!["create-image", src.as_os_str(), "img"]));
    let ready = t.join("ready");
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "{} --repo {} mount {} {} && touch {} && exec sleep 60",
            env!("CARGO_BIN_EXE_strata"),
            repo.display(),
            id,
            mnt.display(),
            ready.display()
        ))
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        ready.exists(),
        "mount in the other namespace did not happen"
    );
    ok(&strata(&repo, os!["rm", "img"]));
    let out = gc();
    assert!(
        out.contains("freed 0 objects"),
        "kept while mounted elsewhere: {out}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = gc();
    assert!(out.contains("freed 5 objects"), "namespace gone: {out}");

    // `strata umount` drops the record itself.
    ok(&strata(&repo, os!["create-image", src.as_os_str(), "img"]));
    ok(&strata(&repo, os!["mount", "img", mnt.as_os_str()]));
    assert_eq!(fs::read_dir(repo.join("mounts")).unwrap().count(), 1);
    ok(&strata(&repo, os!["umount", mnt.as_os_str()]));
    assert_eq!(fs::read_dir(repo.join("mounts")).unwrap().count(), 0);

    // A repository on a read-only filesystem mounts too (nothing can be
    // collected there, so nothing is recorded).
    let ro = t.join("ro-repo");
    fs::create_dir_all(&ro).unwrap();
    let sh = |c: &str| {
        let r = Command::new("sh").args(["-c", c]).output().unwrap();
        assert!(
            r.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    };
    sh(&format!(
        "mount --bind {0} {1} && mount -o remount,bind,ro {1}",
        repo.display(),
        ro.display()
    ));
    let ro_guard = Mounted(&ro);
    ok(&strata(&ro, os!["mount", "img", mnt.as_os_str()]));
    let guard = Mounted(&mnt);
    assert_eq!(fs::read(mnt.join("usr/lib/big.bin")).unwrap(), big);
    ok(&strata(&ro, os!["umount", mnt.as_os_str()]));
    std::mem::forget(guard);
    drop(ro_guard);
}
