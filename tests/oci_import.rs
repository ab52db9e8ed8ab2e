//! OCI import through the CLI, on real files: layered images (every layer
//! compression, whiteouts, opaque directories, hard links, PAX names and
//! xattrs, devices) must import to exactly the tree GNU tar extracts;
//! layers round-trip byte for byte; export → pull keeps the image id;
//! hostile input is refused cleanly; archives equal layouts; and, when the
//! local corpus exists, a real image with a deletion layer imports right.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------- CLI helpers

fn strata(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    o.stdout.clone()
}

/// A failed command: exit 1 and exactly one line `strata: …` on stderr.
fn err(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "panic: {e}");
    assert!(e.starts_with("strata: "), "error format: {e:?}");
    assert_eq!(e.lines().count(), 1, "error is one line: {e:?}");
    e
}

fn pull_json(repo: &Path, source: &str, name: &str) -> Value {
    let out = ok(&strata(repo, &["--json", "pull", source, name]));
    serde_json::from_slice(&out).unwrap()
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn fsck_clean(repo: &Path) {
    let o = strata(repo, &["--json", "fsck"]);
    assert!(
        o.status.success(),
        "fsck not clean: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn image_names(repo: &Path) -> String {
    String::from_utf8(ok(&strata(repo, &["images"]))).unwrap()
}

// ------------------------------------------------------------ tar building

/// One tar entry, written as a ustar header preceded by PAX records when
/// needed (long names, big ids, nanosecond times, xattrs).
#[derive(Clone)]
struct E {
    path: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    link: Vec<u8>,
    dev: (u32, u32),
    pax: Vec<(String, Vec<u8>)>,
    /// Size written in the header instead of `data.len()` (GNU base-256).
    fake_size: Option<u64>,
}

fn entry(path: &[u8], kind: tar::EntryType, mode: u32) -> E {
    E {
        path: path.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        data: Vec::new(),
        link: Vec::new(),
        dev: (0, 0),
        pax: Vec::new(),
        fake_size: None,
    }
}

fn file(path: &str, data: &[u8]) -> E {
    let mut e = entry(path.as_bytes(), tar::EntryType::Regular, 0o644);
    e.data = data.to_vec();
    e
}

fn dir(path: &str) -> E {
    entry(path.as_bytes(), tar::EntryType::Directory, 0o755)
}

fn symlink(path: &str, target: &str) -> E {
    let mut e = entry(path.as_bytes(), tar::EntryType::Symlink, 0o777);
    e.link = target.as_bytes().to_vec();
    e
}

fn hardlink(path: &str, target: &str) -> E {
    let mut e = entry(path.as_bytes(), tar::EntryType::Link, 0o644);
    e.link = target.as_bytes().to_vec();
    e
}

impl E {
    fn pax(mut self, k: &str, v: &[u8]) -> Self {
        self.pax.push((k.to_string(), v.to_vec()));
        self
    }
    fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn mode(mut self, m: u32) -> Self {
        self.mode = m;
        self
    }
    fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
}

const OCTAL_MAX: u64 = 0o7777777;

fn append(b: &mut tar::Builder<Vec<u8>>, e: &E) {
    let mut pax = e.pax.clone();
    if e.path.len() > 100 {
        pax.push(("path".into(), e.path.clone()));
    }
    if e.link.len() > 100 {
        pax.push(("linkpath".into(), e.link.clone()));
    }
    if e.uid > OCTAL_MAX {
        pax.push(("uid".into(), e.uid.to_string().into_bytes()));
    }
    if e.gid > OCTAL_MAX {
        pax.push(("gid".into(), e.gid.to_string().into_bytes()));
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
    }
    let mut h = if e.fake_size.is_some() {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.set_entry_type(e.kind);
    h.set_mode(e.mode);
    h.set_uid(if e.uid > OCTAL_MAX { 0 } else { e.uid });
    h.set_gid(if e.gid > OCTAL_MAX { 0 } else { e.gid });
    h.set_mtime(e.mtime);
    h.set_size(e.fake_size.unwrap_or(e.data.len() as u64));
    if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
    }
    // Names are written raw (the tar crate refuses `..` and absolute paths,
    // which the hostile tests need); PAX carries the full long ones.
    let old = h.as_old_mut();
    let n = e.path.len().min(100);
    old.name[..n].copy_from_slice(&e.path[..n]);
    let n = e.link.len().min(100);
    old.linkname[..n].copy_from_slice(&e.link[..n]);
    h.set_cksum();
    b.append(&h, &e.data[..]).unwrap();
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap()
}

// ------------------------------------------------------- compression, layout

const OCI_M: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_C: &str = "application/vnd.oci.image.config.v1+json";
const OCI_I: &str = "application/vnd.oci.image.index.v1+json";
const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[derive(Clone, Copy, Debug)]
enum Comp {
    None,
    Gzip,
    Zstd,
    /// Several concatenated zstd frames (as zstd:chunked writes).
    ZstdFrames,
}

fn compress(c: Comp, t: &[u8]) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (t.to_vec(), MT_TAR),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(t).unwrap();
            (e.finish().unwrap(), MT_GZ)
        }
        Comp::Zstd => (zstd::encode_all(t, 3).unwrap(), MT_ZST),
        Comp::ZstdFrames => {
            let mut out = Vec::new();
            // Frames cut mid-header and mid-body, on purpose.
            for chunk in t.chunks(700) {
                out.extend(zstd::encode_all(chunk, 1).unwrap());
            }
            (out, MT_ZST)
        }
    }
}

/// A hand-made OCI layout: blobs, manifests, index.json.
struct Layout {
    dir: PathBuf,
    index: Vec<Value>,
}

