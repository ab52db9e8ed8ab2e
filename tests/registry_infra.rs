//! Self-tests of the registry test infrastructure (tests/common/registry.rs):
//! docker-registry plain/TLS/htpasswd, the token gate and the fault proxy,
//! exercised with skopeo and curl.

mod common;

use common::registry::*;

#[test]
fn smoke() {
    let r = Registry::plain();
    let resp = http_request(&r.host(), "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(resp.status, 200);
}
