//! The zstd:chunked test world shared by the partial-pull tests: images whose layers
//! share files (`a` with two layers, `s` its squash, `b` its rebuilt base), pushed by
//! skopeo to a real docker-registry behind the counting fault proxy, and the blobs' TOCs
//! parsed here (independently of strata) to know which bytes hold which file.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::registry::{curl, pseudo_random, sha256_digest, skopeo_copy, FaultProxy, Registry};
use super::sandbox::Sandbox as Env;
use serde_json::Value;

/// Missing tools make these tests skip, saying so (tools/setup installs them).
pub fn skip() -> bool {
    super::registry::missing_tools(&["docker-registry", "skopeo", "curl"])
}

// ---------------------------------------------------------------------------
// Test images
// ---------------------------------------------------------------------------

/// Regular files of a layer: path → contents.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The file `b` changes.
pub const CHANGED: &str = "d03/f0103.bin";
/// The file layer 2 of `a` overwrites.
pub const OVERWRITTEN: &str = "d00/f0000.bin";
pub const MTIME: u64 = 1_700_000_000;

/// 300 pseudo-random files of 1-64 KiB in ten directories, four of at most 64 bytes and
/// an empty one.
pub fn base_files(salt: &str) -> Files {
    let mut f = Files::new();
    for i in 0..300u32 {
        let path = format!("d{:02}/f{i:04}.bin", i % 10);
        let seed = format!("{salt}/{path}");
        let h = sha2::Sha256::digest(seed.as_bytes());
        let size = 1024 + (u32::from_le_bytes(h[..4].try_into().unwrap()) % (63 * 1024)) as usize;
        f.insert(path, pseudo_random(&seed, size));
    }
    for i in 0..4 {
        f.insert(
            format!("etc/small-{i}.txt"),
            format!("small file {i} of {salt}\n").into_bytes(),
        );
    }
    f.insert("etc/empty".into(), Vec::new());
    f
}

use sha2::Digest as _;

/// Layer 2 of `a`: 40 more files, a small one, and a new `OVERWRITTEN`.
pub fn upper_files(salt: &str) -> Files {
    let mut f = Files::new();
    for i in 0..40u32 {
        let path = format!("e{:02}/g{i:04}.bin", i % 4);
        let seed = format!("{salt}/upper/{path}");
        f.insert(path, pseudo_random(&seed, 2048 + 1500 * i as usize));
    }
    f.insert("etc/upper.txt".into(), b"from layer 2\n".to_vec());
    f.insert(
        OVERWRITTEN.into(),
        pseudo_random(&format!("{salt}/overwritten"), 20_000),
    );
    f
}

/// A tar of `files` (sorted, each directory before its first file), every entry with
/// `mtime`.
pub fn tar_of(files: &Files, mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs_done = std::collections::BTreeSet::new();
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    for (path, data) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if dirs_done.insert(dir.to_string()) {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, format!("{dir}/"), std::io::empty())
                    .unwrap();
            }
        }
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes a blob into an OCI layout; its digest.
pub fn blob(dir: &Path, data: &[u8]) -> String {
    let d = sha256_digest(data);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

/// An OCI layout with one linux/amd64 image per `(tag, layer tars)`.
pub fn write_layout(dir: &Path, images: &[(&str, &[&[u8]])]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut index = Vec::new();
    for (tag, layers) in images {
        let diff_ids: Vec<String> = layers.iter().map(|l| blob(dir, l)).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"strata.test.image": tag}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "strata partial test"})).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(dir, &config),
                "size": config.len(),
            },
            "layers": layers.iter().zip(&diff_ids).map(|(l, d)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d,
                "size": l.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(dir, &manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index,
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The three images' layer tars.
pub struct Tars {
    pub a1: Vec<u8>,
    pub a2: Vec<u8>,
    pub s: Vec<u8>,
    pub b: Vec<u8>,
    /// `b`'s version of `CHANGED`.
    pub changed: Vec<u8>,
}

pub fn make_tars(salt: &str) -> Tars {
    let base = base_files(salt);
    let upper = upper_files(salt);
    let mut merged = base.clone();
    merged.extend(upper.clone());
    let mut rebuilt = base.clone();
    let changed = pseudo_random(&format!("{salt}/changed"), base[CHANGED].len());
    rebuilt.insert(CHANGED.into(), changed.clone());
    Tars {
        a1: tar_of(&base, MTIME),
        a2: tar_of(&upper, MTIME),
        s: tar_of(&merged, MTIME),
        b: tar_of(&rebuilt, MTIME + 86_400),
        changed,
    }
}

// ---------------------------------------------------------------------------
// The registry side
// ---------------------------------------------------------------------------

/// The manifest a registry serves for `repo:tag`.
pub fn remote_manifest(host: &str, repo: &str, tag: &str) -> Value {
    let r = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
    ]);
    assert_eq!(r.status, 200, "manifest {repo}:{tag}: {}", r.stderr);
    serde_json::from_slice(&r.body).unwrap()
}

