//! Test infrastructure for the registry client: a real `docker-registry`
//! (plain, TLS, htpasswd), a bearer-token gate in front of it, a fault
//! injecting reverse proxy, OCI layout builders and a `skopeo` wrapper.
//!
//! Everything listens on loopback only. Servers are written on
//! `std::net::TcpListener` with one thread per connection; they stop (and
//! child processes are killed) on `Drop`.
#![allow(dead_code)]
#![allow(clippy::new_without_default)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The `service` the token gate announces and expects.
pub const TOKEN_SERVICE: &str = "strata-test";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not poison the servers for other tests.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

type SpawnReq = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it is SIGKILLed when the test process dies, however
/// it dies. PR_SET_PDEATHSIG fires when the *thread* that forked exits, so
/// all children are forked by one thread that lives as long as the process
/// (test threads come and go).
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let tx = lock(SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    }))
    .clone();
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx)).expect("spawner alive");
    rrx.recv().expect("spawner answers")
}

/// Runs `cmd` to completion with a time limit (killing it when exceeded),
/// stdout and stderr captured.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    let shown = format!("{cmd:?}");
    let mut child = spawn_tied_to_process(cmd).unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&std::fs::read(&e).unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}

fn run_ok(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

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
    child: Child,
    port: u16,
    tls: bool,
    creds: Option<(String, String)>,
    dir: tempfile::TempDir,
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
fn wait_ready(
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn write_registry_config(d: &Path, port: u16, opts: &RegistryOpts) {
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
fn make_test_pki(d: &Path, client: bool) {
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

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 plumbing
// ---------------------------------------------------------------------------

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 200;

/// A request or status line plus headers, in order.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn status(&self) -> u16 {
        self.line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Whether an Authorization value uses the Basic scheme.
fn is_basic(auth: &str) -> bool {
    auth.get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("basic "))
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "HTTP head too large")
}

/// Reads up to and including `\n`, at most `limit` bytes.
fn read_line_limited(r: &mut impl BufRead, out: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    let mut n = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if n + take > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        n += take;
        if done {
            return Ok(n);
        }
    }
}

/// Reads a request/response head; `None` on a clean EOF before any byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut total = 0;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = read_line_limited(r, &mut line, MAX_HEAD - total)?;
        if n == 0 {
            if total == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between messages
            }
            break;
        }
        if lines.len() > MAX_HEADERS {
            return Err(too_large());
        }
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    let mut it = lines.into_iter();
    let line = it.next().unwrap_or_default();
    let mut headers = Vec::new();
    for l in it {
        let Some((k, v)) = l.split_once(':') else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad header line",
            ));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some(Head { line, headers }))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn request_framing(h: &Head) -> io::Result<Framing> {
    if h.has_token("transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match h.get("content-length") {
        Some(v) => v
            .parse()
            .map(Framing::Length)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")),
        None => Ok(Framing::Empty),
    }
}

fn response_framing(h: &Head, request_method: &str) -> Framing {
    let status = h.status();
    if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Framing::Empty;
    }
    if h.has_token("transfer-encoding", "chunked") {
        return Framing::Chunked;
    }
    match h.get("content-length").and_then(|v| v.parse().ok()) {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }
}

/// Feeds a message body to `f` piece by piece (chunked bodies de-chunked).
/// `f` returns false to stop early; then this returns `Ok(false)`.
fn read_body(
    r: &mut impl BufRead,
    framing: Framing,
    f: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    fn fixed(
        r: &mut impl BufRead,
        mut left: u64,
        f: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<bool> {
        while left > 0 {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = buf.len().min(left.min(usize::MAX as u64) as usize);
            let go = f(&buf[..k])?;
            r.consume(k);
            left -= k as u64;
            if !go {
                return Ok(false);
            }
        }
        Ok(true)
    }
    match framing {
        Framing::Empty => Ok(true),
        Framing::Length(n) => fixed(r, n, f),
        Framing::UntilClose => loop {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(true);
            }
            let k = buf.len();
            let go = f(buf)?;
            r.consume(k);
            if !go {
                return Ok(false);
            }
        },
        Framing::Chunked => loop {
            let mut line = Vec::new();
            if read_line_limited(r, &mut line, 4096)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let text = String::from_utf8_lossy(&line);
            let size_str = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers up to an empty line
                loop {
                    let mut t = Vec::new();
                    if read_line_limited(r, &mut t, MAX_HEAD)? == 0 || t == b"\r\n" || t == b"\n" {
                        return Ok(true);
                    }
                }
            }
            if !fixed(r, size, f)? {
                return Ok(false);
            }
            let mut crlf = Vec::new();
            read_line_limited(r, &mut crlf, 16)?;
        },
    }
}

/// A complete response as read by [`http_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One plain-HTTP request on a fresh connection (`Connection: close`).
pub fn http_request(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = Head {
        line: format!("{method} {target} HTTP/1.1"),
        headers: vec![
            ("Host".into(), host.into()),
            ("Connection".into(), "close".into()),
        ],
    };
    for (k, v) in headers {
        req.headers.push((k.to_string(), v.to_string()));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        req.set("Content-Length", &body.len().to_string());
    }
    let mut w = &s;
    let mut msg = req.to_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg)?;
    let mut r = BufReader::new(&s);
    read_http_response(&mut r, method)
}

