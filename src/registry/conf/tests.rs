use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn conf(text: &str) -> RegistriesConf {
    RegistriesConf::parse(text, Path::new("/etc/containers/registries.conf"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// `host/repository` of each endpoint, `!` marking insecure ones and `~` mirrors.
fn eps(c: &RegistriesConf, reference: &str) -> Vec<String> {
    c.endpoints(&r(reference))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|e| {
            let flags = format!(
                "{}{}",
                if e.mirror { "~" } else { "" },
                if e.insecure { "!" } else { "" }
            );
            format!("{flags}{}/{}", e.host, e.repository)
        })
        .collect()
}

/// A realistic Fedora-like file: search list, short-name mode, aliases, plus our entries.
const FEDORA_LIKE: &str = r#"
unqualified-search-registries = ["registry.fedoraproject.org", "registry.access.redhat.com", "docker.io"]
short-name-mode = "enforcing"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "mirror.gcr.io"

[[registry.mirror]]
location = "10.0.0.5:5000/hub"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
location = "quay.io"
insecure = false

[[registry]]
prefix = "quay.io/internal"
location = "registry.corp.example:8443/quay-internal"
insecure = true

[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"

[[registry]]
prefix = "*.evil.example"
blocked = true

[[registry]]
location = "registry.blocked.example"
blocked = true

[[registry]]
prefix = "*.lab.example"
insecure = true
"#;

#[test]
fn no_match_is_the_reference_itself() {
    let c = conf(FEDORA_LIKE);
    assert_eq!(eps(&c, "ghcr.io/a/b:1"), ["ghcr.io/a/b"]);
    assert_eq!(
        eps(&RegistriesConf::default(), "busybox"),
        ["registry-1.docker.io/library/busybox"]
    );
    let e = RegistriesConf::default()
        .endpoints(&r("localhost:5000/x"))
        .unwrap();
    assert_eq!(
        e,
        [Endpoint {
            host: "localhost:5000".into(),
            repository: "x".into(),
            insecure: false,
            mirror: false
        }]
    );
}

#[test]
fn mirrors_first_respecting_pull_from_mirror() {
    let c = conf(FEDORA_LIKE);
    assert_eq!(
        eps(&c, "busybox"),
        [
            "~mirror.gcr.io/library/busybox",
            "registry-1.docker.io/library/busybox"
        ]
    );
    assert_eq!(
        eps(&c, &format!("alpine@{D}")),
        [
            "~mirror.gcr.io/library/alpine",
            "~!10.0.0.5:5000/hub/library/alpine",
            "registry-1.docker.io/library/alpine"
        ]
    );
}

#[test]
fn tag_only_and_digest_only_mirrors() {
    let c = conf(
        r#"
[[registry]]
location = "example.com"
[[registry.mirror]]
location = "tags.example.net"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "digests.example.net"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "any.example.net"
pull-from-mirror = "all"
"#,
    );
    assert_eq!(
        eps(&c, "example.com/a:1"),
        ["~tags.example.net/a", "~any.example.net/a", "example.com/a"]
    );
    assert_eq!(
        eps(&c, &format!("example.com/a@{D}")),
        [
            "~digests.example.net/a",
            "~any.example.net/a",
            "example.com/a"
        ]
    );
    // Tag and digest: fetched by digest.
    assert_eq!(
        eps(&c, &format!("example.com/a:1@{D}")),
        [
            "~digests.example.net/a",
            "~any.example.net/a",
            "example.com/a"
        ]
    );
}

#[test]
fn mirror_by_digest_only_overrides_each_mirror() {
    let c = conf(
        r#"
[[registry]]
location = "example.com"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m1.example.net"
[[registry.mirror]]
location = "m2.example.net"
pull-from-mirror = "tag-only"
"#,
    );
    assert_eq!(eps(&c, "example.com/a:1"), ["example.com/a"]);
    assert_eq!(
        eps(&c, &format!("example.com/a@{D}")),
        ["~m1.example.net/a", "~m2.example.net/a", "example.com/a"]
    );
}

#[test]
fn longest_prefix_on_component_boundaries() {
    let c = conf(FEDORA_LIKE);
    assert_eq!(eps(&c, "quay.io/podman/stable"), ["quay.io/podman/stable"]);
    assert_eq!(
        eps(&c, "quay.io/internal/tool"),
        ["!registry.corp.example:8443/quay-internal/tool"]
    );
    assert_eq!(
        eps(&c, "quay.io/internal"),
        ["!registry.corp.example:8443/quay-internal"]
    );
    assert_eq!(
        eps(&c, "quay.io/internalx/tool"),
        ["quay.io/internalx/tool"]
    );
    assert_eq!(
        eps(&c, "example.com/foo/x/y:2"),
        ["internal.example.com/bar/x/y"]
    );
    assert_eq!(eps(&c, "example.com/foo"), ["internal.example.com/bar"]);
    assert_eq!(eps(&c, "example.com/foobar"), ["example.com/foobar"]);
    // A port is part of the host: `quay.io` does not cover `quay.io:443`.
    assert_eq!(eps(&c, "quay.io:443/a"), ["quay.io:443/a"]);
}

#[test]
fn rewriting_normalises_like_a_reference() {
    let c = conf(
        r#"
[[registry]]
prefix = "corp.example/hub"
location = "docker.io"
[[registry]]
prefix = "corp.example/nothing"
location = "mirror.example"
"#,
    );
    assert_eq!(
        eps(&c, "corp.example/hub/alpine"),
        ["registry-1.docker.io/library/alpine"]
    );
    assert_eq!(
        eps(&c, "corp.example/hub/user/app"),
        ["registry-1.docker.io/user/app"]
    );
    assert_eq!(eps(&c, "corp.example/nothing/x"), ["mirror.example/x"]);
    let e = c.endpoints(&r("corp.example/nothing")).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"/etc/containers/registries.conf: prefix "corp.example/nothing": corp.example/nothing rewritten to "mirror.example": no repository left"#
    );
}

#[test]
fn wildcards_match_subdomains_only() {
    let c = conf(FEDORA_LIKE);
    assert_eq!(eps(&c, "a.lab.example/x"), ["!a.lab.example/x"]);
    assert_eq!(
        eps(&c, "b.a.lab.example:5000/x"),
        ["!b.a.lab.example:5000/x"]
    );
    assert_eq!(eps(&c, "lab.example/x"), ["lab.example/x"]);
    assert_eq!(eps(&c, "xlab.example/x"), ["xlab.example/x"]);
    assert!(c.is_insecure("a.lab.example"));
    assert!(!c.is_insecure("lab.example"));

    // An exact host prefix beats a wildcard of equal match length.
    let c = conf(
        r#"
[[registry]]
prefix = "*.example.com"
location = "wild.example.net"
[[registry]]
location = "a.example.com"
insecure = true
"#,
    );
    assert_eq!(eps(&c, "a.example.com/x"), ["!a.example.com/x"]);
    assert_eq!(eps(&c, "b.example.com/x/y"), ["wild.example.net/x/y"]);
}

#[test]
fn blocked_names_registry_and_file() {
    let c = conf(FEDORA_LIKE);
    let e = c
        .endpoints(&r("registry.blocked.example/a/b:1"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "registry registry.blocked.example/a/b is blocked by /etc/containers/registries.conf"
    );
    assert!(matches!(
        c.endpoints(&r("x.evil.example/a")),
        Err(ConfError::Blocked { .. })
    ));
}

#[test]
fn is_insecure_by_location_host() {
    let c = conf(FEDORA_LIKE);
    assert!(c.is_insecure("registry.corp.example:8443"));
    assert!(c.is_insecure("10.0.0.5:5000"));
    assert!(!c.is_insecure("quay.io"));
    assert!(!c.is_insecure("registry.corp.example"));
    assert!(!c.is_insecure("ghcr.io"));
}

#[test]
fn v1_lists() {
    let c = conf(
        r#"
[registries.search]
registries = ["docker.io"]
[registries.insecure]
registries = ["localhost:5000", "10.1.2.3"]
[registries.block]
registries = ["bad.example", "localhost:5000"]
"#,
    );
    assert!(c.is_insecure("localhost:5000"));
    assert!(c.is_insecure("10.1.2.3"));
    assert_eq!(eps(&c, "10.1.2.3/app"), ["!10.1.2.3/app"]);
    assert!(matches!(
        c.endpoints(&r("bad.example/x")),
        Err(ConfError::Blocked { .. })
    ));
    assert!(matches!(
        c.endpoints(&r("localhost:5000/x")),
        Err(ConfError::Blocked { .. })
    ));
}

#[test]
fn invalid_files_name_the_line() {
    let path = Path::new("/etc/containers/registries.conf.d/50-bad.conf");
    let err = |text: &str| RegistriesConf::parse(text, path).unwrap_err().to_string();
    let e = err("[[registry]]\nlocation = \"quay.io\"\ninsecure = \"yes\"\n");
    assert!(
        e.starts_with("/etc/containers/registries.conf.d/50-bad.conf: line 3, column 12: "),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    let e = err("[[registry]\n");
    assert!(
        e.starts_with("/etc/containers/registries.conf.d/50-bad.conf: line 1, column "),
        "{e}"
    );
    assert_eq!(
        err("[[registry]]\ninsecure = true\n"),
        "/etc/containers/registries.conf.d/50-bad.conf: [[registry]] #1: neither prefix nor location is set"
    );
    assert_eq!(
        err("[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"b.io\"\npull-from-mirror = \"sometimes\"\n"),
        "/etc/containers/registries.conf.d/50-bad.conf: [[registry]] #1: pull-from-mirror \"sometimes\" is not \"all\", \"digest-only\" or \"tag-only\""
    );
    assert_eq!(
        err("[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io/Upper\"\n"),
        "/etc/containers/registries.conf.d/50-bad.conf: [[registry]] #1: location \"a.io/Upper\": repository name must be lower-case"
    );
    assert_eq!(
        err("[[registry]]\nprefix = \"*.a.io/x\"\nlocation = \"b.io\"\n"),
        "/etc/containers/registries.conf.d/50-bad.conf: [[registry]] #1: prefix \"*.a.io/x\": a wildcard prefix is *.domain with no path"
    );
}

#[test]
fn dropins_replace_by_prefix_in_lexical_order() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    let d = etc.join("registries.conf.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(etc.join("registries.conf"), FEDORA_LIKE).unwrap();
    // 10- is read before 20-: 20- wins for quay.io; docker.io mirrors are replaced.
    std::fs::write(
        d.join("20-quay.conf"),
        "[[registry]]\nlocation = \"quay.io\"\nblocked = true\n",
    )
    .unwrap();
    std::fs::write(
        d.join("10-quay.conf"),
        "[[registry]]\nlocation = \"quay.io\"\ninsecure = true\n",
    )
    .unwrap();
    std::fs::write(
        d.join("30-hub.conf"),
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"hub.corp.example\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("40-new.conf"),
        "[[registry]]\nlocation = \"ghcr.io\"\ninsecure = true\n",
    )
    .unwrap();
    std::fs::write(d.join("not-a-dropin.txt"), "this is not toml [").unwrap();
    let env = ConfEnv {
        override_file: None,
        home: None,
        is_root: true,
        system_file: etc.join("registries.conf"),
        system_dir: d.clone(),
    };
    let c = RegistriesConf::load_env(&env).unwrap();
    let e = c.endpoints(&r("quay.io/a")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "registry quay.io/a is blocked by {}",
            d.join("20-quay.conf").display()
        )
    );
    assert_eq!(eps(&c, "busybox"), ["hub.corp.example/library/busybox"]);
    assert_eq!(eps(&c, "ghcr.io/x"), ["!ghcr.io/x"]);
    // Untouched entries from the main file survive, in their place.
    assert_eq!(eps(&c, "example.com/foo/x"), ["internal.example.com/bar/x"]);
    assert_eq!(c.entries()[0].prefix, "docker.io");

    // A bad drop-in is an error naming it.
    std::fs::write(d.join("50-bad.conf"), "[[registry]\n").unwrap();
    let e = RegistriesConf::load_env(&env).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: line 1", d.join("50-bad.conf").display())),
        "{e}"
    );
}

#[test]
fn file_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let env = ConfEnv {
        override_file: None,
        home: Some(home.clone()),
        is_root: false,
        system_file: tmp.path().join("etc/registries.conf"),
        system_dir: tmp.path().join("etc/registries.conf.d"),
    };
    // No user file: system file, system drop-ins, then the user's drop-ins.
    assert_eq!(
        env.sources(),
        (
            Some(env.system_file.clone()),
            vec![env.system_dir.clone(), home.join(USER_CONF_D)]
        )
    );
    // Root never reads $HOME.
    let root = ConfEnv {
        is_root: true,
        ..env.clone()
    };
    assert_eq!(
        root.sources(),
        (Some(env.system_file.clone()), vec![env.system_dir.clone()])
    );
    // A user file replaces the system file and directory.
    std::fs::create_dir_all(home.join(".config/containers")).unwrap();
    std::fs::write(
        home.join(USER_CONF),
        "[[registry]]\nlocation = \"quay.io\"\nblocked = true\n",
    )
    .unwrap();
    assert_eq!(
        env.sources(),
        (Some(home.join(USER_CONF)), vec![home.join(USER_CONF_D)])
    );
    assert!(RegistriesConf::load_env(&env)
        .unwrap()
        .endpoints(&r("quay.io/a"))
        .is_err());
    // $CONTAINERS_REGISTRIES_CONF: only that, and a missing one is empty.
    let only = ConfEnv {
        override_file: Some(tmp.path().join("nope.conf")),
        ..env.clone()
    };
    assert_eq!(only.sources(), (Some(tmp.path().join("nope.conf")), vec![]));
    assert!(RegistriesConf::load_env(&only)
        .unwrap()
        .entries()
        .is_empty());
    // Nothing at all exists: fine.
    let empty = ConfEnv { home: None, ..env };
    assert!(RegistriesConf::load_env(&empty)
        .unwrap()
        .entries()
        .is_empty());
}

#[test]
fn load_file_reads_only_that_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("registries.conf");
    std::fs::create_dir(tmp.path().join("registries.conf.d")).unwrap();
    std::fs::write(
        tmp.path().join("registries.conf.d/x.conf"),
        "[[registry]]\nlocation=\"a.io\"\nblocked=true\n",
    )
    .unwrap();
    std::fs::write(&f, "[[registry]]\nlocation = \"b.io\"\ninsecure = true\n").unwrap();
    let c = RegistriesConf::load_file(&f).unwrap();
    assert_eq!(c.entries().len(), 1);
    assert!(c.is_insecure("b.io"));
    assert!(RegistriesConf::load_file(&tmp.path().join("missing"))
        .unwrap()
        .entries()
        .is_empty());
}
