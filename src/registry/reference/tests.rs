use super::*;

const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn ok(s: &str) -> Reference {
    Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn why(s: &str) -> &'static str {
    match Reference::parse(s) {
        Ok(r) => panic!("{s} parsed as {r}"),
        Err(ReferenceError::Invalid { input, why }) => {
            assert_eq!(input, s);
            why
        }
    }
}

fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
    let r = ok(s);
    (r.registry, r.repository, r.tag, r.digest)
}

fn p(
    reg: &str,
    repo: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> (String, String, Option<String>, Option<String>) {
    (
        reg.into(),
        repo.into(),
        tag.map(Into::into),
        digest.map(Into::into),
    )
}

#[test]
fn docker_hub_short_names() {
    assert_eq!(
        parts("busybox"),
        p("docker.io", "library/busybox", Some("latest"), None)
    );
    assert_eq!(
        parts("docker://busybox"),
        p("docker.io", "library/busybox", Some("latest"), None)
    );
    assert_eq!(
        parts("busybox:1.36"),
        p("docker.io", "library/busybox", Some("1.36"), None)
    );
    assert_eq!(
        parts("library/busybox"),
        p("docker.io", "library/busybox", Some("latest"), None)
    );
    assert_eq!(
        parts("user/app:v1"),
        p("docker.io", "user/app", Some("v1"), None)
    );
    assert_eq!(
        parts("docker.io/busybox"),
        p("docker.io", "library/busybox", Some("latest"), None)
    );
    assert_eq!(
        parts("index.docker.io/busybox"),
        p("docker.io", "library/busybox", Some("latest"), None)
    );
    assert_eq!(
        parts("docker.io/a/b/c"),
        p("docker.io", "a/b/c", Some("latest"), None)
    );
    // `docker` is an image name, not the transport, without `//`.
    assert_eq!(
        parts("docker:dind"),
        p("docker.io", "library/docker", Some("dind"), None)
    );
}

#[test]
fn hosts_and_ports() {
    assert_eq!(
        parts("quay.io/podman/stable"),
        p("quay.io", "podman/stable", Some("latest"), None)
    );
    assert_eq!(
        parts("localhost/app"),
        p("localhost", "app", Some("latest"), None)
    );
    assert_eq!(
        parts("localhost:5000/app:dev"),
        p("localhost:5000", "app", Some("dev"), None)
    );
    assert_eq!(
        parts("docker://127.0.0.1:5000/a/b"),
        p("127.0.0.1:5000", "a/b", Some("latest"), None)
    );
    assert_eq!(
        parts("[::1]:5000/app:x"),
        p("[::1]:5000", "app", Some("x"), None)
    );
    assert_eq!(
        parts("[fe80::1]/app"),
        p("[fe80::1]", "app", Some("latest"), None)
    );
    assert_eq!(
        parts("Registry.Example.COM/app"),
        p("registry.example.com", "app", Some("latest"), None)
    );
    assert_eq!(
        parts("my-reg.example.com:443/ns/app"),
        p("my-reg.example.com:443", "ns/app", Some("latest"), None)
    );
    // No slash: the colon starts a tag, as in distribution.
    assert_eq!(
        parts("localhost:5000"),
        p("docker.io", "library/localhost", Some("5000"), None)
    );
}

#[test]
fn tags_and_digests() {
    let r = ok(&format!("quay.io/a/b@{D256}"));
    assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D256)));
    assert_eq!(r.manifest_reference(), D256);
    assert_eq!(r.to_string(), format!("quay.io/a/b@{D256}"));

    let r = ok(&format!("docker://quay.io:8443/a/b:v2@{D256}"));
    assert_eq!(
        (r.tag.as_deref(), r.digest.as_deref()),
        (Some("v2"), Some(D256))
    );
    assert_eq!(r.manifest_reference(), D256);
    assert_eq!(r.to_string(), format!("quay.io:8443/a/b:v2@{D256}"));

    let d512 = format!("sha512:{}", "ab".repeat(64));
    assert_eq!(
        ok(&format!("x.io/y@{d512}")).digest.as_deref(),
        Some(d512.as_str())
    );

    let r = ok("fedora");
    assert_eq!(r.manifest_reference(), "latest");
    assert_eq!(r.to_string(), "docker.io/library/fedora:latest");
    assert_eq!(r.name(), "docker.io/library/fedora");

    let tag = format!("_{}", "A.b-9".repeat(25)); // 126 chars
    assert_eq!(ok(&format!("x/y:{tag}x")).tag.unwrap().len(), 127);
    assert_eq!(ok(&format!("x/y:{tag}xy")).tag.unwrap().len(), 128);
    assert_eq!(
        why(&format!("x/y:{tag}xyz")),
        "tag longer than 128 characters"
    );
}