/// A layer as put in a layout: (blob, media type, diff_id).
type Blob = (Vec<u8>, &'static str, String);

impl Layout {
    fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.into(),
            index: Vec::new(),
        }
    }
    fn blob(&self, b: &[u8]) -> (String, u64) {
        let d = sha(b);
        fs::write(self.blob_path(&d), b).unwrap();
        (d, b.len() as u64)
    }
    fn blob_path(&self, d: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(&d[7..])
    }
    fn layer(c: Comp, t: &[u8]) -> Blob {
        let (b, mt) = compress(c, t);
        (b, mt, sha(t))
    }
    /// Writes config + manifest; returns (manifest descriptor, config digest).
    fn manifest(&self, layers: &[Blob], arch: &str) -> (Value, String) {
        let diff_ids: Vec<&String> = layers.iter().map(|l| &l.2).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let (cd, cs) = self.blob(&config);
        let ls: Vec<Value> = layers
            .iter()
            .map(|(b, mt, _)| {
                let (d, s) = self.blob(b);
                json!({"mediaType": mt, "digest": d, "size": s})
            })
            .collect();
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_M,
            "config": {"mediaType": OCI_C, "digest": cd, "size": cs},
            "layers": ls,
        }))
        .unwrap();
        let (md, ms) = self.blob(&m);
        (json!({"mediaType": OCI_M, "digest": md, "size": ms}), cd)
    }
    fn tag(&mut self, mut desc: Value, tag: &str) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
        let v = json!({"schemaVersion": 2, "manifests": self.index});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    /// A single-platform image tagged `tag`; returns the config digest.
    fn image(&mut self, tag: &str, layers: &[Blob]) -> String {
        let (desc, cd) = self.manifest(layers, "amd64");
        self.tag(desc, tag);
        cd
    }
    fn source(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

// ------------------------------------------- expected tree (GNU tar) and dump

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Dir,
    /// sha256 of the contents.
    File(String),
    Symlink(Vec<u8>),
    Special,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    rdev: u64,
    mtime: (i64, i64),
    size: u64,
    body: Body,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A tree by path (relative, no leading `/`; the root is empty), with the
/// hard-link groups: path → every path of the same inode (only for inodes
/// with several).
struct Snapshot {
    files: BTreeMap<Vec<u8>, Meta>,
    links: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
}

fn groups(of: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut by_key: BTreeMap<&Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, k) in of {
        by_key.entry(k).or_default().push(p.clone());
    }
    let mut out = BTreeMap::new();
    for members in by_key.values().filter(|m| m.len() > 1) {
        for p in members {
            out.insert(p.clone(), members.clone());
        }
    }
    out
}

