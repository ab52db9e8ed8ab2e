//! Self-tests of the partial-pull test writers (tests/common/registry/writers.rs): Debian
//! 13's skopeo writes the newer zstd:chunked form, the stargz-snapshotter library writes
//! eStargz, and both survive a push to the test registry with the layout the partial-pull
//! code relies on. The blobs are taken apart here with zstd, flate2 and tar (not with
//! strata), so these tests also pin the format facts: where each offset points, what each
//! digest covers.

mod common;

use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use common::registry::*;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn get_json(host: &str, target: &str) -> serde_json::Value {
    let r = http_request(host, "GET", target, &[("Accept", ACCEPT)], b"").unwrap();
    assert_eq!(r.status, 200, "GET {target}");
    serde_json::from_slice(&r.body).unwrap()
}

fn get_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = http_request(host, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "GET blob {digest}");
    assert_eq!(sha256_digest(&r.body), digest);
    r.body
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap())
}

/// `a:b:c[:d]` → numbers.
fn position(s: &str) -> Vec<u64> {
    s.split(':').map(|n| n.parse().unwrap()).collect()
}

/// Regular files of a tar: name → content.
fn tar_files(tar: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// The skippable frame whose payload starts at `offset` and is `len` bytes long.
fn assert_in_skippable_frame(blob: &[u8], offset: u64, len: u64, what: &str) {
    let o = offset as usize;
    assert!(o >= 8, "{what} at {offset}");
    let magic = u32::from_le_bytes(blob[o - 8..o - 4].try_into().unwrap());
    let size = u32::from_le_bytes(blob[o - 4..o].try_into().unwrap());
    assert_eq!(
        magic, SKIPPABLE_MAGIC,
        "{what}: skippable frame magic before it"
    );
    assert_eq!(size as u64, len, "{what}: skippable frame size");
}

#[test]
fn skopeo_v2_writes_zstd_chunked_with_tar_split() {
    let Some(()) = skopeo_v2_ready() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::single("v2").big_size(3 << 20);
    let built = make_chunked_layout(tmp.path(), std::slice::from_ref(&img), ChunkedForm::V2);
    let want = &built[0].manifests[0];
    let reg = Registry::plain();
    let host = reg.host();
    // the layout's blobs go to the registry as they are (no recompression)
    skopeo_v2_copy(
        &oci_ref(tmp.path(), "v2"),
        &reg.docker_ref("test/v2:latest"),
        &["--dest-tls-verify=false", "--preserve-digests"],
    );
    let m = get_json(&host, "/v2/test/v2/manifests/latest");
    assert_eq!(m["config"]["digest"], want.config_digest.as_str());
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (l, w) in layers.iter().zip(&want.layers) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let a = &l["annotations"];
        let ann = |k: &str| {
            a[format!("io.github.containers.zstd-chunked.{k}")]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} annotation: {l}"))
                .to_string()
        };
        assert!(
            a.get("io.containers.zstd-chunked.manifest-position")
                .is_none(),
            "{l}"
        );
        let blob = get_blob(&host, "test/v2", l["digest"].as_str().unwrap());

        // footer: the last 72 bytes are a skippable frame of 64: seven LE u64 and a magic
        let f = &blob[blob.len() - 72..];
        assert_eq!(
            u32::from_le_bytes(f[..4].try_into().unwrap()),
            SKIPPABLE_MAGIC
        );
        assert_eq!(u32::from_le_bytes(f[4..8].try_into().unwrap()), 64);
        let f = &f[8..];
        let fields: Vec<u64> = (0..7).map(|i| le64(&f[i * 8..i * 8 + 8])).collect();
        assert_eq!(&f[56..], b"GNUlInUx");
        let mpos = position(&ann("manifest-position"));
        let tpos = position(&ann("tarsplit-position"));
        assert_eq!(mpos.len(), 4);
        assert_eq!(tpos.len(), 3);
        assert_eq!(fields[..4], mpos[..], "footer = manifest-position");
        assert_eq!(fields[4..], tpos[..], "footer = tarsplit-position");
        assert_eq!(mpos[3], 1, "manifest type");

        // TOC: a zstd frame in a skippable frame; manifest-checksum = sha256 of its bytes
        let (o, n) = (mpos[0] as usize, mpos[1] as usize);
        assert_in_skippable_frame(&blob, mpos[0], mpos[1], "TOC");
        assert_eq!(sha256_digest(&blob[o..o + n]), ann("manifest-checksum"));
        let toc_json = zstd::decode_all(&blob[o..o + n]).unwrap();
        assert_eq!(toc_json.len() as u64, mpos[2]);
        let toc: serde_json::Value = serde_json::from_slice(&toc_json).unwrap();
        assert_eq!(toc["version"], 1);

        // tar-split: the same, right after the TOC; tarSplitDigest = sha256 of its bytes
        let (to, tn) = (tpos[0] as usize, tpos[1] as usize);
        assert_in_skippable_frame(&blob, tpos[0], tpos[1], "tar-split");
        assert_eq!(to, o + n + 8, "tar-split follows the TOC's frame");
        assert_eq!(
            to + tn + 72,
            blob.len(),
            "footer follows the tar-split's frame"
        );
        assert_eq!(
            toc["tarSplitDigest"].as_str().unwrap(),
            sha256_digest(&blob[to..to + tn])
        );
        let ts = zstd::decode_all(&blob[to..to + tn]).unwrap();
        assert_eq!(ts.len() as u64, tpos[2]);

        // tar-split + file contents = the layer's tar, byte for byte
        let contents = tar_files(&w.tar);
        let mut tar = Vec::new();
        let mut files = 0;
        for (i, line) in ts
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let e: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(e["position"], i, "{e}");
            let b64 = |v: &serde_json::Value| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or(""))
                    .unwrap()
            };
            match e["type"].as_u64() {
                Some(2) => tar.extend(b64(&e["payload"])),
                Some(1) => {
                    let size = e["size"].as_u64().unwrap_or(0);
                    if size > 0 {
                        let c = &contents[e["name"].as_str().unwrap()];
                        assert_eq!(c.len() as u64, size);
                        assert_eq!(b64(&e["payload"]).len(), 8, "crc64: {e}");
                        tar.extend(c);
                        files += 1;
                    }
                }
                _ => panic!("tar-split entry {e}"),
            }
        }
        assert_eq!(files, contents.values().filter(|c| !c.is_empty()).count());
        assert_eq!(sha256_digest(&tar), w.digest, "tar-split replay = diff_id");

        // every non-empty file: its frames [offset, endOffset) hold exactly its content,
        // and the bytes between (headers, padding) are whole zstd frames of their own
        let mut end = 0usize;
        let mut between = Vec::new();
        for e in toc["entries"].as_array().unwrap() {
            if e["type"] != "reg" || e["size"].as_u64().unwrap_or(0) == 0 {
                continue;
            }
            let (s, t) = (
                e["offset"].as_u64().unwrap() as usize,
                e["endOffset"].as_u64().unwrap() as usize,
            );
            let name = e["name"].as_str().unwrap();
            assert_eq!(
                zstd::decode_all(&blob[s..t]).unwrap(),
                contents[name],
                "{name}"
            );
            between.extend(zstd::decode_all(&blob[end..s]).unwrap());
            end = t;
        }
        between.extend(zstd::decode_all(&blob[end..o - 8]).unwrap());
        let payload: usize = contents.values().map(Vec::len).sum();
        assert_eq!(between.len() + payload, w.tar.len());
        if w.tar.len() > 1 << 20 {
            let chunks = toc["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "chunk")
                .count();
            assert!(chunks > 0, "a 3 MiB file is cut into chunks");
        }
    }
}

