//! OCI layouts of test images.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// OCI layouts
// ---------------------------------------------------------------------------

/// An OS/architecture/variant triple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    pub fn arm64_v8() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"os": self.os, "architecture": self.arch});
        if let Some(var) = &self.variant {
            v["variant"] = var.clone().into();
        }
        v
    }
}

/// An image to put into a test layout: one platform → an image manifest
/// tagged `tag`; several → an image index tagged `tag`.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub tag: String,
    pub platforms: Vec<Platform>,
    /// Mixed into every file so that images differ.
    pub salt: String,
    /// Size of `usr/bin/big.bin` (default 256 KiB of pseudo-random bytes).
    pub big_size: usize,
}

impl TestImage {
    /// A linux/amd64 image.
    pub fn single(tag: &str) -> TestImage {
        TestImage {
            tag: tag.into(),
            platforms: vec![Platform::amd64()],
            salt: tag.into(),
            big_size: 256 * 1024,
        }
    }

    /// An index with linux/amd64 and linux/arm64/v8 images.
    pub fn multi(tag: &str) -> TestImage {
        TestImage {
            platforms: vec![Platform::amd64(), Platform::arm64_v8()],
            ..TestImage::single(tag)
        }
    }

    pub fn salt(mut self, salt: &str) -> TestImage {
        self.salt = salt.into();
        self
    }

    pub fn big_size(mut self, n: usize) -> TestImage {
        self.big_size = n;
        self
    }
}

/// A layer as written: uncompressed tar, so `digest` is also the diff_id.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub digest: String,
    pub tar: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct BuiltManifest {
    pub platform: Platform,
    pub digest: String,
    pub size: u64,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    /// Expected files: path → content (regular files of the final tree).
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub tag: String,
    /// Digest of what the tag points at (manifest or index).
    pub digest: String,
    pub media_type: String,
    pub manifests: Vec<BuiltManifest>,
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: &str, n: usize) -> Vec<u8> {
    let mut x = u64::from_le_bytes(Sha256::digest(seed.as_bytes())[..8].try_into().unwrap()) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

pub(crate) fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let p = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::write(p, data).unwrap();
    digest
}

pub(crate) enum TarEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

pub(crate) fn build_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            TarEntry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            TarEntry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            TarEntry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The two layer tars of `img` on `p` (see `make_layout`) and the regular files of the
/// final tree (path → content).
pub fn test_layer_tars(img: &TestImage, p: &Platform) -> (Vec<Vec<u8>>, BTreeMap<String, Vec<u8>>) {
    let plat = format!(
        "{}/{}{}",
        p.os,
        p.arch,
        p.variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default()
    );
    let small = format!("small {} {plat}\n", img.salt).into_bytes(); // ≤ 64 bytes
    assert!(small.len() <= 64, "salt too long for the small file");
    let tool = format!(
        "#!/bin/sh\n# tool for {} on {plat}\n{}\n",
        img.salt,
        "echo hello; ".repeat(8)
    )
    .into_bytes(); // > 64 bytes
    let big = pseudo_random(&format!("{}/{plat}", img.salt), img.big_size);
    let gone = b"this file is deleted by a whiteout in layer 2\n".to_vec();
    let added = format!("added in layer 2 for {plat}\n").into_bytes();
    let layer1 = build_tar(&[
        TarEntry::Dir("etc/"),
        TarEntry::File("etc/small.txt", &small, 0o644),
        TarEntry::File("etc/remove-me", &gone, 0o644),
        TarEntry::Dir("usr/"),
        TarEntry::Dir("usr/bin/"),
        TarEntry::File("usr/bin/tool", &tool, 0o755),
        TarEntry::File("usr/bin/big.bin", &big, 0o644),
        TarEntry::Symlink("usr/bin/tool-link", "tool"),
        TarEntry::Dir("var/"),
        TarEntry::Dir("var/empty/"),
    ]);
    let layer2 = build_tar(&[
        TarEntry::Dir("etc/"),
        TarEntry::File("etc/.wh.remove-me", b"", 0o644),
        TarEntry::File("etc/added.txt", &added, 0o644),
    ]);
    let files = [
        ("etc/small.txt", small),
        ("etc/added.txt", added),
        ("usr/bin/tool", tool),
        ("usr/bin/big.bin", big),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (vec![layer1, layer2], files)
}

/// The image config of `img` on `p` with these diff_ids.
pub(crate) fn test_config(img: &TestImage, p: &Platform, diff_ids: &[String]) -> Vec<u8> {
    let mut config = p.json();
    config["created"] = "2024-01-01T00:00:00Z".into();
    config["config"] = serde_json::json!({
        "Env": ["PATH=/usr/bin:/bin"],
        "Cmd": ["/usr/bin/tool"],
        "Labels": {"strata.test.salt": img.salt},
    });
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": diff_ids,
    });
    config["history"] = serde_json::json!([
        {"created": "2024-01-01T00:00:00Z", "created_by": "strata test layer 1"},
        {"created": "2024-01-01T00:00:00Z", "created_by": "strata test layer 2"},
    ]);
    serde_json::to_vec(&config).unwrap()
}

pub(crate) fn build_manifest(dir: &Path, img: &TestImage, p: &Platform) -> BuiltManifest {
    let (tars, files) = test_layer_tars(img, p);
    let layers: Vec<BuiltLayer> = tars
        .into_iter()
        .map(|tar| BuiltLayer {
            digest: write_blob(dir, &tar),
            tar,
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    let config = test_config(img, p, &diff_ids);
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.digest,
            "size": l.tar.len(),
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = write_blob(dir, &manifest);
    BuiltManifest {
        platform: p.clone(),
        digest,
        size: manifest.len() as u64,
        config_digest,
        layers,
        files,
    }
}

/// Writes an OCI image layout with `images` into `dir` (created if needed).
/// Layers are uncompressed tars: layer 1 has dirs, a ≤64-byte and >64-byte
/// files, a 256 KiB file and a symlink; layer 2 whites out `etc/remove-me`
/// and adds `etc/added.txt`.
pub fn make_layout(dir: &Path, images: &[TestImage]) -> Vec<BuiltImage> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut built = Vec::new();
    let mut index_entries = Vec::new();
    for img in images {
        let manifests: Vec<BuiltManifest> = img
            .platforms
            .iter()
            .map(|p| build_manifest(dir, img, p))
            .collect();
        let ann = serde_json::json!({"org.opencontainers.image.ref.name": img.tag});
        let (digest, size, media_type) = if manifests.len() == 1 {
            let m = &manifests[0];
            (
                m.digest.clone(),
                m.size,
                "application/vnd.oci.image.manifest.v1+json",
            )
        } else {
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests.iter().map(|m| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": m.digest,
                    "size": m.size,
                    "platform": m.platform.json(),
                })).collect::<Vec<_>>(),
            });
            let index = serde_json::to_vec(&index).unwrap();
            (
                write_blob(dir, &index),
                index.len() as u64,
                "application/vnd.oci.image.index.v1+json",
            )
        };
        index_entries.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": ann,
        }));
        built.push(BuiltImage {
            tag: img.tag.clone(),
            digest,
            media_type: media_type.into(),
            manifests,
        });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_entries,
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    built
}