/// One non-empty regular file of a zstd:chunked TOC: its compressed bytes in the blob.
#[derive(Clone, Debug)]
pub struct TocFile {
    pub name: String,
    pub size: u64,
    pub start: u64,
    pub end: u64,
}

/// A layer blob as the registry holds it, with its TOC parsed here.
#[derive(Clone, Debug)]
pub struct Remote {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The compressed TOC: (offset, length) in the blob.
    pub toc: (u64, u64),
    pub files: Vec<TocFile>,
}

impl Remote {
    /// Bytes between the files' frames, up to the TOC's skippable frame: the tar headers
    /// and padding a pull without tar-split has to fetch.
    pub fn header_frames(&self) -> u64 {
        let payload: u64 = self.files.iter().map(|f| f.end - f.start).sum();
        (self.toc.0 - 8) - payload
    }

    /// Compressed bytes of files smaller than a range bridge (fetched with the headers
    /// around them).
    pub fn tiny_payloads(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.end - f.start <= 512)
            .map(|f| f.end - f.start)
            .sum()
    }

    pub fn file(&self, name: &str) -> &TocFile {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not in the TOC"))
    }
}

/// The only layer of `repo:tag`, or all of them, with their TOCs (zstd:chunked).
pub fn remote_layers(reg: &Registry, repo: &str, tag: &str) -> Vec<Remote> {
    let m = remote_manifest(&reg.host(), repo, tag);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().to_string();
            let size = l["size"].as_u64().unwrap();
            let media_type = l["mediaType"].as_str().unwrap().to_string();
            let ann = &l["annotations"];
            let Some(pos) = ann["io.containers.zstd-chunked.manifest-position"].as_str() else {
                return Remote {
                    digest,
                    size,
                    media_type,
                    toc: (0, 0),
                    files: Vec::new(),
                };
            };
            let p: Vec<u64> = pos.split(':').map(|x| x.parse().unwrap()).collect();
            let r = curl(&[&format!("http://{}/v2/{repo}/blobs/{digest}", reg.host())]);
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len() as u64, size);
            let compressed = &r.body[p[0] as usize..(p[0] + p[1]) as usize];
            assert_eq!(
                Some(sha256_digest(compressed).as_str()),
                ann["io.containers.zstd-chunked.manifest-checksum"].as_str(),
                "the TOC as located here is the one the annotation names"
            );
            let toc: Value =
                serde_json::from_slice(&zstd::decode_all(compressed).unwrap()).unwrap();
            let mut files: Vec<TocFile> = Vec::new();
            for e in toc["entries"].as_array().unwrap() {
                let name = e["name"].as_str().unwrap_or("").to_string();
                let start = e["offset"].as_u64().unwrap_or(0);
                let end = e["endOffset"].as_u64().unwrap_or(0);
                match e["type"].as_str().unwrap_or("") {
                    // Empty files have no contents to fetch or reuse.
                    "reg" if e["size"].as_u64().unwrap_or(0) == 0 => {}
                    "reg" => files.push(TocFile {
                        name,
                        size: e["size"].as_u64().unwrap_or(0),
                        start,
                        end,
                    }),
                    "chunk" => {
                        let f = files.last_mut().expect("a chunk after its file");
                        assert_eq!(f.name, name, "chunk of {name} after its file");
                        f.end = f.end.max(end);
                    }
                    _ => {}
                }
            }
            Remote {
                digest,
                size,
                media_type,
                toc: (p[0], p[1]),
                files,
            }
        })
        .collect()
}

/// A registry holding `a`, `s`, `b` (zstd:chunked, by skopeo) behind a fault proxy.
pub struct World {
    pub env: Env,
    pub reg: Registry,
    pub proxy: FaultProxy,
    pub layout: PathBuf,
    pub tars: Tars,
}

pub fn world(salt: &str) -> World {
    let env = Env::new();
    let tars = make_tars(salt);
    let layout = env.path().join("layout");
    write_layout(
        &layout,
        &[
            ("a", &[&tars.a1, &tars.a2]),
            ("s", &[&tars.s]),
            ("b", &[&tars.b]),
        ],
    );
    let reg = Registry::plain();
    for tag in ["a", "s", "b"] {
        push(&reg, &layout, tag, "zstd:chunked");
    }
    let proxy = FaultProxy::start(&reg.host());
    World {
        env,
        reg,
        proxy,
        layout,
        tars,
    }
}