/// Walks a real directory (an extraction or a mount).
fn walk(root: &Path) -> Snapshot {
    let mut files = BTreeMap::new();
    let mut inos = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let body = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            Body::Dir
        } else if ft.is_file() {
            Body::File(sha(&fs::read(&p).unwrap()))
        } else if ft.is_symlink() {
            Body::Symlink(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            Body::Special
        };
        let key = rel.as_os_str().as_bytes().to_vec();
        if !ft.is_dir() {
            inos.insert(key.clone(), md.ino().to_string().into_bytes());
        }
        files.insert(
            key,
            Meta {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                rdev: md.rdev(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { md.size() },
                body,
                xattrs: common::xattrs(&p),
            },
        );
    }
    Snapshot {
        files,
        links: groups(&inos),
    }
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        match s[i + 1] {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let h = std::str::from_utf8(&s[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            c => panic!("unknown escape \\{}", c as char),
        }
        i += 2;
    }
    out
}

fn rel(path: &[u8]) -> Vec<u8> {
    path.strip_prefix(b"/").unwrap_or(path).to_vec()
}

/// Parses composefs-dump(5) text; file contents come from the object store
/// (external files) or the CONTENT field (inline ones).
fn parse_dump(text: &[u8], objects: &Path) -> Snapshot {
    let mut files = BTreeMap::new();
    let mut link_of: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        assert!(
            f.len() >= 11,
            "dump line: {}",
            String::from_utf8_lossy(line)
        );
        let path = rel(&unescape(f[0]));
        let num =
            |s: &[u8], base| u64::from_str_radix(std::str::from_utf8(s).unwrap(), base).unwrap();
        let opt = |s: &[u8]| (s != b"-").then(|| unescape(s));
        if let Some(_mode) = f[2].strip_prefix(b"@") {
            link_of.insert(path, rel(&opt(f[8]).expect("hard link target")));
            continue;
        }
        let mode = num(f[2], 8) as u32;
        let size = num(f[1], 10);
        let (sec, nsec) = {
            let s = std::str::from_utf8(f[7]).unwrap();
            let (a, b) = s.split_once('.').unwrap();
            (a.parse::<i64>().unwrap(), b.parse::<i64>().unwrap())
        };
        let body = match mode & 0o170000 {
            0o040000 => Body::Dir,
            0o100000 => {
                let bytes = match (opt(f[8]), opt(f[9])) {
                    (Some(payload), None) if size > 0 => {
                        fs::read(objects.join(OsStr::from_bytes(&payload))).unwrap_or_else(|e| {
                            panic!("object {}: {e}", String::from_utf8_lossy(&payload))
                        })
                    }
                    (None, Some(inline)) => inline,
                    (None, None) => Vec::new(),
                    other => panic!("file fields: {other:?}"),
                };
                assert_eq!(
                    bytes.len() as u64,
                    size,
                    "{}",
                    String::from_utf8_lossy(&path)
                );
                Body::File(sha(&bytes))
            }
            0o120000 => Body::Symlink(opt(f[8]).expect("symlink target")),
            _ => Body::Special,
        };
        let mut xattrs = BTreeMap::new();
        for x in &f[11..] {
            let eq = x.iter().position(|&b| b == b'=').expect("xattr KEY=VALUE");
            xattrs.insert(unescape(&x[..eq]), unescape(&x[eq + 1..]));
        }
        files.insert(
            path.clone(),
            Meta {
                mode,
                uid: num(f[4], 10) as u32,
                gid: num(f[5], 10) as u32,
                nlink: num(f[3], 10),
                rdev: num(f[6], 10),
                mtime: (sec, nsec),
                size: if body == Body::Dir { 0 } else { size },
                body,
                xattrs,
            },
        );
    }
    let mut inos: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (p, m) in &files {
        if m.body != Body::Dir {
            inos.insert(p.clone(), p.clone());
        }
    }
    for (p, target) in &link_of {
        let m = files
            .get(target)
            .unwrap_or_else(|| panic!("hard link to unknown {}", String::from_utf8_lossy(target)))
            .clone();
        files.insert(p.clone(), m);
        inos.insert(p.clone(), target.clone());
    }
    Snapshot {
        files,
        links: groups(&inos),
    }
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Compares two snapshots. Masked, with reasons:
/// - directory mtimes: extracting later layers and deleting whited-out files
///   changes them on disk, while the image keeps the last header's value
///   (checked separately for one directory);
/// - the root's mtime: it is the extraction directory's.
fn assert_same_tree(got: &Snapshot, want: &Snapshot, what: &str) {
    if let Some(d) = tree_diff(got, want) {
        panic!("{what}: {d}");
    }
}

/// The first difference between two snapshots (see [`assert_same_tree`]).
fn tree_diff(got: &Snapshot, want: &Snapshot) -> Option<String> {
    let gk: Vec<String> = got.files.keys().map(|k| show(k)).collect();
    let wk: Vec<String> = want.files.keys().map(|k| show(k)).collect();
    if gk != wk {
        let extra: Vec<_> = gk.iter().filter(|k| !wk.contains(k)).collect();
        let missing: Vec<_> = wk.iter().filter(|k| !gk.contains(k)).collect();
        return Some(format!(
            "paths differ: unexpected {extra:?}, missing {missing:?}"
        ));
    }
    for (p, w) in &want.files {
        let mut g = got.files[p].clone();
        let mut w = w.clone();
        if w.body == Body::Dir {
            g.mtime = (0, 0);
            w.mtime = (0, 0);
        }
        if g != w {
            return Some(format!("/{} differs:\n got {g:?}\nwant {w:?}", show(p)));
        }
    }
    if got.links != want.links {
        return Some(format!(
            "hard-link groups differ:\n got {:?}\nwant {:?}",
            got.links, want.links
        ));
    }
    None
}

/// The comparison must fail for the mistakes an importer could make.
fn comparison_catches_mistakes(got: &Snapshot, want: &Snapshot) {
    let fails = |f: &dyn Fn(&mut Snapshot)| {
        let mut g = Snapshot {
            files: got.files.clone(),
            links: got.links.clone(),
        };
        f(&mut g);
        tree_diff(&g, want).is_some()
    };
    let k = |p: &str| p.as_bytes().to_vec();
    // A whiteout not applied: the deleted file is still there.
    let mut readme = got.files[&k("usr/share/doc/keep")].clone();
    readme.body = Body::File(sha(b"doc"));
    assert!(fails(&|g| {
        g.files.insert(k("usr/share/doc/readme"), readme.clone());
    }));
    // An opaque directory not applied.
    assert!(fails(&|g| {
        g.files.insert(k("opq/old1"), readme.clone());
    }));
    // A wrong owner, a lost xattr, a wrong nanosecond, wrong bytes.
    assert!(fails(&|g| g
        .files
        .get_mut(&k("bin/big-ids"))
        .unwrap()
        .uid = 0));
    assert!(fails(&|g| {
        g.files
            .get_mut(&k("bin/tool"))
            .unwrap()
            .xattrs
            .remove(&b"security.capability"[..]);
    }));
    assert!(fails(&|g| g
        .files
        .get_mut(&k("bin/nanos"))
        .unwrap()
        .mtime
        .1 = 0));
    assert!(fails(&|g| {
        g.files.get_mut(&k("data/big")).unwrap().body = Body::File(sha(b"other"));
    }));
    // A hard link broken into a copy.
    assert!(fails(&|g| {
        let members = g.links.remove(&k("data/big2")).unwrap();
        for m in members.iter().filter(|m| **m != k("data/big2")) {
            g.links.insert(m.clone(), vec![k("data/big")]);
        }
    }));
}

/// The OCI layer rules applied by hand around GNU tar: before extracting a
/// layer, delete what its `.wh.NAME` markers name and empty the directories
/// holding `.wh..wh..opq`; extract; delete the markers.
fn extract_expected(layers: &[Vec<u8>], root: &Path) {
    fs::create_dir_all(root).unwrap();
    for t in layers {
        let mut markers = Vec::new();
        let mut a = tar::Archive::new(&t[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path_bytes().into_owned();
            let p = p.strip_prefix(b"./").unwrap_or(&p).to_vec();
            let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
                Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
                None => (Vec::new(), p.clone()),
            };
            let d = root.join(OsStr::from_bytes(&dir));
            if name == b".wh..wh..opq" {
                if d.is_dir() {
                    for c in fs::read_dir(&d).unwrap() {
                        let c = c.unwrap().path();
                        if c.symlink_metadata().unwrap().is_dir() {
                            fs::remove_dir_all(&c).unwrap();
                        } else {
                            fs::remove_file(&c).unwrap();
                        }
                    }
                }
                markers.push(p.clone());
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                let h = d.join(OsStr::from_bytes(hidden));
                if let Ok(md) = h.symlink_metadata() {
                    if md.is_dir() {
                        fs::remove_dir_all(&h).unwrap();
                    } else {
                        fs::remove_file(&h).unwrap();
                    }
                }
                markers.push(p.clone());
            }
        }
        let mut child = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
                "-",
                "-C",
            ])
            .arg(root)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(t).unwrap();
        assert!(child.wait().unwrap().success(), "GNU tar failed");
        for m in markers {
            let _ = fs::remove_file(root.join(OsStr::from_bytes(&m)));
        }
    }
}

// ------------------------------------------------------------ the test image

