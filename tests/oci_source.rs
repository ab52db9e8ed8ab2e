//! OCI sources: reference resolution, platform choice, verified reading, layer decoding,
//! archives, and `write_layout`.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use strata::oci::manifest::{MT_DOCKER_CONFIG, MT_DOCKER_LIST, MT_DOCKER_MANIFEST};
use strata::oci::source::VerifiedReader;
use strata::oci::{
    write_layout, Compression, ImageRef, LayerDesc, OciSource, PlatformSpec, Reference, SourceError,
};

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A small tar with a few files, distinct per `seed`.
fn make_tar(seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3u8 {
        let data: Vec<u8> = (0..(1000 * (i as usize + 1) + seed as usize))
            .map(|j| (j as u8).wrapping_mul(seed.wrapping_add(i)))
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("dir{seed}/file{i}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn config_for(diff_ids: &[String], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn tag(t: &str) -> Reference {
    Reference::Tag(t.into())
}

fn read_all(r: impl Read) -> Result<Vec<u8>, SourceError> {
    let mut r = r;
    let mut v = Vec::new();
    r.read_to_end(&mut v).map_err(SourceError::from_io)?;
    Ok(v)
}

fn read_layer(src: &OciSource, l: &LayerDesc) -> Result<Vec<u8>, SourceError> {
    read_all(src.open_layer(l)?)
}

fn amd64() -> PlatformSpec {
    PlatformSpec::parse("linux/amd64").unwrap()
}

/// Hand-crafted layouts for edge cases.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir: dir.into() }
    }
    fn blob(&self, b: &[u8]) -> (String, u64) {
        let d = sha(b);
        std::fs::write(self.blob_path(&d), b).unwrap();
        (d, b.len() as u64)
    }
    fn blob_path(&self, d: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(&d[7..])
    }
    fn json_blob(&self, v: serde_json::Value) -> (String, u64) {
        self.blob(&serde_json::to_vec(&v).unwrap())
    }
    fn index(&self, manifests: serde_json::Value) {
        let v = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    /// An image with the given (compressed blob, media type, uncompressed) layers; returns
    /// the manifest descriptor JSON (without annotations) and the manifest digest.
    fn image(
        &self,
        layers: &[(Vec<u8>, &str, Vec<u8>)],
        arch: &str,
        manifest_mt: &str,
        config_mt: &str,
    ) -> (serde_json::Value, String) {
        let diff_ids: Vec<String> = layers.iter().map(|(_, _, u)| sha(u)).collect();
        let (cd, cs) = self.blob(&config_for(&diff_ids, arch));
        let ls: Vec<_> = layers
            .iter()
            .map(|(b, mt, _)| {
                let (d, s) = self.blob(b);
                json!({"mediaType": mt, "digest": d, "size": s})
            })
            .collect();
        let (md, ms) = self.json_blob(json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": {"mediaType": config_mt, "digest": cd, "size": cs},
            "layers": ls,
        }));
        (
            json!({"mediaType": manifest_mt, "digest": md, "size": ms}),
            md,
        )
    }
}

fn with_tag(mut d: serde_json::Value, t: &str) -> serde_json::Value {
    d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
    d
}

const OCI_M: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_C: &str = "application/vnd.oci.image.config.v1+json";
const OCI_I: &str = "application/vnd.oci.image.index.v1+json";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zstd1(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

#[test]
fn write_then_read_each_compression() {
    let tmp = tempfile::tempdir().unwrap();
    let tars = [make_tar(1), make_tar(2)];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = config_for(&diff_ids, "amd64");
    for (i, c) in [Compression::Zstd, Compression::Gzip, Compression::None]
        .into_iter()
        .enumerate()
    {
        let t = format!("t{i}");
        let layers = diff_ids
            .iter()
            .cloned()
            .zip(tars.iter().map(|t| Cursor::new(t.clone())))
            .collect();
        let md = write_layout(tmp.path(), &t, &config, layers, c).unwrap();
        let src = OciSource::open_layout(tmp.path()).unwrap();
        let img = src.resolve(Some(&tag(&t)), None).unwrap();
        assert_eq!(img.manifest_digest, md);
        assert_eq!(img.config.raw, config, "config is byte-identical");
        assert_eq!(img.config_digest, sha(&config));
        assert_eq!(img.layers.len(), 2);
        for (l, t) in img.layers.iter().zip(&tars) {
            assert_eq!(l.compression, c);
            assert_eq!(read_layer(&src, l).unwrap(), *t);
        }
    }
    // Three tags; re-exporting one replaces its entry.
    let layers = diff_ids
        .iter()
        .cloned()
        .zip(tars.iter().map(|t| Cursor::new(t.clone())))
        .collect();
    write_layout(tmp.path(), "t0", &config, layers, Compression::Gzip).unwrap();
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let mut tags = src.tags();
    tags.sort();
    assert_eq!(tags, ["t0", "t1", "t2"]);
    let a = src.resolve(Some(&tag("t0")), None).unwrap();
    let b = src.resolve(Some(&tag("t1")), None).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest, "same gzip output");

    // Several images and no tag: the error lists the tags.
    let e = src.resolve(None, None).unwrap_err();
    assert!(matches!(e, SourceError::NeedTag { count: 3, .. }), "{e}");
    assert!(e.to_string().contains("t0, t1, t2") || e.to_string().contains("t1"));
    let e = src.resolve(Some(&tag("nope")), None).unwrap_err();
    assert!(matches!(e, SourceError::TagNotFound { .. }), "{e}");
    assert!(e.to_string().contains("t2"), "{e}");
}

