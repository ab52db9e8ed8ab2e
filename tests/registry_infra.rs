//! Self-tests of the registry test infrastructure (tests/common/registry.rs):
//! docker-registry plain/TLS/htpasswd, the token gate and the fault proxy,
//! exercised with skopeo, curl and a raw socket (not with strata).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::registry::*;

const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

fn get_json(host: &str, target: &str) -> serde_json::Value {
    let r = http_request(host, "GET", target, &[("Accept", ACCEPT_ALL)], b"").unwrap();
    assert_eq!(
        r.status,
        200,
        "GET {target}: {}",
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).unwrap()
}

fn get_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = http_request(host, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "GET blob {digest}");
    assert_eq!(sha256_digest(&r.body), digest);
    r.body
}

fn decompress(media_type: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        out = zstd::decode_all(data).unwrap();
    } else if media_type.ends_with("gzip") || media_type.ends_with(".tar.gzip") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = data.to_vec();
    }
    out
}

/// Checks that the manifest `reference` in `repo` on `host` holds exactly the
/// layers of `want` (compressed or not) and its config.
fn assert_manifest_matches(
    host: &str,
    repo: &str,
    reference: &str,
    want: &BuiltManifest,
) -> serde_json::Value {
    let m = get_json(host, &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(m["config"]["digest"], want.config_digest.as_str());
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), want.layers.len());
    for (l, w) in layers.iter().zip(&want.layers) {
        let digest = l["digest"].as_str().unwrap();
        let blob = get_blob(host, repo, digest);
        assert_eq!(l["size"].as_u64().unwrap(), blob.len() as u64);
        let tar = decompress(l["mediaType"].as_str().unwrap(), &blob);
        assert_eq!(
            sha256_digest(&tar),
            w.digest,
            "layer {digest} decompresses to the original tar"
        );
    }
    m
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// A registry holding one blob (pseudo-random bytes) in `test/blob`,
/// uploaded monolithically; returns the digest and bytes.
fn upload_blob(host: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let r = http_request(
        host,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap();
    let target = &loc[loc.find("/v2/").unwrap()..];
    let sep = if target.contains('?') { '&' } else { '?' };
    let r = http_request(
        host,
        "PUT",
        &format!("{target}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    digest
}

const BLOB_LEN: usize = 200_000;

fn proxy_with_blob() -> (Registry, FaultProxy, String, Vec<u8>) {
    let reg = Registry::plain();
    let blob = pseudo_random("fault proxy blob", BLOB_LEN);
    let digest = upload_blob(&reg.host(), "test/blob", &blob);
    let proxy = FaultProxy::start(&reg.host());
    (reg, proxy, digest, blob)
}

fn blob_url(host: &str, digest: &str) -> String {
    format!("http://{host}/v2/test/blob/blobs/{digest}")
}

// ---------------------------------------------------------------------------

#[test]
fn layout_has_expected_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let built = make_layout(
        tmp.path(),
        &[TestImage::single("latest"), TestImage::multi("multi")],
    );
    assert_eq!(built.len(), 2);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(tags, ["latest", "multi"]);
    assert_eq!(
        built[1].media_type,
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(built[1].manifests.len(), 2);
    let (amd, arm) = (&built[1].manifests[0], &built[1].manifests[1]);
    assert_eq!(arm.platform.variant.as_deref(), Some("v8"));
    assert_ne!(amd.files["etc/small.txt"], arm.files["etc/small.txt"]);
    assert_ne!(amd.layers[0].digest, arm.layers[0].digest);
    for m in built.iter().flat_map(|b| &b.manifests) {
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join("blobs/sha256").join(&m.config_digest[7..])).unwrap(),
        )
        .unwrap();
        let diff_ids: Vec<&str> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let layers: Vec<&str> = m.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(diff_ids, layers);
        assert_eq!(cfg["architecture"], m.platform.arch.as_str());
        // layer 1: small and big files, symlink; layer 2: a whiteout
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&m.layers[0].tar[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            names.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                e.size(),
            ));
        }
        assert!(names.contains(&("usr/bin/tool-link".into(), tar::EntryType::Symlink, 0)));
        assert!(names
            .iter()
            .any(|(n, _, s)| n == "etc/small.txt" && *s <= 64));
        assert!(names.iter().any(|(n, _, s)| n == "usr/bin/tool" && *s > 64));
        let mut ar = tar::Archive::new(&m.layers[1].tar[..]);
        let l2: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(l2.contains(&"etc/.wh.remove-me".to_string()), "{l2:?}");
    }
}

