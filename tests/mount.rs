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
    rustix::fs::lsetxattr(
        src.join("small"),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        src.join("usr/lib/big.bin"),
        "user.shared",
        b"same",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        src.join("usr/lib/tool"),
        "user.shared",
        b"same",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        src.join("usr"),
        "user.bin",
        &[0u8, 1, 2, 255],
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
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
    let objects: Vec<_> = walkdir(&store);
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

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