#[test]
fn write_layout_rejects_wrong_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let t = make_tar(1);
    let wrong = sha(b"other");
    let config = config_for(std::slice::from_ref(&wrong), "amd64");
    let e = write_layout(
        tmp.path(),
        "x",
        &config,
        vec![(wrong.clone(), Cursor::new(t))],
        Compression::Zstd,
    )
    .unwrap_err();
    assert!(matches!(e, SourceError::DiffIdMismatch { .. }), "{e}");
    assert!(!tmp.path().join("index.json").exists());
    // Given diff_ids must agree with the config.
    let e = write_layout(
        tmp.path(),
        "x",
        &config,
        vec![(sha(b"x"), Cursor::new(vec![]))],
        Compression::Zstd,
    )
    .unwrap_err();
    assert!(matches!(e, SourceError::ExportDiffIdMismatch { .. }), "{e}");
}

#[test]
fn single_image_without_tag_and_digest_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let t = make_tar(3);
    let (desc, md) = lay.image(&[(gzip(&t), GZ, t.clone())], "amd64", OCI_M, OCI_C);
    lay.index(json!([desc]));
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let img = src.resolve(None, None).unwrap();
    assert_eq!(img.manifest_digest, md);
    let img2 = src
        .resolve(Some(&Reference::Digest(md.clone())), None)
        .unwrap();
    assert_eq!(img2.manifest_digest, md);
    assert_eq!(read_layer(&src, &img.layers[0]).unwrap(), t);
    let missing = sha(b"missing");
    let e = src
        .resolve(Some(&Reference::Digest(missing.clone())), None)
        .unwrap_err();
    assert!(matches!(e, SourceError::BlobNotFound { .. }), "{e}");
    assert!(e.to_string().contains(&missing));
}

#[test]
fn nested_index_platforms() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let (ta, tb) = (make_tar(4), make_tar(5));
    let (da, ma) = lay.image(&[(zstd1(&ta), ZST, ta.clone())], "amd64", OCI_M, OCI_C);
    let (db, mb) = lay.image(&[(zstd1(&tb), ZST, tb.clone())], "arm64", OCI_M, OCI_C);
    let mut da = da;
    da["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut db = db;
    db["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let (xd, xs) = lay.json_blob(json!({
        "schemaVersion": 2, "mediaType": OCI_I, "manifests": [da, db],
    }));
    lay.index(json!([with_tag(
        json!({"mediaType": OCI_I, "digest": xd, "size": xs}),
        "multi"
    )]));
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let t = tag("multi");
    let a = src.resolve(Some(&t), Some(&amd64())).unwrap();
    assert_eq!(a.manifest_digest, ma);
    assert_eq!(read_layer(&src, &a.layers[0]).unwrap(), ta);
    for p in ["linux/arm64", "linux/arm64/v8"] {
        let b = src
            .resolve(Some(&t), Some(&PlatformSpec::parse(p).unwrap()))
            .unwrap();
        assert_eq!(b.manifest_digest, mb, "{p}");
    }
    let e = src
        .resolve(
            Some(&t),
            Some(&PlatformSpec::parse("linux/arm64/v9").unwrap()),
        )
        .unwrap_err();
    assert!(matches!(e, SourceError::NoPlatformMatch { .. }), "{e}");
    let e = src
        .resolve(Some(&t), Some(&PlatformSpec::parse("linux/s390x").unwrap()))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64/v8") && msg.contains("s390x"),
        "{msg}"
    );
    // Host default.
    let host = PlatformSpec::host();
    match (host.arch.as_str(), src.resolve(Some(&t), None)) {
        ("amd64", Ok(img)) => assert_eq!(img.manifest_digest, ma),
        ("arm64", Ok(img)) => assert_eq!(img.manifest_digest, mb),
        (_, Err(SourceError::NoPlatformMatch { .. })) => {}
        (a, r) => panic!("host {a}: {:?}", r.map(|i| i.manifest_digest)),
    }
    // A platform manifest by digest, although index.json does not list it.
    let b = src
        .resolve(Some(&Reference::Digest(mb.clone())), None)
        .unwrap();
    assert_eq!(b.manifest_digest, mb);
    assert!(PlatformSpec::parse("linux").is_err());
}

