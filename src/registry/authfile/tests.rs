use std::os::unix::fs::PermissionsExt;

use super::*;

const SECRET: &str = "hunter2-s3cret";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn basic(u: &str, p: &str) -> Credential {
    Credential::Basic {
        username: u.into(),
        password: p.into(),
    }
}

/// A home directory with nothing in it, and an environment pointing at it.
fn setup() -> (tempfile::TempDir, AuthEnv) {
    let tmp = tempfile::tempdir().unwrap();
    let env = AuthEnv {
        registry_auth_file: None,
        xdg_runtime_dir: Some(tmp.path().join("run")),
        home: Some(tmp.path().join("home")),
        docker_config: None,
        is_root: false,
        path: Some(tmp.path().join("bin").into_os_string()),
    };
    (tmp, env)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn find(env: &AuthEnv, registry: &str, repository: &str) -> Option<Credential> {
    lookup_with(env, &AuthOptions::default(), registry, repository)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn parse_creds_splits_at_the_first_colon() {
    assert_eq!(parse_creds("u:p"), basic("u", "p"));
    assert_eq!(parse_creds("u:p:q"), basic("u", "p:q"));
    assert_eq!(parse_creds("u"), basic("u", ""));
    assert_eq!(parse_creds("u:"), basic("u", ""));
    assert_eq!(parse_creds(""), basic("", ""));
}

#[test]
fn search_order() {
    let (tmp, env) = setup();
    let t = tmp.path();
    let names = |env: &AuthEnv, authfile: Option<&Path>| -> Vec<PathBuf> {
        env.search_files(authfile)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(
        names(&env, None),
        [
            t.join("run/containers/auth.json"),
            t.join("home/.config/containers/auth.json"),
            t.join("home/.docker/config.json"),
            t.join("home/.dockercfg"),
        ]
    );
    assert_eq!(env.search_files(None)[3].1, AuthFileFormat::LegacyDockercfg);
    let docker = AuthEnv {
        docker_config: Some(t.join("dc")),
        xdg_runtime_dir: None,
        ..env.clone()
    };
    assert_eq!(
        names(&docker, None),
        [
            t.join("home/.config/containers/auth.json"),
            t.join("dc/config.json"),
            t.join("home/.dockercfg")
        ]
    );
    let root = AuthEnv {
        xdg_runtime_dir: None,
        is_root: true,
        home: None,
        ..env.clone()
    };
    assert_eq!(
        names(&root, None),
        [PathBuf::from("/run/containers/0/auth.json")]
    );
    let raf = AuthEnv {
        registry_auth_file: Some(t.join("raf.json")),
        ..env.clone()
    };
    assert_eq!(names(&raf, None), [t.join("raf.json")]);
    assert_eq!(names(&raf, Some(&t.join("a.json"))), [t.join("a.json")]);

    assert_eq!(
        env.login_file(None).unwrap(),
        t.join("run/containers/auth.json")
    );
    assert_eq!(raf.login_file(None).unwrap(), t.join("raf.json"));
    assert_eq!(
        raf.login_file(Some(&t.join("a.json"))).unwrap(),
        t.join("a.json")
    );
    assert_eq!(
        root.login_file(None).unwrap(),
        PathBuf::from("/run/containers/0/auth.json")
    );
    let user = AuthEnv {
        xdg_runtime_dir: None,
        ..env.clone()
    };
    assert_eq!(
        user.login_file(None).unwrap(),
        t.join("home/.config/containers/auth.json")
    );
    let nothing = AuthEnv {
        xdg_runtime_dir: None,
        home: None,
        ..env
    };
    assert_eq!(
        nothing.login_file(None).unwrap_err().to_string(),
        "auth.json: neither XDG_RUNTIME_DIR nor HOME is set to place it"
    );
}

#[test]
fn longest_key_on_component_boundaries() {
    let (tmp, env) = setup();
    let auth = format!(
        r#"{{"auths": {{
            "quay.io": {{"auth": "{}"}},
            "quay.io/team": {{"auth": "{}"}},
            "quay.io/team/app": {{"identitytoken": "tok"}},
            "quay.io/teamx": {{"auth": "{}"}},
            "localhost:5000": {{"auth": "{}"}}
        }}, "unrelated": {{"keep": true}}}}"#,
        b64("root:r"),
        b64("team:t"),
        b64("x:x"),
        b64("local:l=:x")
    );
    write(&tmp.path().join("run/containers/auth.json"), &auth);
    assert_eq!(find(&env, "quay.io", "other/app"), Some(basic("root", "r")));
    assert_eq!(
        find(&env, "quay.io", "team/other"),
        Some(basic("team", "t"))
    );
    assert_eq!(
        find(&env, "quay.io", "team/app"),
        Some(Credential::IdentityToken("tok".into()))
    );
    assert_eq!(
        find(&env, "quay.io", "team/app/sub"),
        Some(Credential::IdentityToken("tok".into()))
    );
    assert_eq!(find(&env, "quay.io", "teamy/app"), Some(basic("root", "r")));
    assert_eq!(find(&env, "quay.io", "teamx/app"), Some(basic("x", "x")));
    assert_eq!(
        find(&env, "localhost:5000", "a"),
        Some(basic("local", "l=:x"))
    );
    assert_eq!(find(&env, "localhost", "a"), None);
    assert_eq!(find(&env, "ghcr.io", "a"), None);
    // --creds wins over everything.
    let opts = AuthOptions {
        authfile: None,
        creds: Some(basic("c", "d")),
    };
    assert_eq!(
        lookup_with(&env, &opts, "quay.io", "x").unwrap(),
        Some(basic("c", "d"))
    );
}