const CAP: [u8; 20] = [
    // VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_BIND_SERVICE.
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn body(seed: &str, len: usize) -> Vec<u8> {
    seed.bytes().cycle().take(len).collect()
}

fn long_name() -> String {
    "n".repeat(150)
}

fn deep_path() -> String {
    // > 255 bytes in all, components under NAME_MAX.
    let d = ["d".repeat(90), "e".repeat(90), "f".repeat(90)].join("/");
    format!("deep/{d}/file-at-the-bottom")
}

/// The four layers of the main image (uncompressed tars).
fn main_layers() -> Vec<Vec<u8>> {
    let uid_big = 3_000_000; // beyond the octal field: PAX uid/gid
    let l1 = tar_of(&[
        dir("./"),
        dir("etc"),
        file("etc/passwd", &body("root:x:0:0:root:/root:/bin/sh\n", 300)),
        hardlink("etc/passwd-hl", "etc/passwd"),
        file("etc/small", b"inline\n"),
        dir("usr/share/doc").mode(0o750).owner(100_000, 70_000),
        file("usr/share/doc/readme", &body("read me ", 5000)).owner(100_000, 70_000),
        file("usr/share/doc/keep", &body("keep ", 200)),
        dir("del"),
        file("del/me", &body("delete me ", 100)),
        file("del/other", b"stays"),
        dir("gone"),
        file("gone/a", &body("whole dir goes ", 100)),
        dir("opq"),
        file("opq/old1", &body("old ", 100)),
        dir("opq/sub"),
        file("opq/sub/old2", b"old2"),
        dir("bin"),
        file("bin/tool", &body("\x7fELF tool ", 4096))
            .mode(0o4755)
            .pax("SCHILY.xattr.user.note", b"hello world")
            .pax("SCHILY.xattr.user.bin", &[0, 1, 2, b'=', b'\n', 255])
            .pax("SCHILY.xattr.security.capability", &CAP),
        file("bin/big-ids", &body("ids ", 100)).owner(uid_big, uid_big + 1),
        file("bin/nanos", &body("nanosecond ", 100)).pax("mtime", b"1700000000.123456789"),
        symlink("bin/sh", "tool"),
        symlink("bin/long-link", &format!("/{}", "t".repeat(200))),
        dir("dev"),
        {
            let mut e = entry(b"dev/null", tar::EntryType::Char, 0o666);
            e.dev = (1, 3);
            e
        },
        {
            let mut e = entry(b"dev/sda", tar::EntryType::Block, 0o660).owner(0, 6);
            e.dev = (8, 0);
            e
        },
        entry(b"dev/fifo", tar::EntryType::Fifo, 0o600),
        entry(b"dev/fifo-stays", tar::EntryType::Fifo, 0o640).owner(7, 8),
        dir("long"),
        file(&format!("long/{}", long_name()), &body("long name ", 100)),
        file(&deep_path(), &body("deep ", 100)),
    ]);
    // gzip: whiteouts, an opaque directory, a hard link across layers,
    // a replaced file, a directory's attributes updated.
    let l2 = tar_of(&[
        file("del/.wh.me", b""),
        file(".wh.gone", b""),
        dir("opq").mtime(1_650_000_000),
        file("opq/.wh..wh..opq", b""),
        file("opq/new", &body("new in opq ", 100)),
        dir("usr/bin"),
        hardlink("usr/bin/passwd-across", "etc/passwd"),
        file(
            "etc/small",
            b"replaced, and now longer than sixty-four bytes: an object\n",
        ),
        dir("etc").mode(0o700).owner(5, 6).mtime(1_660_000_000),
    ]);
    // zstd, several frames: a layer that only deletes.
    let l3 = tar_of(&[
        file("usr/share/doc/.wh.readme", b""),
        file("dev/.wh.fifo", b""),
        file(&format!("long/.wh.{}", long_name()), b""),
    ]);
    // zstd: new files, a hard link within the layer to a lower file's
    // new link, a file recreated where a whiteout was.
    let l4 = tar_of(&[
        file("del/me", &body("recreated ", 80)).owner(1000, 1000),
        file(
            "data/big",
            &(0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        ),
        hardlink("data/big2", "data/big"),
        hardlink("data/passwd3", "usr/bin/passwd-across"),
    ]);
    vec![l1, l2, l3, l4]
}

const COMPS: [Comp; 4] = [Comp::None, Comp::Gzip, Comp::ZstdFrames, Comp::Zstd];

fn snapshot_repo(repo: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(e.path(), (0, t.as_os_str().as_bytes().to_vec()));
            } else {
                out.insert(e.path(), (md.size(), Vec::new()));
            }
        }
    }
    out
}