#[test]
fn docker_media_types() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let t1 = make_tar(6);
    let t2 = make_tar(7);
    let (mut d, md) = lay.image(
        &[
            (
                gzip(&t1),
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                t1.clone(),
            ),
            (
                t2.clone(),
                "application/vnd.docker.image.rootfs.diff.tar",
                t2.clone(),
            ),
        ],
        "amd64",
        MT_DOCKER_MANIFEST,
        MT_DOCKER_CONFIG,
    );
    d["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let (ld, ls) = lay.json_blob(json!({
        "schemaVersion": 2, "mediaType": MT_DOCKER_LIST, "manifests": [d],
    }));
    lay.index(json!([with_tag(
        json!({"mediaType": MT_DOCKER_LIST, "digest": ld, "size": ls}),
        "d"
    )]));
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let img = src.resolve(Some(&tag("d")), Some(&amd64())).unwrap();
    assert_eq!(img.manifest_digest, md);
    assert_eq!(img.layers[0].compression, Compression::Gzip);
    assert_eq!(img.layers[1].compression, Compression::None);
    assert_eq!(read_layer(&src, &img.layers[0]).unwrap(), t1);
    assert_eq!(read_layer(&src, &img.layers[1]).unwrap(), t2);
}

#[test]
fn multi_frame_and_multi_member_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let t = make_tar(8);
    let (a, b) = t.split_at(1500);
    let zst = [zstd1(a), zstd1(b)].concat();
    let gz = [gzip(a), gzip(b)].concat();
    let (d, _) = lay.image(
        &[
            (zst, ZST, t.clone()),
            (gz, GZ, t.clone()),
            (t.clone(), TAR, t.clone()),
        ],
        "amd64",
        OCI_M,
        OCI_C,
    );
    lay.index(json!([d]));
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let img = src.resolve(None, None).unwrap();
    for l in &img.layers {
        assert_eq!(read_layer(&src, l).unwrap(), t, "{}", l.media_type);
    }
}

/// One image with a gzip, a zstd and a plain layer; returns the layout and its layers.
fn three_layer_image(dir: &Path) -> (Layout, Vec<LayerDesc>) {
    let lay = Layout::new(dir);
    let t = make_tar(9);
    let (d, _) = lay.image(
        &[
            (gzip(&t), GZ, t.clone()),
            (zstd1(&t), ZST, t.clone()),
            (t.clone(), TAR, t.clone()),
        ],
        "amd64",
        OCI_M,
        OCI_C,
    );
    lay.index(json!([d]));
    let img = OciSource::open_layout(dir)
        .unwrap()
        .resolve(None, None)
        .unwrap();
    (lay, img.layers)
}

#[test]
fn flipped_byte_is_a_digest_mismatch() {
    for i in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let (lay, layers) = three_layer_image(tmp.path());
        let l = &layers[i];
        let p = lay.blob_path(&l.digest);
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x40;
        std::fs::write(&p, &b).unwrap();
        let src = OciSource::open_layout(tmp.path()).unwrap();
        let e = read_layer(&src, l).unwrap_err();
        assert!(
            matches!(&e, SourceError::BlobDigestMismatch { digest, got } if *digest == l.digest && *got == sha(&b)),
            "{}: {e}",
            l.media_type
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("blob {}: digest mismatch (expected", l.digest)),
            "{msg}"
        );
        // The raw blob reader says the same.
        let e = read_all(src.open_blob(&l.digest, l.size).unwrap()).unwrap_err();
        assert!(matches!(e, SourceError::BlobDigestMismatch { .. }), "{e}");
    }
}

