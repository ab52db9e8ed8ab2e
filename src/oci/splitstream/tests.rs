use super::*;
use crate::fsverity::digest_bytes;
use crate::oci::tar::{makedev, INLINE_MAX};
use crate::oci::EntryKind;
use erofs::tree::{Timespec, Xattr};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------
// Helpers

fn store() -> (tempfile::TempDir, ObjectDir) {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(&dir.path().join("objects"), Algorithm::Sha256).unwrap();
    (dir, objects)
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Imports `tar`, then checks that `cat` rebuilds it exactly, that
/// `read_entries` re-derives the same entries, and that every object is
/// present with the right contents.
fn roundtrip(tar: &[u8]) -> ImportedLayer {
    let (_dir, objects) = store();
    roundtrip_in(tar, &objects)
}

fn roundtrip_in(tar: &[u8], objects: &ObjectDir) -> ImportedLayer {
    let layer = import_layer(tar, objects).unwrap();
    check(tar, &layer, objects);
    layer
}

fn check(tar: &[u8], layer: &ImportedLayer, objects: &ObjectDir) {
    let mut out = Vec::new();
    cat(&layer.splitstream, objects, &mut out).unwrap();
    assert_eq!(out.len(), tar.len());
    assert_eq!(sha(&out), sha(tar), "cat(import(t)) != t");
    assert_eq!(read_entries(&layer.splitstream).unwrap(), layer.entries);
    assert_eq!(tar_size(&layer.splitstream).unwrap(), tar.len() as u64);
    assert_eq!(layer.stats.tar_bytes, tar.len() as u64);
    let refs = object_refs(&layer.splitstream).unwrap();
    for e in &layer.entries {
        if let Some(EntryData::Object(d)) = &e.data {
            assert!(e.size > INLINE_MAX);
            assert!(refs.contains(d));
            assert!(objects.contains(d));
            let len = fs::metadata(objects.object_path(d)).unwrap().len();
            assert_eq!(len, e.size);
        }
        if let Some(EntryData::Inline(b)) = &e.data {
            assert_eq!(b.len() as u64, e.size);
            assert!(e.size <= INLINE_MAX);
        }
    }
}

fn find<'a>(layer: &'a ImportedLayer, path: &[u8]) -> &'a LayerEntry {
    layer
        .entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(path)))
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// Hand-made tar pieces, for what the tar crate will not produce.

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    assert_eq!(s.len(), field.len(), "value too large for field");
    field.copy_from_slice(s.as_bytes());
}

fn base256(field: &mut [u8], v: i64) {
    let bytes = v.to_be_bytes();
    let fill = if v < 0 { 0xff } else { 0 };
    field.fill(fill);
    let n = field.len();
    field[n - 8..].copy_from_slice(&bytes);
    field[0] = if v < 0 { 0xff } else { 0x80 };
}

/// A ustar header (checksum filled in by [`push`]).
fn hdr(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 1000);
    octal(&mut h[116..124], 1000);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h
}

fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// Appends a header (with checksum) and padded data.
fn push(out: &mut Vec<u8>, mut h: [u8; 512], data: &[u8]) {
    set_checksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax_body(kv: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in kv {
        let base = 1 + k.len() + 1 + v.len() + 1;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn push_pax(out: &mut Vec<u8>, typeflag: u8, kv: &[(&[u8], &[u8])]) {
    let body = pax_body(kv);
    push(
        out,
        hdr(b"PaxHeaders/x", typeflag, body.len() as u64),
        &body,
    );
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

// ---------------------------------------------------------------------------
// Valid archives

#[test]
fn ustar_all_types() {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, ty: tar::EntryType, data: &[u8], f: &dyn Fn(&mut tar::Header)| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        f(&mut h);
        // Raw names (the tar crate would normalize "./dir/" to "dir").
        h.as_mut_bytes()[..100].fill(0);
        h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let none = &|_: &mut tar::Header| {};
    add("./dir/", tar::EntryType::Directory, b"", &|h| {
        h.set_mode(0o1755)
    });
    add("./dir/empty", tar::EntryType::Regular, b"", none);
    add("./dir/one", tar::EntryType::Regular, b"x", &|h| {
        h.set_mode(0o4755)
    });
    let b64 = noise(64, 1);
    let b65 = noise(65, 2);
    let big = noise(3 << 20, 3);
    let page = noise(4096, 4);
    add("./dir/b64", tar::EntryType::Regular, &b64, none);
    add("./dir/b65", tar::EntryType::Regular, &b65, none);
    add("./dir/page", tar::EntryType::Regular, &page, none);
    add("./dir/big", tar::EntryType::Regular, &big, none);
    add("./dir/contig", tar::EntryType::Continuous, &b65, none);
    add("./dir/sym", tar::EntryType::Symlink, b"", &|h| {
        h.set_link_name("../target").unwrap()
    });
    add("./dir/hard", tar::EntryType::Link, b"", &|h| {
        h.set_link_name("./dir/b65").unwrap()
    });
    add("./dev/null", tar::EntryType::Char, b"", &|h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    });
    add("./dev/sda", tar::EntryType::Block, b"", &|h| {
        h.set_device_major(8).unwrap();
        h.set_device_minor(0x12345).unwrap();
    });
    add("./fifo", tar::EntryType::Fifo, b"", none);
    let t = b.into_inner().unwrap();
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 13);

    let d = find(&layer, b"./dir/");
    assert_eq!(
        (d.kind.clone(), d.mode, d.uid, d.gid),
        (EntryKind::Directory, 0o1755, 1000, 100)
    );
    assert_eq!(
        d.mtime,
        Timespec {
            sec: 1_700_000_000,
            nsec: 0
        }
    );
    assert_eq!((d.size, d.data.clone()), (0, None));

    let e = find(&layer, b"./dir/empty");
    assert_eq!(
        (e.kind.clone(), e.size, e.data.clone()),
        (EntryKind::Regular, 0, Some(EntryData::Inline(vec![])))
    );
    assert_eq!(find(&layer, b"./dir/one").mode, 0o4755);
    assert_eq!(
        find(&layer, b"./dir/b64").data,
        Some(EntryData::Inline(b64.clone()))
    );
    let d65 = digest_bytes(Algorithm::Sha256, &b65);
    assert_eq!(
        find(&layer, b"./dir/b65").data,
        Some(EntryData::Object(d65))
    );
    assert_eq!(
        find(&layer, b"./dir/contig").data,
        Some(EntryData::Object(d65))
    );
    assert_eq!(find(&layer, b"./dir/contig").kind, EntryKind::Regular);
    let dbig = digest_bytes(Algorithm::Sha256, &big);
    assert_eq!(
        find(&layer, b"./dir/big").data,
        Some(EntryData::Object(dbig))
    );
    assert_eq!(find(&layer, b"./dir/big").size, 3 << 20);
    assert_eq!(
        find(&layer, b"./dir/page").data,
        Some(EntryData::Object(digest_bytes(Algorithm::Sha256, &page)))
    );
    assert_eq!(
        find(&layer, b"./dir/sym").kind,
        EntryKind::Symlink(b"../target".to_vec())
    );
    let h = find(&layer, b"./dir/hard");
    assert_eq!(
        (h.kind.clone(), h.size, h.data.clone()),
        (EntryKind::Hardlink(b"./dir/b65".to_vec()), 0, None)
    );
    let n = find(&layer, b"./dev/null");
    assert_eq!(
        (n.kind.clone(), n.rdev),
        (EntryKind::CharDevice, makedev(1, 3))
    );
    assert_eq!(n.rdev, 0x103);
    let s = find(&layer, b"./dev/sda");
    assert_eq!(
        (s.kind.clone(), s.rdev),
        (EntryKind::BlockDevice, 0x1230_0845)
    );
    assert_eq!(find(&layer, b"./fifo").kind, EntryKind::Fifo);

    // Two references to one object: the table keeps both, object_refs dedups.
    let refs = object_refs(&layer.splitstream).unwrap();
    assert_eq!(refs.len(), 3);
    assert_eq!(layer.stats.object_files, 4);
    assert_eq!(layer.stats.inline_files, 3);
    assert_eq!(layer.stats.objects_written, 3);
    assert_eq!(layer.stats.entries, 13);
}

#[test]
fn gnu_long_names_and_links() {
    let long_dir = "d".repeat(150);
    let long_path = format!("{long_dir}/{}", "f".repeat(120));
    let long_target = format!("/{}", "t".repeat(230));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(100);
    b.append_data(&mut h, &long_path, &noise(100, 9)[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, format!("{long_dir}/link"), &long_target)
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(
        &mut h,
        format!("{long_dir}/hard-{}", "h".repeat(100)),
        &long_path,
    )
    .unwrap();
    let t = b.into_inner().unwrap();
    assert!(
        t.windows(13).any(|w| w == b"././@LongLink"),
        "tar crate wrote no GNU long names"
    );
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 3);
    assert_eq!(layer.entries[0].path, long_path.as_bytes());
    assert_eq!(layer.entries[0].mode, 0o600);
    assert_eq!(layer.entries[0].size, 100);
    assert_eq!(
        layer.entries[1].kind,
        EntryKind::Symlink(long_target.into_bytes())
    );
    assert_eq!(
        layer.entries[2].kind,
        EntryKind::Hardlink(long_path.clone().into_bytes())
    );
    assert_eq!(
        layer.entries[2].path,
        format!("{long_dir}/hard-{}", "h".repeat(100)).as_bytes()
    );
}

#[test]
fn ustar_prefix() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    let path = format!("{}/{}", "p".repeat(120), "n".repeat(80));
    b.append_data(&mut h, &path, &b"abc"[..]).unwrap();
    let t = b.into_inner().unwrap();
    let layer = roundtrip(&t);
    assert_eq!(layer.entries[0].path, path.as_bytes());
    assert_eq!(
        layer.entries[0].data,
        Some(EntryData::Inline(b"abc".to_vec()))
    );
}

#[test]
fn pax_records() {
    let long = format!("usr/{}/file", "x".repeat(300));
    let cap: &[u8] = b"\x01\x00\x00\x02\x00\x30\x00\x00\n\x00=\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let data = noise(1000, 5);
    let mut t = Vec::new();
    push_pax(
        &mut t,
        b'x',
        &[
            (b"path", long.as_bytes()),
            (b"mtime", b"1700000000.123456789"),
            (b"atime", b"1.5"),
            (b"uid", b"3000000000"),
            (b"gid", b"4000000"),
            (b"SCHILY.xattr.security.capability", cap),
            (b"SCHILY.xattr.user.empty", b""),
            (b"SCHILY.xattr.user.note", b"a=b c\nd"),
            (b"uname", b"someone"),
            (b"comment", b"ignored"),
        ],
    );
    push(&mut t, hdr(b"short-name", b'0', data.len() as u64), &data);
    // PAX size overrides the header's (which a writer may leave 0).
    push_pax(
        &mut t,
        b'x',
        &[(b"size", b"70"), (b"linkpath", b"ignored for files")],
    );
    let mut h = hdr(b"sized", b'0', 0);
    octal(&mut h[124..136], 0);
    push(&mut t, h, &noise(70, 6));
    // A symlink with a long PAX linkpath; a later 'x' overrides an earlier one.
    let target = format!("/{}", "T".repeat(400));
    push_pax(
        &mut t,
        b'x',
        &[(b"linkpath", b"first"), (b"mtime", b"-1.25")],
    );
    push_pax(&mut t, b'x', &[(b"linkpath", target.as_bytes())]);
    push(&mut t, hdr(b"lnk", b'2', 0), b"");
    // A global header is kept and ignored.
    push_pax(&mut t, b'g', &[(b"comment", b"global"), (b"path", b"nope")]);
    push(&mut t, hdr(b"after-global", b'5', 0), b"");
    end(&mut t);

    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 4);
    let f = &layer.entries[0];
    assert_eq!(f.path, long.as_bytes());
    assert_eq!(
        f.mtime,
        Timespec {
            sec: 1_700_000_000,
            nsec: 123_456_789
        }
    );
    assert_eq!((f.uid, f.gid), (3_000_000_000, 4_000_000));
    assert_eq!(f.size, 1000);
    assert_eq!(
        f.data,
        Some(EntryData::Object(digest_bytes(Algorithm::Sha256, &data)))
    );
    assert_eq!(
        f.xattrs,
        vec![
            Xattr {
                name: b"security.capability".to_vec(),
                value: cap.to_vec()
            },
            Xattr {
                name: b"user.empty".to_vec(),
                value: vec![]
            },
            Xattr {
                name: b"user.note".to_vec(),
                value: b"a=b c\nd".to_vec()
            },
        ]
    );
    let s = &layer.entries[1];
    assert_eq!((s.path.as_slice(), s.size), (&b"sized"[..], 70));
    assert_eq!((s.uid, s.mtime.sec), (1000, 1_600_000_000));
    assert!(s.xattrs.is_empty(), "PAX records apply to one entry only");
    let l = &layer.entries[2];
    assert_eq!(l.kind, EntryKind::Symlink(target.into_bytes()));
    assert_eq!(
        l.mtime,
        Timespec {
            sec: -2,
            nsec: 750_000_000
        }
    );
    assert_eq!(layer.entries[3].path, b"after-global");
    assert_eq!(layer.entries[3].kind, EntryKind::Directory);
}