#[test]
fn plain_registry_round_trip_with_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let built = make_layout(
        &src,
        &[TestImage::single("latest"), TestImage::multi("multi")],
    );
    let reg = Registry::plain();
    let host = reg.host();
    let dtls = "--dest-tls-verify=false";

    // single image, default (gzip) compression
    skopeo_copy(
        &oci_ref(&src, "latest"),
        &reg.docker_ref("test/img:latest"),
        &[dtls],
    );
    let m = assert_manifest_matches(&host, "test/img", "latest", &built[0].manifests[0]);
    assert!(
        m["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("gzip"),
        "{m}"
    );
    assert_eq!(
        get_json(&host, "/v2/test/img/tags/list")["tags"],
        serde_json::json!(["latest"])
    );

    // Docker schema 2 (reusing the gzip blobs)
    skopeo_copy(
        &oci_ref(&src, "latest"),
        &reg.docker_ref("test/v2s2:latest"),
        &[dtls, "--format", "v2s2"],
    );
    let m = assert_manifest_matches(&host, "test/v2s2", "latest", &built[0].manifests[0]);
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // zstd and zstd:chunked, each into a registry of its own: skopeo 1.9
    // would otherwise reuse the gzip blobs it knows to be there already
    for format in ["zstd", "zstd:chunked"] {
        let reg2 = Registry::plain();
        skopeo_copy(
            &oci_ref(&src, "latest"),
            &reg2.docker_ref("test/zstd:latest"),
            &[dtls, "--dest-compress", "--dest-compress-format", format],
        );
        let m =
            assert_manifest_matches(&reg2.host(), "test/zstd", "latest", &built[0].manifests[0]);
        assert_eq!(
            m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{format}"
        );
        let chunked_annotation = m["layers"][0]["annotations"]
            .as_object()
            .is_some_and(|a| a.keys().any(|k| k.contains("zstd-chunked")));
        assert_eq!(chunked_annotation, format == "zstd:chunked", "{m}");
    }

    // two-platform index
    skopeo_copy(
        &oci_ref(&src, "multi"),
        &reg.docker_ref("test/multi:multi"),
        &[dtls, "--all"],
    );
    let idx = get_json(&host, "/v2/test/multi/manifests/multi");
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (e, want) in entries.iter().zip(&built[1].manifests) {
        assert_eq!(e["platform"]["architecture"], want.platform.arch.as_str());
        assert_eq!(
            e["platform"]["variant"].as_str(),
            want.platform.variant.as_deref()
        );
        assert_manifest_matches(&host, "test/multi", e["digest"].as_str().unwrap(), want);
    }

    // and back into a layout
    let dst = tmp.path().join("pulled");
    skopeo_copy(
        &reg.docker_ref("test/img:latest"),
        &oci_ref(&dst, "back"),
        &["--src-tls-verify=false"],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| std::fs::read(dst.join("blobs/sha256").join(&d[7..])).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&blob(mdig)).unwrap();
    assert_eq!(
        m["config"]["digest"],
        built[0].manifests[0].config_digest.as_str()
    );
    for (l, w) in m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&built[0].manifests[0].layers)
    {
        let data = blob(l["digest"].as_str().unwrap());
        assert_eq!(decompress(l["mediaType"].as_str().unwrap(), &data), w.tar);
    }
}

