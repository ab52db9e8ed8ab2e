//! Registry pulls and pushes against a real registry (`docker-registry`, started by the
//! tests on 127.0.0.1), with TLS and auth set up here, a token server and a fault-injecting
//! proxy written in `tests/common/registry.rs`. skopeo is the oracle: it pushes the images
//! strata pulls, and reads back what strata pushes.
//!
//! Every pulled image id is compared with `strata pull oci:` of the same layout; error
//! cases assert the exact line and that no secret appears anywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{
    curl, make_layout, skopeo_copy, BuiltImage, Fault, FaultKind, FaultProxy, Registry,
    RegistryOpts, TestImage, TokenGate, TokenOpts,
};
use common::sandbox::Sandbox as Env;
use serde_json::Value;

/// Missing tools make the registry tests skip, saying so (tools/setup installs them).
fn skip() -> bool {
    common::registry::missing_tools(&["docker-registry", "skopeo", "htpasswd", "openssl", "curl"])
}

fn image_id(v: &Value) -> String {
    v["image_id"].as_str().unwrap().to_string()
}

fn fsck_clean(env: &Env, repo: &Path) {
    let v: Value = serde_json::from_slice(&env.ok(repo, &["--json", "fsck"])).unwrap();
    let problems = v["problems"].as_array().map_or(0, |p| p.len());
    assert_eq!(problems, 0, "fsck: {v}");
}

/// The layout image ids per platform tag, by `strata pull oci:`.
fn layout_id(env: &Env, layout: &Path, tag: &str, platform: Option<&str>) -> String {
    let repo = env.path().join(format!(
        "layout-repo-{tag}-{}",
        platform.unwrap_or("host").replace('/', "-")
    ));
    let src = format!("oci:{}:{tag}", layout.display());
    let mut extra = vec![];
    if let Some(p) = platform {
        extra.extend(["--platform", p]);
    }
    image_id(&env.pull(&repo, &src, &extra))
}

/// The manifest a registry serves for `repo:tag`.
fn remote_manifest(host: &str, repo: &str, tag: &str) -> Value {
    let r = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
    ]);
    assert_eq!(r.status, 200, "manifest {repo}:{tag}: {}", r.stderr);
    serde_json::from_slice(&r.body).unwrap()
}

fn layer_digests(m: &Value) -> Vec<(String, u64)> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The usual test image `app` in a layout, and its image id by `pull oci:`.
fn app_image(env: &Env) -> (PathBuf, String) {
    let (layout, _) = setup_layout(env, &[TestImage::single("app")]);
    let want = layout_id(env, &layout, "app", None);
    (layout, want)
}

fn setup_layout(env: &Env, images: &[TestImage]) -> (PathBuf, Vec<BuiltImage>) {
    let layout = env.path().join("layout");
    let built = make_layout(&layout, images);
    (layout, built)
}

