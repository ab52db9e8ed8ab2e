//! The OCI distribution API client: references, HTTP, auth, TLS, registries.conf mirrors.
//!
//! Knows nothing of repositories or image contents: it moves verified-by-the-caller bytes.

pub mod authfile;
pub mod conf;
pub mod reference;
pub mod tls;

pub use reference::Reference;