#[test]
fn layered_image_matches_gnu_tar_extraction() {
    let tmp = tempfile::Builder::new()
        .prefix("strata-oci-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo = tmp.path().join("repo");
    let mut lay = Layout::new(&tmp.path().join("layout"));
    let tars = main_layers();
    let blobs: Vec<Blob> = tars
        .iter()
        .zip(COMPS)
        .map(|(t, c)| Layout::layer(c, t))
        .collect();
    let config_digest = lay.image("full", &blobs);

    let r = pull_json(&repo, &lay.source("full"), "full");
    assert_eq!(r["layers_imported"], 4, "{r}");
    assert_eq!(r["layers_reused"], 0, "{r}");
    assert_eq!(r["already_present"], false);
    let id = r["image_id"].as_str().unwrap().to_string();

    // The dump equals GNU tar's extraction with whiteouts applied.
    let dump = ok(&strata(&repo, &["dump", "full"]));
    let got = parse_dump(&dump, &repo.join("objects"));
    let want_dir = tmp.path().join("expected");
    extract_expected(&tars, &want_dir);
    let want = walk(&want_dir);
    // Sanity of the expectation itself, so a broken extraction cannot
    // make the comparison vacuous.
    let w = |p: &str| want.files.get(p.as_bytes());
    assert!(w("del/other").is_some() && w("usr/share/doc/readme").is_none());
    assert!(w("opq/old1").is_none() && w("opq/new").is_some() && w("gone").is_none());
    assert_eq!(
        w("bin/tool").unwrap().xattrs[&b"security.capability"[..]],
        CAP
    );
    assert_eq!(w("bin/big-ids").unwrap().uid, 3_000_000);
    assert_same_tree(&got, &want, "dump vs GNU tar");
    comparison_catches_mistakes(&got, &want);

    // A few facts spelled out (would be caught above, but say what matters).
    let g = |p: &str| &got.files[p.as_bytes()];
    assert_eq!(g("bin/nanos").mtime, (1_700_000_000, 123_456_789));
    assert_eq!(g("opq").mtime, (1_650_000_000, 0), "last header wins");
    assert_eq!((g("etc").mode, g("etc").uid, g("etc").gid), (0o40700, 5, 6));
    assert_eq!(g("bin/big-ids").gid, 3_000_001);
    assert_eq!(g("dev/sda").rdev, rustix::fs::makedev(8, 0));
    assert_eq!(
        g("bin/tool").xattrs[&b"user.bin"[..]],
        [0, 1, 2, b'=', b'\n', 255]
    );
    assert_eq!(
        got.links[&b"etc/passwd"[..]],
        [
            &b"data/passwd3"[..],
            b"etc/passwd",
            b"etc/passwd-hl",
            b"usr/bin/passwd-across"
        ]
    );
    assert!(got.files.contains_key(deep_path().as_bytes()));

    // Every layer's tar comes back byte for byte.
    let info: Value =
        serde_json::from_slice(&ok(&strata(&repo, &["--json", "inspect", "full"]))).unwrap();
    let layers = info["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for (l, t) in layers.iter().zip(&tars) {
        let diff = l["diff_id"].as_str().unwrap();
        assert_eq!(diff, sha(t));
        let cat = ok(&strata(&repo, &["layer", "cat", diff]));
        assert_eq!(sha(&cat), diff, "layer cat of {diff}");
        assert!(cat == *t, "layer {diff}: bytes differ");
    }
    assert_eq!(info["config_digest"], config_digest);

    // Pulling again changes nothing.
    let before = snapshot_repo(&repo);
    let again = pull_json(&repo, &lay.source("full"), "full");
    assert_eq!(again["already_present"], true, "{again}");
    assert_eq!(again["image_id"], id.as_str());
    assert_eq!(again["layers_imported"], 0);
    assert_eq!(
        before,
        snapshot_repo(&repo),
        "a second pull changed the repository"
    );

    // An image sharing the base layer imports only its new layer.
    let extra = tar_of(&[file("etc/extra", &body("extra ", 500))]);
    lay.image(
        "child",
        &[blobs[0].clone(), Layout::layer(Comp::Gzip, &extra)],
    );
    let c = pull_json(&repo, &lay.source("child"), "child");
    assert_eq!(
        (c["layers_imported"].as_u64(), c["layers_reused"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    let child_dump = String::from_utf8(ok(&strata(&repo, &["dump", "child"]))).unwrap();
    assert!(child_dump.contains("/etc/extra ") && child_dump.contains("/usr/share/doc/readme "));

    // export → pull: same config digest, same image id.
    for compress in ["zstd", "gzip", "none"] {
        let exp = tmp.path().join(format!("export-{compress}"));
        let dest = format!("oci:{}:x", exp.display());
        ok(&strata(
            &repo,
            &["export", "full", &dest, "--compress", compress],
        ));
        let idx: Value =
            serde_json::from_slice(&fs::read(exp.join("index.json")).unwrap()).unwrap();
        let md = idx["manifests"][0]["digest"].as_str().unwrap();
        let m: Value =
            serde_json::from_slice(&fs::read(exp.join("blobs/sha256").join(&md[7..])).unwrap())
                .unwrap();
        assert_eq!(
            m["config"]["digest"], config_digest,
            "export config ({compress})"
        );
        let repo2 = tmp.path().join(format!("repo-{compress}"));
        let r2 = pull_json(&repo2, &dest, "re");
        assert_eq!(
            r2["image_id"],
            id.as_str(),
            "export ({compress}) → pull changed the image"
        );
        fsck_clean(&repo2);
    }
    fsck_clean(&repo);

    mount_check(&repo, &id, &want, tmp.path());
}

/// Mounts the pulled image and compares the mounted tree with the expected
/// one (same masks as for the dump).
fn mount_check(repo: &Path, id: &str, want: &Snapshot, tmp: &Path) {
    use strata::mount::{mount_composefs, unmount, MountError, MountOptions};
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP mount check: needs root");
        return;
    }
    let image = repo.join("images").join(id);
    assert!(image.exists(), "{} missing", image.display());
    let mnt = tmp.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let opts = MountOptions {
        basedirs: vec![repo.join("objects")],
        readonly: true,
        ..Default::default()
    };
    match mount_composefs(&image, &mnt, &opts) {
        Ok(()) => {}
        Err(e @ MountError::NoFilesystem { .. }) => {
            eprintln!("SKIP mount check: kernel cannot mount composefs here: {e}");
            return;
        }
        Err(e) => panic!("mount failed: {e}"),
    }
    let seen = std::panic::catch_unwind(|| {
        let tool = fs::read(mnt.join("bin/tool")).unwrap();
        let caps = common::xattrs(&mnt.join("bin/tool"));
        (walk(&mnt), tool, caps)
    });
    unmount(&mnt).unwrap();
    let (mounted, tool, caps) = seen.unwrap();
    assert_eq!(tool, body("\x7fELF tool ", 4096));
    assert_eq!(caps[&b"security.capability"[..]], CAP);
    assert_eq!(caps[&b"user.note"[..]], b"hello world");
    assert_same_tree(&mounted, want, "mount vs GNU tar");
    eprintln!("mount check: {} paths compared", mounted.files.len());
}

// ------------------------------------------------------------ hostile input

/// Pulls `source` as `bad` and checks the refusal: one line naming
/// `needles`, no tag, nothing written outside the repository, fsck clean.
fn expect_rejected(tmp: &Path, source: &str, extra: &[&str], needles: &[&str]) {
    let repo = tmp.join("repo");
    // Something to keep, so fsck has work to do afterwards.
    let before: Vec<PathBuf> = list_outside(tmp, &repo);
    let cwd = tmp.join("a/b");
    fs::create_dir_all(&cwd).unwrap();
    let mut args = vec![
        "--repo".as_ref(),
        repo.as_os_str(),
        "pull".as_ref(),
        source.as_ref(),
        "bad".as_ref(),
    ];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    let o = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(&args)
        .current_dir(&cwd)
        .output()
        .unwrap();
    let e = err(&o);
    eprintln!("rejected as expected: {}", e.trim_end());
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
    assert!(!image_names(&repo).contains("bad"), "a tag was left behind");
    assert!(strata(&repo, &["dump", "bad"]).status.code() == Some(1));
    let mut after = list_outside(tmp, &repo);
    after.retain(|p| !p.starts_with(&cwd) || p == &cwd);
    let mut before = before;
    before.push(tmp.join("a"));
    before.push(cwd.clone());
    before.sort();
    after.sort();
    assert_eq!(before, after, "files appeared outside the repository");
    assert!(!Path::new("/etc/x").exists());
    fsck_clean(&repo);
}

fn list_outside(tmp: &Path, repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![tmp.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == repo {
                continue;
            }
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A repository that already holds a good image.
fn seeded(tmp: &Path) -> Layout {
    let mut lay = Layout::new(&tmp.join("layout"));
    let good = tar_of(&[dir("etc"), file("etc/good", &body("good ", 1000))]);
    lay.image("good", &[Layout::layer(Comp::Gzip, &good)]);
    ok(&strata(
        &tmp.join("repo"),
        &["pull", &lay.source("good"), "good"],
    ));
    lay
}

fn hostile(entries: &[E], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut lay = seeded(tmp.path());
    lay.image("bad", &[Layout::layer(Comp::Zstd, &tar_of(entries))]);
    expect_rejected(tmp.path(), &lay.source("bad"), &[], needles);
    assert!(image_names(&tmp.path().join("repo")).contains("good"));
}

#[test]
fn rejects_entry_climbing_above_root() {
    hostile(
        &[dir("a"), file("../../etc/x", b"pwned")],
        &["../../etc/x", "climbs above the image root"],
    );
    hostile(
        &[file("a/../../x", b"pwned")],
        &["a/../../x", "climbs above"],
    );
}

#[test]
fn rejects_hard_link_to_missing_target() {
    hostile(
        &[file("a", b"a"), hardlink("b", "not/there")],
        &["b: hard link to missing not/there"],
    );
}

#[test]
fn rejects_hard_link_escaping_root() {
    hostile(
        &[file("a", b"a"), hardlink("b", "../../etc/shadow")],
        &["b: hard link to ../../etc/shadow", "escapes the image root"],
    );
}

#[test]
fn rejects_absurd_size() {
    let mut huge = file("huge", b"only a few bytes follow");
    huge.fake_size = Some(1 << 60);
    hostile(&[huge], &["huge"]);
    let mut huge = file("paxhuge", b"only a few bytes follow");
    huge = huge.pax("size", b"1152921504606846976");
    hostile(&[huge], &["paxhuge"]);
}

#[test]
fn absolute_and_dotdot_paths_are_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut lay = Layout::new(&tmp.path().join("layout"));
    let t = tar_of(&[
        file("/etc/passwd", &body("absolute ", 100)),
        file("./a/../b", b"normalised"),
        file("c/./d//e", b"cde"),
    ]);
    lay.image("n", &[Layout::layer(Comp::None, &t)]);
    ok(&strata(&repo, &["pull", &lay.source("n"), "n"]));
    let dump = String::from_utf8(ok(&strata(&repo, &["dump", "n"]))).unwrap();
    let paths: Vec<&str> = dump.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        paths,
        ["/", "/b", "/c", "/c/d", "/c/d/e", "/etc", "/etc/passwd"],
        "{dump}"
    );
    assert!(
        dump.contains("/b 10 100644 1 0 0 0 1600000000.0 - normalised -"),
        "{dump}"
    );
    assert!(!tmp.path().join("b").exists() && !tmp.path().join("etc").exists());
    fsck_clean(&repo);
}

fn blob_case(corrupt: impl Fn(&mut Vec<u8>), needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut lay = seeded(tmp.path());
    let t = tar_of(&[file("f", &body("blob body ", 20_000))]);
    let l = Layout::layer(Comp::Gzip, &t);
    lay.image("bad", std::slice::from_ref(&l));
    let digest = sha(&l.0);
    let path = lay.blob_path(&digest);
    let mut b = fs::read(&path).unwrap();
    corrupt(&mut b);
    fs::write(&path, b).unwrap();
    let mut n: Vec<&str> = needles.to_vec();
    n.push(&digest);
    expect_rejected(tmp.path(), &lay.source("bad"), &[], &n);
    // The layer was not recorded: it is not catable.
    let o = strata(&tmp.path().join("repo"), &["layer", "cat", &sha(&t)]);
    err(&o);
}

#[test]
fn rejects_truncated_blob() {
    blob_case(|b| b.truncate(b.len() / 2), &["truncated"]);
}

#[test]
fn rejects_flipped_byte() {
    // A byte of the deflate stream's stored data (it may or may not still
    // inflate; either way the digest check must refuse it).
    blob_case(
        |b| {
            let i = b.len() / 2;
            b[i] ^= 0x40
        },
        &["digest mismatch"],
    );
    // The last byte (gzip ISIZE): inflates fine, only the digest catches it.
    blob_case(
        |b| {
            let i = b.len() - 1;
            b[i] ^= 1
        },
        &["digest mismatch"],
    );
}

#[test]
fn rejects_missing_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lay = seeded(tmp.path());
    let t = tar_of(&[file("f", b"x")]);
    let (mut desc, _) = lay.manifest(&[Layout::layer(Comp::None, &t)], "amd64");
    desc["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_I, "manifests": [desc],
    }))
    .unwrap();
    let (d, s) = lay.blob(&index);
    lay.tag(json!({"mediaType": OCI_I, "digest": d, "size": s}), "multi");
    expect_rejected(
        tmp.path(),
        &lay.source("multi"),
        &["--platform", "linux/s390x"],
        &["linux/s390x", "available platforms: linux/amd64"],
    );
    // The same index with the right platform pulls.
    let repo = tmp.path().join("repo");
    ok(&strata(
        &repo,
        &[
            "pull",
            &lay.source("multi"),
            "m",
            "--platform",
            "linux/amd64",
        ],
    ));
}

