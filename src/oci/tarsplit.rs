//! The tar-split format, in one place: how containers-storage remembers the exact bytes of a
//! layer's tar without keeping the tar.
//!
//! Facts (from the vbatts/tar-split project's `tar/storage` package documentation and the
//! `overlay-layers/<id>.tar-split.gz` files podman 4 writes; no code taken from either):
//!
//! * The file is gzip-compressed JSON, one object per line (`\n`-terminated), in tar order.
//! * Every object has `type` and `position` (0, 1, 2, … in file order).
//! * `type` 2 is a *segment*: `payload` is the base64 (standard alphabet, padded) of raw tar
//!   bytes: headers, PAX and GNU long-name records, padding of the previous file, the
//!   end-of-archive blocks and anything after them. Segments may be empty.
//! * `type` 1 is a *file*: the contents of the entry whose header the segments just gave.
//!   `name` is the entry's path as a UTF-8 string (or `name_raw`, base64 of the raw bytes,
//!   for names that are not UTF-8); `size` is the number of content bytes (the key is left
//!   out when 0); `payload` is the base64 of the CRC-64 (ISO polynomial, as Go's
//!   `hash/crc64` with `crc64.ISO`, big-endian bytes) of the contents, or `null` when there
//!   are none. Every tar entry gets a file object, directories and links with size 0.
//!
//! Concatenating every segment's bytes and every file's contents in order gives the layer's
//! tar stream byte for byte. Parsing is separate from what the bytes are used for: this
//! module only reads entries, bounding every line ([`MAX_LINE`]) and size.

use std::io::{self, BufRead, BufReader, Read};

use base64::Engine as _;
use serde::Deserialize;

/// Longest JSON line accepted. A segment holds a header and its PAX/GNU records (strata's
/// tar reader allows 4 MiB of those per entry), base64-encoded: 4/3 of that, plus room.
pub const MAX_LINE: usize = 8 << 20;
/// Longest entry name accepted (bytes).
pub const MAX_NAME: usize = 64 << 10;
/// Type of a file entry.
pub const TYPE_FILE: u8 = 1;
/// Type of a segment entry.
pub const TYPE_SEGMENT: u8 = 2;
/// Size of the CRC-64 in a file entry's payload.
pub const CRC_SIZE: usize = 8;

/// One tar-split entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Raw tar bytes.
    Segment(Vec<u8>),
    /// A tar entry's contents: its name (raw bytes), size and CRC-64 (absent when empty).
    File {
        name: Vec<u8>,
        size: u64,
        crc: Option<[u8; CRC_SIZE]>,
    },
}

