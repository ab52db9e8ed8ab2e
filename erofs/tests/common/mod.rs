//! Test helpers: compact tree construction and a deterministic random tree
//! generator (no external RNG so the trees are stable across versions).
#![allow(dead_code)]

use erofs::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK};
use erofs::tree::{
    Content, File, FileData, Inode, InodeId, Stat, Timespec, Tree, TreeBuilder, Xattr,
};

pub const T0: i64 = 1_700_000_000;

pub fn stat(mode: u32) -> Stat {
    Stat {
        mode,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: Timespec { sec: T0, nsec: 0 },
        rdev: 0,
    }
}

pub fn dir() -> Inode {
    Inode::new_dir(stat(S_IFDIR | 0o755))
}

pub fn inline(data: &[u8]) -> Inode {
    Inode {
        stat: stat(S_IFREG | 0o644),
        xattrs: vec![],
        content: Content::Regular(File {
            size: data.len() as u64,
            data: FileData::Inline(data.to_vec()),
        }),
    }
}

pub fn external(size: u64, redirect: Option<&[u8]>, verity: Option<[u8; 32]>) -> Inode {
    Inode {
        stat: stat(S_IFREG | 0o644),
        xattrs: vec![],
        content: Content::Regular(File {
            size,
            data: FileData::External {
                redirect: redirect.map(|r| r.to_vec()),
                verity: verity.map(|v| v.to_vec()),
            },
        }),
    }
}

pub fn symlink(target: &[u8]) -> Inode {
    Inode {
        stat: stat(S_IFLNK | 0o777),
        xattrs: vec![],
        content: Content::Symlink(target.to_vec()),
    }
}

pub fn special(mode: u32, rdev: u64) -> Inode {
    let mut st = stat(mode);
    st.rdev = rdev;
    Inode {
        stat: st,
        xattrs: vec![],
        content: Content::Special,
    }
}

pub fn with_xattrs(mut inode: Inode, xattrs: &[(&[u8], &[u8])]) -> Inode {
    for (n, v) in xattrs {
        inode.xattrs.push(Xattr {
            name: n.to_vec(),
            value: v.to_vec(),
        });
    }
    inode
}

pub fn root_builder() -> TreeBuilder {
    TreeBuilder::new(stat(S_IFDIR | 0o755))
}

/// Small deterministic PRNG (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn random_name(r: &mut Rng) -> Vec<u8> {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-= !+\\\n\x01\xff\xe9";
    let len = match r.below(10) {
        0 => 200 + r.below(56) as usize,
        1 => 1,
        2 => 2,
        _ => 1 + r.below(24) as usize,
    };
    loop {
        let name: Vec<u8> = if len == 2 && r.chance(50) {
            // Collide with the root whiteout names sometimes.
            format!("{:02x}", r.below(256)).into_bytes()
        } else {
            (0..len).map(|_| *r.pick(ALPHA)).collect()
        };
        if name != b"." && name != b".." {
            return name;
        }
    }
}

fn random_stat(r: &mut Rng, mode: u32) -> Stat {
    let mut st = stat(mode | (r.below(0o7777) as u32));
    if r.chance(15) {
        st.uid = r.next() as u32;
    } else if r.chance(30) {
        st.uid = r.below(70_000) as u32;
    }
    if r.chance(15) {
        st.gid = r.next() as u32;
    }
    if r.chance(20) {
        st.mtime = Timespec {
            sec: T0 + r.below(1000) as i64 - 500,
            nsec: r.below(1_000_000_000) as u32,
        };
    }
    if r.chance(3) {
        st.mtime.sec = -(r.below(1 << 40) as i64);
    }
    st.nlink = match r.below(10) {
        0 => r.next() as u32,
        1 => 70_000,
        _ => 1 + r.below(4) as u32,
    };
    st
}

const XATTR_POOL: &[(&[u8], &[u8])] = &[
    (b"user.a", b"1"),
    (b"user.a", b"22"),
    (b"user.b", b""),
    (b"security.selinux", b"system_u:object_r:etc_t:s0\0"),
    (b"security.selinux", b"system_u:object_r:bin_t:s0\0"),
    (b"trusted.overlay.opaque", b"y"),
    (b"trusted.overlay.redirect", b"/x"),
    (b"trusted.foo", b"bar"),
    (
        b"system.posix_acl_access",
        b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff",
    ),
    (b"system.posix_acl_default", b"\x02\0\0\0"),
    (b"lustre.x", b"y"),
    (b"other.name", b"v"),
    (b"user.overlay.foo", b"q"),
];