#[test]
fn tar_crate_pax_xattrs() {
    let mut b = tar::Builder::new(Vec::new());
    let cap = vec![
        1u8, 0, 0, 2, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let body = pax_body(&[
        (b"SCHILY.xattr.security.capability", &cap[..]),
        (b"mtime", b"5.000000001"),
    ]);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(body.len() as u64);
    h.set_path("PaxHeaders/ping").unwrap();
    h.set_cksum();
    b.append(&h, &body[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(200);
    b.append_data(&mut h, "bin/ping", &noise(200, 8)[..])
        .unwrap();
    let t = b.into_inner().unwrap();
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 1);
    assert_eq!(layer.entries[0].xattrs[0].value, cap);
    assert_eq!(layer.entries[0].mtime, Timespec { sec: 5, nsec: 1 });
}

#[test]
fn base256_fields() {
    let mut t = Vec::new();
    let data = noise(300, 7);
    let mut h = hdr(b"b256", b'0', 0);
    base256(&mut h[124..136], 300);
    base256(&mut h[108..116], 5_000_000);
    base256(&mut h[136..148], -86400);
    h[257..265].copy_from_slice(b"ustar  \0"); // GNU
    push(&mut t, h, &data);
    end(&mut t);
    let layer = roundtrip(&t);
    let e = &layer.entries[0];
    assert_eq!((e.size, e.uid, e.mtime.sec), (300, 5_000_000, -86400));
    assert_eq!(
        e.data,
        Some(EntryData::Object(digest_bytes(Algorithm::Sha256, &data)))
    );
}

#[test]
fn old_style_and_trailers() {
    let mut t = Vec::new();
    let mut h = hdr(b"olddir/", b'\0', 0);
    h[257..265].fill(0); // v7: no magic
    push(&mut t, h, b"");
    let mut h = hdr(b"oldfile", b'\0', 5);
    h[257..265].fill(0);
    push(&mut t, h, b"hello");
    // Padding that is not zero is kept as it is.
    let mut h = hdr(b"dirty-pad", b'0', 3);
    set_checksum(&mut h);
    t.extend_from_slice(&h);
    t.extend_from_slice(b"abc");
    t.extend_from_slice(&[0x55; 509]);
    let base = t.clone();

    // No end marker at all.
    let layer = roundtrip(&base);
    assert_eq!(layer.entries.len(), 3);
    assert_eq!(layer.entries[0].kind, EntryKind::Directory);
    assert_eq!(layer.entries[0].data, None);
    assert_eq!(
        layer.entries[1].data,
        Some(EntryData::Inline(b"hello".to_vec()))
    );

    // Many zero blocks, then garbage that is not a multiple of 512.
    let mut t = base.clone();
    t.extend_from_slice(&[0u8; 512 * 10]);
    t.extend_from_slice(b"trailing garbage \x01\x02");
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 3);

    // A single zero block and garbage that looks like a header.
    let mut t = base.clone();
    t.extend_from_slice(&[0u8; 512]);
    push(&mut t, hdr(b"not-an-entry", b'0', 0), b"");
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 3);

    // An empty stream and a stream of only zeros.
    assert!(roundtrip(b"").entries.is_empty());
    assert!(roundtrip(&[0u8; 1024]).entries.is_empty());
}