/// A tar holding one file of `n` zero bytes, written straight into
/// `compressor` (never held in memory); returns its diff_id.
fn bomb_tar<W: Write>(name: &str, n: u64, compressor: W) -> (W, String) {
    struct Tee<W> {
        inner: W,
        hash: Sha256,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.hash.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let mut b = tar::Builder::new(Tee {
        inner: compressor,
        hash: Sha256::new(),
    });
    let mut h = tar::Header::new_ustar();
    h.set_size(n);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, std::io::Read::take(std::io::repeat(0), n))
        .unwrap();
    let tee = b.into_inner().unwrap();
    (
        tee.inner,
        format!("sha256:{}", hex::encode(tee.hash.finalize())),
    )
}

#[test]
fn decompression_bomb_has_bounded_memory() {
    const N: u64 = 256 << 20;
    let tmp = tempfile::Builder::new()
        .prefix("strata-bomb-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo = tmp.path().join("repo");
    let mut lay = Layout::new(&tmp.path().join("layout"));
    let (gz, gz_id) = bomb_tar(
        "zeros-gz",
        N,
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best()),
    );
    let gz = gz.finish().unwrap();
    let (zs, zs_id) = bomb_tar("zeros-zst", N, zstd::Encoder::new(Vec::new(), 19).unwrap());
    let zs = zs.finish().unwrap();
    assert!(
        N / gz.len() as u64 >= 1000,
        "gzip ratio {}",
        N / gz.len() as u64
    );
    assert!(N / zs.len() as u64 >= 1000);
    lay.image("bomb", &[(gz, MT_GZ, gz_id), (zs, MT_ZST, zs_id)]);
    let o = Command::new("/usr/bin/time")
        .args(["-f", "MAXRSS %M"])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(&repo)
        .args(["pull", &lay.source("bomb"), "bomb"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let kb: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("MAXRSS "))
        .unwrap_or_else(|| panic!("no /usr/bin/time output: {stderr}"))
        .trim()
        .parse()
        .unwrap();
    eprintln!("bomb pull: peak RSS {} MB, status {}", kb / 1024, o.status);
    assert!(kb < 200 * 1024, "peak RSS {} MB", kb / 1024);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if o.status.success() {
        let dump = String::from_utf8(ok(&strata(&repo, &["dump", "bomb"]))).unwrap();
        assert!(dump.contains(&format!("/zeros-gz {N} 100644 1 ")), "{dump}");
        assert!(
            dump.contains(&format!("/zeros-zst {N} 100644 1 ")),
            "{dump}"
        );
    } else {
        assert_eq!(o.status.code(), Some(1));
        assert!(!image_names(&repo).contains("bomb"));
    }
    fsck_clean(&repo);
}

// ------------------------------------------------------------ archives

#[test]
fn oci_archive_equals_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let tars = [
        tar_of(&[dir("etc"), file("etc/a", &body("archive a ", 3000))]),
        tar_of(&[
            file("etc/.wh.a", b""),
            file("etc/b", &body("archive b ", 300)),
        ]),
    ];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let layers = diff_ids
        .iter()
        .cloned()
        .zip(tars.iter().map(|t| std::io::Cursor::new(t.clone())))
        .collect();
    strata::oci::write_layout(
        &layout,
        "v1",
        &config,
        layers,
        strata::oci::Compression::Gzip,
    )
    .unwrap();
    let archive = tmp.path().join("image.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());

    let r1 = pull_json(
        &tmp.path().join("r1"),
        &format!("oci:{}:v1", layout.display()),
        "a",
    );
    let r2 = pull_json(
        &tmp.path().join("r2"),
        &format!("oci-archive:{}:v1", archive.display()),
        "a",
    );
    assert_eq!(r1["image_id"], r2["image_id"]);
    assert_eq!(r1["manifest_digest"], r2["manifest_digest"]);
    let d = String::from_utf8(ok(&strata(&tmp.path().join("r2"), &["dump", "a"]))).unwrap();
    assert!(d.contains("/etc/b ") && !d.contains("/etc/a "), "{d}");
    fsck_clean(&tmp.path().join("r2"));
}

// ------------------------------------------------------------ corpus

#[test]
fn corpus_py_slim_zstd_chunked() {
    let layout = Path::new("/work/corpus/oci/zstd-chunked");
    if !layout.join("index.json").exists() {
        eprintln!("SKIP: corpus {} is absent", layout.display());
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("strata-corpus-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo = tmp.path().join("repo");
    let r = pull_json(&repo, &format!("oci:{}:py-slim", layout.display()), "slim");
    eprintln!("corpus pull: {r}");
    let info: Value =
        serde_json::from_slice(&ok(&strata(&repo, &["--json", "inspect", "slim"]))).unwrap();
    let dump = ok(&strata(&repo, &["dump", "slim"]));
    let paths: std::collections::BTreeSet<Vec<u8>> = dump
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| rel(&unescape(l.split(|&b| b == b' ').next().unwrap())))
        .collect();
    let layers = info["layers"].as_array().unwrap();
    let mut lower: std::collections::BTreeSet<Vec<u8>> = Default::default();
    let mut deleted_existing = 0;
    for (i, l) in layers.iter().enumerate() {
        let diff = l["diff_id"].as_str().unwrap();
        let cat = ok(&strata(&repo, &["layer", "cat", diff]));
        assert_eq!(sha(&cat), diff, "layer {i}");
        let mut a = tar::Archive::new(&cat[..]);
        let mut added = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path_bytes().into_owned();
            let p = rel(p.strip_prefix(b"./").unwrap_or(&p)).to_vec();
            let p = p.strip_suffix(b"/").unwrap_or(&p).to_vec();
            let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
                Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
                None => (Vec::new(), p.clone()),
            };
            if name == b".wh..wh..opq" {
                continue;
            }
            if let Some(h) = name.strip_prefix(b".wh.") {
                let mut target = dir.clone();
                if !target.is_empty() {
                    target.push(b'/');
                }
                target.extend_from_slice(h);
                if lower.contains(&target) {
                    deleted_existing += 1;
                }
                if target == b"usr/share/doc" {
                    let docs = lower
                        .iter()
                        .filter(|p| p.starts_with(b"usr/share/doc/"))
                        .count();
                    assert!(docs > 0, "usr/share/doc whited out but held nothing");
                    eprintln!("corpus: layer {i} deletes usr/share/doc ({docs} lower entries)");
                }
                if i == layers.len() - 1 {
                    assert!(
                        !paths.contains(&target),
                        "{} whited out by the last layer but present",
                        show(&target)
                    );
                    let prefix: Vec<u8> = [&target[..], b"/"].concat();
                    assert!(
                        !paths.iter().any(|p| p.starts_with(&prefix)),
                        "children of whited-out {} present",
                        show(&target)
                    );
                }
            } else {
                added.push(p);
            }
        }
        lower.extend(added);
    }
    assert!(
        deleted_existing > 0,
        "the slim layer deleted nothing that existed"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with(b"usr/share/doc/")),
        "files under usr/share/doc/ survived"
    );
    eprintln!("corpus: {deleted_existing} whiteouts of existing files checked");
    fsck_clean(&repo);
}

