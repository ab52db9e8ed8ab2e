//! Reader tests against composefs C 1.0.8 `mkcomposefs` images (fixtures built
//! from the conformance dumps and a small hand-written dump), plain
//! `mkfs.erofs` images generated at test time, and mutated images.

use erofs::format::{S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use erofs::{read_image, Content, FileData, Inode, ReadError, Tree};

const SPECIAL: &[u8] = include_bytes!("fixtures/special.cfs");
const SPECIAL_V1: &[u8] = include_bytes!("fixtures/special_v1.cfs");
const HARDLINKS: &[u8] = include_bytes!("fixtures/hardlinks.cfs");
const BIGFILE_XATTR: &[u8] = include_bytes!("fixtures/bigfile-xattr.cfs");
const LONG_SYMLINK: &[u8] = include_bytes!("fixtures/honggfuzz-long-symlink.cfs");
const BIGFILE_ACL: &[u8] = include_bytes!("fixtures/honggfuzz-bigfile-with-acl.cfs");

fn lookup<'t>(tree: &'t Tree, path: &str) -> &'t Inode {
    let mut cur = tree.root();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let e = cur
            .entries()
            .iter()
            .find(|e| e.name == comp.as_bytes())
            .unwrap_or_else(|| panic!("{path}: no {comp}"));
        cur = tree.inode(e.inode);
    }
    cur
}

