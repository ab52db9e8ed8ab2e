//! fs-verity: userspace digests (SHA-256/SHA-512, 4 KiB blocks) and kernel ioctls.
//!
//! The fs-verity *file digest* names every object in a composefs repository.
//! It is defined by the kernel (`Documentation/filesystems/fsverity.rst`,
//! `include/uapi/linux/fsverity.h`) as follows:
//!
//! * The file is split into 4 KiB data blocks, the last one zero-padded.
//! * Each data block is hashed; the hashes are packed into 4 KiB tree blocks
//!   (zero-padded). Each tree level is hashed the same way to form the next
//!   level, until a level consists of a single block. The *root hash* is the
//!   hash of that block. (A file of at most one block has no hash levels: its
//!   root hash is the hash of its only, zero-padded, data block. An empty file
//!   has an all-zero root hash.)
//! * The file digest is the hash of the 256-byte `fsverity_descriptor`
//!   (version 1, algorithm id, `log_blocksize` 12, no salt, little-endian
//!   data size, root hash zero-padded to 64 bytes, everything else zero).
//!
//! This module provides:
//!
//! * [`Algorithm`] and [`Digest`] (hex formatting/parsing, object paths);
//! * a bounded-memory streaming [`FsVerityHasher`] plus one-shot helpers
//!   [`digest_bytes`], [`digest_reader`], [`digest_file`], and parallel
//!   variants [`par_digest_bytes`], [`par_digest_file`] that split the data
//!   into independent runs of blocks hashed on the rayon pool;
//! * the kernel interface: [`enable`], [`measure`] and [`probe`], which report
//!   "this filesystem/kernel has no fs-verity" as a typed result
//!   ([`VerityError::NotSupported`], [`Support::NotSupported`]) rather than a
//!   generic I/O error.

mod digest;
mod hasher;
mod kernel;

pub use digest::{Digest, ParseDigestError};
pub use hasher::{
    digest_bytes, digest_file, digest_reader, par_digest_bytes, par_digest_file, FsVerityHasher,
};
pub use kernel::{enable, measure, probe, Support, VerityError};

/// Merkle tree block size used by strata (and composefs): 4 KiB.
pub const BLOCK_SIZE: usize = 4096;

/// log2 of [`BLOCK_SIZE`], as stored in the fs-verity descriptor.
pub const LOG_BLOCK_SIZE: u8 = 12;

/// Largest digest size of any supported algorithm (SHA-512).
pub const MAX_DIGEST_SIZE: usize = crate::sys::MAX_DIGEST_SIZE;

/// Hash algorithm of an fs-verity Merkle tree and file digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Algorithm {
    /// SHA-256 (`FS_VERITY_HASH_ALG_SHA256` = 1). The composefs default.
    #[default]
    Sha256,
    /// SHA-512 (`FS_VERITY_HASH_ALG_SHA512` = 2).
    Sha512,
}

impl Algorithm {
    /// All supported algorithms.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// Size of a digest in bytes (32 or 64).
    pub const fn digest_size(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// Kernel algorithm number (`FS_VERITY_HASH_ALG_*`).
    pub const fn kernel_id(self) -> u8 {
        match self {
            Algorithm::Sha256 => 1,
            Algorithm::Sha512 => 2,
        }
    }

    /// Inverse of [`Algorithm::kernel_id`].
    pub const fn from_kernel_id(id: u32) -> Option<Algorithm> {
        match id {
            1 => Some(Algorithm::Sha256),
            2 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// Number of hashes per Merkle tree block (128 or 64).
    pub const fn fan_out(self) -> usize {
        BLOCK_SIZE / self.digest_size()
    }

    /// Name as used by `fsverity digest` (`sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Inverse of [`Algorithm::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
