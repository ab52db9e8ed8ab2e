//! A hermetic place to run the strata binary: its own HOME, no auth files, and empty
//! registries.conf, storage.conf and containers.conf, so nothing of the machine's
//! configuration leaks into a test; plus the calls every CLI test makes (run, expect
//! success, expect exactly one error line, pull with `--json`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::new_in(None)
    }

    /// In a directory of its own under `parent` (a filesystem the test chose).
    pub fn new_in(parent: Option<&Path>) -> Sandbox {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        // podman wants a driver and a runroot; every command names its store anyway.
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/default-root\"\nrunroot = \"{0}/default-run\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("containers.conf"), "").unwrap();
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// This sandbox's environment for a command (strata, podman, …).
    pub fn envs(&self, c: &mut Command) {
        c.env("HOME", self.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.path().join("home"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.path().join("registries.conf"),
            )
            .env("CONTAINERS_STORAGE_CONF", self.path().join("storage.conf"))
            .env("CONTAINERS_CONF", self.path().join("containers.conf"));
    }

    pub fn cmd(&self, repo: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.arg("--repo").arg(repo).args(args);
        self.envs(&mut c);
        c
    }

    pub fn run(&self, repo: &Path, args: &[&str]) -> Output {
        let o = self.cmd(repo, args).output().unwrap();
        eprintln!(
            "strata {args:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn ok(&self, repo: &Path, args: &[&str]) -> Vec<u8> {
        let o = self.run(repo, args);
        assert!(o.status.success(), "strata {args:?} failed");
        o.stdout
    }

    /// The single error line of a failing command (first use of a repository notes its
    /// creation; that is not the error).
    pub fn err(&self, repo: &Path, args: &[&str]) -> String {
        let o = self.run(repo, args);
        assert!(!o.status.success(), "strata {args:?} should fail");
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        let lines: Vec<&str> = e
            .lines()
            .filter(|l| {
                !l.contains("created repository") && !l.contains("fs-verity is not supported")
            })
            .collect();
        assert_eq!(lines.len(), 1, "one error line: {e}");
        lines[0].to_string()
    }

    /// `pull --json`, parsed.
    pub fn pull(&self, repo: &Path, source: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "pull", source];
        args.extend_from_slice(extra);
        serde_json::from_slice(&self.ok(repo, &args)).unwrap()
    }
}
