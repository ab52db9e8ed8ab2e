//! strata: build and mount composefs images.
//!
//! Data flows one way: oci → tree → repo/erofs → mount. This crate holds the
//! stages above the EROFS format crate (`erofs`).
//!
//! `unsafe` lives only in [`sys`]: the few kernel calls rustix has no safe
//! wrapper for.

#![deny(unsafe_code)]

pub mod boot;
pub mod cli;
pub mod dumpfile;
pub mod fsverity;
pub mod mount;
pub mod oci;
pub mod registry;
pub mod repo;
#[allow(unsafe_code)]
mod sys;
pub mod tree;

pub use erofs;