fn random_xattrs(r: &mut Rng) -> Vec<Xattr> {
    let mut out: Vec<Xattr> = Vec::new();
    let n = match r.below(10) {
        0..=3 => 0,
        4..=7 => 1 + r.below(3),
        8 => 4 + r.below(10),
        _ => 130 + r.below(20), // more than the 0x80 shared cap
    };
    if r.chance(4) {
        // xattrs that collide with the overlayfs rewrite (some make
        // composefs C refuse the tree).
        const TRICKY: &[(&[u8], &[u8])] = &[
            (b"trusted.overlay.whiteouts", b"abc"),
            (b"trusted.overlay.whiteout", b"zz"),
            (b"trusted.overlay.opaque", b"xx"),
            (b"user.overlay.whiteouts", b"q"),
            (b"user.overlay.opaque", b"xx"),
            (b"user.overlay.opaque", b""),
            (b"user.overlay.whiteout", b""),
            (b"trusted.overlay.metacopy", b"m"),
        ];
        let (n, v) = *r.pick(TRICKY);
        out.push(Xattr {
            name: n.to_vec(),
            value: v.to_vec(),
        });
    }
    for i in 0..n {
        let (name, value) = if n > 20 {
            // Many xattrs: mostly shared-looking values.
            (
                format!("user.many{:03}", i).into_bytes(),
                if r.chance(80) {
                    b"same".to_vec()
                } else {
                    r.bytes(3)
                },
            )
        } else if r.chance(75) {
            let (n, v) = *r.pick(XATTR_POOL);
            (n.to_vec(), v.to_vec())
        } else {
            let mut name = b"user.r".to_vec();
            name.extend(random_name(r).into_iter().filter(|&c| c != 0).take(200));
            let vlen = if r.chance(5) {
                r.below(3000)
            } else {
                r.below(40)
            } as usize;
            (name, r.bytes(vlen))
        };
        if out.iter().any(|x| x.name == name) {
            continue;
        }
        out.push(Xattr { name, value });
    }
    out
}

fn random_leaf(r: &mut Rng) -> Inode {
    let kind = r.below(100);
    let (mode, content) = if kind < 35 {
        let size = if r.chance(60) {
            *r.pick(&[
                0u64, 1, 2, 63, 64, 65, 2047, 2048, 2049, 4095, 4096, 4097, 5000,
            ])
        } else {
            r.below(5001)
        };
        (
            S_IFREG,
            Content::Regular(File {
                size,
                data: FileData::Inline(r.bytes(size as usize)),
            }),
        )
    } else if kind < 65 {
        let size = match r.below(8) {
            0 => 1,
            1 => 4096,
            2 => 4097,
            3 => 1 << 30,
            4 => (4 << 40) + 1,
            5 => (8 << 40) * (1 + r.below(1024)) - r.below(100), // multi-chunk
            6 => 0,
            _ => 1 + r.below(1 << 36),
        };
        let redirect = if r.chance(80) {
            let h = r.bytes(32);
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!("{}/{}", &hex[..2], &hex[2..]).into_bytes())
        } else if r.chance(50) {
            Some(Vec::new())
        } else {
            None
        };
        let verity = if r.chance(70) {
            Some(r.bytes(32))
        } else {
            None
        };
        (
            S_IFREG,
            Content::Regular(File {
                size,
                data: FileData::External { redirect, verity },
            }),
        )
    } else if kind < 80 {
        let len = match r.below(6) {
            0 => 4000 + r.below(96) as usize,
            1 => 1000 + r.below(3000) as usize,
            _ => 1 + r.below(60) as usize,
        };
        let t: Vec<u8> = (0..len).map(|_| b'a' + r.below(26) as u8).collect();
        (S_IFLNK, Content::Symlink(t))
    } else {
        let mode = *r.pick(&[S_IFCHR, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK]);
        (mode, Content::Special)
    };
    let mut st = random_stat(r, mode);
    if mode == S_IFCHR || mode == S_IFBLK {
        st.rdev = if r.chance(50) { 0 } else { r.below(1 << 20) };
    }
    Inode {
        stat: st,
        xattrs: random_xattrs(r),
        content,
    }
}