/// Reads one response (skipping 1xx) for a request made with `method`.
pub fn read_http_response(r: &mut impl BufRead, method: &str) -> io::Result<HttpResponse> {
    let head = loop {
        let h = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if (100..200).contains(&h.status()) {
            continue;
        }
        break h;
    };
    let mut body = Vec::new();
    read_body(r, response_framing(&head, method), &mut |d| {
        body.extend_from_slice(d);
        Ok(true)
    })?;
    Ok(HttpResponse {
        status: head.status(),
        headers: head.headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_simple(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut h = Head {
        line: format!("HTTP/1.1 {status} {}", reason(status)),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    h.set("Content-Length", &body.len().to_string());
    if close {
        h.set("Connection", "close");
    }
    let mut msg = h.to_bytes();
    if !head_only {
        msg.extend_from_slice(body);
    }
    w.write_all(&msg)?;
    w.flush()
}

fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")
}

fn json_error(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]})
        .to_string()
        .into_bytes()
}

/// First byte offset of a `Range: bytes=N-…` request, 0 without Range;
/// `None` for several ranges or suffix ranges.
fn range_start(range: Option<&str>) -> Option<(u64, Option<u64>)> {
    let Some(r) = range else {
        return Some((0, None));
    };
    let spec = r.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((start, end))
}

// ---------------------------------------------------------------------------
// Shared server engine (fault proxy and token gate)
// ---------------------------------------------------------------------------

/// One request seen by a [`FaultProxy`] or [`TokenGate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// 0 = the main listener ([`FaultProxy::host`]), 1 = the second one.
    pub listener: usize,
    pub method: String,
    /// Path and query as the client sent them.
    pub target: String,
    /// Path without the query.
    pub path: String,
    /// Status sent to the client (0 until the response head went out).
    pub status: u16,
    /// Response body bytes written to the client.
    pub body_bytes: u64,
    /// The client's `Authorization` header (token gate: `Basic` values are
    /// replaced by `Basic <redacted>`).
    pub authorization: Option<String>,
    /// The client's `Range` header.
    pub range: Option<String>,
    /// Names of the faults applied to this request.
    pub faults: Vec<String>,
}

/// What a fault does. See [`FaultProxy::add_fault`].
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Forward, send the response head and `n` body bytes, then close.
    CutAfter(u64),
    /// Answer this status (e.g. 429 with `Retry-After`, 503) instead of forwarding.
    Status(u16, Option<u64>),
    /// Forward, but XOR 0xff into the body byte at this offset of the whole
    /// blob (a `206` body starting at N has that byte at `offset - N`).
    FlipByte(u64),
    /// Drop the request's `Range` header (upstream then sends 200 + all).
    IgnoreRange,
    /// Drop the `Range` header only if it asks for several ranges.
    RefuseMultiRange,
    /// Answer `307` with `Location: http://HOST/<original path and query>`.
    RedirectTo(String),
    /// Sleep this many milliseconds before handling the request.
    Delay(u64),
}

impl FaultKind {
    fn name(&self) -> String {
        match self {
            FaultKind::CutAfter(n) => format!("CutAfter({n})"),
            FaultKind::Status(s, r) => format!("Status({s},{r:?})"),
            FaultKind::FlipByte(o) => format!("FlipByte({o})"),
            FaultKind::IgnoreRange => "IgnoreRange".into(),
            FaultKind::RefuseMultiRange => "RefuseMultiRange".into(),
            FaultKind::RedirectTo(h) => format!("RedirectTo({h})"),
            FaultKind::Delay(ms) => format!("Delay({ms})"),
        }
    }
}

/// A fault rule: requests whose method matches (`"*"` or `""` = any) and
/// whose path+query contains `path_contains` get `kind`, `times` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub method: String,
    pub path_contains: String,
    pub kind: FaultKind,
    pub times: usize,
}

impl Fault {
    /// A rule firing once.
    pub fn new(method: &str, path_contains: &str, kind: FaultKind) -> Fault {
        Fault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            kind,
            times: 1,
        }
    }

    /// Fire `n` times instead of once (`usize::MAX`: always).
    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }

    fn matches(&self, method: &str, target: &str, range: Option<&str>) -> bool {
        if !(self.method.is_empty()
            || self.method == "*"
            || self.method.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if !target.contains(&self.path_contains) {
            return false;
        }
        match &self.kind {
            FaultKind::RefuseMultiRange => range.is_some_and(|r| r.contains(',')),
            FaultKind::FlipByte(off) => match range_start(range) {
                Some((start, end)) => *off >= start && end.is_none_or(|e| *off <= e),
                None => true,
            },
            _ => true,
        }
    }
}

/// Handle to an added fault, for [`FaultProxy::fired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(usize);

struct FaultSlot {
    fault: Fault,
    fired: usize,
}

