//! The fault-injecting reverse proxy.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// FaultProxy
// ---------------------------------------------------------------------------

/// A reverse HTTP/1.1 proxy in front of a plain-HTTP registry that records
/// every request and injects faults on demand.
pub struct FaultProxy {
    pub(crate) server: Server,
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
