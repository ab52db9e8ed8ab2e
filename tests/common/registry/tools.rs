//! skopeo and curl wrappers.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// skopeo and curl
// ---------------------------------------------------------------------------

/// An isolated environment for skopeo: no user auth files, no system
/// registries.conf, accept-anything policy.
pub(crate) fn skopeo_env() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed directory (not one per test run); files replaced
        // atomically since several test binaries may run at once.
        let uid = rustix::process::getuid().as_raw();
        let d = std::env::temp_dir().join(format!("strata-test-skopeo-env-{uid}"));
        std::fs::create_dir_all(d.join("home")).unwrap();
        for (name, content) in [
            ("registries.conf", "unqualified-search-registries = []\n"),
            (
                "policy.json",
                r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
            ),
        ] {
            let tmp = d.join(format!("{name}.{}", std::process::id()));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, d.join(name)).unwrap();
        }
        d
    })
}

/// `skopeo copy [extra…] SRC DST` in an isolated environment; the output
/// whatever happened.
pub fn skopeo_copy_output(src: &str, dst: &str, extra: &[&str]) -> Output {
    let env = skopeo_env();
    let mut c = Command::new("skopeo");
    c.arg("--policy")
        .arg(env.join("policy.json"))
        .args(["--command-timeout", "90s", "copy", "--retry-times", "0"])
        .args(extra)
        .args([src, dst])
        .env("HOME", env.join("home"))
        .env("XDG_RUNTIME_DIR", env.join("home"))
        .env("DOCKER_CONFIG", env.join("home"))
        .env("REGISTRY_AUTH_FILE", env.join("home/auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", env.join("registries.conf"));
    let t = Instant::now();
    let out = run_with_timeout(c, Duration::from_secs(100));
    eprintln!(
        "skopeo copy {extra:?} {src} {dst}: {} in {:.2?}",
        out.status,
        t.elapsed()
    );
    out
}

/// `skopeo copy`, asserting success (stderr shown otherwise); returns stderr+stdout.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> String {
    let out = skopeo_copy_output(src, dst, extra);
    copied(out, &format!("skopeo copy {extra:?} {src} {dst}"))
}

/// A copy's stdout+stderr, asserting it succeeded (the text is shown otherwise).
pub fn copied(out: std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// True (saying which, once) when one of `tools` is not on PATH: tests then skip.
pub fn missing_tools(tools: &[&str]) -> bool {
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            eprintln!("skipping: {tool} not installed (tools/setup installs it)");
            return true;
        }
    }
    false
}

/// What `curl` got.
#[derive(Clone, Debug)]
pub struct CurlResult {
    /// curl's exit code (0 ok, 18 partial file, 22 HTTP error with `-f`…).
    pub exit: i32,
    /// Last HTTP status (`%{http_code}`), 0 if none.
    pub status: u16,
    /// Raw response header blocks (all of them, with `-L`).
    pub headers: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlResult {
    /// A header of the last response.
    pub fn header(&self, name: &str) -> Option<String> {
        let last = self
            .headers
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()?;
        last.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Runs `curl -sS ARGS…` capturing status, headers and body (30 s limit).
pub fn curl(args: &[&str]) -> CurlResult {
    let dir = tempfile::tempdir().unwrap();
    let (b, h) = (dir.path().join("body"), dir.path().join("headers"));
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-w", "%{http_code}", "-o"])
        .arg(&b)
        .arg("-D")
        .arg(&h)
        .args(args);
    let out = run_with_timeout(c, Duration::from_secs(40));
    CurlResult {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: String::from_utf8_lossy(&std::fs::read(&h).unwrap_or_default()).into_owned(),
        body: std::fs::read(&b).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