struct Shared {
    upstream: String,
    /// Host names clients use for each listener (for Location rewriting).
    hosts: Vec<String>,
    stop: AtomicBool,
    log: Mutex<Vec<RequestRecord>>,
    log_start: AtomicUsize,
    faults: Mutex<Vec<FaultSlot>>,
    gate: Option<Gate>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    accept: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(upstream: &str, second_listener: bool, gate: Option<Gate>) -> Server {
        let mut listeners = vec![TcpListener::bind("127.0.0.1:0").expect("bind proxy")];
        if second_listener {
            listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind second listener"));
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut hosts = vec![format!("127.0.0.1:{}", addrs[0].port())];
        if second_listener {
            hosts.push(format!("localhost:{}", addrs[1].port()));
        }
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            hosts,
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            log_start: AtomicUsize::new(0),
            faults: Mutex::new(Vec::new()),
            gate,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accept = listeners
            .into_iter()
            .enumerate()
            .map(|(idx, l)| {
                let sh = shared.clone();
                thread::Builder::new()
                    .name(format!("proxy-accept-{idx}"))
                    .spawn(move || accept_loop(sh, idx, l))
                    .unwrap()
            })
            .collect();
        Server {
            shared,
            addrs,
            accept,
        }
    }

    fn records(&self) -> Vec<RequestRecord> {
        let start = self.shared.log_start.load(Ordering::SeqCst);
        lock(&self.shared.log)[start..].to_vec()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for h in self.accept.drain(..) {
            let _ = h.join();
        }
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(shared: Arc<Shared>, idx: usize, l: TcpListener) {
    for conn in l.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let sh = shared.clone();
        let _ = thread::Builder::new()
            .name(format!("proxy-conn-{idx}"))
            .spawn(move || serve_conn(sh, idx, conn));
    }
}

fn serve_conn(shared: Arc<Shared>, lidx: usize, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(c) = stream.try_clone() {
        lock(&shared.conns).insert(id, c);
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(120)));
    if let (Ok(rs), Ok(ws)) = (stream.try_clone(), stream.try_clone()) {
        let mut rd = BufReader::with_capacity(64 * 1024, rs);
        let mut wr = BufWriter::with_capacity(64 * 1024, ws);
        // A TLS ClientHello (clients with TLS verification off try HTTPS
        // first): answer like Go's http server does, so that they fall back
        // to plain HTTP at once instead of waiting for a handshake timeout.
        if rd.fill_buf().is_ok_and(|b| b.first() == Some(&0x16)) {
            let _ = wr.write_all(
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            );
            let _ = wr.flush();
        } else {
            loop {
                let head = match read_head(&mut rd) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            let status = if e.to_string().contains("too large") {
                                431
                            } else {
                                400
                            };
                            let _ = write_simple(&mut wr, status, &[], b"", true, false);
                        }
                        break;
                    }
                };
                match shared.handle(lidx, head, &mut rd, &mut wr) {
                    Ok(true) => {}
                    _ => break,
                }
            }
        }
        let _ = wr.flush();
    }
    let _ = stream.shutdown(Shutdown::Both);
    lock(&shared.conns).remove(&id);
}

/// What to do after a request.
type KeepAlive = bool;

impl Shared {
    fn update(&self, idx: usize, f: impl FnOnce(&mut RequestRecord)) {
        if let Some(r) = lock(&self.log).get_mut(idx) {
            f(r);
        }
    }

    fn take_faults(&self, method: &str, target: &str, range: Option<&str>) -> Vec<FaultKind> {
        let mut out: Vec<FaultKind> = Vec::new();
        for slot in lock(&self.faults).iter_mut() {
            if slot.fired >= slot.fault.times
                || !slot.fault.matches(method, target, range)
                || out
                    .iter()
                    .any(|k| std::mem::discriminant(k) == std::mem::discriminant(&slot.fault.kind))
            {
                continue;
            }
            slot.fired += 1;
            out.push(slot.fault.kind.clone());
        }
        out
    }