#[test]
fn docker_style_keys_and_files() {
    let (tmp, env) = setup();
    let home = tmp.path().join("home");
    // Docker's config.json: URL keys, an entry left empty by `docker login` with a store.
    write(
        &home.join(".docker/config.json"),
        &format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://registry.lan:5000/v2/": {{"auth": "{}", "email": "x@y"}},
                "ghcr.io": {{}} }}, "HttpHeaders": {{"User-Agent": "x"}}}}"#,
            b64("hub:h"),
            b64("lan:l")
        ),
    );
    write(
        &home.join(".dockercfg"),
        &format!(
            r#"{{"https://ghcr.io/v1/": {{"auth": "{}"}}}}"#,
            b64("old:o")
        ),
    );
    assert_eq!(
        find(&env, "docker.io", "library/busybox"),
        Some(basic("hub", "h"))
    );
    assert_eq!(
        find(&env, "index.docker.io", "library/busybox"),
        Some(basic("hub", "h"))
    );
    assert_eq!(
        find(&env, "registry.lan:5000", "x/y"),
        Some(basic("lan", "l"))
    );
    // The empty ghcr.io entry falls through to the next file, the legacy one.
    assert_eq!(find(&env, "ghcr.io", "x"), Some(basic("old", "o")));

    // An earlier file wins; an exact-spelled key beats a URL one normalising the same.
    write(
        &home.join(".config/containers/auth.json"),
        &format!(
            r#"{{"auths": {{"https://docker.io": {{"auth": "{}"}}, "docker.io": {{"auth": "{}"}}}}}}"#,
            b64("a:1"),
            b64("b:2")
        ),
    );
    assert_eq!(
        find(&env, "docker.io", "library/busybox"),
        Some(basic("b", "2"))
    );

    assert_eq!(
        normalise_key("https://index.docker.io/v1/", false),
        "docker.io"
    );
    assert_eq!(normalise_key("registry-1.docker.io", false), "docker.io");
    assert_eq!(normalise_key("Quay.IO/ns/", false), "quay.io/ns");
    assert_eq!(normalise_key("quay.io/ns", true), "quay.io");
}