/// skopeo copy of the layout's `tag` to `t/TAG:v1`.
pub fn push(reg: &Registry, layout: &Path, tag: &str, format: &str) {
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &reg.docker_ref(&format!("t/{tag}:v1")),
        &[
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            format,
        ],
    );
}

impl World {
    /// `docker://PROXY/t/TAG:v1`
    pub fn src(&self, tag: &str) -> String {
        format!("docker://{}/t/{tag}:v1", self.proxy.host())
    }

    /// `docker://REGISTRY/t/TAG:v1` (not counted by the proxy)
    pub fn direct(&self, tag: &str) -> String {
        self.reg.docker_ref(&format!("t/{tag}:v1"))
    }

    pub fn repo(&self, name: &str) -> PathBuf {
        self.env.path().join(name)
    }

    /// The only layer of `tag`.
    pub fn layer(&self, tag: &str) -> Remote {
        let mut l = remote_layers(&self.reg, &format!("t/{tag}"), "v1");
        assert_eq!(l.len(), 1, "{tag} has one layer");
        l.remove(0)
    }

    /// A fresh repository with `a` pulled (directly, fully).
    pub fn repo_with_a(&self, name: &str) -> PathBuf {
        let repo = self.repo(name);
        let v = self.env.pull(&repo, &self.direct("a"), &["a", "--full"]);
        assert!(arr(&v, "partial").is_empty(), "{v}");
        repo
    }

    /// The image id of `pull --full` of `tag` into a fresh repository, and that repository.
    pub fn full_pull(&self, tag: &str) -> (String, PathBuf) {
        let repo = self.repo(&format!("full-{tag}"));
        let v = self.env.pull(&repo, &self.direct(tag), &[tag, "--full"]);
        (image_id(&v), repo)
    }

    /// The image id of `pull oci:` of the layout's `tag`.
    pub fn layout_id(&self, tag: &str) -> String {
        let repo = self.repo(&format!("layout-{tag}"));
        let src = format!("oci:{}:{tag}", self.layout.display());
        image_id(&self.env.pull(&repo, &src, &[tag]))
    }
}

pub fn image_id(v: &Value) -> String {
    v["image_id"].as_str().unwrap().to_string()
}

pub fn fsck_clean(env: &Env, repo: &Path) {
    let v: Value = serde_json::from_slice(&env.ok(repo, &["--json", "fsck"])).unwrap();
    let problems = v["problems"].as_array().map_or(0, |p| p.len());
    assert_eq!(problems, 0, "fsck: {v}");
}

/// `layer cat` of every layer of `name`, in order.
pub fn layer_tars(env: &Env, repo: &Path, name: &str) -> Vec<Vec<u8>> {
    let info: Value = serde_json::from_slice(&env.ok(repo, &["--json", "inspect", name])).unwrap();
    info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let diff_id = l["diff_id"].as_str().unwrap();
            let tar = env.ok(repo, &["layer", "cat", diff_id]);
            assert_eq!(sha256_digest(&tar), diff_id, "layer cat of {diff_id}");
            tar
        })
        .collect()
}

/// A report's array (absent when empty).
pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    match &v[key] {
        Value::Null => &[],
        a => a.as_array().unwrap_or_else(|| panic!("{key}: {a}")),
    }
}

/// The only partial layer of a report.
pub fn only_partial(v: &Value) -> &Value {
    let p = arr(v, "partial");
    assert_eq!(p.len(), 1, "one partial layer: {v:#}");
    &p[0]
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Range requests and their ranges for a blob, as the proxy saw them.
pub fn ranges_for(proxy: &FaultProxy, digest: &str) -> Vec<(u64, u64)> {
    proxy
        .matching("GET", digest)
        .iter()
        .filter(|r| r.status == 206)
        .filter_map(|r| r.range.clone())
        .flat_map(|r| {
            r.trim_start_matches("bytes=")
                .split(',')
                .map(|p| {
                    let (a, b) = p.trim().split_once('-').unwrap();
                    (a.parse().unwrap(), b.parse().unwrap())
                })
                .collect::<Vec<(u64, u64)>>()
        })
        .collect()
}

/// Per-part overhead of a `multipart/byteranges` answer (boundary, two headers).
pub const PART_OVERHEAD: u64 = 200;