    fn handle(
        &self,
        lidx: usize,
        mut req: Head,
        rd: &mut BufReader<TcpStream>,
        wr: &mut BufWriter<TcpStream>,
    ) -> io::Result<KeepAlive> {
        let mut parts = req.line.split_whitespace();
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            write_simple(wr, 400, &[], b"", true, false)?;
            return Ok(false);
        };
        let method = method.to_string();
        let version = version.to_string();
        // absolute-form targets become origin-form
        let mut target = target.to_string();
        if let Some(rest) = target.strip_prefix("http://") {
            target = rest
                .find('/')
                .map(|i| rest[i..].to_string())
                .unwrap_or("/".into());
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        let client_close = req.has_token("connection", "close")
            || (version == "HTTP/1.0" && !req.has_token("connection", "keep-alive"));
        let req_framing = request_framing(&req)?;
        let expect_continue = req.has_token("expect", "100-continue");
        req.remove("expect");
        let range = req.get("range").map(str::to_string);

        let mut auth = req.get("authorization").map(str::to_string);
        if self.gate.is_some() {
            auth = auth.map(|a| {
                if is_basic(&a) {
                    "Basic <redacted>".to_string()
                } else {
                    a
                }
            });
        }
        let idx = {
            let mut log = lock(&self.log);
            log.push(RequestRecord {
                listener: lidx,
                method: method.clone(),
                target: target.clone(),
                path: path.clone(),
                status: 0,
                body_bytes: 0,
                authorization: auth,
                range: range.clone(),
                faults: Vec::new(),
            });
            log.len() - 1
        };

        // Answer locally (draining the request body first, unless the client
        // is still waiting for 100-continue: then close afterwards).
        let answer = |rd: &mut BufReader<TcpStream>,
                      wr: &mut BufWriter<TcpStream>,
                      status: u16,
                      headers: &[(&str, String)],
                      body: &[u8]|
         -> io::Result<KeepAlive> {
            let has_body = req_framing != Framing::Empty;
            let close = client_close || (has_body && expect_continue);
            if has_body && !expect_continue {
                read_body(rd, req_framing, &mut |_| Ok(true))?;
            }
            let head_only = method.eq_ignore_ascii_case("HEAD");
            self.update(idx, |r| {
                r.status = status;
                r.body_bytes = if head_only { 0 } else { body.len() as u64 };
            });
            write_simple(wr, status, headers, body, close, head_only)?;
            Ok(!close)
        };

        if let Some(gate) = &self.gate {
            if path == "/token" {
                let (status, headers, body) =
                    gate.token_endpoint(&target, req.get("authorization"));
                return answer(rd, wr, status, &headers, &body);
            }
            if path == "/v2" || path.starts_with("/v2/") {
                if let Err(challenge) =
                    gate.check(&method, &path, req.get("authorization"), &self.hosts[0])
                {
                    gate.challenges.fetch_add(1, Ordering::SeqCst);
                    let body = json_error("UNAUTHORIZED", "authentication required");
                    let headers = [
                        ("WWW-Authenticate", challenge),
                        (
                            "Content-Type",
                            "application/json; charset=utf-8".to_string(),
                        ),
                        (
                            "Docker-Distribution-Api-Version",
                            "registry/2.0".to_string(),
                        ),
                    ];
                    return answer(rd, wr, 401, &headers, &body);
                }
            }
            req.remove("authorization");
        }

        // The second listener stands for another host (blob storage): it forwards as is.
        let faults = if lidx == 0 {
            self.take_faults(&method, &target, range.as_deref())
        } else {
            Vec::new()
        };
        if !faults.is_empty() {
            let names = faults.iter().map(FaultKind::name).collect();
            self.update(idx, |r| r.faults = names);
        }
        let mut cut = None;
        let mut flip = None;
        for f in &faults {
            if let FaultKind::Delay(ms) = f {
                thread::sleep(Duration::from_millis(*ms));
            }
        }
        for f in &faults {
            match f {
                FaultKind::Status(code, retry_after) => {
                    let mut headers = vec![(
                        "Content-Type",
                        "application/json; charset=utf-8".to_string(),
                    )];
                    if let Some(s) = retry_after {
                        headers.push(("Retry-After", s.to_string()));
                    }
                    let (c, m) = match code {
                        429 => ("TOOMANYREQUESTS", "injected: too many requests"),
                        _ => ("UNAVAILABLE", "injected: service unavailable"),
                    };
                    return answer(rd, wr, *code, &headers, &json_error(c, m));
                }
                FaultKind::RedirectTo(host) => {
                    let headers = [("Location", format!("http://{host}{target}"))];
                    return answer(rd, wr, 307, &headers, b"");
                }
                FaultKind::IgnoreRange => req.remove("range"),
                FaultKind::RefuseMultiRange => req.remove("range"),
                FaultKind::CutAfter(n) => cut = Some(*n),
                FaultKind::FlipByte(o) => flip = Some(*o),
                FaultKind::Delay(_) => {}
            }
        }

        // Forward on a fresh upstream connection.
        let up = match self
            .upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok())
        {
            Some(s) => s,
            None => {
                let body = json_error("UNAVAILABLE", "proxy: upstream unreachable");
                return answer(rd, wr, 502, &[], &body);
            }
        };
        let _ = up.set_nodelay(true);
        let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
        req.line = format!("{method} {target} HTTP/1.1");
        req.set("Host", &self.upstream);
        req.remove("connection");
        req.remove("keep-alive");
        req.remove("proxy-connection");
        req.set("Connection", "close");
        let mut uw = BufWriter::with_capacity(64 * 1024, up.try_clone()?);
        uw.write_all(&req.to_bytes())?;
        if expect_continue && req_framing != Framing::Empty {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            wr.flush()?;
        }
        let chunked_req = req_framing == Framing::Chunked;
        let mut upstream_write_failed = false;
        let sent = read_body(rd, req_framing, &mut |d| {
            let r = if chunked_req {
                write_chunk(&mut uw, d)
            } else {
                uw.write_all(d)
            };
            if r.is_err() {
                upstream_write_failed = true;
            }
            r.map(|_| true)
        });
        if sent.is_err() && !upstream_write_failed {
            return Ok(false); // the client went away or sent garbage
        }
        if !upstream_write_failed {
            if chunked_req {
                let _ = uw.write_all(b"0\r\n\r\n");
            }
            let _ = uw.flush();
        }
        let client_in_sync = sent.is_ok();