#[test]
fn tls_and_htpasswd_with_skopeo_and_curl() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let built = make_layout(&src, &[TestImage::single("latest")]);
    let reg = Registry::start(RegistryOpts {
        tls: true,
        htpasswd: Some(("alice".into(), "s3cret".into())),
        client_cert: false,
    });
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let certs_d = tmp.path().join("certs.d");
    let host_dir = reg.make_certs_d(&certs_d);
    assert_eq!(host_dir, certs_d.join(reg.host()));
    assert_eq!(
        std::fs::read(host_dir.join("ca.crt")).unwrap(),
        std::fs::read(reg.ca_pem_path()).unwrap()
    );
    let cert_dir = host_dir.to_str().unwrap();
    let dst = reg.docker_ref("test/img:latest");

    // push with CA + credentials
    skopeo_copy(
        &oci_ref(&src, "latest"),
        &dst,
        &[
            "--dest-cert-dir",
            cert_dir,
            "--dest-creds",
            &reg.creds_arg(),
        ],
    );
    // wrong password
    let out = skopeo_copy_output(
        &oci_ref(&src, "latest"),
        &dst,
        &["--dest-cert-dir", cert_dir, "--dest-creds", "alice:wrong"],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success());
    assert!(err.contains("unauthorized") || err.contains("401"), "{err}");
    // unknown CA
    let out = skopeo_copy_output(
        &oci_ref(&src, "latest"),
        &dst,
        &["--dest-creds", &reg.creds_arg()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");

    // curl: CA-verified, by IP and by name (both in the SAN)
    let ca = reg.ca_pem_path();
    let ca = ca.to_str().unwrap();
    let r = curl(&[
        "--cacert",
        ca,
        "-u",
        "alice:s3cret",
        &format!("{}/v2/_catalog", reg.url()),
    ]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["repositories"],
        serde_json::json!(["test/img"])
    );
    let r = curl(&[
        "--cacert",
        ca,
        "-u",
        "alice:s3cret",
        &format!("https://localhost:{}/v2/", reg.port()),
    ]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    let r = curl(&["--cacert", ca, &format!("{}/v2/", reg.url())]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"strata-test\"")
    );
    let r = curl(&[
        "--cacert",
        ca,
        "-u",
        "alice:nope",
        &format!("{}/v2/", reg.url()),
    ]);
    assert_eq!(r.status, 401);

    // pull back with CA + credentials
    let out_dir = tmp.path().join("pulled");
    skopeo_copy(
        &dst,
        &oci_ref(&out_dir, "x"),
        &["--src-cert-dir", cert_dir, "--src-creds", &reg.creds_arg()],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir.join("blobs/sha256").join(&mdig[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["config"]["digest"],
        built[0].manifests[0].config_digest.as_str()
    );
}

#[test]
fn registry_child_dies_with_a_panicking_test() {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let reg = Registry::plain();
        tx.send(reg.pid()).unwrap();
        panic!("test panics while the registry runs");
    });
    assert!(h.join().is_err());
    let pid = rx.recv().unwrap();
    // Drop ran during unwinding: killed and reaped, so no /proc entry.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} outlived the test"
    );
}

fn gate_setup() -> (tempfile::TempDir, Vec<BuiltImage>, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let built = make_layout(&src, &[TestImage::single("latest")]);
    (tmp, built, Registry::plain())
}

fn token_json(r: &CurlResult) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

