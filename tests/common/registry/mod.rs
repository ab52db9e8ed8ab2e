//! Test infrastructure for the registry client: a real `docker-registry`
//! (plain, TLS, htpasswd), a bearer-token gate in front of it, a fault
//! injecting reverse proxy, OCI layout builders and a `skopeo` wrapper.
//!
//! Everything listens on loopback only. Servers are written on
//! `std::net::TcpListener` with one thread per connection; they stop (and
//! child processes are killed) on `Drop`.
//!
//! Parts: `process` (children tied to the test process), `server` (docker-registry),
//! `http` (HTTP/1.1 plumbing), `engine` (the server shared by proxy and gate), `proxy`
//! (fault injection), `token` (the token gate), `layout` (test images), `tools` (skopeo,
//! curl), `writers` (newer zstd:chunked and eStargz writers). Everything is re-exported here.
#![allow(dead_code)]
#![allow(clippy::new_without_default)]
#![allow(unused_imports)]

pub(crate) use std::collections::{BTreeMap, HashMap};
pub(crate) use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
pub(crate) use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
pub(crate) use std::os::unix::process::CommandExt;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Child, Command, Output, Stdio};
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub(crate) use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
pub(crate) use std::thread::{self, JoinHandle};
pub(crate) use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use sha2::{Digest, Sha256};

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

mod engine;
mod http;
mod layout;
mod process;
mod proxy;
mod server;
mod token;
mod tools;
mod writers;

pub use engine::*;
pub use http::*;
pub use layout::*;
pub use process::*;
pub use proxy::*;
pub use server::*;
pub use token::*;
pub use tools::*;
pub use writers::*;