        let mut urd = BufReader::with_capacity(64 * 1024, up);
        let mut resp = loop {
            match read_head(&mut urd) {
                Ok(Some(h)) if (100..200).contains(&h.status()) && h.status() != 101 => continue,
                Ok(Some(h)) => break h,
                Ok(None) | Err(_) => {
                    // Nothing sent to the client yet: say what happened.
                    self.update(idx, |r| r.status = 502);
                    let body = json_error("UNAVAILABLE", "proxy: no response from upstream");
                    write_simple(wr, 502, &[], &body, true, method == "HEAD")?;
                    return Ok(false);
                }
            }
        };
        let status = resp.status();
        let framing = response_framing(&resp, &method);
        if let Some(loc) = resp.get("location").map(str::to_string) {
            for prefix in [
                format!("http://{}", self.upstream),
                format!("https://{}", self.upstream),
            ] {
                if let Some(rest) = loc.strip_prefix(&prefix) {
                    resp.set("Location", &format!("http://{}{rest}", self.hosts[lidx]));
                    break;
                }
            }
        }
        resp.remove("connection");
        resp.remove("keep-alive");
        let close_after =
            client_close || !client_in_sync || framing == Framing::UntilClose || cut.is_some();
        if close_after {
            resp.set("Connection", "close");
        }
        let body_start = if status == 206 {
            resp.get("content-range")
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        } else {
            0
        };
        self.update(idx, |r| r.status = status);
        wr.write_all(&resp.to_bytes())?;
        let chunked_resp = framing == Framing::Chunked;
        let mut pos: u64 = 0;
        let mut stopped = false;
        let done = read_body(&mut urd, framing, &mut |d| {
            let mut n = d.len();
            if let Some(limit) = cut {
                let left = limit.saturating_sub(pos);
                if (n as u64) >= left {
                    n = left as usize;
                    stopped = true;
                }
            }
            let mut piece = std::borrow::Cow::Borrowed(&d[..n]);
            if let Some(off) = flip {
                let abs = body_start + pos;
                if off >= abs && off < abs + n as u64 {
                    piece.to_mut()[(off - abs) as usize] ^= 0xff;
                }
            }
            self.update(idx, |r| r.body_bytes += n as u64);
            if chunked_resp {
                write_chunk(wr, &piece)?;
            } else {
                wr.write_all(&piece)?;
            }
            pos += n as u64;
            Ok(!stopped)
        })?;
        if stopped || !done {
            wr.flush()?;
            let _ = wr.get_ref().shutdown(Shutdown::Both);
            return Ok(false);
        }
        if chunked_resp {
            wr.write_all(b"0\r\n\r\n")?;
        }
        wr.flush()?;
        Ok(!close_after)
    }
}

// ---------------------------------------------------------------------------
// FaultProxy
// ---------------------------------------------------------------------------

/// A reverse HTTP/1.1 proxy in front of a plain-HTTP registry that records
/// every request and injects faults on demand.
pub struct FaultProxy {
    server: Server,
}

impl FaultProxy {
    /// Proxies to `upstream` (`HOST:PORT`, plain HTTP). Listens on
    /// `127.0.0.1:P1` ([`host`](Self::host)) and on a second port reached as
    /// `localhost:P2` ([`second_host`](Self::second_host)).
    pub fn start(upstream_host: &str) -> FaultProxy {
        FaultProxy {
            server: Server::start(upstream_host, true, None),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.server.shared.hosts[0].clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `localhost:PORT2`: the second listener, a different host for redirects.
    pub fn second_host(&self) -> String {
        self.server.shared.hosts[1].clone()
    }

    pub fn upstream(&self) -> String {
        self.server.shared.upstream.clone()
    }

    /// Adds a fault rule. Rules are tried in the order added; per request at
    /// most one rule of each kind fires (so several kinds can combine, e.g.
    /// `Delay` + `CutAfter`).
    pub fn add_fault(&self, fault: Fault) -> FaultId {
        let mut f = lock(&self.server.shared.faults);
        f.push(FaultSlot { fault, fired: 0 });
        FaultId(f.len() - 1)
    }

    /// How often the rule has fired so far.
    pub fn fired(&self, id: FaultId) -> usize {
        lock(&self.server.shared.faults)[id.0].fired
    }

    /// Disarms all rules (their `fired` counts stay readable).
    pub fn clear_faults(&self) {
        for s in lock(&self.server.shared.faults).iter_mut() {
            s.fault.times = s.fired;
        }
    }

    /// Every request so far (since the last [`reset_stats`](Self::reset_stats)).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server.records()
    }

    /// Forgets the requests recorded so far.
    pub fn reset_stats(&self) {
        let n = lock(&self.server.shared.log).len();
        self.server.shared.log_start.store(n, Ordering::SeqCst);
    }

    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// Requests with this method (`"*"` = any) whose path+query contains `path`.
    pub fn matching(&self, method: &str, path: &str) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| {
                (method == "*" || r.method.eq_ignore_ascii_case(method)) && r.target.contains(path)
            })
            .collect()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.matching(method, path).len()
    }

    /// Statuses of the matching requests, in order.
    pub fn statuses(&self, method: &str, path: &str) -> Vec<u16> {
        self.matching(method, path)
            .iter()
            .map(|r| r.status)
            .collect()
    }

    /// `(method, path, status)` → number of requests.
    pub fn status_counts(&self) -> BTreeMap<(String, String, u16), usize> {
        let mut m = BTreeMap::new();
        for r in self.requests() {
            *m.entry((r.method, r.path, r.status)).or_insert(0) += 1;
        }
        m
    }

    /// Response body bytes sent to clients, all requests.
    pub fn bytes_sent(&self) -> u64 {
        self.requests().iter().map(|r| r.body_bytes).sum()
    }

    /// Response body bytes sent for requests whose path+query contains `path`.
    pub fn bytes_sent_for(&self, path: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.target.contains(path))
            .map(|r| r.body_bytes)
            .sum()
    }

    /// Response body bytes per path.
    pub fn bytes_by_path(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.requests() {
            *m.entry(r.path).or_insert(0) += r.body_bytes;
        }
        m
    }

    /// Every `Authorization` value received on listener 0 (main) or 1 (second).
    pub fn auth_headers(&self, listener: usize) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.listener == listener)
            .filter_map(|r| r.authorization)
            .collect()
    }

    /// Requests received on the second listener.
    pub fn second_listener_requests(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.listener == 1)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// TokenGate