#[test]
fn every_compression_and_manifest_format_gives_the_layout_image_id() {
    if skip() {
        return;
    }
    let env = Env::new();
    let (layout, _) = setup_layout(&env, &[TestImage::single("app"), TestImage::multi("multi")]);
    let want = layout_id(&env, &layout, "app", None);
    let src = format!("oci:{}:app", layout.display());
    // One registry per compression: skopeo's blob cache would otherwise reuse blobs.
    let cases: &[(&str, &[&str])] = &[
        (
            "gzip",
            &["--dest-compress", "--dest-compress-format", "gzip"],
        ),
        (
            "zstd",
            &["--dest-compress", "--dest-compress-format", "zstd"],
        ),
        (
            "zstd-chunked",
            &["--dest-compress", "--dest-compress-format", "zstd:chunked"],
        ),
        ("docker-v2s2", &["--format", "v2s2"]),
    ];
    for (name, flags) in cases {
        let reg = Registry::plain();
        let mut args = vec!["--dest-tls-verify=false"];
        args.extend_from_slice(flags);
        skopeo_copy(&src, &reg.docker_ref("t/app:v1"), &args);
        let m = remote_manifest(&reg.host(), "t/app", "v1");
        let mt = m["layers"][0]["mediaType"].as_str().unwrap().to_string();
        match *name {
            "zstd" | "zstd-chunked" => assert!(mt.ends_with("+zstd"), "{name}: {mt}"),
            "gzip" => assert!(mt.ends_with("+gzip"), "{name}: {mt}"),
            "uncompressed" => assert!(mt.ends_with(".tar"), "{name}: {mt}"),
            _ => assert!(mt.contains("docker"), "{name}: {mt}"),
        }
        let repo = env.path().join(format!("repo-{name}"));
        let got = env.pull(&repo, &reg.docker_ref("t/app:v1"), &["app"]);
        assert_eq!(
            image_id(&got),
            want,
            "{name}: image id differs from pull oci:"
        );
        assert_eq!(got["layers_imported"], 2, "{name}");
        let net = &got["network"];
        assert!(net["bytes_fetched"].as_u64().unwrap() > 0, "{name}: {net}");
        // The layers' original tars, byte for byte.
        let info: Value =
            serde_json::from_slice(&env.ok(&repo, &["--json", "inspect", "app"])).unwrap();
        assert_eq!(
            info["source"],
            Value::from(reg.docker_ref("t/app:v1")),
            "inspect shows the source"
        );
        for l in info["layers"].as_array().unwrap() {
            let diff_id = l["diff_id"].as_str().unwrap();
            let tar = env.ok(&repo, &["layer", "cat", diff_id]);
            assert_eq!(common::registry::sha256_digest(&tar), diff_id, "{name}");
        }
        fsck_clean(&env, &repo);
    }

    // Uncompressed layers: skopeo always compresses for a registry, so strata's own push
    // puts them there (the layout's tars, byte for byte).
    let reg = Registry::plain();
    let staging = env.path().join("staging");
    env.pull(&staging, &src, &["app"]);
    env.ok(
        &staging,
        &[
            "export",
            "app",
            &reg.docker_ref("t/app:plain"),
            "--compress",
            "none",
        ],
    );
    let m = remote_manifest(&reg.host(), "t/app", "plain");
    assert!(
        m["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with(".tar"),
        "{m}"
    );
    let got = env.pull(
        &env.path().join("repo-plain"),
        &reg.docker_ref("t/app:plain"),
        &[],
    );
    assert_eq!(image_id(&got), want, "uncompressed");

    // A two-platform index: each platform equals the layout's.
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:multi", layout.display()),
        &reg.docker_ref("t/multi:v1"),
        &["--dest-tls-verify=false", "--all"],
    );
    for p in ["linux/amd64", "linux/arm64", "linux/arm64/v8"] {
        let want = layout_id(&env, &layout, "multi", Some(p));
        let repo = env
            .path()
            .join(format!("repo-multi-{}", p.replace('/', "-")));
        let got = env.pull(&repo, &reg.docker_ref("t/multi:v1"), &["--platform", p]);
        assert_eq!(image_id(&got), want, "platform {p}");
    }
    let amd = layout_id(&env, &layout, "multi", Some("linux/amd64"));
    let arm = layout_id(&env, &layout, "multi", Some("linux/arm64"));
    assert_ne!(
        amd, arm,
        "the platforms must differ for this test to mean anything"
    );
    let e = env.err(
        &env.path().join("repo-s390x"),
        &[
            "pull",
            &reg.docker_ref("t/multi:v1"),
            "--platform",
            "linux/s390x",
        ],
    );
    assert!(
        e.contains("no manifest for platform linux/s390x") && e.contains("linux/arm64/v8"),
        "{e}"
    );
}