/// A random valid tree exercising most writer features.
pub fn random_tree(seed: u64) -> Tree {
    let mut r = Rng(seed);
    let mut rs = random_stat(&mut r, S_IFDIR);
    rs.mode = S_IFDIR | 0o755;
    let mut b = TreeBuilder::new(rs);
    b.tree_mut().inodes[0].xattrs = random_xattrs(&mut r);
    let mut dirs = vec![InodeId::ROOT];
    let mut leaves: Vec<InodeId> = Vec::new();
    let n = match r.below(10) {
        0 => 0,
        1 => 1500 + r.below(1500),
        _ => 1 + r.below(60),
    };
    let mut used: std::collections::HashSet<(u32, Vec<u8>)> = Default::default();
    for _ in 0..n {
        let parent = if n > 1000 && r.chance(80) {
            InodeId::ROOT
        } else {
            *r.pick(&dirs)
        };
        let mut name = random_name(&mut r);
        if n > 1000 && r.chance(70) {
            name = format!(
                "long-file-name-for-a-big-directory-{:08}",
                r.next() % 100_000_000
            )
            .into_bytes();
        }
        if !used.insert((parent.0, name.clone())) {
            continue;
        }
        let k = r.below(100);
        if k < 15 {
            let mut d = Inode::new_dir(random_stat(&mut r, S_IFDIR));
            d.xattrs = random_xattrs(&mut r);
            let id = b.add(parent, name, d);
            dirs.push(id);
        } else if k < 22 && !leaves.is_empty() {
            let target = *r.pick(&leaves);
            b.link(parent, name, target);
        } else {
            let id = b.add(parent, name, random_leaf(&mut r));
            leaves.push(id);
        }
    }
    b.finish().expect("random tree is valid")
}