// ---------------------------------------------------------------------------

/// How a [`TokenGate`] issues tokens.
#[derive(Clone, Debug)]
pub struct TokenOpts {
    /// Credentials the token endpoint accepts (Basic auth). `None`: anyone
    /// gets every scope asked for.
    pub user: Option<(String, String)>,
    /// With `user` set: requests without credentials still get `pull`.
    pub anonymous_pull: bool,
    /// JSON key of the token: `"token"` or `"access_token"`.
    pub key: String,
    /// `expires_in` to announce (and enforce); `None`: field omitted, 60 s.
    pub expires_in: Option<u64>,
}

impl Default for TokenOpts {
    fn default() -> Self {
        TokenOpts {
            user: None,
            anonymous_pull: true,
            key: "token".into(),
            expires_in: Some(300),
        }
    }
}

/// One call of the token endpoint (no passwords kept).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// Whether Basic credentials came with the request.
    pub basic_given: bool,
    /// The user name of those credentials.
    pub user: Option<String>,
    pub status: u16,
    /// Scopes granted (`repository:NAME:ACTIONS`), empty on refusal.
    pub granted: Vec<String>,
}

struct Grant {
    /// (`repository:NAME`, actions)
    scopes: Vec<(String, Vec<String>)>,
    expires: Instant,
}

struct Gate {
    opts: TokenOpts,
    tokens: Mutex<HashMap<String, Grant>>,
    log: Mutex<Vec<TokenRequest>>,
    challenges: AtomicUsize,
}

fn query_params(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hexval = if b[i] == b'%' && i + 2 < b.len() {
            std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        } else {
            None
        };
        match (b[i], hexval) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    hex::encode(b)
}

/// RFC 3339 UTC timestamp of `t`, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // days since 1970-01-01 -> civil date (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `(repository:NAME, action)` a `/v2/…` request needs; `None` for `/v2/`.
fn required_scope(method: &str, path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return None;
    }
    let action = if matches!(method, "GET" | "HEAD") {
        "pull"
    } else {
        "push"
    };
    if rest == "_catalog" {
        return Some(("registry:catalog".into(), "*".into()));
    }
    let name = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .map(|i| &rest[..i])
        .unwrap_or(rest.trim_end_matches('/'));
    Some((format!("repository:{name}"), action.into()))
}

impl Gate {
    fn check(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        own_host: &str,
    ) -> Result<(), String> {
        let need = required_scope(method, path);
        let token = auth.and_then(|a| {
            let (scheme, t) = a.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| t.trim().to_string())
        });
        let mut insufficient = false;
        if let Some(t) = token {
            let tokens = lock(&self.tokens);
            if let Some(g) = tokens.get(&t).filter(|g| g.expires > Instant::now()) {
                match &need {
                    None => return Ok(()),
                    Some((res, action)) => {
                        if g.scopes.iter().any(|(r, acts)| {
                            r == res && acts.iter().any(|a| a == action || a == "*")
                        }) {
                            return Ok(());
                        }
                        insufficient = true;
                    }
                }
            }
        }
        let mut c = format!("Bearer realm=\"http://{own_host}/token\",service=\"{TOKEN_SERVICE}\"");
        if let Some((res, action)) = &need {
            let actions = if action == "push" {
                "pull,push"
            } else {
                action.as_str()
            };
            c.push_str(&format!(",scope=\"{res}:{actions}\""));
        }
        if insufficient {
            c.push_str(",error=\"insufficient_scope\"");
        }
        Err(c)
    }

    fn token_endpoint(
        &self,
        target: &str,
        auth: Option<&str>,
    ) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
        let params = query_params(target);
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let basic = auth.and_then(|a| {
            let (scheme, b64) = a.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            Some((u.to_string(), p.to_string()))
        });
        let basic_given = auth.is_some_and(is_basic);
        let mut rec = TokenRequest {
            service: service.clone(),
            scopes: scopes.clone(),
            basic_given,
            user: basic.as_ref().map(|(u, _)| u.clone()),
            status: 200,
            granted: Vec::new(),
        };
        let json = vec![("Content-Type", "application/json".to_string())];
        // Who is asking?
        let authenticated = match (&self.opts.user, &basic) {
            (None, _) => true,
            (Some(want), Some(got)) if want == got => true,
            (Some(_), Some(_)) => {
                rec.status = 401;
                lock(&self.log).push(rec);
                let mut h = json.clone();
                h.push((
                    "WWW-Authenticate",
                    "Basic realm=\"strata-test-token\"".into(),
                ));
                return (
                    401,
                    h,
                    json_error("UNAUTHORIZED", "invalid username or password"),
                );
            }
            (Some(_), None) if basic_given => {
                rec.status = 401;
                lock(&self.log).push(rec);
                return (
                    401,
                    json.clone(),
                    json_error("UNAUTHORIZED", "malformed credentials"),
                );
            }
            (Some(_), None) => false,
        };
        if !authenticated && !self.opts.anonymous_pull {
            rec.status = 401;
            lock(&self.log).push(rec);
            let mut h = json.clone();
            h.push((
                "WWW-Authenticate",
                "Basic realm=\"strata-test-token\"".into(),
            ));
            return (
                401,
                h,
                json_error("UNAUTHORIZED", "authentication required"),
            );
        }
        if service.as_deref().is_some_and(|s| s != TOKEN_SERVICE) {
            rec.status = 400;
            lock(&self.log).push(rec);
            return (400, json, json_error("DENIED", "unknown service"));
        }
        let mut grant = Vec::new();
        for s in &scopes {
            let (Some(first), Some(last)) = (s.find(':'), s.rfind(':')) else {
                continue;
            };
            if first == last {
                continue;
            }
            let resource = s[..last].to_string();
            let actions: Vec<String> = s[last + 1..]
                .split(',')
                .filter(|a| authenticated || *a == "pull")
                .map(str::to_string)
                .collect();
            if !actions.is_empty() {
                rec.granted
                    .push(format!("{resource}:{}", actions.join(",")));
                grant.push((resource, actions));
            }
        }
        let token = random_token();
        let lifetime = self.opts.expires_in.unwrap_or(60);
        lock(&self.tokens).insert(
            token.clone(),
            Grant {
                scopes: grant,
                expires: Instant::now() + Duration::from_secs(lifetime),
            },
        );
        let mut body = serde_json::Map::new();
        body.insert(self.opts.key.clone(), token.into());
        if let Some(e) = self.opts.expires_in {
            body.insert("expires_in".into(), e.into());
        }
        body.insert("issued_at".into(), rfc3339(SystemTime::now()).into());
        lock(&self.log).push(rec);
        (
            200,
            json,
            serde_json::Value::Object(body).to_string().into_bytes(),
        )
    }
}