/// What is wrong with a tar-split stream.
#[derive(Debug, thiserror::Error)]
pub enum TarSplitError {
    #[error("line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: longer than {MAX_LINE} bytes")]
    LineTooLong { line: u64 },
    #[error("line {line}: invalid JSON: {source}")]
    Json {
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: {what}")]
    Invalid { line: u64, what: String },
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    position: Option<i64>,
}

/// Reads the entries of a (decompressed) tar-split stream.
pub struct Reader<R> {
    input: BufReader<R>,
    line: u64,
    buf: Vec<u8>,
}

/// Opens a gzip-compressed tar-split stream (a `.tar-split.gz` file).
pub fn open_gz<R: Read>(input: R) -> Reader<flate2::read::MultiGzDecoder<R>> {
    Reader::new(flate2::read::MultiGzDecoder::new(input))
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Self {
        Reader {
            input: BufReader::with_capacity(256 << 10, input),
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next entry; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarSplitError> {
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            let n = (&mut self.input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| TarSplitError::Read { line, source })?;
            if n == 0 {
                return Ok(None);
            }
            if n > MAX_LINE {
                return Err(TarSplitError::LineTooLong { line });
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let raw: RawEntry = serde_json::from_slice(&self.buf)
                .map_err(|source| TarSplitError::Json { line, source })?;
            return parse_entry(raw, line).map(Some);
        }
    }
}

fn invalid(line: u64, what: impl Into<String>) -> TarSplitError {
    TarSplitError::Invalid {
        line,
        what: what.into(),
    }
}

fn b64(line: u64, field: &str, s: &str) -> Result<Vec<u8>, TarSplitError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| invalid(line, format!("{field}: invalid base64: {e}")))
}

fn parse_entry(raw: RawEntry, line: u64) -> Result<Entry, TarSplitError> {
    if raw.position.is_some_and(|p| p < 0) {
        return Err(invalid(line, "negative position"));
    }
    match raw.kind {
        TYPE_SEGMENT => {
            let bytes = match raw.payload.as_deref() {
                Some(p) => b64(line, "payload", p)?,
                None => Vec::new(),
            };
            Ok(Entry::Segment(bytes))
        }
        TYPE_FILE => {
            let name = match (raw.name_raw.as_deref(), raw.name) {
                (Some(r), _) if !r.is_empty() => b64(line, "name_raw", r)?,
                (_, Some(n)) => n.into_bytes(),
                (_, None) => return Err(invalid(line, "file entry without a name")),
            };
            if name.len() > MAX_NAME {
                return Err(invalid(line, format!("name longer than {MAX_NAME} bytes")));
            }
            let size = raw.size.unwrap_or(0);
            let size = u64::try_from(size).map_err(|_| invalid(line, "negative size"))?;
            let crc = match raw.payload.as_deref() {
                None => None,
                Some(p) => {
                    let v = b64(line, "payload", p)?;
                    if v.is_empty() {
                        None
                    } else {
                        Some(<[u8; CRC_SIZE]>::try_from(v.as_slice()).map_err(|_| {
                            invalid(
                                line,
                                format!("checksum of {} bytes, not {CRC_SIZE}", v.len()),
                            )
                        })?)
                    }
                }
            };
            if size > 0 && crc.is_none() {
                return Err(invalid(line, "file with contents but no checksum"));
            }
            Ok(Entry::File { name, size, crc })
        }
        t => Err(invalid(line, format!("unknown entry type {t}"))),
    }
}

/// CRC-64 with the ISO polynomial, reflected, initial value and final xor all ones: what
/// Go's `hash/crc64` computes with `crc64.MakeTable(crc64.ISO)`.
#[derive(Clone)]
pub struct Crc64 {
    state: u64,
}

/// The reflected ISO polynomial (x^64 + x^4 + x^3 + x + 1).
const CRC64_ISO: u64 = 0xD800_0000_0000_0000;

const fn crc_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ CRC64_ISO
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u64; 256] = crc_table();

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc64 {
    pub fn new() -> Self {
        Crc64 { state: !0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.state;
        for &b in data {
            c = CRC_TABLE[((c as u8) ^ b) as usize] ^ (c >> 8);
        }
        self.state = c;
    }

    /// The checksum as tar-split stores it (big-endian).
    pub fn finish(&self) -> [u8; CRC_SIZE] {
        (!self.state).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_iso_known_value() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)) = 0xb90956c775a41001
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xb909_56c7_75a4_1001u64.to_be_bytes());
    }

    #[test]
    fn parses_segments_and_files() {
        let text = concat!(
            r#"{"type":2,"payload":"YWJj","position":0}"#,
            "\n",
            r#"{"type":1,"name":"etc/x","size":3,"payload":"AAAAAAAAAAE=","position":1}"#,
            "\n",
            r#"{"type":1,"name":"d","payload":null,"position":2}"#,
            "\n",
            r#"{"type":1,"name_raw":"/w==","payload":null,"position":3}"#,
            "\n",
        );
        let mut r = Reader::new(text.as_bytes());
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::Segment(b"abc".to_vec()))
        );
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::File {
                name: b"etc/x".to_vec(),
                size: 3,
                crc: Some([0, 0, 0, 0, 0, 0, 0, 1])
            })
        );
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::File {
                name: b"d".to_vec(),
                size: 0,
                crc: None
            })
        );
        assert_eq!(
            r.next_entry().unwrap(),
            Some(Entry::File {
                name: vec![0xff],
                size: 0,
                crc: None
            })
        );
        assert_eq!(r.next_entry().unwrap(), None);
    }

    #[test]
    fn rejects_bad_input() {
        for (text, want) in [
            (r#"{"type":3,"position":0}"#, "line 1: unknown entry type 3"),
            (
                r#"{"type":1,"name":"a","size":-1,"position":0}"#,
                "line 1: negative size",
            ),
            (
                r#"{"type":1,"name":"a","size":5,"payload":null,"position":0}"#,
                "line 1: file with contents but no checksum",
            ),
            (
                r#"{"type":2,"payload":"!!","position":0}"#,
                "line 1: payload: invalid base64",
            ),
        ] {
            let e = Reader::new(text.as_bytes()).next_entry().unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
        let long = vec![b'x'; MAX_LINE + 10];
        let e = Reader::new(long.as_slice()).next_entry().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("line 1: longer than {MAX_LINE} bytes")
        );
    }
}