#[test]
fn tls_with_a_test_ca_and_basic_auth() {
    if skip() {
        return;
    }
    let env = Env::new();
    let (layout, want) = app_image(&env);
    let password = "s3cret-Pa55word";
    let reg = Registry::start(RegistryOpts {
        tls: true,
        htpasswd: Some(("alice".into(), password.into())),
        client_cert: false,
    });
    let certs = reg.make_certs_d(&env.path().join("certs.d"));
    let certs_s = certs.to_str().unwrap();
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("secure/app:v1"),
        &[
            "--dest-cert-dir",
            certs_s,
            "--dest-creds",
            &format!("alice:{password}"),
        ],
    );
    let src = reg.docker_ref("secure/app:v1");

    // Without the CA: refused, naming where the CA goes.
    let repo = env.path().join("repo");
    let e = env.err(
        &repo,
        &["pull", &src, "--creds", &format!("alice:{password}")],
    );
    assert!(e.contains(&reg.host()) && e.contains("certs.d"), "{e}");

    // With the CA but a wrong password: one line naming the registry and the refusal.
    let wrong = "wrong-Pa55word";
    let e = env.err(
        &repo,
        &[
            "pull",
            &src,
            "--cert-dir",
            certs_s,
            "--creds",
            &format!("alice:{wrong}"),
        ],
    );
    assert!(
        e.contains(&format!("registry {}", reg.host()))
            && e.contains("authentication refused")
            && e.contains("alice"),
        "{e}"
    );
    assert!(
        !e.contains(wrong) && !e.contains(password),
        "secret in: {e}"
    );

    // Right password: the layout's image id; nothing secret in --json.
    let o = env.run(
        &repo,
        &[
            "--json",
            "pull",
            &src,
            "--cert-dir",
            certs_s,
            "--creds",
            &format!("alice:{password}"),
        ],
    );
    assert!(o.status.success());
    let all = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
    assert!(!String::from_utf8_lossy(&all).contains(password));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(image_id(&v), want);

    // login writes an auth file (0600) that the next pull uses; logout removes it.
    let authfile = env.path().join("auth/auth.json");
    let authfile_s = authfile.to_str().unwrap();
    let mut login = env.cmd(
        &repo,
        &[
            "login",
            &reg.host(),
            "-u",
            "alice",
            "--password-stdin",
            "--authfile",
            authfile_s,
            "--cert-dir",
            certs_s,
        ],
    );
    let out = pipe_stdin(&mut login, &format!("{wrong}\n"));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("authentication refused") && !e.contains(wrong),
        "{e}"
    );
    assert!(!authfile.exists(), "a refused login writes nothing");
    let mut login = env.cmd(
        &repo,
        &[
            "login",
            &reg.host(),
            "-u",
            "alice",
            "--password-stdin",
            "--authfile",
            authfile_s,
            "--cert-dir",
            certs_s,
        ],
    );
    let out = pipe_stdin(&mut login, &format!("{password}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&authfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved: Value = serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(saved["auths"][reg.host()]["auth"].is_string(), "{saved}");
    let repo2 = env.path().join("repo2");
    let v = env.pull(
        &repo2,
        &src,
        &["--cert-dir", certs_s, "--authfile", authfile_s],
    );
    assert_eq!(image_id(&v), want);
    env.ok(&repo, &["logout", &reg.host(), "--authfile", authfile_s]);
    let saved: Value = serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(saved["auths"].get(reg.host()).is_none(), "{saved}");
    let e = env.err(
        &env.path().join("repo3"),
        &[
            "pull",
            &src,
            "--cert-dir",
            certs_s,
            "--authfile",
            authfile_s,
        ],
    );
    assert!(
        e.contains("authentication refused") && e.contains("no credentials"),
        "{e}"
    );
}

#[test]
fn client_certificates_from_certs_d() {
    if skip() {
        return;
    }
    let env = Env::new();
    let (layout, want) = app_image(&env);
    let reg = Registry::start(RegistryOpts {
        tls: true,
        client_cert: true,
        ..RegistryOpts::default()
    });
    let certs = reg.make_certs_d(&env.path().join("certs.d"));
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("mtls/app:v1"),
        &["--dest-cert-dir", certs.to_str().unwrap()],
    );
    let src = reg.docker_ref("mtls/app:v1");
    let v = env.pull(
        &env.path().join("repo"),
        &src,
        &["--cert-dir", certs.to_str().unwrap()],
    );
    assert_eq!(image_id(&v), want);
    // The same CA without the client pair: the registry refuses the handshake.
    let no_client = env.path().join("ca-only");
    std::fs::create_dir_all(&no_client).unwrap();
    std::fs::copy(certs.join("ca.crt"), no_client.join("ca.crt")).unwrap();
    let e = env.err(
        &env.path().join("repo2"),
        &["pull", &src, "--cert-dir", no_client.to_str().unwrap()],
    );
    assert!(
        e.contains(&format!("registry {}", reg.host())) && e.contains("refused the TLS handshake"),
        "{e}"
    );
    // A .cert without its .key is a configuration error naming the file.
    let half = env.path().join("half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(certs.join("ca.crt"), half.join("ca.crt")).unwrap();
    std::fs::copy(certs.join("client.cert"), half.join("client.cert")).unwrap();
    let e = env.err(
        &env.path().join("repo3"),
        &["pull", &src, "--cert-dir", half.to_str().unwrap()],
    );
    assert!(e.contains("client.cert") || e.contains("client.key"), "{e}");
}

fn pipe_stdin(c: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn bearer_tokens_from_a_token_server() {
    if skip() {
        return;
    }
    let env = Env::new();
    let (layout, want) = app_image(&env);
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("tok/app:v1"),
        &["--dest-tls-verify=false"],
    );
    for key in ["token", "access_token"] {
        let gate = TokenGate::start(
            &reg.host(),
            TokenOpts {
                user: Some(("bob".into(), "hunter2-pw".into())),
                anonymous_pull: false,
                key: key.into(),
                expires_in: Some(300),
            },
        );
        let src = format!("docker://{}/tok/app:v1", gate.host());
        // Anonymous: the token server refuses; one line, naming the registry.
        let e = env.err(&env.path().join(format!("anon-{key}")), &["pull", &src]);
        let wrong = env.err(
            &env.path().join(format!("wrong-{key}")),
            &["pull", &src, "--creds", "bob:not-hunter2"],
        );
        assert!(
            wrong.contains("authentication refused") && wrong.contains("\"bob\""),
            "{wrong}"
        );
        assert!(
            !wrong.contains("not-hunter2") && !wrong.contains("hunter2-pw"),
            "{wrong}"
        );
        assert!(
            e.contains(&format!("registry {}", gate.host()))
                && e.contains("authentication refused"),
            "{e}"
        );
        // With credentials: the token flow, one token per scope for the whole pull.
        let repo = env.path().join(format!("repo-{key}"));
        let v = env.pull(&repo, &src, &["--creds", "bob:hunter2-pw"]);
        assert_eq!(image_id(&v), want);
        let granted: Vec<_> = gate
            .token_requests()
            .into_iter()
            .filter(|t| t.status == 200)
            .collect();
        assert_eq!(granted.len(), 1, "tokens are cached per scope: {granted:?}");
        assert_eq!(
            granted[0].scopes,
            vec!["repository:tok/app:pull".to_string()]
        );
        assert!(granted[0].basic_given);
    }
    // Anonymous pulls where the token server allows them.
    let gate = TokenGate::start(&reg.host(), TokenOpts::default());
    let v = env.pull(
        &env.path().join("repo-anon"),
        &format!("docker://{}/tok/app:v1", gate.host()),
        &[],
    );
    assert_eq!(image_id(&v), want);
    assert!(gate.token_requests().iter().all(|t| !t.basic_given));
}

/// A registry behind the fault proxy, holding `app` (zstd, one big file).
struct Faulty {
    env: Env,
    reg: Registry,
    proxy: FaultProxy,
    want: String,
    blob: (String, u64),
}

fn faulty(big: usize) -> Faulty {
    let env = Env::new();
    let (layout, _) = setup_layout(&env, &[TestImage::single("app").big_size(big)]);
    let want = layout_id(&env, &layout, "app", None);
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("f/app:v1"),
        &[
            "--dest-tls-verify=false",
            "--dest-compress",
            "--dest-compress-format",
            "zstd",
        ],
    );
    let m = remote_manifest(&reg.host(), "f/app", "v1");
    let blob = layer_digests(&m)
        .into_iter()
        .max_by_key(|(_, s)| *s)
        .unwrap();
    let proxy = FaultProxy::start(&reg.host());
    Faulty {
        env,
        reg,
        proxy,
        want,
        blob,
    }
}