#[test]
fn truncated_and_oversized_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let (lay, layers) = three_layer_image(tmp.path());
    let src = OciSource::open_layout(tmp.path()).unwrap();
    // Truncated file.
    let l = &layers[0];
    let p = lay.blob_path(&l.digest);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 10]).unwrap();
    let e = read_layer(&src, l).unwrap_err();
    assert!(matches!(e, SourceError::BlobTruncated { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("blob {}: truncated", l.digest)),
        "{e}"
    );
    // Longer file than the descriptor says.
    let l = &layers[1];
    let p = lay.blob_path(&l.digest);
    let mut b = std::fs::read(&p).unwrap();
    b.extend_from_slice(b"extra");
    std::fs::write(&p, &b).unwrap();
    let e = read_layer(&src, l).unwrap_err();
    assert!(matches!(e, SourceError::BlobSizeMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("blob {}: size mismatch", l.digest)),
        "{e}"
    );

    // The streaming checks, on a reader whose length is not known up front.
    let data = b"hello world".to_vec();
    let d = sha(&data);
    let n = data.len() as u64;
    assert_eq!(
        read_all(VerifiedReader::new(Cursor::new(data.clone()), &d, n).unwrap()).unwrap(),
        data
    );
    let e =
        read_all(VerifiedReader::new(Cursor::new(data.clone()), &d, n - 1).unwrap()).unwrap_err();
    assert!(matches!(e, SourceError::BlobTooLong { .. }), "{e}");
    assert!(e.to_string().contains("size mismatch"), "{e}");
    let e =
        read_all(VerifiedReader::new(Cursor::new(data[..5].to_vec()), &d, n).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::BlobTruncated {
                expected: 11,
                got: 5,
                ..
            }
        ),
        "{e}"
    );
    let mut other = data.clone();
    other[0] = b'H';
    let e = read_all(VerifiedReader::new(Cursor::new(other), &d, n).unwrap()).unwrap_err();
    assert!(matches!(e, SourceError::BlobDigestMismatch { .. }), "{e}");
    // A blob the layout does not have.
    let e = src.open_blob(&d, n).map(|_| ()).unwrap_err();
    assert!(matches!(e, SourceError::BlobNotFound { .. }), "{e}");
}

#[test]
fn diff_id_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let t = make_tar(10);
    let wrong = sha(b"not the layer");
    for (blob, mt) in [(zstd1(&t), ZST), (gzip(&t), GZ), (t.clone(), TAR)] {
        let (cd, cs) = lay.blob(&config_for(std::slice::from_ref(&wrong), "amd64"));
        let (ld, ls) = lay.blob(&blob);
        let (md, ms) = lay.json_blob(json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_C, "digest": cd, "size": cs},
            "layers": [{"mediaType": mt, "digest": ld, "size": ls}],
        }));
        lay.index(json!([{"mediaType": OCI_M, "digest": md, "size": ms}]));
        let src = OciSource::open_layout(tmp.path()).unwrap();
        let img = src.resolve(None, None).unwrap();
        let e = read_layer(&src, &img.layers[0]).unwrap_err();
        assert!(
            matches!(&e, SourceError::DiffIdMismatch { diff_id, got } if *diff_id == wrong && *got == sha(&t)),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("layer {wrong}: diff_id mismatch")),
            "{e}"
        );
        // finish() reports the same after a partial read.
        let mut r = src.open_layer(&img.layers[0]).unwrap();
        let mut buf = [0u8; 100];
        r.read_exact(&mut buf).unwrap();
        assert!(matches!(
            r.finish(),
            Err(SourceError::DiffIdMismatch { .. })
        ));
    }
}

#[test]
fn layer_count_mismatch_and_bad_media_type() {
    let tmp = tempfile::tempdir().unwrap();
    let lay = Layout::new(tmp.path());
    let t = make_tar(11);
    let (cd, cs) = lay.blob(&config_for(&[sha(&t), sha(b"x")], "amd64"));
    let (ld, ls) = lay.blob(&t);
    let (md, ms) = lay.json_blob(json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_C, "digest": cd, "size": cs},
        "layers": [{"mediaType": TAR, "digest": ld, "size": ls}],
    }));
    let (cd2, cs2) = lay.blob(&config_for(&[sha(&t)], "amd64"));
    let (md2, ms2) = lay.json_blob(json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_C, "digest": cd2, "size": cs2},
        "layers": [{"mediaType": "application/x-weird", "digest": ld, "size": ls}],
    }));
    lay.index(json!([
        with_tag(
            json!({"mediaType": OCI_M, "digest": md, "size": ms}),
            "count"
        ),
        with_tag(
            json!({"mediaType": OCI_M, "digest": md2, "size": ms2}),
            "weird"
        ),
    ]));
    let src = OciSource::open_layout(tmp.path()).unwrap();
    let e = src.resolve(Some(&tag("count")), None).unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::LayerCountMismatch {
                layers: 1,
                diff_ids: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = src.resolve(Some(&tag("weird")), None).unwrap_err();
    assert!(matches!(e, SourceError::UnsupportedMediaType { .. }), "{e}");
}