// ------------------------------------------------------------ concurrency

/// As many layers as CPUs, each with more 2–8 MiB files than the object
/// workers' queue holds: layer imports once ran on rayon's pool and
/// blocked there on that queue while the workers waited for the pool to
/// hash (a deadlock on every machine; found on the corpus' py-slim).
#[test]
fn many_layers_of_large_files_do_not_deadlock() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n_layers = cpus.clamp(2, 8);
    let per_layer = 3 * cpus.clamp(1, 4) + 2;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut lay = Layout::new(&tmp.path().join("layout"));
    let layers: Vec<Blob> = (0..n_layers)
        .map(|l| {
            let files: Vec<E> = (0..per_layer)
                .map(|f| {
                    let mut data = vec![0u8; (5 << 19) + f];
                    let tag = format!("layer {l:3} file {f:3}");
                    data[..tag.len()].copy_from_slice(tag.as_bytes());
                    file(&format!("l{l}/f{f}"), &data)
                })
                .collect();
            Layout::layer(Comp::Zstd, &tar_of(&files))
        })
        .collect();
    lay.image("many", &layers);
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(&repo)
        .args(["-q", "pull", &lay.source("many"), "many"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("pull of {n_layers} layers × {per_layer} files hung (deadlock)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "pull failed");
    let dump = String::from_utf8(ok(&strata(&repo, &["dump", "many"]))).unwrap();
    assert_eq!(
        dump.lines().filter(|l| l.contains("/f")).count(),
        n_layers * per_layer
    );
    fsck_clean(&repo);
}

/// Two images with one tree (a squashed copy of a layered one) share an image id, but not
/// their layers: gc keeps the layers of both as long as the image is named, so each can
/// still be rebuilt byte for byte.
#[test]
fn gc_keeps_the_layers_of_every_image_sharing_a_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut lay = Layout::new(&tmp.path().join("layout"));
    let (a, b) = (body("first ", 3000), body("second ", 4000));
    let lower = tar_of(&[dir("etc"), file("etc/a", &a)]);
    let upper = tar_of(&[file("etc/b", &b)]);
    let flat = tar_of(&[dir("etc"), file("etc/a", &a), file("etc/b", &b)]);
    lay.image(
        "layered",
        &[
            Layout::layer(Comp::Gzip, &lower),
            Layout::layer(Comp::Gzip, &upper),
        ],
    );
    lay.image("squashed", &[Layout::layer(Comp::Gzip, &flat)]);
    let vl = pull_json(&repo, &lay.source("layered"), "layered");
    let vs = pull_json(&repo, &lay.source("squashed"), "squashed");
    assert_eq!(vl["image_id"], vs["image_id"], "one tree, one image id");
    // Each name shows the manifest and layers it was pulled with.
    let layers_of = |name: &str| {
        let v: Value =
            serde_json::from_slice(&ok(&strata(&repo, &["--json", "inspect", name]))).unwrap();
        let diff_ids: Vec<String> = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["diff_id"].as_str().unwrap().to_string())
            .collect();
        (v["manifest_digest"].clone(), diff_ids)
    };
    let want_l = (
        vl["manifest_digest"].clone(),
        vec![sha(&lower), sha(&upper)],
    );
    let want_s = (vs["manifest_digest"].clone(), vec![sha(&flat)]);
    assert_eq!(layers_of("layered"), want_l);
    assert_eq!(layers_of("squashed"), want_s);
    // Pulling again (already present) under another name keeps the pairing.
    let again = pull_json(&repo, &lay.source("layered"), "layered-too");
    assert_eq!(again["already_present"], true);
    assert_eq!(layers_of("layered-too"), want_l);
    let gc = ok(&strata(&repo, &["--json", "gc"]));
    let gc: Value = serde_json::from_slice(&gc).unwrap();
    assert_eq!(gc["objects_removed"], 0, "{gc:#}");
    for tar in [&lower, &upper, &flat] {
        let got = ok(&strata(&repo, &["layer", "cat", &sha(tar)]));
        assert!(got == *tar, "layer {} differs after gc", sha(tar));
    }
    assert_eq!(layers_of("layered"), want_l, "after gc");
    assert_eq!(layers_of("squashed"), want_s, "after gc");
    fsck_clean(&repo);
    // Without its names the image goes, with the layers of both.
    ok(&strata(&repo, &["rm", "layered-too"]));
    ok(&strata(&repo, &["rm", "layered"]));
    ok(&strata(&repo, &["rm", "squashed"]));
    ok(&strata(&repo, &["gc"]));
    for tar in [&lower, &upper, &flat] {
        err(&strata(&repo, &["layer", "cat", &sha(tar)]));
    }
    fsck_clean(&repo);
}