fn names(inode: &Inode) -> Vec<String> {
    inode
        .entries()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn xattr_names(inode: &Inode) -> Vec<String> {
    let mut v: Vec<String> = inode
        .xattrs
        .iter()
        .map(|x| String::from_utf8_lossy(&x.name).into_owned())
        .collect();
    v.sort();
    v
}

fn check_special(bytes: &[u8], version: u32) {
    let img = read_image(bytes).unwrap();
    assert_eq!(img.version, version);
    let t = &img.tree;
    // The writer's 256 root whiteouts are gone; the dump's entries remain.
    assert_eq!(
        names(t.root()),
        [
            "blockdev",
            "chardev",
            "escaped-xattr",
            "fifo",
            "inline",
            "inline-large1",
            "inline-large2",
            "inline-large3",
            "whiteout"
        ]
    );
    let root = t.root();
    assert_eq!(root.stat.mode, S_IFDIR | 0o555);
    assert_eq!(xattr_names(root), ["trusted.foo1", "user.foo2"]);
    assert_eq!(root.stat.mtime.sec, 1633950376);

    let b = lookup(t, "blockdev");
    assert_eq!(b.stat.rdev, 107690);
    assert_eq!(b.xattr(b"trusted.bar"), Some(&b"bar-2"[..]));
    let c = lookup(t, "chardev");
    assert_eq!((c.stat.mode, c.stat.rdev), (S_IFCHR | 0o777, 10769));

    let e = lookup(t, "escaped-xattr");
    assert_eq!(
        xattr_names(e),
        [
            "trusted.overlay.redirect",
            "user.foo",
            "user.overlay.redirect"
        ]
    );
    assert_eq!(e.xattr(b"trusted.overlay.redirect"), Some(&b"/foo\n"[..]));
    assert!(
        matches!(&e.content, Content::Regular(f) if f.size == 0 && f.data == FileData::Inline(vec![]))
    );

    let i = lookup(t, "inline");
    assert!(
        matches!(&i.content, Content::Regular(f) if f.data == FileData::Inline(b"FOOBAR\nINAFILE\n".to_vec()))
    );
    for (name, size) in [("inline-large1", 4095), ("inline-large2", 4096)] {
        match &lookup(t, name).content {
            Content::Regular(f) => {
                assert_eq!(f.size, size);
                assert!(matches!(&f.data, FileData::Inline(d) if d.len() as u64 == size));
            }
            c => panic!("{name}: {c:?}"),
        }
    }
    let w = lookup(t, "whiteout");
    assert!(w.is_whiteout(), "{:?}", w.stat);
    assert_eq!(w.stat.mode, S_IFCHR | 0o777);
    assert_eq!(xattr_names(w), ["trusted.foo"]);
    assert!(matches!(w.content, Content::Special));
    t.validate().unwrap();
}

#[test]
fn special_v0() {
    check_special(SPECIAL, 0);
}

#[test]
fn special_v1() {
    check_special(SPECIAL_V1, 1);
}

#[test]
fn hardlinks_and_external_files() {
    let img = read_image(HARDLINKS).unwrap();
    let t = &img.tree;
    assert_eq!(names(t.root()), ["a", "b", "c", "d", "e", "f", "g"]);
    // The root holds a whiteout (g), so its writer-added markers are dropped.
    assert!(t.root().xattrs.is_empty(), "{:?}", t.root().xattrs);
    let root = t.root().entries();
    let a = t.inode(root[0].inode);
    let z = &a.entries()[0];
    // /b and /c/y link to /a/z; /a/z is the home (nid order of the image).
    assert!(!z.hardlink);
    assert!(root[1].hardlink);
    assert_eq!(root[1].inode, z.inode);
    let c = t.inode(root[2].inode);
    assert_eq!(names(c), ["wh", "y"]);
    assert!(c.xattrs.is_empty());
    assert!(c.entries()[1].hardlink);
    assert_eq!(t.inode(z.inode).stat.nlink, 3);
    // /e links to /d.
    assert!(!root[3].hardlink && root[4].hardlink);
    assert_eq!(root[3].inode, root[4].inode);
    let f = t.inode(root[5].inode);
    assert_eq!(f.stat.uid, 5);
    assert_eq!(f.stat.gid, 6);
    assert_eq!((f.stat.mtime.sec, f.stat.mtime.nsec), (999, 5));
    assert_eq!(xattr_names(f), ["security.selinux"]);
    match &f.content {
        Content::Regular(file) => {
            assert_eq!(file.size, 1234);
            match &file.data {
                FileData::External { redirect, verity } => {
                    assert_eq!(redirect.as_deref(), Some(&b"00/1234"[..]));
                    let v = verity.as_ref().unwrap();
                    assert_eq!(v.len(), 32);
                    assert_eq!(v[0], 0x01);
                    assert_eq!(v[1], 0x23);
                }
                d => panic!("{d:?}"),
            }
        }
        c => panic!("{c:?}"),
    }
    assert_eq!(t.inode(root[3].inode).stat.mtime.sec, 1000);
    assert!(t.inode(root[6].inode).is_whiteout());
    assert!(t.inode(c.entries()[0].inode).is_whiteout());
}

#[test]
fn small_conformance_fixtures() {
    let t = read_image(BIGFILE_XATTR).unwrap().tree;
    let f = lookup(&t, "bigfile");
    assert_eq!(f.xattr(b"user.foo"), Some(&b""[..]));
    assert!(
        matches!(&f.content, Content::Regular(x) if x.size == 9001899274941000
        && x.data == FileData::External { redirect: None, verity: None })
    );

    let t = read_image(LONG_SYMLINK).unwrap().tree;
    let s = lookup(&t, "symlink");
    assert_eq!(s.stat.mode & S_IFMT, S_IFLNK);
    assert!(matches!(&s.content, Content::Symlink(x) if x.len() == 3914));

    let t = read_image(BIGFILE_ACL).unwrap().tree;
    let f = lookup(&t, "something-with-acls-and-overlay");
    assert_eq!(f.stat.mode & S_IFMT, S_IFREG);
    assert_eq!(f.xattr(b"system.posix_acl_default"), Some(&b"x"[..]));
}

#[test]
fn rejects_garbage_headers() {
    assert!(matches!(read_image(&[]), Err(ReadError::TooShort { .. })));
    assert!(matches!(
        read_image(&[0u8; 8192]),
        Err(ReadError::BadMagic { .. })
    ));
    let mut b = SPECIAL.to_vec();
    b[1024 + 12] = 9; // blkszbits
    assert!(matches!(read_image(&b), Err(ReadError::BlockSize(9))));
    let mut b = SPECIAL.to_vec();
    b[12] = 7; // composefs_version
    assert!(matches!(read_image(&b), Err(ReadError::FormatVersion(7))));
}

/// Counts tree nodes the way a composefs dump lists them: one line per path.
fn count_paths(t: &Tree) -> usize {
    1 + t.inodes.iter().map(|i| i.entries().len()).sum::<usize>()
}

/// Reads `mkcomposefs` images of the conformance dumps (built outside the
/// repository; see the report) when `STRATA_CONFORMANCE_IMAGES` names their
/// directory: `NAME.dump` next to `NAME.dump.cfs`.
#[test]
fn conformance_images_node_counts() {
    let Some(dir) = std::env::var_os("STRATA_CONFORMANCE_IMAGES") else {
        eprintln!("skipping: STRATA_CONFORMANCE_IMAGES not set");
        return;
    };
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "cfs") {
            continue;
        }
        let dump = std::fs::read(p.with_extension("")).unwrap();
        let lines = dump
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let img = read_image(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(count_paths(&img.tree), lines, "{}", p.display());
        eprintln!("{}: {lines} paths OK", p.display());
    }
}