fn tar_layout(dir: &Path, out: &Path, prefix: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(prefix, dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn archive_reads_like_the_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let tars = [make_tar(12), make_tar(13)];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = config_for(&diff_ids, "amd64");
    let layers = diff_ids
        .iter()
        .cloned()
        .zip(tars.iter().map(|t| Cursor::new(t.clone())))
        .collect();
    write_layout(&dir, "a", &config, layers, Compression::Zstd).unwrap();
    let layout = OciSource::open_layout(&dir).unwrap();
    let want = layout.resolve(Some(&tag("a")), None).unwrap();
    for prefix in [".", ""] {
        let archive = tmp.path().join(format!("img{prefix}.tar"));
        tar_layout(&dir, &archive, prefix);
        let r = ImageRef::parse(&format!("oci-archive:{}:a", archive.display())).unwrap();
        let src = OciSource::open(&r).unwrap();
        let got = src.resolve(r.reference(), None).unwrap();
        assert_eq!(got.manifest_digest, want.manifest_digest);
        assert_eq!(got.config.raw, want.config.raw);
        assert_eq!(got.layers, want.layers);
        for (l, t) in got.layers.iter().zip(&tars) {
            assert_eq!(read_layer(&src, l).unwrap(), *t);
        }
    }
    // A corrupted archive member is caught like a corrupted file.
    let archive = tmp.path().join("img..tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let l = &want.layers[1];
    let member = format!("blobs/sha256/{}", &l.digest[7..]);
    let mut ar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let data = ar
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().ends_with(&member))
        .unwrap()
        .raw_file_position() as usize;
    bytes[data + 20] ^= 1;
    std::fs::write(&archive, &bytes).unwrap();
    let src = OciSource::open_archive(&archive).unwrap();
    let e = read_layer(&src, l).unwrap_err();
    assert!(matches!(e, SourceError::BlobDigestMismatch { .. }), "{e}");
    // Not a layout at all.
    let e = OciSource::open_layout(tmp.path()).map(|_| ()).unwrap_err();
    assert!(matches!(e, SourceError::NotALayout { .. }), "{e}");
}

/// The real corpus: every image of every compression, every layer read through
/// `open_layer` (digest, size and diff_id verified).
#[test]
fn corpus_layouts() {
    let root = Path::new("/work/corpus/oci");
    if !root.is_dir() {
        println!("skipping: {} is absent", root.display());
        return;
    }
    for kind in ["gzip", "zstd", "zstd-chunked", "uncompressed"] {
        let dir = root.join(kind);
        if !dir.is_dir() {
            println!("skipping {kind}: absent");
            continue;
        }
        let src = OciSource::open_layout(&dir).unwrap();
        for t in ["min", "py", "dev", "py-slim"] {
            let img = src
                .resolve(Some(&tag(t)), None)
                .unwrap_or_else(|e| panic!("{kind}:{t}: {e}"));
            assert!(!img.layers.is_empty());
            for l in &img.layers {
                let start = std::time::Instant::now();
                let n = src
                    .open_layer(l)
                    .unwrap()
                    .finish()
                    .unwrap_or_else(|e| panic!("{kind}:{t}: {e}"));
                println!(
                    "{kind}:{t} {} {:?} {} -> {} bytes in {:?}",
                    &l.digest[..19],
                    l.compression,
                    l.size,
                    n,
                    start.elapsed()
                );
            }
        }
    }
}

/// skopeo (containers/image) reads what `write_layout` writes: same manifest digest, and it
/// can copy the image (verifying every blob) into an oci-archive that we read back.
#[test]
fn skopeo_reads_written_layout() {
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipping: skopeo not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let tars = [make_tar(14), make_tar(15)];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = config_for(&diff_ids, "amd64");
    for (t, c) in [("z", Compression::Zstd), ("g", Compression::Gzip)] {
        let layers = diff_ids
            .iter()
            .cloned()
            .zip(tars.iter().map(|t| Cursor::new(t.clone())))
            .collect();
        let md = write_layout(&dir, t, &config, layers, c).unwrap();
        let out = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:{t}", dir.display())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], md);
        let archive = tmp.path().join(format!("{t}.tar"));
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--preserve-digests",
                &format!("oci:{}:{t}", dir.display()),
                &format!("oci-archive:{}:{t}", archive.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let src = OciSource::open_archive(&archive).unwrap();
        let img = src.resolve(Some(&tag(t)), None).unwrap();
        assert_eq!(img.manifest_digest, md);
        for (l, want) in img.layers.iter().zip(&tars) {
            assert_eq!(read_layer(&src, l).unwrap(), *want);
        }
    }
}