/// A bearer-token auth front for a plain-HTTP [`Registry`] (without
/// htpasswd): challenges `/v2/…` requests, runs the token endpoint at
/// `/token`, forwards authorized requests (without their Authorization).
pub struct TokenGate {
    server: Server,
}

impl TokenGate {
    pub fn start(upstream_host: &str, opts: TokenOpts) -> TokenGate {
        let gate = Gate {
            opts,
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            challenges: AtomicUsize::new(0),
        };
        TokenGate {
            server: Server::start(upstream_host, false, Some(gate)),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.server.shared.hosts[0].clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("{}/token", self.url())
    }

    fn gate(&self) -> &Gate {
        self.server.shared.gate.as_ref().unwrap()
    }

    /// Every call of the token endpoint.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.gate().log).clone()
    }

    /// Number of token requests refused (401: wrong or missing credentials).
    pub fn token_refusals(&self) -> usize {
        lock(&self.gate().log)
            .iter()
            .filter(|t| t.status == 401)
            .count()
    }

    /// Number of 401 challenges sent for `/v2/…` requests.
    pub fn challenges(&self) -> usize {
        self.gate().challenges.load(Ordering::SeqCst)
    }

    /// Every request (token endpoint included); Basic values redacted.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server.records()
    }

    /// Number of tokens issued and not yet expired.
    pub fn live_tokens(&self) -> usize {
        let now = Instant::now();
        lock(&self.gate().tokens)
            .values()
            .filter(|g| g.expires > now)
            .count()
    }
}

// ---------------------------------------------------------------------------
// OCI layouts
// ---------------------------------------------------------------------------

/// An OS/architecture/variant triple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    pub fn arm64_v8() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"os": self.os, "architecture": self.arch});
        if let Some(var) = &self.variant {
            v["variant"] = var.clone().into();
        }
        v
    }
}

/// An image to put into a test layout: one platform → an image manifest
/// tagged `tag`; several → an image index tagged `tag`.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub tag: String,
    pub platforms: Vec<Platform>,
    /// Mixed into every file so that images differ.
    pub salt: String,
    /// Size of `usr/bin/big.bin` (default 256 KiB of pseudo-random bytes).
    pub big_size: usize,
}

impl TestImage {
    /// A linux/amd64 image.
    pub fn single(tag: &str) -> TestImage {
        TestImage {
            tag: tag.into(),
            platforms: vec![Platform::amd64()],
            salt: tag.into(),
            big_size: 256 * 1024,
        }
    }

    /// An index with linux/amd64 and linux/arm64/v8 images.
    pub fn multi(tag: &str) -> TestImage {
        TestImage {
            platforms: vec![Platform::amd64(), Platform::arm64_v8()],
            ..TestImage::single(tag)
        }
    }

    pub fn salt(mut self, salt: &str) -> TestImage {
        self.salt = salt.into();
        self
    }

    pub fn big_size(mut self, n: usize) -> TestImage {
        self.big_size = n;
        self
    }
}

