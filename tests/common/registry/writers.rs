//! Independent writers of partial-pull formats, for tests: Debian 13's skopeo (the newer
//! zstd:chunked form, with a tar-split and `io.github.containers.zstd-chunked.*`
//! annotations; this machine's Debian 12 skopeo writes the older form) run from a cached
//! trixie chroot by `tests/tools/skopeo-trixie.sh`, and the stargz-snapshotter library's
//! `estargz.Build` (the writer behind ctr-remote and nerdctl) built from Debian's Go
//! packages by `tests/tools/estargz.sh`.
//!
//! Both are made once per machine and cached (`/var/cache/strata-tests`, or
//! `$STRATA_TEST_CACHE`): the chroot in about 80 s, the Go binary in about 4 s; `tests/run`
//! prepares both before `cargo test`, so tests only wait when run on their own. They skip
//! (the `*_skip_reason` functions say why) only where the writer cannot work at all: not
//! root, or the Debian packages that `tools/setup` installs are missing. A failing build
//! (a mirror that does not answer) fails the test with the script's message.
#![allow(dead_code)]

use super::*;

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(name)
}

fn installed(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `script --prepare` once per test process; panics with its stderr if it fails.
fn prepare(script: &Path, done: &'static OnceLock<()>) {
    done.get_or_init(|| {
        let t = Instant::now();
        let out = Command::new(script).arg("--prepare").output().unwrap();
        assert!(
            out.status.success(),
            "{} --prepare failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{} ready in {:.2?}", script.display(), t.elapsed());
    });
}

// ---------------------------------------------------------------------------
// zstd:chunked, newer form: Debian 13's skopeo
// ---------------------------------------------------------------------------

/// Why Debian 13's skopeo cannot run here, if it cannot: chroot and debootstrap need root
/// and debootstrap.
pub fn skopeo_v2_skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("Debian 13's skopeo runs in a chroot: needs root".into());
    }
    if !installed("debootstrap") {
        return Some("debootstrap not installed (tools/setup installs it)".into());
    }
    None
}

/// Makes the trixie chroot if missing (once per process); `None` (and a message) if it
/// cannot be made here. Tests: `let Some(()) = skopeo_v2_ready() else { return };`.
pub fn skopeo_v2_ready() -> Option<()> {
    if let Some(why) = skopeo_v2_skip_reason() {
        eprintln!("skipping: {why}");
        return None;
    }
    static DONE: OnceLock<()> = OnceLock::new();
    prepare(&tool("skopeo-trixie.sh"), &DONE);
    Some(())
}

/// The deepest directory holding every absolute path named by `args` (`oci:/p:tag`,
/// `oci-archive:/p`, `dir:/p`, `/p`): what the chroot sees at /work.
fn common_dir(args: &[&str]) -> PathBuf {
    let mut paths = args.iter().filter_map(|a| {
        let p = ["oci:", "oci-archive:", "dir:"]
            .iter()
            .find_map(|t| a.strip_prefix(t))
            .unwrap_or(a);
        let p = p.split(':').next().unwrap();
        p.starts_with('/').then(|| Path::new(p).to_path_buf())
    });
    let Some(first) = paths.next() else {
        return std::env::temp_dir();
    };
    // an existing directory (a source layout) is itself the candidate; a destination that
    // does not exist yet is made in its parent
    let dir_of = |p: PathBuf| {
        if p.is_dir() {
            p
        } else {
            p.parent().unwrap().to_path_buf()
        }
    };
    let paths = paths.map(dir_of);
    let mut common = dir_of(first);
    for p in paths {
        while !p.starts_with(&common) {
            common = common.parent().unwrap().to_path_buf();
        }
    }
    assert!(
        common != Path::new("/"),
        "skopeo_v2: {args:?} share no directory below / (put them under one temp dir)"
    );
    common
}

/// `skopeo copy [extra…] SRC DST` with Debian 13's skopeo (1.18), whatever happened.
/// Local paths (`oci:/…`) must share a directory below `/`: it is bind-mounted into the
/// chroot. Call `skopeo_v2_ready` first.
pub fn skopeo_v2_copy_output(src: &str, dst: &str, extra: &[&str]) -> Output {
    let mut all: Vec<&str> = extra.to_vec();
    all.extend([src, dst]);
    let work = common_dir(&all);
    let mut c = Command::new(tool("skopeo-trixie.sh"));
    c.args(["--command-timeout", "90s", "copy", "--retry-times", "0"])
        .args(extra)
        .args([src, dst])
        .env("STRATA_SKOPEO_WORKDIR", &work);
    let t = Instant::now();
    let out = run_with_timeout(c, Duration::from_secs(100));
    eprintln!(
        "skopeo 1.18 copy {extra:?} {src} {dst}: {} in {:.2?}",
        out.status,
        t.elapsed()
    );
    out
}

/// `skopeo copy` with Debian 13's skopeo, asserting success; returns stderr+stdout.
pub fn skopeo_v2_copy(src: &str, dst: &str, extra: &[&str]) -> String {
    let out = skopeo_v2_copy_output(src, dst, extra);
    copied(out, &format!("skopeo 1.18 copy {extra:?} {src} {dst}"))
}

/// Which zstd:chunked writer: the older form (this machine's skopeo 1.9) or the newer
/// one (Debian 13's skopeo 1.18, with tar-split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedForm {
    V1,
    V2,
}