/// A record under refs/manifests that is not a record (another version's, or garbage) does
/// not stop gc: it is kept, counted, and everything else is collected as usual.
#[test]
fn gc_goes_on_past_an_unreadable_import_record() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let lay = seeded(tmp.path());
    let obj = non_json_object(&repo.join("objects"));
    let rel = obj.strip_prefix(&repo).unwrap();
    let link = repo.join("refs/manifests").join("ab".repeat(32));
    std::os::unix::fs::symlink(Path::new("../..").join(rel), &link).unwrap();
    let gc: Value = serde_json::from_slice(&ok(&strata(&repo, &["--json", "gc"]))).unwrap();
    assert_eq!(gc["records_unreadable"], 1, "{gc:#}");
    assert!(link.symlink_metadata().is_ok(), "the ref is kept");
    assert!(obj.exists(), "its object is kept");
    let text = strata(&repo, &["gc"]);
    assert!(text.status.success());
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(
        stderr.contains("1 import record(s) under refs/manifests or refs/names could not be read"),
        "{stderr}"
    );
    // The image itself is untouched.
    let v = pull_json(&repo, &lay.source("good"), "good");
    assert_eq!(v["already_present"], true);
    assert!(!ok(&strata(&repo, &["dump", "good"])).is_empty());
    fsck_clean(&repo);
}

/// An object whose bytes are not JSON (a file's contents, an image).
fn non_json_object(objects: &Path) -> PathBuf {
    for d in fs::read_dir(objects).unwrap().flatten() {
        if !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            if serde_json::from_slice::<Value>(&fs::read(f.path()).unwrap()).is_err() {
                return f.path();
            }
        }
    }
    panic!("no non-JSON object in {}", objects.display());
}