#[test]
fn repository_grammar() {
    for good in [
        "a",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a---b",
        "a1.b2_c3__d4-e5",
        "0",
    ] {
        assert!(check_component(good).is_ok(), "{good}");
    }
    for bad in [
        "", ".a", "a.", "a..b", "a___b", "a._b", "-a", "a-", "a+b", "_a",
    ] {
        assert!(check_component(bad).is_err(), "{bad}");
    }
}

#[test]
fn failures_name_the_reason() {
    assert_eq!(why(""), "empty reference");
    assert_eq!(why("docker://"), "empty reference");
    assert_eq!(why("Busybox"), "repository name must be lower-case");
    assert_eq!(
        why("quay.io/Podman/stable"),
        "repository name must be lower-case"
    );
    assert_eq!(
        why("quay.io//stable"),
        "empty path component in the repository name"
    );
    assert_eq!(
        why("quay.io/a/"),
        "empty path component in the repository name"
    );
    assert_eq!(
        why("quay.io/"),
        "empty path component in the repository name"
    );
    assert_eq!(why(":tag"), "empty repository name");
    assert_eq!(why("a:"), "empty tag");
    assert_eq!(why("a:-x"), "tag must start with [A-Za-z0-9_]");
    assert_eq!(why("a:x/y"), "invalid registry port");
    assert_eq!(
        why("a@sha256:abc"),
        "digest is not the right number of lower-case hex digits"
    );
    assert_eq!(
        why(&format!(
            "a@{}",
            D256.to_uppercase().replace("SHA256", "sha256")
        )),
        "digest is not the right number of lower-case hex digits"
    );
    assert_eq!(
        why("a@md5:0123456789abcdef0123456789abcdef"),
        "unsupported digest algorithm (sha256 and sha512 are)"
    );
    assert_eq!(why("a@0123"), "digest has no algorithm: part");
    assert_eq!(
        why(&format!("a@{D256}@{D256}")),
        "digest is not the right number of lower-case hex digits"
    );
    assert_eq!(why("a b"), "contains whitespace or control characters");
    assert_eq!(why("ex_ample.com/a"), "invalid registry host name");
    assert_eq!(why("-ex.com/a"), "invalid registry host name");
    assert_eq!(why("ex..com/a"), "invalid registry host name");
    assert_eq!(why("localhost:http/a"), "invalid registry port");
    assert_eq!(why("localhost:99999/a"), "invalid registry port");
    assert_eq!(why(":5000/a"), "empty registry host");
    assert_eq!(why("[::1/a"), "unterminated [ in the registry host");
    assert_eq!(
        why("[zz::1]:5000/a"),
        "invalid IPv6 address in the registry host"
    );
    assert_eq!(why("[::1]x/a"), "junk after ] in the registry host");
    assert_eq!(
        why(&"0123456789abcdef".repeat(4)),
        "a 64-hex-digit name is an image ID, not a repository"
    );
    let long = format!("quay.io/{}", "a".repeat(255 - 8));
    assert_eq!(ok(&long).name().len(), 255);
    assert_eq!(why(&format!("{long}b")), "name longer than 255 characters");
    // Normalisation counts: 246 + "docker.io/library/" is too long.
    assert_eq!(why(&"a".repeat(240)), "name longer than 255 characters");
}

#[test]
fn error_text() {
    let e = Reference::parse("quay.io/Podman").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"invalid image reference "quay.io/Podman": repository name must be lower-case"#
    );
}

#[test]
fn endpoint_host() {
    assert_eq!(
        Reference::endpoint_host("docker.io"),
        "registry-1.docker.io"
    );
    assert_eq!(Reference::endpoint_host("quay.io"), "quay.io");
    assert_eq!(Reference::endpoint_host("localhost:5000"), "localhost:5000");
}

#[test]
fn display_round_trips() {
    for s in [
        "docker.io/library/busybox:latest",
        "quay.io/a/b:c",
        "[::1]:5000/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let r = ok(s);
        assert_eq!(r.to_string(), s);
        assert_eq!(ok(&r.to_string()), r);
    }
}

proptest::proptest! {
    /// Any input: no panic; whatever parses prints back to itself.
    #[test]
    fn never_panics_and_round_trips(s in "(docker://)?[a-zA-Z0-9.:/@_\\[\\]-]{0,80}") {
        if let Ok(r) = Reference::parse(&s) {
            proptest::prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn never_panics_on_any_text(s in "\\PC{0,40}") {
        let _ = Reference::parse(&s);
    }
}