/// A layer as written: uncompressed tar, so `digest` is also the diff_id.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub digest: String,
    pub tar: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct BuiltManifest {
    pub platform: Platform,
    pub digest: String,
    pub size: u64,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
    /// Expected files: path → content (regular files of the final tree).
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub tag: String,
    /// Digest of what the tag points at (manifest or index).
    pub digest: String,
    pub media_type: String,
    pub manifests: Vec<BuiltManifest>,
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: &str, n: usize) -> Vec<u8> {
    let mut x = u64::from_le_bytes(Sha256::digest(seed.as_bytes())[..8].try_into().unwrap()) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let p = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::write(p, data).unwrap();
    digest
}

enum TarEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

fn build_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            TarEntry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            TarEntry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            TarEntry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn build_manifest(dir: &Path, img: &TestImage, p: &Platform) -> BuiltManifest {
    let plat = format!(
        "{}/{}{}",
        p.os,
        p.arch,
        p.variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default()
    );
    let small = format!("small {} {plat}\n", img.salt).into_bytes(); // ≤ 64 bytes
    assert!(small.len() <= 64, "salt too long for the small file");
    let tool = format!(
        "#!/bin/sh\n# tool for {} on {plat}\n{}\n",
        img.salt,
        "echo hello; ".repeat(8)
    )
    .into_bytes(); // > 64 bytes
    let big = pseudo_random(&format!("{}/{plat}", img.salt), img.big_size);
    let gone = b"this file is deleted by a whiteout in layer 2\n".to_vec();
    let added = format!("added in layer 2 for {plat}\n").into_bytes();
    let layer1 = build_tar(&[
        TarEntry::Dir("etc/"),
        TarEntry::File("etc/small.txt", &small, 0o644),
        TarEntry::File("etc/remove-me", &gone, 0o644),
        TarEntry::Dir("usr/"),
        TarEntry::Dir("usr/bin/"),
        TarEntry::File("usr/bin/tool", &tool, 0o755),
        TarEntry::File("usr/bin/big.bin", &big, 0o644),
        TarEntry::Symlink("usr/bin/tool-link", "tool"),
        TarEntry::Dir("var/"),
        TarEntry::Dir("var/empty/"),
    ]);
    let layer2 = build_tar(&[
        TarEntry::Dir("etc/"),
        TarEntry::File("etc/.wh.remove-me", b"", 0o644),
        TarEntry::File("etc/added.txt", &added, 0o644),
    ]);
    let layers: Vec<BuiltLayer> = [layer1, layer2]
        .into_iter()
        .map(|tar| BuiltLayer {
            digest: write_blob(dir, &tar),
            tar,
        })
        .collect();
    let mut config = p.json();
    config["created"] = "2024-01-01T00:00:00Z".into();
    config["config"] = serde_json::json!({
        "Env": ["PATH=/usr/bin:/bin"],
        "Cmd": ["/usr/bin/tool"],
        "Labels": {"strata.test.salt": img.salt},
    });
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
    });
    config["history"] = serde_json::json!([
        {"created": "2024-01-01T00:00:00Z", "created_by": "strata test layer 1"},
        {"created": "2024-01-01T00:00:00Z", "created_by": "strata test layer 2"},
    ]);
    let config = serde_json::to_vec(&config).unwrap();
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
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.digest,
            "size": l.tar.len(),
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = write_blob(dir, &manifest);
    let files = [
        ("etc/small.txt", small),
        ("etc/added.txt", added),
        ("usr/bin/tool", tool),
        ("usr/bin/big.bin", big),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    BuiltManifest {
        platform: p.clone(),
        digest,
        size: manifest.len() as u64,
        config_digest,
        layers,
        files,
    }
}

/// Writes an OCI image layout with `images` into `dir` (created if needed).
/// Layers are uncompressed tars: layer 1 has dirs, a ≤64-byte and >64-byte
/// files, a 256 KiB file and a symlink; layer 2 whites out `etc/remove-me`
/// and adds `etc/added.txt`.
pub fn make_layout(dir: &Path, images: &[TestImage]) -> Vec<BuiltImage> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut built = Vec::new();
    let mut index_entries = Vec::new();
    for img in images {
        let manifests: Vec<BuiltManifest> = img
            .platforms
            .iter()
            .map(|p| build_manifest(dir, img, p))
            .collect();
        let ann = serde_json::json!({"org.opencontainers.image.ref.name": img.tag});
        let (digest, size, media_type) = if manifests.len() == 1 {
            let m = &manifests[0];
            (
                m.digest.clone(),
                m.size,
                "application/vnd.oci.image.manifest.v1+json",
            )
        } else {
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests.iter().map(|m| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": m.digest,
                    "size": m.size,
                    "platform": m.platform.json(),
                })).collect::<Vec<_>>(),
            });
            let index = serde_json::to_vec(&index).unwrap();
            (
                write_blob(dir, &index),
                index.len() as u64,
                "application/vnd.oci.image.index.v1+json",
            )
        };
        index_entries.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": ann,
        }));
        built.push(BuiltImage {
            tag: img.tag.clone(),
            digest,
            media_type: media_type.into(),
            manifests,
        });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_entries,
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    built
}

// ---------------------------------------------------------------------------
// skopeo and curl
// ---------------------------------------------------------------------------

/// An isolated environment for skopeo: no user auth files, no system
/// registries.conf, accept-anything policy.
fn skopeo_env() -> &'static Path {
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "skopeo copy {extra:?} {src} {dst} failed ({}):\n{text}",
        out.status
    );
    text
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
