//! eStargz: detection (the layer annotation `containerd.io/snapshot/stargz/toc.digest`).
//!
//! An eStargz blob is a gzip stream whose members start at every file's TOC offset; the
//! TOC (`stargz.index.json`) is itself an entry of the tar and the footer (the last 51
//! bytes) gives its offset. strata pulls eStargz layers fully (see `doc/partial-pulls.md`).

use std::collections::BTreeMap;

/// The annotation that marks an eStargz layer (digest of its uncompressed TOC).
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Whether a layer's annotations mark it as eStargz.
pub fn is_estargz(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(TOC_DIGEST)
}
