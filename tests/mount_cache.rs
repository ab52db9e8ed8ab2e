//! Page-cache sharing between composefs mounts: two different images that
//! hold the same 100 MiB file point at one object, so once the file has been
//! read through one mount, reading it through the other needs no new
//! page-cache pages. Measured with fincore(1) on the object (and through the
//! second mount, where overlayfs maps the real object inode) and with
//! `/proc/meminfo`'s `Cached:`. Needs root and a kernel with EROFS and
//! overlayfs; skips with a printed reason otherwise.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIG: usize = 100 << 20;
const MIB: f64 = (1u64 << 20) as f64;

fn strata(repo: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strata {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// 100 MiB of xorshift output: no runs, no repeats, incompressible.
fn big_content() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(BIG);
    while v.len() < BIG {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Bytes of `p`'s page cache that are resident, per fincore(1).
fn resident(p: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(p)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(
        out.status.success(),
        "fincore {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore {}: unexpected output {s:?}", p.display()))
}

/// `Cached:` of /proc/meminfo, in bytes.
fn meminfo_cached() -> u64 {
    let m = fs::read_to_string("/proc/meminfo").unwrap();
    let line = m.lines().find(|l| l.starts_with("Cached:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Drops `p`'s clean pages from the page cache.
fn evict(p: &Path) {
    let f = fs::File::open(p).unwrap();
    rustix::fs::fsync(&f).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

#[test]
fn shared_file_is_cached_once_across_mounts() {
    if let Some(why) = common::mount_skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    // A real disk, not tmpfs: the object must have a page cache of its own.
    let tmp = tempfile::Builder::new()
        .prefix("strata-mount-cache-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let t = tmp.path();
    let repo = t.join("repo");
    let content = big_content();

    // Two different trees sharing one big file (at different paths).
    let (a, b) = (t.join("a"), t.join("b"));
    fs::create_dir_all(a.join("usr/share/data")).unwrap();
    fs::create_dir_all(b.join("opt/payload")).unwrap();
    fs::write(a.join("usr/share/data/big.bin"), &content).unwrap();
    fs::write(b.join("opt/payload/big.bin"), &content).unwrap();
    fs::write(a.join("only-in-a"), b"tree a\n".repeat(20)).unwrap();
    fs::write(b.join("only-in-b"), b"tree b, different\n".repeat(20)).unwrap();
    fs::write(b.join("small"), b"inline\n").unwrap();

    let id_a = strata(
        &repo,
        &[
            "-q".as_ref(),
            "create-image".as_ref(),
            a.as_os_str(),
            "a".as_ref(),
        ],
    );
    let id_b = strata(
        &repo,
        &[
            "-q".as_ref(),
            "create-image".as_ref(),
            b.as_os_str(),
            "b".as_ref(),
        ],
    );
    assert_ne!(id_a.stdout, id_b.stdout, "the two images must differ");

    // The object is named by the file's fs-verity digest.
    let digest = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["composefs-info", "measure-file"])
        .arg(a.join("usr/share/data/big.bin"))
        .output()
        .unwrap();
    assert!(digest.status.success());
    let digest = String::from_utf8(digest.stdout).unwrap();
    let digest = digest.trim();
    let object = repo.join("objects").join(&digest[..2]).join(&digest[2..]);
    assert_eq!(
        fs::metadata(&object)
            .unwrap_or_else(|e| panic!("{}: {e}", object.display()))
            .len(),
        BIG as u64
    );
    // One object for both files: no other object of that size.
    let same_size = walk_files(&repo.join("objects"))
        .into_iter()
        .filter(|p| fs::metadata(p).unwrap().len() == BIG as u64)
        .count();
    assert_eq!(same_size, 1, "the shared file must be stored once");

    let (m1, m2) = (t.join("m1"), t.join("m2"));
    fs::create_dir_all(&m1).unwrap();
    fs::create_dir_all(&m2).unwrap();
    let mut mounted = Mounted(Vec::new());
    strata(&repo, &["mount".as_ref(), "a".as_ref(), m1.as_os_str()]);
    mounted.0.push(m1.clone());
    strata(&repo, &["mount".as_ref(), "b".as_ref(), m2.as_os_str()]);
    mounted.0.push(m2.clone());
    let via1 = m1.join("usr/share/data/big.bin");
    let via2 = m2.join("opt/payload/big.bin");
    assert!(m1.join("only-in-a").exists() && !m1.join("only-in-b").exists());
    assert!(m2.join("only-in-b").exists() && !m2.join("only-in-a").exists());
    // Both mounts show the file with the object's inode data (overlayfs
    // reports the metacopy's inode; sizes must agree).
    assert_eq!(fs::metadata(&via1).unwrap().size(), BIG as u64);
    assert_eq!(fs::metadata(&via2).unwrap().size(), BIG as u64);

    // Evict the object, per file; fall back to dropping the whole page cache.
    evict(&object);
    let mut res0 = resident(&object);
    if res0 > BIG as u64 / 100 {
        eprintln!(
            "posix_fadvise(DONTNEED) left {res0} bytes resident; dropping page cache (drop_caches=1)"
        );
        rustix::fs::sync();
        fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        res0 = resident(&object);
    }
    assert!(
        res0 <= BIG as u64 / 100,
        "object still has {res0} bytes in the page cache after eviction"
    );
    // Through either mount fincore sees the same (empty) object cache.
    for via in [&via1, &via2] {
        let r = resident(via);
        assert!(
            r <= BIG as u64 / 100,
            "{}: {r} bytes resident though its object was evicted: not the same inode",
            via.display()
        );
    }

    // Read through mount 1: the object's pages come in.
    let c0 = meminfo_cached();
    let got1 = fs::read(&via1).unwrap();
    let c1 = meminfo_cached();
    assert!(
        got1 == content,
        "bytes read through mount 1 differ from the source"
    );
    drop(got1);
    let res1 = resident(&object);
    let grew1 = c1 as i64 - c0 as i64;

    // Before reading through mount 2: its view of the file is already cached.
    let res2_before = resident(&via2);

    // Read through mount 2: nothing new enters the page cache.
    let c2 = meminfo_cached();
    let got2 = fs::read(&via2).unwrap();
    let c3 = meminfo_cached();
    assert!(
        got2 == content,
        "bytes read through mount 2 differ from the source"
    );
    drop(got2);
    let res2 = resident(&object);
    let grew2 = c3 as i64 - c2 as i64;

    eprintln!("page-cache sharing, 100 MiB file in two images ({BIG} bytes, object {digest}):");
    eprintln!("  object resident after eviction:         {res0} bytes");
    eprintln!(
        "  read via mount 1: Cached {:+.1} MiB; object resident {res1} bytes ({:.1}%)",
        grew1 as f64 / MIB,
        res1 as f64 * 100.0 / BIG as f64
    );
    eprintln!(
        "  mount 2 before reading (fincore via mount 2): {res2_before} bytes ({:.1}%)",
        res2_before as f64 * 100.0 / BIG as f64
    );
    eprintln!(
        "  read via mount 2: Cached {:+.1} MiB; object resident {res2} bytes",
        grew2 as f64 / MIB
    );

    let nearly_all = BIG as u64 * 99 / 100;
    // The measurement can see a 100 MiB read: the first one shows up.
    assert!(
        res1 >= nearly_all,
        "object after read 1: {res1} bytes resident"
    );
    // (/proc/meminfo is machine-wide: other work adds noise of some MiB
    // either way, so the bounds leave room while still telling a shared
    // read (≈ 0) from an unshared one (≈ 100 MiB).)
    assert!(
        grew1 >= (BIG as i64) * 6 / 10,
        "Cached grew only {grew1} bytes over the first read; the measurement is not seeing page cache"
    );
    // Mount 2's file is the same page cache.
    assert!(
        res2_before >= nearly_all,
        "via mount 2 before reading it: {res2_before} bytes resident"
    );
    assert!(
        res2 >= nearly_all,
        "object after read 2: {res2} bytes resident"
    );
    assert!(
        grew2 < (BIG as i64) * 3 / 10,
        "Cached grew {grew2} bytes over the read through mount 2: its pages were not shared"
    );

    for m in [&m1, &m2] {
        strata(&repo, &["umount".as_ref(), m.as_os_str()]);
    }
    mounted.0.clear();
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in [&m1, &m2] {
        assert!(
            !mi.lines().any(|l| l.split(' ').nth(4) == m.to_str()),
            "{} still mounted",
            m.display()
        );
    }
}

fn walk_files(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
