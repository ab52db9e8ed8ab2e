//! Plain EROFS images from erofs-utils' `mkfs.erofs`, generated at test time
//! from a scratch directory and compared with that directory. Skipped (with a
//! message) when `mkfs.erofs` is not installed.

use std::collections::HashMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use erofs::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG};
use erofs::{read_image, Content, FileData, InodeId, Tree};

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--help").output().is_ok()
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("strata-reader-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

fn populate(src: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(src.join(p), data).unwrap();
    w("empty", b"");
    w("hello", b"hello world\n");
    w(
        "tail-9000",
        &(0..9000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    w("exact-8192", &[0xa5; 8192]);
    w("zeros-9000", &[0; 9000]);
    w(
        "big-20000",
        &(0..20000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    w("tiny-4095", &[1; 4095]);
    std::fs::create_dir_all(src.join("d1/d2/d3")).unwrap();
    w("d1/d2/d3/deep", b"deep");
    // Enough long names for several directory blocks.
    std::fs::create_dir(src.join("many")).unwrap();
    for i in 0..300 {
        let name = format!("entry-{i:04}-{}", "x".repeat(i % 60));
        w(&format!("many/{name}"), &[i as u8; 3]);
    }
    // (mkfs.erofs 1.5 fails on 255-byte names; 254 still exercises long names.)
    let long_name = "n".repeat(254);
    w(&format!("d1/{long_name}"), b"long name");
    symlink("hello", src.join("link-short")).unwrap();
    symlink("t".repeat(3000), src.join("link-long")).unwrap();
    symlink("../hello", src.join("d1/link-up")).unwrap();
    std::fs::hard_link(src.join("hello"), src.join("d1/hello-again")).unwrap();
    std::fs::hard_link(src.join("hello"), src.join("many/hello-third")).unwrap();
    if have("mkfifo") {
        let _ = Command::new("mkfifo").arg(src.join("fifo")).status();
    }
    // Devices need privileges; skip quietly without them.
    let _ = Command::new("mknod")
        .args([
            src.join("chr").as_os_str(),
            "c".as_ref(),
            "1".as_ref(),
            "3".as_ref(),
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = Command::new("mknod")
        .args([
            src.join("blk").as_os_str(),
            "b".as_ref(),
            "8".as_ref(),
            "1".as_ref(),
        ])
        .stderr(std::process::Stdio::null())
        .status();
    std::fs::set_permissions(
        src.join("tiny-4095"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4751),
    )
    .unwrap();
}

/// Walks the source directory and the tree together, comparing everything
/// mkfs.erofs preserves.
fn compare(src: &Path, tree: &Tree, id: InodeId, path: &str, check_mtime: bool) {
    let md = std::fs::symlink_metadata(src).unwrap();
    let inode = tree.inode(id);
    assert_eq!(inode.stat.mode, md.mode(), "{path}: mode");
    assert_eq!(inode.stat.uid, md.uid(), "{path}: uid");
    assert_eq!(inode.stat.gid, md.gid(), "{path}: gid");
    if check_mtime {
        assert_eq!(inode.stat.mtime.sec, md.mtime(), "{path}: mtime");
    }
    match md.mode() & S_IFMT {
        S_IFDIR => {
            let mut want: Vec<_> = std::fs::read_dir(src)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_encoded_bytes())
                .collect();
            want.sort();
            let got: Vec<_> = inode.entries().iter().map(|e| e.name.clone()).collect();
            assert_eq!(got, want, "{path}: entries");
            for e in inode.entries() {
                let name = String::from_utf8(e.name.clone()).unwrap();
                compare(
                    &src.join(&name),
                    tree,
                    e.inode,
                    &format!("{path}/{name}"),
                    check_mtime,
                );
            }
        }
        S_IFREG => {
            assert_eq!(inode.stat.nlink, md.nlink() as u32, "{path}: nlink");
            let data = std::fs::read(src).unwrap();
            match &inode.content {
                Content::Regular(f) => {
                    assert_eq!(f.size, data.len() as u64, "{path}: size");
                    assert!(f.data == FileData::Inline(data), "{path}: data");
                }
                c => panic!("{path}: {c:?}"),
            }
        }
        S_IFLNK => {
            let target = std::fs::read_link(src).unwrap().into_os_string();
            assert!(
                matches!(&inode.content, Content::Symlink(t) if *t == target.into_encoded_bytes()),
                "{path}: symlink"
            );
        }
        S_IFCHR | S_IFBLK => {
            assert!(matches!(inode.content, Content::Special));
            // EROFS stores the new (Linux kernel) 32-bit encoding; compare
            // major/minor.
            let (maj, min) = (
                (md.rdev() >> 8) & 0xfff,
                (md.rdev() & 0xff) | ((md.rdev() >> 12) & 0xfff00),
            );
            let r = inode.stat.rdev;
            assert_eq!(
                ((r >> 8) & 0xfff, (r & 0xff) | ((r >> 12) & 0xfff00)),
                (maj, min),
                "{path}: rdev"
            );
        }
        S_IFIFO => assert!(matches!(inode.content, Content::Special)),
        m => panic!("{path}: unexpected type {m:o}"),
    }
}

#[test]
fn mkfs_erofs_images_match_source() {
    if !have("mkfs.erofs") {
        eprintln!("skipping: mkfs.erofs (erofs-utils) is not installed");
        return;
    }
    let dir = scratch("mkfs");
    let src = dir.0.join("src");
    std::fs::create_dir(&src).unwrap();
    populate(&src);
    let variants: &[(&[&str], bool)] = &[
        (&[], true),
        (&["-Enoinline_data"], true),
        // Chunk-based files (4-byte block map), chunks of 1 and 2 blocks.
        (&["--chunksize=4096"], true),
        (&["--chunksize=8192"], true),
        (&["-T", "12345"], false),
        (&["--all-root", "-x", "-1"], false),
    ];
    for (k, (args, check_mtime)) in variants.iter().enumerate() {
        let img_path = dir.0.join(format!("img{k}.erofs"));
        let out = Command::new("mkfs.erofs")
            .args(*args)
            .arg("--quiet")
            .arg(&img_path)
            .arg(&src)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.erofs {args:?}: {out:?}");
        let bytes = std::fs::read(&img_path).unwrap();
        let img = read_image(&bytes).unwrap_or_else(|e| panic!("mkfs.erofs {args:?}: {e}"));
        assert_eq!(img.version, 0);
        if args.contains(&"--all-root") {
            // Ownership is rewritten; only check structure of a few paths.
            assert_eq!(
                img.tree.root().entries().len(),
                std::fs::read_dir(&src).unwrap().count()
            );
            continue;
        }
        compare(&src, &img.tree, InodeId::ROOT, "", *check_mtime);
        // Hard links: three names, one inode, one home.
        let mut by_inode: HashMap<InodeId, Vec<bool>> = HashMap::new();
        for i in &img.tree.inodes {
            for e in i.entries() {
                by_inode.entry(e.inode).or_default().push(e.hardlink);
            }
        }
        let links = by_inode
            .values()
            .find(|v| v.len() == 3)
            .expect("hello has 3 links");
        assert_eq!(links.iter().filter(|h| !**h).count(), 1);
        img.tree.validate().unwrap();
    }
}

/// `mkfs.erofs -x1 -T1700000000` (erofs-utils 1.5) of a directory whose
/// files share xattrs (so they are stored as shared xattrs) and carry inline
/// ones: user.* (a 3000-byte and an empty value), trusted.*, security.selinux,
/// and a raw `trusted.overlay.opaque`, which a plain image keeps as is.
const MKFS_XATTRS: &[u8] = include_bytes!("fixtures/mkfs-xattrs.erofs");

#[test]
fn mkfs_erofs_shared_and_inline_xattrs() {
    // mkfs.erofs 1.5 puts inodes and shared xattrs in block 0 right after
    // the superblock (meta_blkaddr = xattr_blkaddr = 0); the files' inodes
    // reference two shared xattrs each (checked by inspecting the image).
    let img = read_image(MKFS_XATTRS).unwrap();
    assert_eq!(img.version, 0);
    let t = &img.tree;
    let root = t.root();
    let names: Vec<_> = root.entries().iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        [&b"f0"[..], b"f1", b"f2", b"f3", b"f4", b"f5", b"sub"]
    );
    for (i, e) in root.entries().iter().take(6).enumerate() {
        let f = t.inode(e.inode);
        assert_eq!(f.xattr(b"user.shared"), Some(&b"same-value-for-all"[..]));
        assert_eq!(f.xattr(b"trusted.shared2"), Some(&[b'T'; 100][..]));
        assert_eq!(f.xattr(b"user.own"), Some(format!("v{i}").as_bytes()));
        assert_eq!(f.stat.mtime.sec, 1700000000);
        assert!(
            matches!(&f.content, Content::Regular(r) if r.data == FileData::Inline(format!("data{i}\n").into_bytes()))
        );
    }
    let f = |i: usize| t.inode(root.entries()[i].inode);
    assert_eq!(
        f(0).xattr(b"security.selinux"),
        Some(&b"system_u:object_r:etc_t:s0\0"[..])
    );
    assert_eq!(f(0).xattrs.len(), 4);
    assert_eq!(f(1).xattr(b"user.big"), Some(&[b'B'; 3000][..]));
    assert_eq!(f(2).xattr(b"user.empty"), Some(&b""[..]));
    let sub = f(6);
    assert_eq!(sub.xattr(b"trusted.overlay.opaque"), Some(&b"y"[..]));
    assert_eq!(sub.xattr(b"user.dirattr"), Some(&b"d"[..]));
    let l = t.inode(sub.entries()[0].inode);
    assert_eq!(l.stat.mode & S_IFMT, S_IFLNK);
    assert!(matches!(&l.content, Content::Symlink(s) if s == b"f0"));
}

/// `mkfs.erofs --chunksize=4096 -T1700000000` (erofs-utils 1.5) of: `a`
/// (5000 bytes, byte i = i*37 % 251), `b` ("small file\n"), `l` -> `a`, and
/// `d/c` (bytes 0..=255 repeated 20 times). Regular files are chunk-based.
const MKFS_CHUNKED: &[u8] = include_bytes!("fixtures/mkfs-chunked.erofs");

#[test]
fn mkfs_erofs_chunk_based_files() {
    let t = read_image(MKFS_CHUNKED).unwrap().tree;
    let file = |id: InodeId| match &t.inode(id).content {
        Content::Regular(f) => match &f.data {
            FileData::Inline(d) => d.clone(),
            d => panic!("{d:?}"),
        },
        c => panic!("{c:?}"),
    };
    let root = t.root().entries();
    let a: Vec<u8> = (0..5000u32).map(|i| (i * 37 % 251) as u8).collect();
    assert_eq!(file(root[0].inode), a);
    assert_eq!(file(root[1].inode), b"small file\n");
    let d = t.inode(root[2].inode);
    let c: Vec<u8> = (0..20).flat_map(|_| 0..=255u8).collect();
    assert_eq!(file(d.entries()[0].inode), c);
    assert!(matches!(&t.inode(root[3].inode).content, Content::Symlink(s) if s == b"a"));
}
