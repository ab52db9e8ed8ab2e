//! A real `docker-registry` (plain, TLS, htpasswd, client certificates).
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// docker-registry
// ---------------------------------------------------------------------------

/// How to run a [`Registry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// Serve HTTPS with a server certificate from a fresh test CA.
    pub tls: bool,
    /// Require HTTP Basic auth with these credentials (bcrypt htpasswd).
    pub htpasswd: Option<(String, String)>,
    /// With `tls`: require a client certificate signed by the test CA
    /// (`client.cert` / `client.key`, put into certs.d dirs by `make_certs_d`).
    pub client_cert: bool,
}

/// A `docker-registry serve` process on 127.0.0.1 with storage in a tempdir.
pub struct Registry {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) creds: Option<(String, String)>,
    pub(crate) dir: tempfile::TempDir,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn plain() -> Registry {
        Registry::start(RegistryOpts::default())
    }

    pub fn start(opts: RegistryOpts) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-registry")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        if opts.tls {
            make_test_pki(d, opts.client_cert);
        }
        if let Some((user, pass)) = &opts.htpasswd {
            let mut c = Command::new("htpasswd");
            c.args(["-Bbn", user, pass]);
            let out = run_ok(c);
            std::fs::write(d.join("htpasswd"), out.stdout).unwrap();
        }
        let mut last_log = String::new();
        for _attempt in 0..8 {
            let port = free_port();
            write_registry_config(d, port, &opts);
            let log = std::fs::File::create(d.join("registry.log")).unwrap();
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let mut child = spawn_tied_to_process(cmd).expect("run docker-registry");
            match wait_ready(
                &mut child,
                d,
                port,
                opts.tls,
                opts.htpasswd.is_some(),
                opts.client_cert,
            ) {
                Ok(()) => {
                    return Registry {
                        child,
                        port,
                        tls: opts.tls,
                        creds: opts.htpasswd.clone(),
                        dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read(d.join("registry.log")).unwrap_or_default();
                    last_log = format!("{e}\n{}", String::from_utf8_lossy(&log));
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not come up:\n{last_log}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the docker-registry.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT` or `https://…`
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// `docker://127.0.0.1:PORT/<name_and_tag>` for skopeo.
    pub fn docker_ref(&self, name_and_tag: &str) -> String {
        format!("docker://{}/{name_and_tag}", self.host())
    }

    /// The test CA certificate (PEM). Panics if the registry has no TLS.
    pub fn ca_pem_path(&self) -> PathBuf {
        assert!(self.tls, "registry runs without TLS");
        self.dir.path().join("ca.crt")
    }

    /// Creates a certs.d-style tree `DIR/127.0.0.1:PORT/ca.crt`; returns
    /// the per-host directory (what `skopeo --*-cert-dir` wants).
    pub fn make_certs_d(&self, dir: &Path) -> PathBuf {
        let host_dir = dir.join(self.host());
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::copy(self.ca_pem_path(), host_dir.join("ca.crt")).unwrap();
        let client = self.dir.path().join("client.cert");
        if client.exists() {
            std::fs::copy(&client, host_dir.join("client.cert")).unwrap();
            std::fs::copy(
                self.dir.path().join("client.key"),
                host_dir.join("client.key"),
            )
            .unwrap();
        }
        host_dir
    }

    /// The htpasswd credentials, if any.
    pub fn creds(&self) -> Option<(String, String)> {
        self.creds.clone()
    }

    /// `user:pass` for `--dest-creds` / `--src-creds`. Panics without htpasswd.
    pub fn creds_arg(&self) -> String {
        let (u, p) = self.creds.as_ref().expect("registry without htpasswd");
        format!("{u}:{p}")
    }

    /// Root of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("registry.log")).unwrap_or_default(),
        )
        .into_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the freshly started registry answers `GET /v2/` as expected
/// (200, or 401 with htpasswd) and is still alive (so the port is its own).
pub(crate) fn wait_ready(
    child: &mut Child,
    d: &Path,
    port: u16,
    tls: bool,
    auth: bool,
    client_cert: bool,
) -> Result<(), String> {
    let start = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let host = format!("127.0.0.1:{port}");
    let want = if auth { 401 } else { 200 };
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("docker-registry exited: {st}"));
        }
        if start.elapsed() > Duration::from_secs(15) {
            return Err("docker-registry not answering after 15 s".into());
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let status = if tls {
            let mut c = Command::new("curl");
            c.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg("--cacert")
            .arg(d.join("ca.crt"));
            if client_cert {
                c.arg("--cert")
                    .arg(d.join("client.cert"))
                    .arg("--key")
                    .arg(d.join("client.key"));
            }
            c.arg(format!("https://{host}/v2/"));
            let out = run_with_timeout(c, Duration::from_secs(10));
            String::from_utf8_lossy(&out.stdout)
                .parse::<u16>()
                .unwrap_or(0)
        } else {
            http_request(&host, "GET", "/v2/", &[], b"")
                .map(|r| r.status)
                .unwrap_or(0)
        };
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("docker-registry exited: {st}"));
        }
        if status == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("GET /v2/ answered {status}, expected {want}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub(crate) fn write_registry_config(d: &Path, port: u16, opts: &RegistryOpts) {
    let mut cfg = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: strata-test-secret
  headers:
    X-Content-Type-Options: [nosniff]
",
        data = d.join("data").display()
    );
    if opts.tls {
        cfg.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            d.join("server.crt").display(),
            d.join("server.key").display()
        ));
        if opts.client_cert {
            cfg.push_str(&format!(
                "    clientcas:\n      - {}\n",
                d.join("ca.crt").display()
            ));
        }
    }
    if opts.htpasswd.is_some() {
        cfg.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
            d.join("htpasswd").display()
        ));
    }
    std::fs::write(d.join("config.yml"), cfg).unwrap();
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate signed by it
/// (`server.crt`, `server.key`, SAN IP:127.0.0.1 and DNS:localhost) in `d`;
/// with `client`, also a client certificate (`client.cert`, `client.key`).
pub(crate) fn make_test_pki(d: &Path, client: bool) {
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.current_dir(d).args(args);
        run_ok(c);
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=strata test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    if client {
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=strata test client",
        ]);
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.cert",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ]);
    }
}