#[test]
fn token_gate_with_skopeo_anonymous_pull_and_credentialed_push() {
    let (tmp, built, reg) = gate_setup();
    let src = tmp.path().join("src");
    let gate = TokenGate::start(
        &reg.host(),
        TokenOpts {
            user: Some(("bob".into(), "hunter2".into())),
            anonymous_pull: true,
            key: "token".into(),
            expires_in: Some(300),
        },
    );
    let gh = gate.host();
    let realm = gate.realm();

    // challenges
    let r = http_request(&gh, "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"strata-test\"")
    );
    let r = http_request(&gh, "GET", "/v2/test/img/manifests/latest", &[], b"").unwrap();
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"{realm}\",service=\"strata-test\",scope=\"repository:test/img:pull\""
        )
    );
    let r = http_request(&gh, "POST", "/v2/test/img/blobs/uploads/", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with(",scope=\"repository:test/img:pull,push\""));
    assert_eq!(gate.challenges(), 3);

    let dst = format!("docker://{gh}/test/img:latest");
    let tls = ["--dest-tls-verify=false"];
    // anonymous push: pull-only token, refused
    let out = skopeo_copy_output(&oci_ref(&src, "latest"), &dst, &tls);
    assert!(!out.status.success());
    // wrong password: token endpoint refuses
    let out = skopeo_copy_output(
        &oci_ref(&src, "latest"),
        &dst,
        &[tls[0], "--dest-creds", "bob:wrong"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .to_lowercase()
        .contains("unauthorized"));
    // credentialed push
    skopeo_copy(
        &oci_ref(&src, "latest"),
        &dst,
        &[tls[0], "--dest-creds", "bob:hunter2"],
    );
    assert_manifest_matches(&reg.host(), "test/img", "latest", &built[0].manifests[0]);

    // anonymous and credentialed pulls
    let stls = "--src-tls-verify=false";
    skopeo_copy(&dst, &oci_ref(&tmp.path().join("anon"), "x"), &[stls]);
    skopeo_copy(
        &dst,
        &oci_ref(&tmp.path().join("cred"), "x"),
        &[stls, "--src-creds", "bob:hunter2"],
    );
    let out = skopeo_copy_output(
        &dst,
        &oci_ref(&tmp.path().join("bad"), "x"),
        &[stls, "--src-creds", "bob:nope"],
    );
    assert!(!out.status.success());

    let log = gate.token_requests();
    assert!(
        log.iter()
            .all(|t| t.service.as_deref() == Some("strata-test")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|t| t.basic_given
            && t.user.as_deref() == Some("bob")
            && t.status == 200
            && t.granted
                .contains(&"repository:test/img:pull,push".to_string())),
        "{log:?}"
    );
    assert!(
        log.iter().any(|t| !t.basic_given
            && t.status == 200
            && t.granted == ["repository:test/img:pull"]),
        "{log:?}"
    );
    let refused = log.iter().filter(|t| t.status == 401).count();
    assert!(refused >= 2, "{log:?}");
    assert!(log
        .iter()
        .filter(|t| t.status == 401)
        .all(|t| t.basic_given && t.granted.is_empty()));
    assert!(gate.challenges() > 3);
    // no password anywhere in what the gate keeps
    let kept = format!("{:?}{:?}", gate.token_requests(), gate.requests());
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
    assert!(!kept.contains("hunter2") && !kept.contains(&b64));
    assert!(kept.contains("Basic <redacted>"));

    // by hand: token, then its use; a pull token cannot push
    let r = curl(&[
        "-u",
        "bob:hunter2",
        &format!("{realm}?service=strata-test&scope=repository:test/img:pull"),
    ]);
    assert_eq!(r.status, 200);
    let j = token_json(&r);
    assert_eq!(j["expires_in"], 300);
    let issued = j["issued_at"].as_str().unwrap();
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );
    let token = j["token"].as_str().unwrap();
    let bearer = format!("Bearer {token}");
    let r = http_request(
        &gh,
        "GET",
        "/v2/test/img/manifests/latest",
        &[("Authorization", &bearer), ("Accept", ACCEPT_ALL)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = http_request(&gh, "GET", "/v2/", &[("Authorization", &bearer)], b"").unwrap();
    assert_eq!(r.status, 200);
    let r = http_request(
        &gh,
        "POST",
        "/v2/test/img/blobs/uploads/",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    let r = http_request(
        &gh,
        "GET",
        "/v2/other/manifests/latest",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = http_request(
        &gh,
        "GET",
        "/v2/test/img/manifests/latest",
        &[("Authorization", "Bearer forged")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn token_gate_without_anonymous_access_token_key_and_expiry() {
    let (tmp, built, reg) = gate_setup();
    let src = tmp.path().join("src");
    skopeo_copy(
        &oci_ref(&src, "latest"),
        &reg.docker_ref("test/img:latest"),
        &["--dest-tls-verify=false"],
    );
    let gate = TokenGate::start(
        &reg.host(),
        TokenOpts {
            user: Some(("carol".into(), "pw".into())),
            anonymous_pull: false,
            key: "access_token".into(),
            expires_in: None,
        },
    );
    let url = format!(
        "{}?service=strata-test&scope=repository:test/img:pull",
        gate.realm()
    );
    let r = curl(&[&url]);
    assert_eq!(r.status, 401);
    assert_eq!(token_json(&r)["errors"][0]["code"], "UNAUTHORIZED");
    let r = curl(&["-u", "carol:bad", &url]);
    assert_eq!(r.status, 401);
    let r = curl(&["-u", "carol:pw", &url]);
    assert_eq!(r.status, 200);
    let j = token_json(&r);
    assert!(
        j["access_token"].is_string() && j.get("token").is_none() && j.get("expires_in").is_none(),
        "{j}"
    );

    let src_ref = format!("docker://{}/test/img:latest", gate.host());
    let out = skopeo_copy_output(
        &src_ref,
        &oci_ref(&tmp.path().join("a"), "x"),
        &["--src-tls-verify=false"],
    );
    assert!(!out.status.success(), "anonymous pull must be refused");
    skopeo_copy(
        &src_ref,
        &oci_ref(&tmp.path().join("b"), "x"),
        &["--src-tls-verify=false", "--src-creds", "carol:pw"],
    );
    assert!(tmp
        .path()
        .join("b/blobs/sha256")
        .join(&built[0].manifests[0].config_digest[7..])
        .exists());

    // expiry is enforced
    let short = TokenGate::start(
        &reg.host(),
        TokenOpts {
            user: None,
            anonymous_pull: true,
            key: "token".into(),
            expires_in: Some(1),
        },
    );
    let r = curl(&[&format!(
        "{}?service=strata-test&scope=repository:test/img:pull",
        short.realm()
    )]);
    let j = token_json(&r);
    assert_eq!(j["expires_in"], 1);
    let bearer = format!("Bearer {}", j["token"].as_str().unwrap());
    let target = "/v2/test/img/manifests/latest";
    let h = [("Authorization", bearer.as_str()), ("Accept", ACCEPT_ALL)];
    assert_eq!(
        http_request(&short.host(), "GET", target, &h, b"")
            .unwrap()
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        http_request(&short.host(), "GET", target, &h, b"")
            .unwrap()
            .status,
        401
    );
    assert_eq!(short.live_tokens(), 0);
}

#[test]
fn fault_proxy_forwards_skopeo_push_and_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let built = make_layout(&src, &[TestImage::single("latest")]);
    let reg = Registry::plain();
    let proxy = FaultProxy::start(&reg.host());
    let dst = format!("docker://{}/test/img:latest", proxy.host());
    skopeo_copy(&oci_ref(&src, "latest"), &dst, &["--dest-tls-verify=false"]);
    let m = assert_manifest_matches(&reg.host(), "test/img", "latest", &built[0].manifests[0]);

    // The uploads went through the proxy: the upstream's Location headers
    // were rewritten, else PATCH/PUT would have gone to the registry itself.
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .all(|r| r.listener == 0 && r.status != 0 && r.status < 500),
        "{reqs:#?}"
    );
    assert!(proxy.statuses("POST", "/blobs/uploads/").contains(&202));
    assert!(proxy.count("PATCH", "/blobs/uploads/") >= 3, "{reqs:#?}");
    assert_eq!(
        proxy
            .statuses("PUT", "/blobs/uploads/")
            .iter()
            .filter(|&&s| s == 201)
            .count(),
        3,
        "2 layers + config"
    );
    assert_eq!(proxy.statuses("PUT", "/manifests/latest"), [201]);

    proxy.reset_stats();
    assert_eq!(proxy.request_count(), 0);
    skopeo_copy(
        &dst,
        &oci_ref(&tmp.path().join("pulled"), "x"),
        &["--src-tls-verify=false"],
    );
    let mut layer_bytes = 0;
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(proxy.bytes_sent_for(d), l["size"].as_u64().unwrap(), "{d}");
        layer_bytes += l["size"].as_u64().unwrap();
    }
    assert!(proxy.bytes_sent() > layer_bytes);
    assert_eq!(
        proxy.bytes_sent(),
        proxy.bytes_by_path().values().sum::<u64>()
    );
    let counts = proxy.status_counts();
    assert!(
        counts
            .keys()
            .any(|(m, p, s)| m == "GET" && p == "/v2/test/img/manifests/latest" && *s == 200),
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), proxy.request_count());
}

#[test]
fn fault_cut_after_then_range_resume() {
    let (_reg, proxy, digest, blob) = proxy_with_blob();
    let url = blob_url(&proxy.host(), &digest);
    let id = proxy.add_fault(Fault::new("GET", &digest, FaultKind::CutAfter(1000)));
    let r = curl(&[&url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.exit, 18, "curl: partial file; {}", r.stderr);
    assert_eq!(r.header("content-length").unwrap(), BLOB_LEN.to_string());
    assert_eq!(r.body, blob[..1000]);
    assert_eq!(proxy.fired(id), 1);

    let r2 = curl(&["-r", "1000-", &url]);
    assert_eq!((r2.exit, r2.status), (0, 206));
    assert_eq!(
        r2.header("content-range").unwrap(),
        format!("bytes 1000-{}/{BLOB_LEN}", BLOB_LEN - 1)
    );
    let mut all = r.body.clone();
    all.extend_from_slice(&r2.body);
    assert_eq!(sha256_digest(&all), digest);
    assert_eq!(proxy.fired(id), 1, "fires once");
    assert_eq!(proxy.bytes_sent_for(&digest), BLOB_LEN as u64);
    assert_eq!(proxy.statuses("GET", &digest), [200, 206]);
    let reqs = proxy.matching("GET", &digest);
    assert_eq!(reqs[0].faults, ["CutAfter(1000)"]);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=1000-"));
    // HEAD is not matched by a GET rule and has no body
    let r = curl(&["-I", &url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").unwrap(), BLOB_LEN.to_string());
}

#[test]
fn fault_flip_byte_whole_and_ranged() {
    let (_reg, proxy, digest, blob) = proxy_with_blob();
    let url = blob_url(&proxy.host(), &digest);
    let diffs = |got: &[u8], want: &[u8]| -> Vec<usize> {
        assert_eq!(got.len(), want.len());
        (0..got.len()).filter(|&i| got[i] != want[i]).collect()
    };
    let id = proxy.add_fault(Fault::new("GET", &digest, FaultKind::FlipByte(123_456)));
    let r = curl(&[&url]);
    assert_eq!((r.exit, r.status), (0, 200));
    assert_ne!(sha256_digest(&r.body), digest);
    assert_eq!(diffs(&r.body, &blob), [123_456]);
    assert_eq!(r.body[123_456], blob[123_456] ^ 0xff);
    assert_eq!(proxy.fired(id), 1);
    assert_eq!(curl(&[&url]).body, blob, "fired once only");

    // offset counted from the blob start, not the 206 body start
    let id = proxy.add_fault(Fault::new("GET", &digest, FaultKind::FlipByte(123_456)));
    let r = curl(&["-r", "100000-", &url]);
    assert_eq!(r.status, 206);
    assert_eq!(diffs(&r.body, &blob[100_000..]), [23_456]);
    assert_eq!(proxy.fired(id), 1);

    // a range not covering the offset does not consume the fault
    let id = proxy.add_fault(Fault::new("GET", &digest, FaultKind::FlipByte(10)));
    let r = curl(&["-r", "100-", &url]);
    assert_eq!(r.body, blob[100..]);
    assert_eq!(proxy.fired(id), 0);
    let r = curl(&[&url]);
    assert_eq!(diffs(&r.body, &blob), [10]);
    assert_eq!(proxy.fired(id), 1);
}

#[test]
fn fault_status_429_and_503_then_success() {
    let (_reg, proxy, digest, blob) = proxy_with_blob();
    let url = blob_url(&proxy.host(), &digest);
    let a = proxy.add_fault(Fault::new("GET", &digest, FaultKind::Status(429, Some(2))));
    let r = curl(&[&url]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["errors"][0]["code"], "TOOMANYREQUESTS");
    let r = curl(&[&url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, blob);

    let b = proxy.add_fault(Fault::new("*", "/blobs/", FaultKind::Status(503, None)).times(2));
    assert_eq!(curl(&[&url]).status, 503);
    let r = curl(&["-I", &url]);
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_none());
    assert_eq!(curl(&[&url]).status, 200);
    assert_eq!((proxy.fired(a), proxy.fired(b)), (1, 2));
    assert_eq!(proxy.statuses("GET", &digest), [429, 200, 503, 200]);
    assert_eq!(proxy.statuses("HEAD", &digest), [503]);
    // HEAD answers carry no body; GET bodies: 2 blobs + the small JSON errors
    assert_eq!(proxy.matching("HEAD", &digest)[0].body_bytes, 0);
    let injected: u64 = proxy
        .matching("GET", &digest)
        .iter()
        .filter(|r| r.status >= 429)
        .map(|r| r.body_bytes)
        .sum();
    assert!(injected > 0);
    assert_eq!(
        proxy.bytes_sent_for(&digest),
        2 * BLOB_LEN as u64 + injected
    );
}

#[test]
fn fault_redirect_to_second_listener_without_authorization() {
    let (_reg, proxy, digest, blob) = proxy_with_blob();
    let second = proxy.second_host();
    assert!(second.starts_with("localhost:") && second != proxy.host());
    let url = format!("{}?probe=1", blob_url(&proxy.host(), &digest));
    let id =
        proxy.add_fault(Fault::new("GET", &digest, FaultKind::RedirectTo(second.clone())).times(2));
    let r = curl(&["-H", "Authorization: Bearer sekrit", &url]);
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://{second}/v2/test/blob/blobs/{digest}?probe=1")
    );
    assert!(proxy.second_listener_requests().is_empty());

    let r = curl(&["-L", "-H", "Authorization: Bearer sekrit", &url]);
    assert_eq!((r.exit, r.status), (0, 200));
    assert_eq!(r.body, blob);
    assert_eq!(proxy.fired(id), 2);
    assert_eq!(proxy.auth_headers(0), ["Bearer sekrit", "Bearer sekrit"]);
    assert!(
        proxy.auth_headers(1).is_empty(),
        "{:?}",
        proxy.auth_headers(1)
    );
    let on2 = proxy.second_listener_requests();
    assert_eq!(on2.len(), 1);
    assert_eq!((on2[0].status, on2[0].body_bytes), (200, BLOB_LEN as u64));
    assert_eq!(
        on2[0].target,
        format!("/v2/test/blob/blobs/{digest}?probe=1")
    );
    // the second listener records Authorization when it does get one
    let r = curl(&[
        "-H",
        "Authorization: Bearer direct",
        &blob_url(&second, &digest),
    ]);
    assert_eq!(r.status, 200);
    assert_eq!(proxy.auth_headers(1), ["Bearer direct"]);
}

#[test]
fn fault_ignore_range_and_refuse_multi_range() {
    let (_reg, proxy, digest, blob) = proxy_with_blob();
    let url = blob_url(&proxy.host(), &digest);
    // without faults the registry honours ranges, even several
    let r = curl(&["-r", "100-", &url]);
    assert_eq!((r.status, r.body.len()), (206, BLOB_LEN - 100));
    let r = curl(&["-r", "0-9,20-29", &url]);
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges"));

    let ig = proxy.add_fault(Fault::new("GET", &digest, FaultKind::IgnoreRange));
    let r = curl(&["-r", "100-", &url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, blob);
    assert_eq!(proxy.fired(ig), 1);

    let mr =
        proxy.add_fault(Fault::new("GET", &digest, FaultKind::RefuseMultiRange).times(usize::MAX));
    let r = curl(&["-r", "0-9", &url]);
    assert_eq!((r.status, &r.body[..]), (206, &blob[..10]));
    assert_eq!(proxy.fired(mr), 0);
    let r = curl(&["-r", "0-9,20-29", &url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, blob);
    assert_eq!(proxy.fired(mr), 1);
    proxy.clear_faults();
    assert_eq!(curl(&["-r", "0-9,20-29", &url]).status, 206);
}

#[test]
fn fault_delay() {
    let (_reg, proxy, digest, _blob) = proxy_with_blob();
    let url = blob_url(&proxy.host(), &digest);
    let id = proxy.add_fault(Fault::new("HEAD", &digest, FaultKind::Delay(400)));
    let t = Instant::now();
    assert_eq!(curl(&["-I", &url]).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(proxy.fired(id), 1);
    let t = Instant::now();
    assert_eq!(curl(&["-I", &url]).status, 200);
    assert!(t.elapsed() < Duration::from_millis(400));
}

/// Sends raw bytes and reads one response on an open connection.
fn exchange(
    s: &mut TcpStream,
    rd: &mut BufReader<TcpStream>,
    req: &[u8],
    method: &str,
) -> HttpResponse {
    s.write_all(req).unwrap();
    read_http_response(rd, method).unwrap()
}

#[test]
fn fault_proxy_keep_alive_head_chunked_upload_and_locations() {
    let (reg, proxy, digest, blob) = proxy_with_blob();
    let mut s = TcpStream::connect(proxy.host()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let path = format!("/v2/test/blob/blobs/{digest}");

    let r = exchange(
        &mut s,
        &mut rd,
        format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n").as_bytes(),
        "HEAD",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").unwrap(), BLOB_LEN.to_string());
    assert!(r.body.is_empty());
    let r = exchange(
        &mut s,
        &mut rd,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n").as_bytes(),
        "GET",
    );
    assert_eq!((r.status, &r.body[..]), (206, &blob[..100]));

    // chunked PATCH upload through the same connection
    let r = exchange(
        &mut s,
        &mut rd,
        b"POST /v2/test/chunked/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST",
    );
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    let prefix = format!("http://{}/", proxy.host());
    assert!(
        loc.starts_with(&prefix),
        "Location {loc} not rewritten to the proxy"
    );
    let target = &loc[prefix.len() - 1..];
    let data = pseudo_random("chunked upload", 70_000);
    let mut req = format!("PATCH {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    for part in data.chunks(30_000) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(&mut s, &mut rd, &req, "PATCH");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("range").unwrap(), format!("0-{}", data.len() - 1));
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.starts_with(&prefix));
    let d = sha256_digest(&data);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = format!(
        "PUT {}{sep}digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        &loc[prefix.len() - 1..]
    );
    let r = exchange(&mut s, &mut rd, put.as_bytes(), "PUT");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("location").unwrap().starts_with(&prefix));
    assert_eq!(get_blob(&reg.host(), "test/chunked", &d), data);

    // an injected status keeps the connection usable
    proxy.add_fault(Fault::new("GET", "/v2/", FaultKind::Status(503, None)));
    let r = exchange(
        &mut s,
        &mut rd,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET",
    );
    assert_eq!(r.status, 503);
    let r = exchange(
        &mut s,
        &mut rd,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET",
    );
    assert_eq!(r.status, 200);

    assert_eq!(proxy.request_count(), 7);
    assert_eq!(proxy.auth_headers(0), ["Bearer abc"]);
    assert_eq!(
        proxy
            .requests()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [200, 206, 202, 202, 201, 503, 200]
    );
}

#[test]
fn fault_proxy_survives_bad_clients() {
    let (_reg, proxy, digest, _blob) = proxy_with_blob();
    // oversized head → 431
    let mut s = TcpStream::connect(proxy.host()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = b"GET /v2/ HTTP/1.1\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 70_000));
    let _ = s.write_all(&req);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // garbage → 400
    let mut s = TcpStream::connect(proxy.host()).unwrap();
    s.write_all(b"HELLO\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // client hangs up mid-body, a few times
    for _ in 0..5 {
        let mut s = TcpStream::connect(proxy.host()).unwrap();
        s.write_all(
            format!("GET /v2/test/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut buf = [0u8; 100];
        s.read_exact(&mut buf).unwrap();
        drop(s);
    }
    assert_eq!(
        http_request(&proxy.host(), "GET", "/v2/", &[], b"")
            .unwrap()
            .status,
        200
    );
    // upstream gone → 502
    let dead = FaultProxy::start("127.0.0.1:1");
    assert_eq!(
        http_request(&dead.host(), "GET", "/v2/", &[], b"")
            .unwrap()
            .status,
        502
    );
}

/// A one-shot-per-connection fake upstream: reads a request head, answers
/// with the next canned bytes, closes.
fn fake_upstream(responses: Vec<&'static [u8]>) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for resp in responses {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = c.write_all(resp);
        }
    });
    host
}

#[test]
fn fault_proxy_chunked_and_close_delimited_responses() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n";
    const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabcdef";
    let up = fake_upstream(vec![CHUNKED, CHUNKED, CLOSE, CHUNKED]);
    let proxy = FaultProxy::start(&up);
    let h = proxy.host();

    let r = http_request(&h, "GET", "/a", &[], b"").unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    proxy.add_fault(Fault::new("GET", "/b", FaultKind::FlipByte(7)));
    let r = http_request(&h, "GET", "/b", &[], b"").unwrap();
    let mut want = b"hello world".to_vec();
    want[7] ^= 0xff;
    assert_eq!(r.body, want);

    let r = http_request(&h, "GET", "/c", &[], b"").unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"abcdef"[..]));
    assert_eq!(r.header("connection"), Some("close"));

    proxy.add_fault(Fault::new("GET", "/d", FaultKind::CutAfter(3)));
    let mut s = TcpStream::connect(&h).unwrap();
    s.write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(
        got.ends_with(b"\r\n\r\n3\r\nhel\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    assert_eq!(
        proxy
            .requests()
            .iter()
            .map(|r| r.body_bytes)
            .collect::<Vec<_>>(),
        [11, 11, 6, 3]
    );
}