impl Faulty {
    fn src(&self) -> String {
        format!("docker://{}/f/app:v1", self.proxy.host())
    }
}

#[test]
fn a_connection_cut_mid_blob_resumes_where_it_stopped() {
    if skip() {
        return;
    }
    let f = faulty(6 << 20);
    let (digest, size) = f.blob.clone();
    assert!(size > 4 << 20, "the big layer is {size} bytes");
    let cut = f
        .proxy
        .add_fault(Fault::new("GET", &digest, FaultKind::CutAfter(size / 2)));
    let repo = f.env.path().join("repo");
    let v = f.env.pull(&repo, &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
    assert_eq!(f.proxy.fired(cut), 1);
    assert_eq!(v["network"]["resumes"], 1, "{v}");
    let sent = f.proxy.bytes_sent_for(&digest);
    assert!(
        sent as f64 <= size as f64 * 1.15,
        "{sent} bytes sent for a {size}-byte blob"
    );
    let ranges: Vec<_> = f
        .proxy
        .matching("GET", &digest)
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(
        ranges,
        vec![format!("bytes={}-", size / 2)],
        "resumed at the cut"
    );
    fsck_clean(&f.env, &repo);

    // A registry that ignores Range: the transfer restarts and still verifies.
    let repo = f.env.path().join("repo-norange");
    f.proxy
        .add_fault(Fault::new("GET", &digest, FaultKind::CutAfter(size / 3)));
    f.proxy
        .add_fault(Fault::new("GET", &digest, FaultKind::IgnoreRange));
    let v = f.env.pull(&repo, &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
}

#[test]
fn throttling_and_unavailable_registries_are_retried() {
    if skip() {
        return;
    }
    let f = faulty(64 << 10);
    let a = f.proxy.add_fault(Fault::new(
        "GET",
        "/manifests/",
        FaultKind::Status(429, Some(1)),
    ));
    let b = f
        .proxy
        .add_fault(Fault::new("GET", &f.blob.0, FaultKind::Status(503, None)));
    let t0 = std::time::Instant::now();
    let v = f.env.pull(&f.env.path().join("repo"), &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
    assert_eq!((f.proxy.fired(a), f.proxy.fired(b)), (1, 1));
    assert_eq!(v["network"]["retries"], 2, "{v}");
    assert!(t0.elapsed().as_secs_f64() >= 1.0, "Retry-After: 1 honoured");

    // A connection cut while the manifest itself is read: asked again.
    let cut = f
        .proxy
        .add_fault(Fault::new("GET", "/manifests/", FaultKind::CutAfter(10)));
    let v = f
        .env
        .pull(&f.env.path().join("repo-cut"), &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
    assert_eq!(f.proxy.fired(cut), 1);
    assert_eq!(v["network"]["retries"], 1, "{v}");

    // A registry that never recovers: a bounded number of attempts, then one line.
    f.proxy.add_fault(
        Fault::new("GET", "/manifests/", FaultKind::Status(503, None)).times(usize::MAX),
    );
    let e = f.env.err(&f.env.path().join("repo2"), &["pull", &f.src()]);
    assert!(
        e.contains("gave up after 6 attempts") && e.contains("503"),
        "{e}"
    );
}

#[test]
fn a_flipped_byte_is_rejected_naming_the_blob() {
    if skip() {
        return;
    }
    let f = faulty(1 << 20);
    let (digest, size) = f.blob.clone();
    f.proxy
        .add_fault(Fault::new("GET", &digest, FaultKind::FlipByte(size / 2)));
    let repo = f.env.path().join("repo");
    let e = f.env.err(&repo, &["pull", &f.src(), "app"]);
    assert!(e.contains(&digest), "the error names the blob: {e}");
    let images = String::from_utf8(f.env.ok(&repo, &["images"])).unwrap();
    assert!(!images.contains("app"), "nothing tagged: {images}");
    fsck_clean(&f.env, &repo);
    // The registry's copy is fine: a second pull works.
    let v = f.env.pull(&repo, &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
}

#[test]
fn missing_tags_and_blobs_are_one_clear_line() {
    if skip() {
        return;
    }
    let f = faulty(64 << 10);
    let repo = f.env.path().join("repo");
    let e = f.env.err(
        &repo,
        &["pull", &format!("docker://{}/f/app:nope", f.proxy.host())],
    );
    assert_eq!(
        e,
        format!(
            "strata: pull docker://{}/f/app:nope: registry {}: manifest f/app:nope: not found (MANIFEST_UNKNOWN: manifest unknown)",
            f.proxy.host(),
            f.proxy.host()
        )
    );
    let e = f.env.err(
        &repo,
        &[
            "pull",
            &format!("docker://{}/f/nothing-here:v1", f.proxy.host()),
        ],
    );
    assert!(e.contains("not found"), "{e}");
    // A blob the registry lost.
    f.proxy
        .add_fault(Fault::new("GET", &f.blob.0, FaultKind::Status(404, None)).times(usize::MAX));
    let e = f.env.err(&repo, &["pull", &f.src()]);
    assert!(
        e.contains(&format!("blob {}", f.blob.0)) && e.contains("not found"),
        "{e}"
    );
    fsck_clean(&f.env, &repo);
    // Unparsable references and blocked registries.
    let e = f.env.err(&repo, &["pull", "docker://UPPER/case"]);
    assert!(e.contains("invalid image reference"), "{e}");
    let conf = f.env.path().join("blocked.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
            f.proxy.host()
        ),
    )
    .unwrap();
    let before = f.proxy.request_count();
    let e = f.env.err(
        &repo,
        &[
            "pull",
            &f.src(),
            "--registries-conf",
            conf.to_str().unwrap(),
        ],
    );
    assert!(e.contains("blocked") && e.contains(&f.proxy.host()), "{e}");
    assert_eq!(
        f.proxy.request_count(),
        before,
        "a blocked registry is not contacted"
    );
}

#[test]
fn redirects_are_followed_without_authorization() {
    if skip() {
        return;
    }
    // strata → token gate → fault proxy → registry; blob GETs are redirected to the
    // proxy's second listener (another host), which must never see Authorization.
    let env = Env::new();
    let (layout, want) = app_image(&env);
    let reg = Registry::plain();
    skopeo_copy(
        &format!("oci:{}:app", layout.display()),
        &reg.docker_ref("r/app:v1"),
        &["--dest-tls-verify=false"],
    );
    let proxy = FaultProxy::start(&reg.host());
    let gate = TokenGate::start(
        &proxy.host(),
        TokenOpts {
            user: Some(("carol".into(), "pw-carol-123".into())),
            ..TokenOpts::default()
        },
    );
    proxy.add_fault(
        Fault::new(
            "GET",
            "/blobs/sha256:",
            FaultKind::RedirectTo(proxy.second_host()),
        )
        .times(usize::MAX),
    );
    let v = env.pull(
        &env.path().join("repo"),
        &format!("docker://{}/r/app:v1", gate.host()),
        &["--creds", "carol:pw-carol-123"],
    );
    assert_eq!(image_id(&v), want);
    let second = proxy.second_listener_requests();
    assert!(
        second.len() >= 2,
        "config and layers came from the other host: {second:?}"
    );
    assert!(
        proxy.auth_headers(1).is_empty(),
        "Authorization leaked to another host: {:?}",
        proxy.auth_headers(1)
    );

    // A redirect loop is refused, not followed forever.
    proxy.clear_faults();
    let gate2 = FaultProxy::start(&proxy.host());
    gate2.add_fault(
        Fault::new("GET", "/manifests/", FaultKind::RedirectTo(gate2.host())).times(usize::MAX),
    );
    let e = env.err(
        &env.path().join("repo2"),
        &["pull", &format!("docker://{}/r/app:v1", gate2.host())],
    );
    assert!(e.contains("redirect loop"), "{e}");
}

#[test]
fn present_images_cost_one_manifest_request_and_digests_none() {
    if skip() {
        return;
    }
    let f = faulty(64 << 10);
    let repo = f.env.path().join("repo");
    let first = f.env.pull(&repo, &f.src(), &["app"]);
    let digest = first["manifest_digest"].as_str().unwrap().to_string();
    f.proxy.reset_stats();
    let again = f.env.pull(&repo, &f.src(), &["app"]);
    assert_eq!(again["already_present"], true);
    let reqs = f.proxy.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(reqs[0].path.ends_with("/manifests/v1"));
    f.proxy.reset_stats();
    let by_digest = f.env.pull(
        &repo,
        &format!("docker://{}/f/app@{digest}", f.proxy.host()),
        &["app2"],
    );
    assert_eq!(image_id(&by_digest), f.want);
    assert_eq!(f.proxy.request_count(), 0, "{:?}", f.proxy.requests());
    // Layers already in the repository are not fetched again (same diff_ids).
    let repo2 = f.env.path().join("repo2");
    f.env.pull(&repo2, &f.src(), &["app"]);
    f.proxy.reset_stats();
    let _ = f.env.ok(&repo2, &["rm", "app"]);
    // An untagged image still in the repository is tagged again without fetching blobs.
    let v = f.env.pull(&repo2, &f.src(), &["app"]);
    assert_eq!(image_id(&v), f.want);
    assert_eq!(f.proxy.bytes_sent_for(&f.blob.0), 0);
}

#[test]
fn mirrors_are_tried_before_the_primary() {
    if skip() {
        return;
    }
    let f = faulty(64 << 10);
    // The primary is a closed port on loopback; the mirror (the proxy) serves the image.
    let conf = f.env.path().join("mirror.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"127.0.0.1:9/mirrored\"\nlocation = \"127.0.0.1:9/mirrored\"\n\
             [[registry.mirror]]\nlocation = \"{}/f\"\n",
            f.proxy.host()
        ),
    )
    .unwrap();
    let v = f.env.pull(
        &f.env.path().join("repo"),
        "docker://127.0.0.1:9/mirrored/app:v1",
        &["--registries-conf", conf.to_str().unwrap()],
    );
    assert_eq!(image_id(&v), f.want);
    assert!(f.proxy.count("GET", "/v2/f/app/manifests/v1") >= 1);
    drop(f.reg);
}

#[test]
fn export_pushes_the_same_config_and_diff_ids_and_a_second_push_uploads_nothing() {
    if skip() {
        return;
    }
    let env = Env::new();
    let (layout, _) = setup_layout(&env, &[TestImage::single("app").big_size(20 << 20)]);
    let repo = env.path().join("repo");
    let src = env.pull(&repo, &format!("oci:{}:app", layout.display()), &["app"]);
    let info: Value =
        serde_json::from_slice(&env.ok(&repo, &["--json", "inspect", "app"])).unwrap();
    let reg = Registry::plain();
    let proxy = FaultProxy::start(&reg.host());
    let dest = format!("docker://{}/pushed/app:v2", proxy.host());
    let first: Value = serde_json::from_slice(&env.ok(
        &repo,
        &["--json", "export", "app", &dest, "--compress", "gzip"],
    ))
    .unwrap();
    assert_eq!(first["config_digest"], info["config_digest"]);
    assert_eq!(first["blobs_uploaded"], 3, "{first}");
    // Over 16 MiB goes up in pieces.
    assert!(
        proxy.count("PATCH", "/blobs/uploads/") >= 1,
        "chunked upload"
    );
    // skopeo reads it back: same config, same diff_ids.
    let out = env.path().join("back");
    skopeo_copy(
        &format!("docker://{}/pushed/app:v2", reg.host()),
        &format!("oci:{}:v2", out.display()),
        &["--src-tls-verify=false"],
    );
    let back = env.pull(
        &env.path().join("repo-back"),
        &format!("oci:{}:v2", out.display()),
        &[],
    );
    assert_eq!(image_id(&back), image_id(&src));
    let back_info: Value = serde_json::from_slice(&env.ok(
        &env.path().join("repo-back"),
        &["--json", "inspect", &image_id(&back)],
    ))
    .unwrap();
    assert_eq!(back_info["config_digest"], info["config_digest"]);
    let ids = |v: &Value| -> Vec<String> {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["diff_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&back_info), ids(&info));
    // Again: every blob is found with HEAD, none uploaded.
    proxy.reset_stats();
    let second: Value = serde_json::from_slice(&env.ok(
        &repo,
        &["--json", "export", "app", &dest, "--compress", "gzip"],
    ))
    .unwrap();
    assert_eq!(second["blobs_uploaded"], 0, "{second}");
    assert_eq!(second["blobs_existing"], 3, "{second}");
    assert_eq!(proxy.count("PATCH", ""), 0);
    assert_eq!(proxy.count("POST", ""), 0);

    // An image pulled from this registry, pushed to another repository of it: its blobs
    // are mounted from the source repository, not sent.
    let repo3 = env.path().join("repo3");
    env.pull(&repo3, &dest, &["from-reg"]);
    proxy.reset_stats();
    let third: Value = serde_json::from_slice(&env.ok(
        &repo3,
        &[
            "--json",
            "export",
            "from-reg",
            &format!("docker://{}/other/app:v1", proxy.host()),
            "--compress",
            "gzip",
        ],
    ))
    .unwrap();
    assert_eq!(third["blobs_mounted"], 3, "{third}");
    assert_eq!(third["blobs_uploaded"], 0, "{third}");
    assert!(proxy.count("POST", "mount=sha256") >= 3);
    assert_eq!(proxy.count("PATCH", ""), 0);
}
