//! The binary as a drop-in `mkcomposefs` / `composefs-info` (invoked under
//! those names), and the CLI's error and help behaviour.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(i) = stdin {
        c.stdin.take().unwrap().write_all(i).unwrap();
    }
    drop(c.stdin.take());
    c.wait_with_output().unwrap()
}

const DUMP: &str = "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n\
/bin 7 120777 1 0 0 0 1700000000.0 usr/bin - -\n\
/hello 12 100644 1 1000 1000 0 1700000000.5 - hello\\x20world\\n - user.note=hi\n\
/big 100000 100644 1 0 0 0 1700000000.0 37/061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92 - 37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92\n";

#[test]
fn answers_as_mkcomposefs_and_composefs_info() {
    let tmp = tempfile::tempdir().unwrap();
    let strata = Path::new(env!("CARGO_BIN_EXE_strata"));
    let mk = tmp.path().join("mkcomposefs");
    let info = tmp.path().join("composefs-info");
    std::os::unix::fs::symlink(strata, &mk).unwrap();
    std::os::unix::fs::symlink(strata, &info).unwrap();

    let a = tmp.path().join("a.cfs");
    let b = tmp.path().join("b.cfs");
    let o = run(
        &mk,
        &["--from-file", "-", a.to_str().unwrap(), "--print-digest"],
        Some(DUMP.as_bytes()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let digest = String::from_utf8(o.stdout).unwrap();
    let o = run(
        strata,
        &["mkcomposefs", "--from-file", "-", b.to_str().unwrap()],
        Some(DUMP.as_bytes()),
    );
    assert!(o.status.success());
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    // The printed digest is the image's fs-verity digest.
    let m = run(&info, &["measure-file", a.to_str().unwrap()], None);
    assert_eq!(String::from_utf8(m.stdout).unwrap(), digest);

    // dump → mkcomposefs gives the same image again.
    let d = run(&info, &["dump", a.to_str().unwrap()], None);
    assert!(d.status.success());
    let dump = String::from_utf8(d.stdout).unwrap();
    assert!(
        dump.contains(
            "/hello 12 100644 1 1000 1000 0 1700000000.5 - hello\\x20world\\n - user.note=hi"
        ),
        "{dump}"
    );
    let c = tmp.path().join("c.cfs");
    let o = run(
        &mk,
        &["--from-file", "-", c.to_str().unwrap()],
        Some(dump.as_bytes()),
    );
    assert!(o.status.success());
    assert_eq!(fs::read(&a).unwrap(), fs::read(&c).unwrap());

    // ls and objects, as composefs-info prints them.
    let ls = String::from_utf8(run(&info, &["ls", a.to_str().unwrap()], None).stdout).unwrap();
    assert_eq!(
        ls,
        "/big\t@ 37/061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92\n/bin\t-> usr/bin\n/hello\n"
    );
    let objs =
        String::from_utf8(run(&info, &["objects", a.to_str().unwrap()], None).stdout).unwrap();
    assert_eq!(
        objs,
        "37/061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92\n"
    );
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let missing = run(
        &info,
        &[
            "--basedir",
            store.to_str().unwrap(),
            "missing-objects",
            a.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(String::from_utf8(missing.stdout).unwrap(), objs);
    fs::create_dir_all(store.join("37")).unwrap();
    fs::write(
        store.join("37/061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"),
        b"x",
    )
    .unwrap();
    let missing = run(
        &info,
        &[
            "--basedir",
            store.to_str().unwrap(),
            "missing-objects",
            a.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(String::from_utf8(missing.stdout).unwrap(), "");
}

#[test]
fn errors_are_one_line_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let strata = Path::new(env!("CARGO_BIN_EXE_strata"));
    let out = tmp.path().join("x.cfs");
    // Not a dumpfile.
    let o = run(
        strata,
        &["mkcomposefs", "--from-file", "-", out.to_str().unwrap()],
        Some(b"garbage line\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with("strata mkcomposefs: ") && e.lines().count() == 1,
        "{e}"
    );
    assert!(!out.exists());
    // Missing source directory.
    let o = run(
        strata,
        &["mkcomposefs", "/nonexistent/src", out.to_str().unwrap()],
        None,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("/nonexistent/src") && e.lines().count() == 1,
        "{e}"
    );
    // Not an image.
    fs::write(&out, b"not an image at all").unwrap();
    let o = run(
        strata,
        &["composefs-info", "dump", out.to_str().unwrap()],
        None,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        e.contains("x.cfs") && e.lines().count() == 1 && !e.contains("panicked"),
        "{e}"
    );
    // --help teaches: it names the flags and gives examples.
    let h = run(strata, &["mkcomposefs", "--help"], None);
    let h = String::from_utf8_lossy(&h.stdout);
    assert!(
        h.contains("--digest-store") && h.contains("Examples"),
        "{h}"
    );
}

/// Like composefs C 1.0.8, `mkcomposefs DIR` stores each hard link as a
/// file of its own (nlink 1): the image of a tree with hard links equals
/// the image of the same tree with copies in their place, and the dump
/// shows no link.
#[test]
fn mkcomposefs_stores_hard_links_as_separate_files() {
    let tmp = tempfile::tempdir().unwrap();
    let strata = Path::new(env!("CARGO_BIN_EXE_strata"));
    let big = b"shared contents, long enough to be an object and not inline\n".repeat(3);
    let small = b"inline\n";
    let mut images = Vec::new();
    for linked in [true, false] {
        let d = tmp.path().join(if linked { "linked" } else { "copies" });
        fs::create_dir_all(d.join("sub")).unwrap();
        for (name, data) in [("big", &big[..]), ("small", &small[..])] {
            fs::write(d.join(name), data).unwrap();
            let other = d.join("sub").join(format!("{name}-2"));
            if linked {
                fs::hard_link(d.join(name), &other).unwrap();
            } else {
                fs::write(&other, data).unwrap();
            }
        }
        // Same times everywhere (a copy would otherwise differ in mtime).
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        for p in ["big", "small", "sub/big-2", "sub/small-2", "sub", "."] {
            let f = fs::File::open(d.join(p)).unwrap();
            f.set_modified(t).unwrap();
        }
        let img = tmp.path().join(format!("{linked}.cfs"));
        let o = run(
            strata,
            &["mkcomposefs", d.to_str().unwrap(), img.to_str().unwrap()],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dump = run(
            strata,
            &["composefs-info", "dump", img.to_str().unwrap()],
            None,
        );
        let dump = String::from_utf8(dump.stdout).unwrap();
        for p in ["/big", "/small", "/sub/big-2", "/sub/small-2"] {
            let l = dump
                .lines()
                .find(|l| l.starts_with(&format!("{p} ")))
                .unwrap_or_else(|| panic!("{p} missing from {dump}"));
            let f: Vec<&str> = l.split(' ').collect();
            assert!(
                !f[2].starts_with('@') && f[3] == "1",
                "linked={linked}: {l}"
            );
        }
        images.push(fs::read(&img).unwrap());
    }
    assert!(
        images[0] == images[1],
        "a tree with hard links must give the image of the same tree with copies"
    );
}
