//! The OCI distribution API client: references, HTTP (one pool per host, retries, Range),
//! auth (token flow, auth.json, credential helpers), TLS (certs.d), registries.conf mirrors,
//! and the calls pushes are made of.
//!
//! It knows nothing of repositories or image contents: it moves bytes, and the `oci`
//! sources above it verify every byte against a digest before anything is committed.
//! What it does guarantee: bounded memory for everything it reads into memory (manifests,
//! tokens, error bodies, headers), retries with backoff on transient failures, resumed
//! blob transfers, `Authorization` only ever sent to the registry host itself, and no
//! secret in any error, event or statistic.

pub mod auth;
pub mod authfile;
pub mod client;
pub mod conf;
pub mod error;
mod files;
pub mod http;
pub mod push;
pub mod ranges;
pub mod reference;
pub mod tls;

pub use client::{BlobStream, Client, FetchedManifest, ImageClient};
pub use error::RegistryError;
pub use http::{ClientOptions, Event, EventSink, StatsSnapshot};
pub use ranges::RangesAnswer;
pub use reference::Reference;