/// `make_layout(dir/plain, images)`, then every tag copied into the layout `dir` with
/// `--dest-compress-format zstd:chunked` by the writer of `form`. Same configs and
/// diff_ids as the plain images (`BuiltImage::digest` and the manifest digests are the
/// plain layout's; read `dir/index.json` for the chunked ones). Call `skopeo_v2_ready`
/// first for `V2`.
pub fn make_chunked_layout(dir: &Path, images: &[TestImage], form: ChunkedForm) -> Vec<BuiltImage> {
    let plain = dir.join("plain");
    let built = make_layout(&plain, images);
    for img in images {
        let (src, dst) = (
            format!("oci:{}:{}", plain.display(), img.tag),
            format!("oci:{}:{}", dir.display(), img.tag),
        );
        let extra = ["--all", "--dest-compress-format", "zstd:chunked"];
        match form {
            ChunkedForm::V1 => skopeo_copy(&src, &dst, &extra),
            ChunkedForm::V2 => skopeo_v2_copy(&src, &dst, &extra),
        };
    }
    built
}

// ---------------------------------------------------------------------------
// eStargz: the stargz-snapshotter library
// ---------------------------------------------------------------------------

/// Annotation: digest of the uncompressed TOC JSON (`stargz.index.json`'s content).
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Annotation: size of the uncompressed layer, decimal (set by ctr-remote and nerdctl).
pub const ESTARGZ_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// Why the eStargz writer cannot be built here, if it cannot.
pub fn estargz_skip_reason() -> Option<String> {
    if !installed("go") {
        return Some("go not installed (Debian golang-go; tools/setup installs it)".into());
    }
    let lib = Command::new("dpkg-query")
        .args([
            "-W",
            "-f=${Status}",
            "golang-github-containerd-stargz-snapshotter-dev",
        ])
        .output();
    if !lib.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed")) {
        return Some(
            "golang-github-containerd-stargz-snapshotter-dev not installed (tools/setup installs it)"
                .into(),
        );
    }
    None
}

/// Builds the eStargz writer if missing (once per process); `None` (and a message) if it
/// cannot be built here.
pub fn estargz_ready() -> Option<()> {
    if let Some(why) = estargz_skip_reason() {
        eprintln!("skipping: {why}");
        return None;
    }
    static DONE: OnceLock<()> = OnceLock::new();
    prepare(&tool("estargz.sh"), &DONE);
    Some(())
}

/// An eStargz blob and what describes it.
#[derive(Clone, Debug)]
pub struct EstargzLayer {
    /// The compressed blob (what the registry serves).
    pub blob: Vec<u8>,
    pub digest: String,
    /// sha256 of the uncompressed tar: the config's diff_id.
    pub diff_id: String,
    /// The `containerd.io/snapshot/stargz/toc.digest` annotation's value.
    pub toc_digest: String,
    /// The uncompressed tar (not the input tar: the writer adds the landmark file and
    /// `stargz.index.json` and re-encodes headers).
    pub tar: Vec<u8>,
}

/// Converts a layer (tar, tar+gzip or tar+zstd) into eStargz with `estargz.Build`.
/// `opts`: `-chunk-size N`, `-level N`, `-prioritize a,b`. Call `estargz_ready` first.
pub fn estargz_convert(layer: &[u8], opts: &[&str]) -> EstargzLayer {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&input, layer).unwrap();
    let mut c = Command::new(tool("estargz.sh"));
    c.args(opts).arg(&input).arg(&output);
    let out = run_with_timeout(c, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "estargz.sh {opts:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blob = std::fs::read(&output).unwrap();
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    let l = EstargzLayer {
        digest: sha256_digest(&blob),
        diff_id: info["diffID"].as_str().unwrap().to_string(),
        toc_digest: info["tocDigest"].as_str().unwrap().to_string(),
        blob,
        tar,
    };
    assert_eq!(info["digest"], l.digest.as_str(), "estargz-writer's digest");
    assert_eq!(sha256_digest(&l.tar), l.diff_id, "estargz-writer's diffID");
    assert_eq!(info["uncompressedSize"], l.tar.len() as u64);
    l
}

/// An image whose layers are eStargz, as written into a layout.
#[derive(Clone, Debug)]
pub struct EstargzImage {
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<EstargzLayer>,
    /// Expected regular files of the final tree: path → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Writes an OCI layout into `dir` with one linux/amd64 image tagged `img.tag`: the two
/// layers of `make_layout`, each converted to eStargz (`opts` as for `estargz_convert`),
/// media type `application/vnd.oci.image.layer.v1.tar+gzip` with the
/// `containerd.io/snapshot/stargz/toc.digest` and `io.containers.estargz.uncompressed-size`
/// annotations ctr-remote sets, and a config whose diff_ids are the eStargz tars'. Call
/// `estargz_ready` first.
pub fn make_estargz_layout(dir: &Path, img: &TestImage, opts: &[&str]) -> EstargzImage {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let p = Platform::amd64();
    let (tars, files) = test_layer_tars(img, &p);
    let layers: Vec<EstargzLayer> = tars.iter().map(|t| estargz_convert(t, opts)).collect();
    for l in &layers {
        write_blob(dir, &l.blob);
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = test_config(img, &p, &diff_ids);
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
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest,
            "size": l.blob.len(),
            "annotations": {
                ESTARGZ_TOC_DIGEST: l.toc_digest,
                ESTARGZ_UNCOMPRESSED_SIZE: l.tar.len().to_string(),
            },
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    // add to (or start) index.json, replacing an entry with the same tag
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| {
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [],
            })
        });
    let entries = index["manifests"].as_array_mut().unwrap();
    entries.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != img.tag.as_str());
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": img.tag},
    }));
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    EstargzImage {
        tag: img.tag.clone(),
        manifest_digest,
        config_digest,
        layers,
        files,
    }
}
