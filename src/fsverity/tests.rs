//! Tests for the fs-verity module.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use super::hasher::{par_digest_bytes_with, par_digest_file_with};
use super::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Deterministic pseudo-random bytes (xorshift64*), distinct per `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex_digest(alg: Algorithm, s: &str) -> Digest {
    Digest::from_hex(alg, s).unwrap()
}

#[test]
fn known_vectors_sha256() {
    let cases = [
        (
            &b"hello world\n"[..],
            "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92",
        ),
        (
            &b"foo bar baz\n"[..],
            "91e7d88cb7bc9cf6d8db3b0ecf89af4abf204bef5b3ade5113d5b62ef374e70b",
        ),
    ];
    for (data, want) in cases {
        let want = hex_digest(Algorithm::Sha256, want);
        assert_eq!(digest_bytes(Algorithm::Sha256, data), want);
        assert_eq!(par_digest_bytes(Algorithm::Sha256, data), want);
        assert_eq!(
            digest_reader(Algorithm::Sha256, data).unwrap(),
            want,
            "reader"
        );
    }
}

#[test]
fn empty_file_has_zero_root_hash() {
    for alg in Algorithm::ALL {
        let root = FsVerityHasher::new(alg).root_hash();
        assert_eq!(root.as_bytes(), &[0u8; 64][..alg.digest_size()]);
        assert_eq!(root.algorithm(), alg);
    }
}

#[test]
fn single_block_root_is_hash_of_padded_block() {
    use sha2::Digest as _;
    let data = b"abc";
    let mut block = vec![0u8; BLOCK_SIZE];
    block[..3].copy_from_slice(data);
    let mut h = FsVerityHasher::new(Algorithm::Sha256);
    h.update(data);
    assert_eq!(h.root_hash().as_bytes(), &sha2::Sha256::digest(&block)[..]);
}

#[test]
fn hasher_types_are_send_and_sync() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    assert_send::<FsVerityHasher>();
    assert_sync::<FsVerityHasher>();
    assert_send::<Digest>();
    assert_sync::<Digest>();
    assert_send::<VerityError>();
}

#[test]
fn hashing_from_several_threads() {
    let data: Vec<Vec<u8>> = (0..8)
        .map(|i| pseudo_random(100 * KIB + i, i as u64))
        .collect();
    let sequential: Vec<Digest> = data
        .iter()
        .map(|d| digest_bytes(Algorithm::Sha256, d))
        .collect();
    let threaded: Vec<Digest> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let mut h = FsVerityHasher::new(Algorithm::Sha256);
                    h.update(d);
                    h
                })
            })
            .collect();
        // Hashers cross threads again for finishing.
        handles
            .into_iter()
            .map(|h| h.join().unwrap().finish())
            .collect()
    });
    assert_eq!(sequential, threaded);
}

/// Sizes around block and tree-level boundaries for both fan-outs
/// (128 hashes per block for SHA-256, 64 for SHA-512).
fn interesting_sizes() -> Vec<usize> {
    let mut v = vec![0, 1, 4095, 4096, 4097, 8192, 8193];
    for level0 in [64 * BLOCK_SIZE, 128 * BLOCK_SIZE] {
        v.extend([level0 - 1, level0, level0 + 1, level0 + BLOCK_SIZE]);
    }
    v.extend([MIB + 1, 3 * MIB + 17]);
    v
}

#[test]
fn streaming_with_odd_chunks_equals_one_shot() {
    for alg in Algorithm::ALL {
        for (i, &size) in interesting_sizes().iter().enumerate() {
            let data = pseudo_random(size, i as u64 + 100);
            let want = digest_bytes(alg, &data);
            for chunk in [1usize, 7, 4095, 4096, 4097, 65537] {
                if chunk == 1 && size > 300 * KIB {
                    continue;
                }
                let mut h = FsVerityHasher::new(alg);
                for c in data.chunks(chunk) {
                    h.update(c);
                }
                h.update(&[]);
                assert_eq!(h.len(), size as u64);
                assert_eq!(h.finish(), want, "{alg} size {size} chunk {chunk}");
            }
            // Irregular chunk sequence, including empty updates.
            let mut h = FsVerityHasher::new(alg);
            let mut rest = &data[..];
            let mut step = 0usize;
            while !rest.is_empty() {
                let n = ((step * 7919 + 13) % 9000).min(rest.len());
                h.update(&rest[..n]);
                rest = &rest[n..];
                step += 1;
            }
            assert_eq!(h.finish(), want, "{alg} size {size} irregular");
            // io::Write and Read paths.
            let mut h = FsVerityHasher::new(alg);
            std::io::copy(&mut &data[..], &mut h).unwrap();
            assert_eq!(h.finish(), want);
            assert_eq!(digest_reader(alg, &data[..]).unwrap(), want);
        }
    }
}

#[test]
fn parallel_equals_sequential() {
    let window = 2;
    let mut sizes = interesting_sizes();
    sizes.extend([
        2 * MIB,
        2 * MIB + 1,
        4 * MIB,
        4 * MIB + 1,
        5 * MIB + 4096,
        7 * MIB + 12345,
    ]);
    let dir = tempfile::tempdir().unwrap();
    for alg in Algorithm::ALL {
        for (i, &size) in sizes.iter().enumerate() {
            let data = pseudo_random(size, i as u64 + 7);
            let want = digest_bytes(alg, &data);
            assert_eq!(par_digest_bytes(alg, &data), want, "{alg} {size}");
            assert_eq!(
                par_digest_bytes_with(alg, &data, window),
                want,
                "{alg} {size} windowed"
            );
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let f = File::open(&path).unwrap();
            assert_eq!(digest_file(alg, &f).unwrap(), want);
            assert_eq!(par_digest_file(alg, &f).unwrap(), want);
            assert_eq!(par_digest_file_with(alg, &f, window).unwrap(), want);
        }
    }
}

#[test]
fn par_digest_file_ignores_file_position() {
    // Positional reads: the digest covers the whole file regardless of the
    // current position, which is left untouched.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data = pseudo_random(4 * MIB, 3);
    std::fs::write(&path, &data).unwrap();
    let mut f = File::open(&path).unwrap();
    let mut first = [0u8; 10];
    f.read_exact(&mut first).unwrap();
    let d = par_digest_file_with(Algorithm::Sha256, &f, 2).unwrap();
    assert_eq!(d, digest_bytes(Algorithm::Sha256, &data));
    let mut next = [0u8; 10];
    f.read_exact(&mut next).unwrap();
    assert_eq!(next, data[10..20]);
}

/// `fsverity digest` for a file, or `None` (with a printed reason) if the
/// tool is unavailable.
fn fsverity_cli(path: &Path, alg: Algorithm) -> Option<Digest> {
    let out = match Command::new("fsverity")
        .arg("digest")
        .arg(format!("--hash-alg={}", alg.name()))
        .arg("--block-size=4096")
        .arg(path)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP: cannot run `fsverity` (apt-get install fsverity): {e}");
            return None;
        }
    };
    assert!(out.status.success(), "fsverity digest failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.split_whitespace().next().unwrap();
    let d: Digest = token.parse().unwrap();
    assert_eq!(d.algorithm(), alg);
    assert_eq!(d.to_prefixed(), token);
    Some(d)
}

#[test]
fn matches_fsverity_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = interesting_sizes();
    sizes.extend([16 * MIB, 16 * MIB + 1, 64 * MIB, 64 * MIB + 1, 100 * MIB]);
    for (i, &size) in sizes.iter().enumerate() {
        let data = pseudo_random(size, i as u64 + 1000);
        let path = dir.path().join(format!("f{size}"));
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        for alg in Algorithm::ALL {
            let Some(want) = fsverity_cli(&path, alg) else {
                return;
            };
            assert_eq!(digest_bytes(alg, &data), want, "{alg} size {size}");
            assert_eq!(par_digest_file(alg, &f).unwrap(), want, "{alg} size {size}");
            if size <= 4 * MIB {
                assert_eq!(digest_file(alg, &f).unwrap(), want, "{alg} size {size}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }
    // The known vectors agree with the tool too.
    let path = dir.path().join("hello");
    std::fs::write(&path, b"hello world\n").unwrap();
    if let Some(d) = fsverity_cli(&path, Algorithm::Sha256) {
        assert_eq!(
            d.to_hex(),
            "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"
        );
    }
}

#[test]
fn digest_formatting_and_parsing() {
    let hex = "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92";
    let d = hex_digest(Algorithm::Sha256, hex);
    assert_eq!(d.to_string(), hex);
    assert_eq!(d.to_hex(), hex);
    assert_eq!(d.as_bytes().len(), 32);
    assert_eq!(d.to_prefixed(), format!("sha256:{hex}"));
    assert_eq!(
        d.object_path(),
        "37/061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"
    );
    assert_eq!(format!("{d:?}"), format!("Digest(sha256:{hex})"));
    assert_eq!(hex.parse::<Digest>().unwrap(), d);
    assert_eq!(hex.to_uppercase().parse::<Digest>().unwrap(), d);
    assert_eq!(format!("sha256:{hex}").parse::<Digest>().unwrap(), d);
    assert_eq!(Digest::from_object_path(&d.object_path()).unwrap(), d);
    assert_eq!(
        Digest::from_object_path(&format!("repo/objects/{}", d.object_path())).unwrap(),
        d
    );
    assert_eq!(
        Digest::from_bytes(Algorithm::Sha256, d.as_bytes()).unwrap(),
        d
    );

    let d512 = digest_bytes(Algorithm::Sha512, b"x");
    assert_eq!(d512.to_hex().len(), 128);
    assert_eq!(d512.to_hex().parse::<Digest>().unwrap(), d512);
    assert_eq!(d512.to_prefixed().parse::<Digest>().unwrap(), d512);
    assert_eq!(Digest::from_object_path(&d512.object_path()).unwrap(), d512);
    assert_eq!(&d512.object_path()[2..3], "/");
    assert_ne!(d512, digest_bytes(Algorithm::Sha256, b"x"));

    // Errors.
    assert!(matches!(
        "abc".parse::<Digest>(),
        Err(ParseDigestError::Length { len: 3, .. })
    ));
    assert_eq!(
        "zz".repeat(32).parse::<Digest>(),
        Err(ParseDigestError::Hex)
    );
    assert!(matches!(
        format!("md5:{hex}").parse::<Digest>(),
        Err(ParseDigestError::UnknownAlgorithm(_))
    ));
    assert!(format!("sha512:{hex}").parse::<Digest>().is_err());
    assert!(Digest::from_bytes(Algorithm::Sha512, d.as_bytes()).is_err());
    assert!(Digest::from_object_path(hex).is_err());
    assert!(Digest::from_object_path(&format!("370/{}", &hex[3..])).is_err());
    assert!(Digest::from_object_path("37/xyz").is_err());
}

#[test]
fn algorithm_properties() {
    assert_eq!(Algorithm::Sha256.digest_size(), 32);
    assert_eq!(Algorithm::Sha512.digest_size(), 64);
    assert_eq!(Algorithm::Sha256.fan_out(), 128);
    assert_eq!(Algorithm::Sha512.fan_out(), 64);
    for alg in Algorithm::ALL {
        assert_eq!(Algorithm::from_kernel_id(alg.kernel_id().into()), Some(alg));
        assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        assert_eq!(alg.to_string(), alg.name());
    }
    assert_eq!(Algorithm::from_kernel_id(3), None);
    assert_eq!(Algorithm::default(), Algorithm::Sha256);
}

// ---------------------------------------------------------------------------
// Kernel interface

/// `Some(true)` if /proc/config.gz says the kernel was built without
/// fs-verity, `Some(false)` if with, `None` if unknown.
fn kernel_lacks_verity() -> Option<bool> {
    let f = File::open("/proc/config.gz").ok()?;
    let mut cfg = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut cfg)
        .ok()?;
    if cfg.lines().any(|l| l == "# CONFIG_FS_VERITY is not set") {
        Some(true)
    } else if cfg.lines().any(|l| l == "CONFIG_FS_VERITY=y") {
        Some(false)
    } else {
        None
    }
}

/// Directories on different filesystems to try the ioctls in.
fn ioctl_dirs() -> Vec<tempfile::TempDir> {
    let mut v = vec![tempfile::tempdir().unwrap()];
    if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
        v.push(d);
    }
    // The build directory (holding this test binary) is usually on a real
    // disk filesystem.
    let exe = std::env::current_exe().unwrap();
    if let Some(d) = exe.parent().and_then(|p| tempfile::tempdir_in(p).ok()) {
        v.push(d);
    }
    v
}

fn fs_name(p: &Path) -> String {
    rustix::fs::statfs(p)
        .map(|s| format!("{:#x}", s.f_type))
        .unwrap_or_default()
}

#[test]
fn enable_and_measure_report_not_supported_cleanly() {
    let lacks = kernel_lacks_verity();
    for dir in ioctl_dirs() {
        let fs = fs_name(dir.path());
        let path = dir.path().join("file");
        let data = pseudo_random(10_000, 5);
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();

        let before = measure(&f);
        eprintln!("measure on fs {fs}: {before:?}");
        match &before {
            Ok(None) => {}
            Err(VerityError::NotSupported(_)) => {}
            other => panic!("measure before enable on fs {fs}: {other:?}"),
        }

        match enable(&f, Algorithm::Sha256) {
            Ok(()) => {
                assert_ne!(
                    lacks,
                    Some(true),
                    "enable succeeded without CONFIG_FS_VERITY"
                );
                let got = measure(&f).unwrap().expect("verity enabled");
                assert_eq!(got, digest_bytes(Algorithm::Sha256, &data));
                assert_eq!(got, digest_file(Algorithm::Sha256, &f).unwrap());
                assert!(matches!(
                    enable(&f, Algorithm::Sha256),
                    Err(VerityError::AlreadyEnabled)
                ));
            }
            Err(e @ VerityError::NotSupported(_)) => {
                assert!(e.is_not_supported());
                assert!(e.to_string().contains("not supported"), "{e}");
                let io: std::io::Error = e.into();
                assert!(io.raw_os_error().is_some());
                assert!(matches!(measure(&f), Err(VerityError::NotSupported(_))));
            }
            Err(e) => panic!("enable on fs {fs}: unexpected {e:?}"),
        }
        if lacks == Some(true) {
            assert!(
                matches!(before, Err(VerityError::NotSupported(_))),
                "fs {fs}: {before:?}"
            );
        }
    }
}

#[test]
fn enable_on_writable_fd_is_busy_or_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all(b"data").unwrap();
    match enable(&f, Algorithm::Sha256) {
        Err(VerityError::FileBusy) | Err(VerityError::NotSupported(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn probe_reports_support_and_cleans_up() {
    let lacks = kernel_lacks_verity();
    for dir in ioctl_dirs() {
        let support = probe(dir.path());
        eprintln!(
            "probe {} (fs {}): {support:?}",
            dir.path().display(),
            fs_name(dir.path())
        );
        match &support {
            Support::Supported => assert_ne!(lacks, Some(true)),
            Support::NotSupported { reason } => {
                assert!(!support.is_supported());
                assert!(reason.contains("not supported"), "{reason}");
            }
        }
        if lacks == Some(true) {
            assert!(!support.is_supported());
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "probe left files: {leftovers:?}");
    }
    match probe(Path::new("/nonexistent/strata-probe-dir")) {
        Support::NotSupported { reason } => assert!(reason.contains("cannot create"), "{reason}"),
        Support::Supported => panic!("probe of a missing dir succeeded"),
    }
}

#[test]
fn errno_classification() {
    use super::kernel::classify_errno as classify;
    use rustix::io::Errno;
    for e in [Errno::OPNOTSUPP, Errno::NOTTY, Errno::INVAL, Errno::NOPKG] {
        assert!(classify(e).is_not_supported(), "{e:?}");
    }
    assert!(matches!(classify(Errno::TXTBSY), VerityError::FileBusy));
    assert!(matches!(
        classify(Errno::EXIST),
        VerityError::AlreadyEnabled
    ));
    assert!(matches!(classify(Errno::ROFS), VerityError::Io(_)));
    assert!(matches!(classify(Errno::ACCESS), VerityError::Io(_)));
}

/// Throughput measurement; run with
/// `cargo test --release --lib fsverity::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn throughput() {
    use sha2::Digest as _;
    use std::time::Instant;
    let size = 256 * MIB;
    let data = pseudo_random(size, 42);
    let mbps = |secs: f64| size as f64 / secs / 1e6;
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    eprintln!("rayon threads: {}", rayon::current_num_threads());
    let t = time(&|| {
        std::hint::black_box(sha2::Sha256::digest(&data));
    });
    eprintln!("plain SHA-256 (1 thread):        {:8.0} MB/s", mbps(t));
    let t = time(&|| {
        std::hint::black_box(sha2::Sha512::digest(&data));
    });
    eprintln!("plain SHA-512 (1 thread):        {:8.0} MB/s", mbps(t));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, &data).unwrap();
    let f = File::open(&path).unwrap();
    for alg in Algorithm::ALL {
        let t = time(&|| {
            std::hint::black_box(digest_bytes(alg, &data));
        });
        eprintln!("{alg} digest_bytes (1 thread):   {:8.0} MB/s", mbps(t));
        let t = time(&|| {
            std::hint::black_box(par_digest_bytes(alg, &data));
        });
        eprintln!("{alg} par_digest_bytes:          {:8.0} MB/s", mbps(t));
        let t = time(&|| {
            std::hint::black_box(digest_file(alg, &f).unwrap());
        });
        eprintln!("{alg} digest_file (1 thread):    {:8.0} MB/s", mbps(t));
        let t = time(&|| {
            std::hint::black_box(par_digest_file(alg, &f).unwrap());
        });
        eprintln!("{alg} par_digest_file:           {:8.0} MB/s", mbps(t));
        assert_eq!(par_digest_file(alg, &f).unwrap(), digest_bytes(alg, &data));
    }
}