#[test]
fn estargz_layout_pushes_and_keeps_its_footer_and_toc() {
    let Some(()) = estargz_ready() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // 1 MiB chunks: the 3 MiB file gets chunk entries
    let img = TestImage::single("esgz").big_size(3 << 20);
    let built = make_estargz_layout(&src, &img, &["-chunk-size", "1048576"]);
    let reg = Registry::plain();
    let host = reg.host();
    skopeo_copy(
        &oci_ref(&src, "esgz"),
        &reg.docker_ref("test/esgz:latest"),
        &["--dest-tls-verify=false"],
    );
    let m = get_json(&host, "/v2/test/esgz/manifests/latest");
    assert_eq!(m["config"]["digest"], built.config_digest.as_str());
    let config = get_blob(&host, "test/esgz", &built.config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    for (i, (l, w)) in m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&built.layers)
        .enumerate()
    {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(l["digest"], w.digest.as_str(), "skopeo kept the blob");
        assert_eq!(l["annotations"][ESTARGZ_TOC_DIGEST], w.toc_digest.as_str());
        assert_eq!(
            l["annotations"][ESTARGZ_UNCOMPRESSED_SIZE],
            w.tar.len().to_string().as_str()
        );
        assert_eq!(config["rootfs"]["diff_ids"][i], w.diff_id.as_str());
        let blob = get_blob(&host, "test/esgz", &w.digest);

        // footer: an empty gzip member whose extra field is "%016x" TOC offset + "STARGZ"
        let f = &blob[blob.len() - 51..];
        assert_eq!(f[..4], [0x1f, 0x8b, 8, 4], "gzip, deflate, FEXTRA");
        assert_eq!(u16::from_le_bytes([f[10], f[11]]), 26, "XLEN");
        assert_eq!(&f[12..14], b"SG");
        assert_eq!(u16::from_le_bytes([f[14], f[15]]), 22);
        assert_eq!(&f[32..38], b"STARGZ");
        let toc_off = u64::from_str_radix(std::str::from_utf8(&f[16..32]).unwrap(), 16).unwrap();
        assert_eq!(f[38..], [1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);

        // TOC: one gzip member at the offset, a tar entry stargz.index.json (and the tar's
        // end), so it is part of the diff_id; toc.digest = sha256 of the JSON
        let mut toc_tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[toc_off as usize..blob.len() - 51])
            .read_to_end(&mut toc_tar)
            .unwrap();
        assert!(w.tar.ends_with(&toc_tar));
        let toc_json = &tar_files(&toc_tar)["stargz.index.json"];
        assert_eq!(sha256_digest(toc_json), w.toc_digest);
        let toc: serde_json::Value = serde_json::from_slice(toc_json).unwrap();
        assert_eq!(toc["version"], 1);

        // each non-empty file's content starts a gzip member at its TOC offset; its header
        // ends the member before (with the previous file's tail and padding)
        let contents = tar_files(&w.tar);
        assert_eq!(contents[".no.prefetch.landmark"], [0x0f]);
        let entries = toc["entries"].as_array().unwrap();
        let mut chunks = 0;
        for e in entries
            .iter()
            .filter(|e| e["type"] == "reg" || e["type"] == "chunk")
        {
            chunks += (e["type"] == "chunk") as usize;
            let Some(off) = e["offset"].as_u64() else {
                continue; // empty file
            };
            let name = e["name"].as_str().unwrap();
            let start = e["chunkOffset"].as_u64().unwrap_or(0) as usize;
            let mut member = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&blob[off as usize..]);
            d.read_to_end(&mut member).unwrap();
            let c = &contents[name][start..];
            let n = c.len().min(member.len());
            assert_eq!(member[..n], c[..n], "{name} at {off}+{start}");
        }
        if i == 0 {
            assert!(chunks > 0, "1 MiB chunks of a 3 MiB file");
        }
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, w.tar);
    }
    // the final tree's files are the make_layout image's
    assert_eq!(built.files.len(), 4);
}