#[test]
fn invalid_files_are_named_without_contents() {
    let (tmp, env) = setup();
    let file = tmp.path().join("run/containers/auth.json");
    let err = |text: &str| {
        write(&file, text);
        let e = lookup_with(&env, &AuthOptions::default(), "quay.io", "a").unwrap_err();
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(
            !shown.contains(SECRET) && !debug.contains(SECRET),
            "{debug}"
        );
        assert!(!shown.contains(&b64(&format!("u:{SECRET}"))), "{shown}");
        shown
    };
    let f = file.display();
    assert_eq!(
        err(&format!(
            "{{\"auths\": {{\"quay.io\": {{\"auth\": \"{SECRET}\" "
        )),
        format!("{f}: truncated JSON")
    );
    assert_eq!(
        err(&format!("{{\"auths\": [\"{SECRET}\"]}}")),
        format!("{f}: auths is not an object")
    );
    assert_eq!(
        err(&format!("{{\"x\": '{SECRET}'}}")),
        format!("{f}: invalid JSON at line 1 column 7")
    );
    assert_eq!(
        err(&format!("[\"{SECRET}\"]")),
        format!("{f}: not a JSON object")
    );
    assert_eq!(
        err(&format!(
            "{{\"auths\": {{\"quay.io\": {{\"auth\": \"{}\"}}}}}}",
            b64(SECRET)
        )),
        format!("{f}: auths[\"quay.io\"].auth is not base64 of USER:PASSWORD")
    );
    assert_eq!(
        err(&format!(
            "{{\"auths\": {{\"quay.io\": {{\"auth\": \"{SECRET}!\"}}}}}}"
        )),
        format!("{f}: auths[\"quay.io\"].auth is not base64 of USER:PASSWORD")
    );
    write(
        &file,
        &format!(
            "{{\"auths\": {{\"quay.io\": {{\"auth\": \"{}\"}}}}}}",
            b64(&format!("u:{SECRET}"))
        ),
    );
    let cred = find(&env, "quay.io", "a").unwrap();
    assert!(!format!("{cred:?}").contains(SECRET));
    assert_eq!(format!("{cred:?}"), "Basic(u, <redacted>)");
    assert_eq!(
        format!("{:?}", Credential::IdentityToken(SECRET.into())),
        "IdentityToken(<redacted>)"
    );

    // Too large: refused before parsing.
    write(&file, &" ".repeat(MAX_AUTH_FILE_SIZE as usize + 1));
    assert_eq!(err_only(&env), format!("{f}: larger than 4 MiB"));
    // An empty file holds nothing; a directory where a file should be is an I/O error.
    write(&file, "");
    assert_eq!(find(&env, "quay.io", "a"), None);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert!(err_only(&env).starts_with(&format!("{f}: ")));
}

fn err_only(env: &AuthEnv) -> String {
    lookup_with(env, &AuthOptions::default(), "quay.io", "a")
        .unwrap_err()
        .to_string()
}

const HELPER: &str = r#"#!/bin/sh
[ "$1" = get ] || exit 3
read server
case "$server" in
  quay.io) printf '{"ServerURL":"%s","Username":"hu","Secret":"hunter2-s3cret"}\n' "$server" ;;
  token.example) printf '{"ServerURL":"%s","Username":"<token>","Secret":"tok"}' "$server" ;;
  empty.example) printf '{"ServerURL":"%s","Username":"","Secret":""}' "$server" ;;
  broken.example) echo "boom hunter2-s3cret"; echo "hunter2-s3cret" >&2; exit 2 ;;
  huge.example) head -c 1100000 /dev/zero | tr '\0' a ;;
  garbage.example) echo "not json hunter2-s3cret" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"#;