#[test]
fn header_only_types_ignore_size() {
    // Like Go's archive/tar: links, devices, dirs and FIFOs have no data
    // even if the size field says otherwise.
    let mut t = Vec::new();
    push(&mut t, hdr(b"dir/", b'5', 1000), b"");
    push(&mut t, hdr(b"f", b'0', 2), b"hi");
    end(&mut t);
    let layer = roundtrip(&t);
    assert_eq!(layer.entries.len(), 2);
    assert_eq!(layer.entries[0].size, 0);
}

#[test]
fn large_objects_stream_and_dedup() {
    // Above BUFFER_MAX: goes through ObjectWriter.
    let big = noise((BUFFER_MAX as usize) + 12345, 11);
    let mid = noise(2 << 20, 12);
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("big", &big), ("mid", &mid), ("big-again", &big)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let t = b.into_inner().unwrap();
    let (_dir, objects) = store();
    let first = roundtrip_in(&t, &objects);
    assert_eq!(first.stats.object_files, 3);
    assert_eq!(first.stats.objects_written, 2);
    assert_eq!(
        first.stats.objects_written_bytes,
        (big.len() + mid.len()) as u64
    );
    let dbig = digest_bytes(Algorithm::Sha256, &big);
    assert_eq!(first.entries[0].data, Some(EntryData::Object(dbig)));
    assert_eq!(fs::read(objects.object_path(&dbig)).unwrap(), big);
    let second = roundtrip_in(&t, &objects);
    assert_eq!(second.stats.objects_written, 0);
    assert_eq!(second.splitstream, first.splitstream);
    // No temporary files left behind.
    let left: Vec<_> = fs::read_dir(objects.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sha512_objects() {
    let dir = tempfile::tempdir().unwrap();
    let objects = ObjectDir::open(dir.path(), Algorithm::Sha512).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5000);
    b.append_data(&mut h, "f", &noise(5000, 1)[..]).unwrap();
    let t = b.into_inner().unwrap();
    let layer = roundtrip_in(&t, &objects);
    assert_eq!(
        layer.entries[0].data,
        Some(EntryData::Object(digest_bytes(
            Algorithm::Sha512,
            &noise(5000, 1)
        )))
    );
}

// ---------------------------------------------------------------------------
// Hostile archives

fn import_err(t: &[u8]) -> LayerError {
    let (_dir, objects) = store();
    match import_layer(t, &objects) {
        Ok(l) => panic!("import succeeded with {} entries", l.entries.len()),
        Err(e) => e,
    }
}

fn sample() -> Vec<u8> {
    let mut t = Vec::new();
    push(&mut t, hdr(b"a", b'0', 3), b"abc");
    push(&mut t, hdr(b"big", b'0', 1000), &noise(1000, 3));
    push_pax(
        &mut t,
        b'x',
        &[(b"path", b"pax-path"), (b"SCHILY.xattr.user.x", b"1")],
    );
    push(&mut t, hdr(b"c", b'0', 100), &noise(100, 4));
    end(&mut t);
    t
}

#[test]
fn truncated() {
    let t = sample();
    // Inside the first header, inside data, inside padding, inside the PAX body.
    for cut in [100, 512 + 1, 1024 + 300, 1024 + 1500, 3072 + 10] {
        let e = import_err(&t[..cut]);
        assert!(
            matches!(e, LayerError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
    let e = import_err(&t[..1536 + 500]);
    let msg = e.to_string();
    assert!(msg.contains("\"big\""), "{msg}");
    assert!(msg.contains("file data"), "{msg}");
    // A PAX header and then the end of the archive.
    let mut u = t[..3584].to_vec();
    end(&mut u);
    let e = import_err(&u);
    assert!(matches!(e, LayerError::Truncated { .. }), "{e}");
}

#[test]
fn truncated_large_file_leaves_no_temporary() {
    let mut t = Vec::new();
    let big = noise(BUFFER_MAX as usize + (3 << 20), 1);
    push(&mut t, hdr(b"huge-file", b'0', big.len() as u64), &big);
    let (_dir, objects) = store();
    let e = import_err_in(&t[..t.len() - (2 << 20)], &objects);
    assert!(matches!(e, LayerError::Truncated { .. }), "{e}");
    let left: Vec<_> = fs::read_dir(objects.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn absurd_size() {
    let mut t = Vec::new();
    push(&mut t, hdr(b"huge", b'0', 0o77777777777), b"small");
    let e = import_err(&t);
    assert!(matches!(e, LayerError::Truncated { .. }), "{e}");
    let mut t = Vec::new();
    let mut h = hdr(b"huger", b'0', 0);
    base256(&mut h[124..136], i64::MAX);
    push(&mut t, h, b"");
    let e = import_err(&t);
    assert!(matches!(e, LayerError::Truncated { .. }), "{e}");
    // A negative size.
    let mut t = Vec::new();
    let mut h = hdr(b"neg", b'0', 0);
    base256(&mut h[124..136], -5);
    push(&mut t, h, b"");
    let e = import_err(&t);
    assert!(
        matches!(
            e,
            LayerError::BadNumber {
                field: "size field",
                ..
            }
        ),
        "{e}"
    );
    // A PAX size beyond u64.
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &[(b"size", b"99999999999999999999999")]);
    push(&mut t, hdr(b"f", b'0', 0), b"");
    let e = import_err(&t);
    assert!(
        matches!(
            e,
            LayerError::BadNumber {
                field: "PAX size",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_checksum() {
    let mut t = sample();
    t[1024 + 10] ^= 1; // a name byte of the second header
    let e = import_err(&t);
    assert!(matches!(e, LayerError::BadChecksum { .. }), "{e}");
    assert!(e.to_string().contains("byte 1024"), "{e}");
}

#[test]
fn giant_records() {
    let mut t = Vec::new();
    push(&mut t, hdr(b"PaxHeaders/x", b'x', 2 << 20), b"");
    let e = import_err(&t);
    assert!(
        matches!(e, LayerError::TooLarge { size: 0x200000, .. }),
        "{e}"
    );
    let mut t = Vec::new();
    push(
        &mut t,
        hdr(b"././@LongLink", b'L', u64::from(u32::MAX)),
        b"",
    );
    let e = import_err(&t);
    assert!(matches!(e, LayerError::TooLarge { .. }), "{e}");
    // Many records below the cap, adding up beyond the per-entry total.
    let mut t = Vec::new();
    let big = vec![b'a'; 900 << 10];
    for _ in 0..6 {
        push_pax(&mut t, b'x', &[(b"SCHILY.xattr.user.a", &big)]);
    }
    let e = import_err(&t);
    assert!(matches!(e, LayerError::TooLarge { .. }), "{e}");
}

#[test]
fn too_many_xattrs() {
    let names: Vec<String> = (0..=4096)
        .map(|i| format!("SCHILY.xattr.user.{i}"))
        .collect();
    let kv: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_bytes(), &b"v"[..])).collect();
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &kv);
    push(&mut t, hdr(b"f", b'0', 0), b"");
    end(&mut t);
    let e = import_err(&t);
    assert!(matches!(e, LayerError::BadPax { .. }), "{e}");
    // One fewer is fine.
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &kv[..4096]);
    push(&mut t, hdr(b"f", b'0', 0), b"");
    end(&mut t);
    assert_eq!(roundtrip(&t).entries[0].xattrs.len(), 4096);
}

#[test]
fn malformed_pax() {
    for body in [
        &b"99999999999999999999999 path=x\n"[..],
        b"12 path=x\n",
        b"8 path=x",
        b"nospace",
        b"6 =x\n\n",
        b"7 abc\n\n",
    ] {
        let mut t = Vec::new();
        push(&mut t, hdr(b"PaxHeaders/x", b'x', body.len() as u64), body);
        push(&mut t, hdr(b"f", b'0', 0), b"");
        end(&mut t);
        let e = import_err(&t);
        assert!(
            matches!(e, LayerError::BadPax { .. }),
            "{:?}: {e}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn unsupported_and_bad_fields() {
    let mut t = Vec::new();
    push(&mut t, hdr(b"sparse", b'S', 0), b"");
    assert!(matches!(import_err(&t), LayerError::Unsupported { .. }));
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &[(b"GNU.sparse.major", b"1")]);
    push(&mut t, hdr(b"sparse", b'0', 0), b"");
    assert!(matches!(import_err(&t), LayerError::Unsupported { .. }));
    let mut t = Vec::new();
    push(&mut t, hdr(b"volume", b'V', 0), b"");
    assert!(matches!(import_err(&t), LayerError::Unsupported { .. }));
    let mut t = Vec::new();
    let mut h = hdr(b"badmode", b'0', 0);
    h[100..108].copy_from_slice(b"0006z4\0\0");
    push(&mut t, h, b"");
    let e = import_err(&t);
    assert!(
        matches!(
            e,
            LayerError::BadNumber {
                field: "mode field",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("badmode"), "{e}");
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &[(b"uid", b"4294967296")]);
    push(&mut t, hdr(b"f", b'0', 0), b"");
    assert!(matches!(
        import_err(&t),
        LayerError::BadNumber { field: "uid", .. }
    ));
    let mut t = Vec::new();
    push_pax(&mut t, b'x', &[(b"mtime", b"12.x")]);
    push(&mut t, hdr(b"f", b'0', 0), b"");
    assert!(matches!(
        import_err(&t),
        LayerError::BadNumber {
            field: "PAX mtime",
            ..
        }
    ));
}

#[test]
fn object_store_failure_names_entry() {
    // Entries of the sample whose contents are objects: objects are
    // written in parallel, so any of them may be the first to fail.
    let with_objects: Vec<String> = {
        let (_d, good) = store();
        import_layer(&sample()[..], &good)
            .unwrap()
            .entries
            .iter()
            .filter(|e| matches!(e.data, Some(crate::oci::EntryData::Object(_))))
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    };
    assert!(with_objects.len() >= 2, "{with_objects:?}");
    let (dir, objects) = store();
    // The object directory disappears: creating objects in it fails.
    fs::remove_dir_all(dir.path().join("objects")).unwrap();
    let e = import_err_in(&sample(), &objects);
    assert!(matches!(e, LayerError::Object { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        with_objects
            .iter()
            .any(|n| msg.contains(&format!("tar entry \"{n}\""))),
        "{msg} names none of {with_objects:?}"
    );
    assert!(msg.contains("cannot store contents"), "{msg}");
    // Large (streamed) objects too.
    let mut t = Vec::new();
    let big = noise(BUFFER_MAX as usize + 1, 1);
    push(&mut t, hdr(b"huge-file", b'0', big.len() as u64), &big);
    end(&mut t);
    let e = import_err_in(&t, &objects);
    assert!(matches!(e, LayerError::Object { .. }), "{e}");
    assert!(e.to_string().contains("huge-file"), "{e}");
}

fn import_err_in(t: &[u8], objects: &ObjectDir) -> LayerError {
    match import_layer(t, objects) {
        Ok(l) => panic!("import succeeded with {} entries", l.entries.len()),
        Err(e) => e,
    }
}

#[test]
fn cat_checks_objects() {
    let t = sample();
    let (_dir, objects) = store();
    let layer = import_layer(&t[..], &objects).unwrap();
    let (_dir2, empty) = store();
    let e = cat(&layer.splitstream, &empty, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, LayerError::MissingObject { .. }), "{e}");
    // An object of the wrong length.
    let d = object_refs(&layer.splitstream).unwrap()[0];
    let path = objects.object_path(&d);
    let mut perm = fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&path, perm).unwrap();
    fs::write(&path, b"short").unwrap();
    let e = cat(&layer.splitstream, &objects, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            e,
            LayerError::ObjectSize {
                expected: 1000,
                actual: 5,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn corrupt_splitstreams() {
    let t = sample();
    let (_dir, objects) = store();
    let layer = import_layer(&t[..], &objects).unwrap();
    let s = &layer.splitstream;
    assert!(read_entries(b"nope").is_err());
    let mut bad = s.clone();
    bad[8] = 9;
    assert!(read_entries(&bad)
        .unwrap_err()
        .to_string()
        .contains("version"));
    let mut bad = s.clone();
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(read_entries(&bad).is_err());
    assert!(object_refs(&bad).is_err());
    // Truncating anywhere fails cleanly.
    for cut in 0..s.len() {
        assert!(read_entries(&s[..cut]).is_err(), "cut at {cut}");
        assert!(
            cat(&s[..cut], &objects, &mut Vec::new()).is_err(),
            "cut at {cut}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    /// Mutated tars never panic, and whatever imports round-trips.
    #[test]
    fn mutated_tars(edits in proptest::collection::vec((0usize..5000, proptest::prelude::any::<u8>(), 0u8..4), 1..6)) {
        let mut t = sample();
        for (pos, byte, op) in edits {
            let pos = pos % (t.len() + 1);
            match op {
                0 if pos < t.len() => t[pos] = byte,
                1 => t.insert(pos, byte),
                2 if pos < t.len() => { t.remove(pos); }
                _ => t.truncate(pos),
            }
        }
        // Fix up checksums half of the time, so mutations get past them.
        if t.len() > 600 && t[0] & 1 == 0 {
            let mut off = 0;
            while off + 512 <= t.len() {
                let mut h: [u8; 512] = t[off..off + 512].try_into().unwrap();
                if h.iter().any(|&b| b != 0) {
                    set_checksum(&mut h);
                    t[off..off + 512].copy_from_slice(&h);
                }
                off += 512;
            }
        }
        let (_dir, objects) = store();
        if let Ok(layer) = import_layer(&t[..], &objects) {
            check(&t, &layer, &objects);
        }
    }

    /// Mutated splitstreams never panic.
    #[test]
    fn mutated_splitstreams(pos in 0usize..4000, byte in proptest::prelude::any::<u8>()) {
        let (_dir, objects) = store();
        let layer = import_layer(&sample()[..], &objects).unwrap();
        let mut s = layer.splitstream.clone();
        let pos = pos % s.len();
        s[pos] = byte;
        let _ = read_entries(&s);
        let _ = cat(&s, &objects, &mut Vec::new());
        let _ = object_refs(&s);
    }
}

// ---------------------------------------------------------------------------
// Real layers

const CORPUS: &str = "/work/corpus/oci/uncompressed/blobs/sha256";

/// Uncompressed tar blobs of the corpus, smallest first.
fn corpus_layers() -> Vec<(std::path::PathBuf, u64)> {
    let Ok(dir) = fs::read_dir(CORPUS) else {
        return Vec::new();
    };
    let mut out: Vec<_> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let len = e.metadata().ok()?.len();
            let mut head = [0u8; 512];
            let mut f = fs::File::open(&path).ok()?;
            f.read_exact(&mut head).ok()?;
            (&head[257..262] == b"ustar").then_some((path, len))
        })
        .collect();
    out.sort_by_key(|(_, len)| *len);
    out
}

/// Imports `path` and checks that cat rebuilds the blob (its name is the
/// sha256 of its contents) and that read_entries agrees. Returns MB/s.
fn corpus_check(path: &std::path::Path) -> f64 {
    let (_dir, objects) = store();
    let len = fs::metadata(path).unwrap().len();
    let cpu0 = cpu_secs();
    let start = std::time::Instant::now();
    let file = BufReader::with_capacity(1 << 20, fs::File::open(path).unwrap());
    let layer = import_layer(file, &objects).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let mut hasher = HashWriter(Sha256::new());
    cat(&layer.splitstream, &objects, &mut hasher).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        hex::encode(hasher.0.finalize()),
        name,
        "cat does not rebuild {name}"
    );
    assert_eq!(read_entries(&layer.splitstream).unwrap(), layer.entries);
    let mbps = len as f64 / secs / 1e6;
    println!(
        "{name}: {} MB, {} entries, {} objects ({} new), splitstream {} KB, import {:.2}s ({cpu:.2}s CPU) = {mbps:.0} MB/s",
        len / 1_000_000,
        layer.stats.entries,
        layer.stats.object_files,
        layer.stats.objects_written,
        layer.splitstream.len() / 1000,
        secs,
    );
    mbps
}

/// User + system CPU time of this process so far (Linux), in seconds.
fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Real layers up to 160 MB (the Debian base layer among them).
#[test]
fn corpus_layers_roundtrip() {
    let layers = corpus_layers();
    if layers.is_empty() {
        println!("skipped: no uncompressed OCI layers under {CORPUS}");
        return;
    }
    for (path, len) in layers.iter().filter(|(_, len)| *len <= 160 << 20) {
        let _ = len;
        corpus_check(path);
    }
}

/// The largest corpus layer, for throughput (`--ignored`, release build).
#[test]
#[ignore]
fn corpus_largest_throughput() {
    let Some((path, _)) = corpus_layers().pop() else {
        println!("skipped: no uncompressed OCI layers under {CORPUS}");
        return;
    };
    corpus_check(&path);
    // Again into a store that has every object: parsing and hashing only.
    let (_dir, objects) = store();
    import_layer(BufReader::new(fs::File::open(&path).unwrap()), &objects).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    let (cpu0, start) = (cpu_secs(), std::time::Instant::now());
    let layer = import_layer(
        BufReader::with_capacity(1 << 20, fs::File::open(&path).unwrap()),
        &objects,
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(layer.stats.objects_written, 0);
    println!(
        "re-import (all objects present): {secs:.2}s ({:.2}s CPU) = {:.0} MB/s",
        cpu_secs() - cpu0,
        len as f64 / secs / 1e6
    );
}
