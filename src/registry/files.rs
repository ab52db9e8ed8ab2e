//! Reading the small local files the client is configured by (registries.conf, auth
//! files, certificates) with a size bound, so a huge or endless file is refused rather
//! than read into memory.

use std::io::{self, Read};

/// Why a bounded read failed.
pub(crate) enum ReadError {
    Io(io::Error),
    /// More than the limit; the message says how much was allowed.
    TooLarge(String),
}

/// All of `file`, at most `limit` bytes.
pub(crate) fn read_limited(file: std::fs::File, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(format!(
            "larger than {} MiB",
            limit >> 20
        )));
    }
    Ok(bytes)
}