#[test]
fn credential_helpers() {
    let (tmp, env) = setup();
    let bin = tmp.path().join("bin");
    write(&bin.join("docker-credential-fake"), HELPER);
    std::fs::set_permissions(
        bin.join("docker-credential-fake"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(
        &tmp.path().join("run/containers/auth.json"),
        &format!(
            r#"{{"credHelpers": {{"quay.io": "fake", "broken.example": "fake", "huge.example": "fake",
                "garbage.example": "fake", "missing.example": "absent", "evil.example": "../x",
                "notfound.example": "fake"}},
                "auths": {{"notfound.example": {{"auth": "{}"}}, "ghcr.io": {{}}}},
                "credsStore": "fake"}}"#,
            b64("fallback:f")
        ),
    );
    assert_eq!(find(&env, "quay.io", "a/b"), Some(basic("hu", SECRET)));
    assert_eq!(
        find(&env, "token.example", "a"),
        Some(Credential::IdentityToken("tok".into()))
    );
    assert_eq!(find(&env, "empty.example", "a"), None);
    // The helper has nothing: the file's auths, then nothing.
    assert_eq!(
        find(&env, "notfound.example", "a"),
        Some(basic("fallback", "f"))
    );
    assert_eq!(find(&env, "ghcr.io", "a"), None);

    let fails = |registry: &str| {
        let e = lookup_with(&env, &AuthOptions::default(), registry, "a").unwrap_err();
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(
            !shown.contains(SECRET) && !debug.contains(SECRET) && !shown.contains("boom"),
            "{debug}"
        );
        shown
    };
    assert_eq!(
        fails("broken.example"),
        "credential helper docker-credential-fake: `get` failed (exit status: 2)"
    );
    assert_eq!(
        fails("huge.example"),
        "credential helper docker-credential-fake: output larger than 1 MiB"
    );
    assert_eq!(
        fails("garbage.example"),
        "credential helper docker-credential-fake: `get` printed no JSON object"
    );
    assert_eq!(
        fails("missing.example"),
        "credential helper docker-credential-absent: not found on $PATH"
    );
    assert_eq!(
        fails("evil.example"),
        "credential helper docker-credential-../x: not a valid helper name"
    );
}

#[test]
fn login_preserves_other_keys_and_logout_removes() {
    let (tmp, env) = setup();
    let file = tmp.path().join("run/containers/auth.json");
    // A fresh file in a fresh directory: 0600 in 0700.
    let written = login_with(&env, None, "quay.io/team", &basic("u", SECRET)).unwrap();
    assert_eq!(written, file);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(find(&env, "quay.io", "team/app"), Some(basic("u", SECRET)));

    write(
        &file,
        &format!(
            r#"{{"auths": {{"quay.io": {{"auth": "{}", "email": "me@x"}}, "https://index.docker.io/v1/": {{"auth": "{}"}}}},
                "credHelpers": {{"gcr.io": "gcloud"}}, "future": [1, 2, {{"x": null}}]}}"#,
            b64("old:o"),
            b64("hub:h")
        ),
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    login_with(
        &env,
        None,
        "quay.io",
        &Credential::IdentityToken("tok".into()),
    )
    .unwrap();
    login_with(&env, None, "localhost:5000", &basic("l", "p:q")).unwrap();
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        v["auths"]["quay.io"],
        serde_json::json!({"identitytoken": "tok", "email": "me@x"})
    );
    assert_eq!(v["auths"]["localhost:5000"]["auth"], b64("l:p:q"));
    assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");
    assert_eq!(v["future"], serde_json::json!([1, 2, {"x": null}]));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary files left beside it.
    let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["auth.json"]);

    assert!(logout_with(&env, None, "docker.io").unwrap());
    assert!(!logout_with(&env, None, "docker.io").unwrap());
    assert!(logout_with(&env, None, "quay.io").unwrap());
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        v["auths"],
        serde_json::json!({"localhost:5000": {"auth": b64("l:p:q")}})
    );
    assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");

    // --authfile elsewhere; logout of a missing file creates nothing.
    let other = tmp.path().join("elsewhere/a.json");
    assert!(!logout_with(&env, Some(&other), "quay.io").unwrap());
    assert!(!other.exists());
    assert_eq!(
        login_with(&env, Some(&other), "quay.io", &basic("a", "b")).unwrap(),
        other
    );
    assert_eq!(
        lookup_with(
            &env,
            &AuthOptions {
                authfile: Some(other.clone()),
                creds: None
            },
            "quay.io",
            "x"
        )
        .unwrap(),
        Some(basic("a", "b"))
    );

    // Bad keys and bad files are refused without touching the file.
    let e = login_with(&env, Some(&other), "Quay.io/Team", &basic("a", SECRET)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: login key \"Quay.io/Team\": repository name must be lower-case",
            other.display()
        )
    );
    assert!(!format!("{e:?}").contains(SECRET));
    write(&other, "{\"auths\": 3}");
    let e = login_with(&env, Some(&other), "quay.io", &basic("a", SECRET)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: auths is not an object", other.display())
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "{\"auths\": 3}");
}