/// Named hand-built trees covering the writer's features, shared by the
/// committed tests and the (uncommitted) C-oracle harness.
pub fn fixtures() -> Vec<(&'static str, Tree, erofs::WriteOptions)> {
    use erofs::WriteOptions;
    let def = WriteOptions::default();
    let mut v: Vec<(&'static str, Tree, WriteOptions)> = Vec::new();

    v.push(("empty_root", root_builder().finish().unwrap(), def));

    let mut b = root_builder();
    let a = b.add(InodeId::ROOT, b"a".to_vec(), dir());
    let ab = b.add(a, b"b".to_vec(), dir());
    let abc = b.add(ab, b"c".to_vec(), dir());
    b.add(abc, b"file".to_vec(), inline(b"hello\n"));
    b.add(a, b"z".to_vec(), dir());
    b.add(InodeId::ROOT, b"!early".to_vec(), dir());
    v.push(("nested_dirs", b.finish().unwrap(), def));

    let mut b = root_builder();
    let d = b.add(InodeId::ROOT, b"big".to_vec(), dir());
    for i in 0..2000 {
        let name = format!("{i:05}-a-rather-long-file-name-to-fill-directory-blocks-quickly-{i}");
        b.add(d, name.into_bytes(), inline(b""));
    }
    v.push(("big_dir_2000", b.finish().unwrap(), def));

    let mut b = root_builder();
    for size in [0usize, 1, 64, 2048, 2049, 4096, 5000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        b.add(
            InodeId::ROOT,
            format!("inline-{size}").into_bytes(),
            inline(&data),
        );
    }
    v.push(("inline_sizes", b.finish().unwrap(), def));

    for size in [0usize, 1, 64, 2048, 2049, 4096, 5000] {
        let mut b = root_builder();
        let data: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
        b.add(InodeId::ROOT, b"f".to_vec(), inline(&data));
        let name: &'static str = Box::leak(format!("inline_{size}").into_boxed_str());
        v.push((name, b.finish().unwrap(), def));
    }

    let mut b = root_builder();
    let digest = [0x5au8; 32];
    let sizes: [u64; 6] = [1, 4096, 4097, 1 << 30, (4 << 40) + 1, 1 << 53];
    for (i, size) in sizes.iter().enumerate() {
        b.add(
            InodeId::ROOT,
            format!("ext-{i}-full").into_bytes(),
            external(*size, Some(b"ab/cdef0123"), Some(digest)),
        );
        b.add(
            InodeId::ROOT,
            format!("ext-{i}-nodigest").into_bytes(),
            external(*size, Some(b"ab/cdef0123"), None),
        );
        b.add(
            InodeId::ROOT,
            format!("ext-{i}-noredirect").into_bytes(),
            external(*size, None, Some(digest)),
        );
        b.add(
            InodeId::ROOT,
            format!("ext-{i}-bare").into_bytes(),
            external(*size, None, None),
        );
    }
    b.add(
        InodeId::ROOT,
        b"ext-empty".to_vec(),
        external(0, Some(b"x/y"), Some(digest)),
    );
    v.push(("external_files", b.finish().unwrap(), def));

    // Chunk tables of 1024 entries at varying offsets: some must move out
    // of the inode into a block of NULL_ADDRs.
    let mut b = root_builder();
    for i in 0..12u8 {
        let xv = vec![b'x'; i as usize * 5];
        let f = with_xattrs(external(1 << 53, None, None), &[(b"user.pad", &xv)]);
        b.add(InodeId::ROOT, vec![b'c', b'a' + i], f);
    }
    v.push(("chunk_table_spill", b.finish().unwrap(), def));

    let mut b = root_builder();
    b.add(InodeId::ROOT, b"short".to_vec(), symlink(b"target"));
    b.add(InodeId::ROOT, b"long".to_vec(), symlink(&[b'l'; 4000]));
    b.add(InodeId::ROOT, b"max".to_vec(), symlink(&[b'm'; 4095]));
    b.add(InodeId::ROOT, b"mid".to_vec(), symlink(&[b'q'; 2500]));
    let big_x = vec![b'v'; 3000];
    b.add(
        InodeId::ROOT,
        b"xattr-heavy".to_vec(),
        with_xattrs(symlink(&[b's'; 1500]), &[(b"user.big", &big_x)]),
    );
    v.push(("symlinks", b.finish().unwrap(), def));

    let mut b = root_builder();
    b.add(
        InodeId::ROOT,
        b"blk".to_vec(),
        special(S_IFBLK | 0o600, (8 << 8) | 1),
    );
    b.add(
        InodeId::ROOT,
        b"chr".to_vec(),
        special(S_IFCHR | 0o666, (1 << 8) | 3),
    );
    b.add(InodeId::ROOT, b"fifo".to_vec(), special(S_IFIFO | 0o644, 0));
    b.add(
        InodeId::ROOT,
        b"sock".to_vec(),
        special(S_IFSOCK | 0o755, 0),
    );
    b.add(
        InodeId::ROOT,
        b"bigdev".to_vec(),
        special(S_IFCHR | 0o600, 0xfff_ffff),
    );
    v.push(("devices", b.finish().unwrap(), def));

    for (name, opts) in [
        ("whiteouts_default", def),
        (
            "whiteouts_v0",
            WriteOptions {
                min_version: 0,
                max_version: 0,
            },
        ),
    ] {
        let mut b = root_builder();
        let d = b.add(InodeId::ROOT, b"d".to_vec(), dir());
        b.add(d, b"gone".to_vec(), special(S_IFCHR, 0));
        b.add(d, b"kept".to_vec(), inline(b"k"));
        b.add(InodeId::ROOT, b"00".to_vec(), inline(b"not a whiteout"));
        b.add(InodeId::ROOT, b"ab".to_vec(), dir());
        v.push((name, b.finish().unwrap(), opts));
    }
    let mut b = root_builder();
    b.add(InodeId::ROOT, b"x".to_vec(), dir());
    v.push((
        "version_min1",
        b.finish().unwrap(),
        WriteOptions {
            min_version: 1,
            max_version: 0,
        },
    ));

    // Hard links: the home entry is where the inode is placed; links can
    // sit before it in BFS order.
    let mut b = root_builder();
    let sub = b.add(InodeId::ROOT, b"sub".to_vec(), dir());
    let f = b.add_unlinked(inline(b"shared content"));
    b.link(sub, b"home".to_vec(), f);
    b.link(InodeId::ROOT, b"alink".to_vec(), f);
    b.link(sub, b"zlink".to_vec(), f);
    let s = b.add(InodeId::ROOT, b"sym".to_vec(), symlink(b"sub/home"));
    b.link(sub, b"symlink-link".to_vec(), s);
    b.tree_mut().inodes[f.index()].stat.nlink = 3;
    v.push(("hardlinks", b.finish().unwrap(), def));

    let mut b = root_builder();
    let common: &[(&[u8], &[u8])] = &[
        (b"security.selinux", b"system_u:object_r:usr_t:s0\0"),
        (b"user.shared", b"v"),
    ];
    for i in 0..5 {
        let mut f = with_xattrs(inline(b"x"), common);
        f.xattrs.push(erofs::Xattr {
            name: format!("user.own{i}").into_bytes(),
            value: vec![i as u8; i * 3],
        });
        b.add(InodeId::ROOT, format!("f{i}").into_bytes(), f);
    }
    b.add(
        InodeId::ROOT,
        b"overlay".to_vec(),
        with_xattrs(
            dir(),
            &[
                (b"trusted.overlay.opaque", b"y"),
                (b"trusted.overlay.overlay.x", b"1"),
                (b"trusted.other", b"t"),
                (b"noprefix.name", b"n"),
            ],
        ),
    );
    b.add(
        InodeId::ROOT,
        b"acl".to_vec(),
        with_xattrs(inline(b""), &[(b"system.posix_acl_access", b"\x02\0\0\0")]),
    );
    b.tree_mut().inodes[0].xattrs.push(erofs::Xattr {
        name: b"security.selinux".to_vec(),
        value: b"system_u:object_r:root_t:s0\0".to_vec(),
    });
    v.push(("xattrs", b.finish().unwrap(), def));

    // More than 0x80 shared xattrs on one inode.
    let mut b = root_builder();
    for f in 0..2 {
        let mut x: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for i in 0..140 {
            x.push((format!("user.k{i:03}").into_bytes(), b"same".to_vec()));
        }
        let refs: Vec<(&[u8], &[u8])> = x.iter().map(|(a, b)| (&a[..], &b[..])).collect();
        b.add(
            InodeId::ROOT,
            format!("f{f}").into_bytes(),
            with_xattrs(inline(b""), &refs),
        );
    }
    v.push(("shared_cap", b.finish().unwrap(), def));

    // Exactly at composefs' per-inode xattr budget: 12 + 7 + 8 + 32740.
    let mut b = root_builder();
    b.add(
        InodeId::ROOT,
        b"full".to_vec(),
        with_xattrs(
            external(10, Some(b"aa/bb"), None),
            &[(b"user.big", &[b'z'; 32740])],
        ),
    );
    v.push(("xattr_budget_limit", b.finish().unwrap(), def));

    let mut b = root_builder();
    let mut big = dir();
    big.stat.uid = 70_000;
    big.stat.gid = 1 << 31;
    b.add(InodeId::ROOT, b"uids".to_vec(), big);
    let mut old = inline(b"old");
    old.stat.mtime = Timespec {
        sec: -86_400 * 365,
        nsec: 123,
    };
    b.add(InodeId::ROOT, b"old".to_vec(), old);
    let mut newer = inline(b"newer");
    newer.stat.mtime.nsec = 1;
    newer.stat.nlink = 100_000;
    b.add(InodeId::ROOT, b"newer".to_vec(), newer);
    v.push(("ids_and_times", b.finish().unwrap(), def));

    v
}

/// Trees composefs C refuses to write (and so must we).
pub fn error_fixtures() -> Vec<(&'static str, Tree)> {
    let mut v = Vec::new();
    let mut b = root_builder();
    b.add(
        InodeId::ROOT,
        b"huge".to_vec(),
        external((1 << 53) + 1, None, None),
    );
    v.push(("too_many_chunks", b.finish().unwrap()));

    // Replacing an escaped user "trusted.overlay.whiteouts" value on a
    // directory that holds a whiteout trips composefs C's xattr bookkeeping.
    let mut b = root_builder();
    let d = b.add(
        InodeId::ROOT,
        b"d".to_vec(),
        with_xattrs(
            dir(),
            &[(b"trusted.overlay.whiteouts", b"abc"), (b"user.x", b"1")],
        ),
    );
    b.add(d, b"w".to_vec(), special(S_IFCHR, 0));
    v.push(("whiteouts_rewrite_budget", b.finish().unwrap()));

    // One byte over the per-inode xattr budget.
    let mut b = root_builder();
    b.add(
        InodeId::ROOT,
        b"full".to_vec(),
        with_xattrs(inline(b""), &[(b"user.big", &[b'z'; 32741])]),
    );
    v.push(("xattr_budget_exceeded", b.finish().unwrap()));
    v
}
