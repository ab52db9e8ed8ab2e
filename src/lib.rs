//! strata: build and mount composefs images.
//!
//! Data flows one way: oci → tree → repo/erofs → mount. This crate holds the
//! stages above the EROFS format crate (`erofs`).

pub mod boot;
pub mod cli;
pub mod dumpfile;
pub mod fsverity;
pub mod mount;
pub mod oci;
pub mod repo;
pub mod tree;

pub use erofs;
