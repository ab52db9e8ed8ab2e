//! Streaming tar decoding with byte-exact accounting.
//!
//! [`Parser`] reads a tar stream (ustar, GNU, PAX) through an [`Input`] and
//! yields one [`LayerEntry`] per file-system entry, after applying GNU
//! long-name/long-link (`L`/`K`) records and PAX extended headers (`x`).
//! Every byte of the stream is consumed through the [`Input`], classified as
//! either *inline* (headers, extended records, padding, small file bodies,
//! the end-of-archive blocks and whatever follows them) or *payload* (the body
//! of a regular file larger than [`INLINE_MAX`] bytes). The importer records
//! inline bytes verbatim and payloads as object references, which is what
//! lets a splitstream rebuild the tar byte for byte; replaying a splitstream
//! through the same parser re-derives the entries.
//!
//! Interpretation choices (they match Go's `archive/tar`, which most
//! container tooling uses):
//!
//! * The first all-zero header block ends the archive; it and every byte
//!   after it (the second zero block, extra zero blocks, trailing garbage)
//!   are kept inline but not interpreted. A stream that ends cleanly at a
//!   header boundary without any zero block is accepted too.
//! * Types `1`–`6` (links, devices, directories, FIFOs) carry no data, whatever
//!   their size field says; `0`, `\0` and `7` are regular files, except that
//!   an old-style `\0` entry whose name ends in `/` is a directory.
//! * PAX global headers (`g`) are kept but ignored, as docker and containerd
//!   do. PAX keys other than `path`, `linkpath`, `size`, `uid`, `gid`,
//!   `mtime` and `SCHILY.xattr.*` are ignored; `GNU.sparse.*` keys and GNU
//!   sparse (`S`) entries are rejected, as are other unknown type flags.
//!
//! Hostile input cannot make the parser allocate more than a fixed amount:
//! extended records are capped at [`META_MAX`] bytes each and
//! [`META_TOTAL_MAX`] per entry, xattrs at [`MAX_XATTRS`] per entry, and
//! bodies are streamed in bounded chunks.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;

use erofs::tree::{Timespec, Xattr};

use super::{EntryData, EntryKind, LayerEntry};
use crate::fsverity::Digest;
use crate::repo::objects::ObjectError;

/// Tar block size.
pub const BLOCK: usize = 512;

/// Regular files up to this size are inline; larger ones are objects.
pub const INLINE_MAX: u64 = 64;

/// Largest accepted PAX extended header or GNU long name/link record.
pub const META_MAX: u64 = 1 << 20;

/// Largest total of extended records accepted before one entry.
pub const META_TOTAL_MAX: u64 = 4 << 20;

/// Most extended attributes accepted on one entry.
pub const MAX_XATTRS: usize = 4096;

/// Longest entry name quoted in error messages.
const NAME_IN_ERRORS: usize = 256;

/// Errors decoding a layer tar or a splitstream, or storing its objects.
/// Tar errors name the entry: its path (as far as known) and the offset of
/// its header in the stream.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the tar stream failed.
    #[error("{entry}: read error: {source}")]
    Io {
        entry: EntryName,
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a header, record or file body.
    #[error("{entry}: stream truncated at byte {offset} ({what})")]
    Truncated {
        entry: EntryName,
        offset: u64,
        what: &'static str,
    },
    /// A header block's checksum does not match its contents.
    #[error("{entry}: bad header checksum (stored {stored:?}, computed {computed})")]
    BadChecksum {
        entry: EntryName,
        stored: String,
        computed: u32,
    },
    /// A numeric header field or PAX value does not parse or is out of range.
    #[error("{entry}: invalid {field} {value:?}")]
    BadNumber {
        entry: EntryName,
        field: &'static str,
        value: String,
    },
    /// An extended record (or a size) is beyond what is accepted.
    #[error("{entry}: {what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        entry: EntryName,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// A PAX extended header is malformed.
    #[error("{entry}: malformed PAX extended header: {detail}")]
    BadPax { entry: EntryName, detail: String },
    /// A valid but unsupported tar feature (sparse files, unknown types).
    #[error("{entry}: unsupported: {what}")]
    Unsupported { entry: EntryName, what: String },
    /// Storing a file's contents as an object failed.
    #[error("{entry}: cannot store contents: {source}")]
    Object {
        entry: EntryName,
        #[source]
        source: ObjectError,
    },
    /// The splitstream is not one strata can read.
    #[error("splitstream: {0}")]
    Splitstream(String),
    /// A splitstream references an object the repository does not have.
    #[error("splitstream references missing object {digest} ({})", path.display())]
    MissingObject { digest: Digest, path: PathBuf },
    /// A referenced object does not have the length the splitstream records.
    #[error("object {digest} ({}) has {actual} bytes, the splitstream expects {expected}", path.display())]
    ObjectSize {
        digest: Digest,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// Reading a referenced object failed.
    #[error("cannot read object {digest} ({}): {source}", path.display())]
    ObjectRead {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the reconstructed tar failed.
    #[error("cannot write tar stream: {0}")]
    Output(#[source] io::Error),
}

/// Names a tar entry in errors: the path as far as known (lossy UTF-8,
/// shortened) and the stream offset of its (first) header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub path: String,
    pub offset: u64,
}

impl EntryName {
    fn new(path: &[u8], offset: u64) -> EntryName {
        let cut = &path[..path.len().min(NAME_IN_ERRORS)];
        let mut name = String::from_utf8_lossy(cut).into_owned();
        if path.len() > NAME_IN_ERRORS {
            name.push_str("...");
        }
        EntryName { path: name, offset }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "tar entry at byte {}", self.offset)
        } else {
            write!(
                f,
                "tar entry {:?} (header at byte {})",
                self.path, self.offset
            )
        }
    }
}

/// Where the parser's bytes come from and go to. Everything the parser
/// consumes is inline except file payloads handed to [`Input::payload`].
/// Short counts mean end of stream.
pub(crate) trait Input {
    /// Current offset in the tar stream.
    fn offset(&self) -> u64;
    /// Reads inline bytes until `buf` is full or the stream ends; returns
    /// the count.
    fn read_inline(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Consumes `n` inline bytes (or fewer at end of stream); returns the count.
    fn skip_inline(&mut self, n: u64) -> io::Result<u64>;
    /// Consumes the body of a regular file of `size` (> [`INLINE_MAX`])
    /// bytes. Returns its digest if known now (replay) or `None` if it will
    /// be known later (import).
    fn payload(&mut self, size: u64, entry: &EntryName) -> Result<Option<Digest>, LayerError>;
    /// Consumes everything up to the end of the stream as inline bytes.
    fn rest(&mut self) -> io::Result<u64>;
}

/// Extended attributes and overrides from GNU and PAX records that apply to
/// the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timespec>,
    xattrs: Vec<Xattr>,
    /// Total record bytes read for this entry.
    total: u64,
    /// Offset of the first record's header (errors name the entry there).
    first_offset: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.first_offset.is_none()
    }
}

/// A streaming tar parser over an [`Input`].
pub(crate) struct Parser<I> {
    pub input: I,
    done: bool,
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// `name` up to its first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// Parses an octal or base-256 numeric header field.
/// A non-negative numeric header field, or an error naming the entry.
fn header_number(
    block: &[u8],
    range: std::ops::Range<usize>,
    field: &'static str,
    entry: &EntryName,
) -> Result<u64, LayerError> {
    parse_numeric(&block[range.clone()])
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| LayerError::BadNumber {
            entry: entry.clone(),
            field,
            value: String::from_utf8_lossy(&block[range]).into_owned(),
        })
}

fn parse_numeric(field: &[u8]) -> Option<i64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // GNU base-256: big-endian two's complement in the remaining bits.
            let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in field.iter().enumerate() {
                let mut c = c ^ inv;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return None;
                }
                x = (x << 8) | u64::from(c);
            }
            if x >> 63 != 0 {
                return None;
            }
            let x = x as i64;
            return Some(if inv == 0xff { !x } else { x });
        }
    }
    let trimmed = trim(field);
    let digits = match trimmed.iter().position(|&c| c == 0 || c == b' ') {
        Some(n) => &trimmed[..n],
        None => trimmed,
    };
    let mut x: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        x = x.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    i64::try_from(x).ok()
}

/// Trims leading and trailing spaces and NULs.
fn trim(b: &[u8]) -> &[u8] {
    let pad = |c: &u8| *c == b' ' || *c == 0;
    let start = b.iter().position(|c| !pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !pad(c)).map_or(start, |n| n + 1);
    &b[start..end]
}

/// Linux `makedev`.
pub fn makedev(major: u64, minor: u64) -> u64 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

/// Parses a decimal PAX number.
fn pax_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut x: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return None;
        }
        x = x.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(x)
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`, fraction truncated to ns.
fn pax_time(v: &[u8]) -> Option<Timespec> {
    let (neg, v) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(n) => (&v[..n], Some(&v[n + 1..])),
        None => (v, None),
    };
    let secs = i64::try_from(pax_decimal(int)?).ok()?;
    let mut nsec: u32 = 0;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..9 {
            nsec = nsec * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'));
        }
    }
    if !neg {
        return Some(Timespec { sec: secs, nsec });
    }
    if nsec == 0 {
        Some(Timespec {
            sec: -secs,
            nsec: 0,
        })
    } else {
        Some(Timespec {
            sec: (-secs).checked_sub(1)?,
            nsec: 1_000_000_000 - nsec,
        })
    }
}

/// Applies the records of one PAX extended header to `p`.
fn parse_pax(mut data: &[u8], p: &mut Pending, entry: &EntryName) -> Result<(), LayerError> {
    let bad = |detail: String| LayerError::BadPax {
        entry: entry.clone(),
        detail,
    };
    while !data.is_empty() {
        let sp = data
            .iter()
            .take(21)
            .position(|&c| c == b' ')
            .ok_or_else(|| bad("record length not followed by a space".into()))?;
        let len = pax_decimal(&data[..sp]).ok_or_else(|| {
            bad(format!(
                "bad record length {:?}",
                String::from_utf8_lossy(&data[..sp])
            ))
        })?;
        if len > data.len() as u64 || (len as usize) < sp + 3 {
            return Err(bad(format!("record length {len} out of range")));
        }
        let (rec, rest) = data.split_at(len as usize);
        data = rest;
        let body = &rec[sp + 1..];
        let Some((b'\n', kv)) = body.split_last() else {
            return Err(bad("record does not end with a newline".into()));
        };
        let eq = kv
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("record has no '='".into()))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() {
            return Err(bad("empty keyword".into()));
        }
        let num = |field: &'static str| -> Result<Option<u64>, LayerError> {
            if value.is_empty() {
                return Ok(None);
            }
            pax_decimal(value)
                .map(Some)
                .ok_or_else(|| LayerError::BadNumber {
                    entry: entry.clone(),
                    field,
                    value: String::from_utf8_lossy(value).into_owned(),
                })
        };
        match key {
            b"path" => p.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => p.linkpath = (!value.is_empty()).then(|| value.to_vec()),
            b"size" => p.size = num("PAX size")?,
            b"uid" => p.uid = num("PAX uid")?,
            b"gid" => p.gid = num("PAX gid")?,
            b"mtime" => {
                p.mtime = if value.is_empty() {
                    None
                } else {
                    Some(pax_time(value).ok_or_else(|| LayerError::BadNumber {
                        entry: entry.clone(),
                        field: "PAX mtime",
                        value: String::from_utf8_lossy(value).into_owned(),
                    })?)
                }
            }
            _ if key.starts_with(b"SCHILY.xattr.") => {
                let name = &key[b"SCHILY.xattr.".len()..];
                if name.is_empty() {
                    return Err(bad("empty xattr name".into()));
                }
                let count = p.xattrs.len();
                match p.xattrs.iter_mut().find(|x| x.name == name) {
                    Some(x) => x.value = value.to_vec(),
                    None if count >= MAX_XATTRS => {
                        return Err(bad(format!("more than {MAX_XATTRS} xattrs")))
                    }
                    None => p.xattrs.push(Xattr {
                        name: name.to_vec(),
                        value: value.to_vec(),
                    }),
                }
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(LayerError::Unsupported {
                    entry: entry.clone(),
                    what: "GNU sparse file (PAX GNU.sparse.* records)".into(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Raw fields of a header block.
struct Header<'a>(&'a [u8; BLOCK]);

impl Header<'_> {
    fn name(&self) -> &[u8] {
        cstr(&self.0[0..100])
    }
    fn linkname(&self) -> &[u8] {
        cstr(&self.0[157..257])
    }
    fn typeflag(&self) -> u8 {
        self.0[156]
    }
    fn is_posix(&self) -> bool {
        &self.0[257..263] == b"ustar\0"
    }
    fn is_gnu(&self) -> bool {
        &self.0[257..265] == b"ustar  \0"
    }
    /// The full ustar name (prefix + "/" + name).
    fn path(&self) -> Vec<u8> {
        let name = self.name();
        let prefix = if self.is_posix() {
            cstr(&self.0[345..500])
        } else {
            &[][..]
        };
        if prefix.is_empty() {
            name.to_vec()
        } else {
            let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
            p.extend_from_slice(prefix);
            p.push(b'/');
            p.extend_from_slice(name);
            p
        }
    }
    fn checksum_ok(&self) -> Result<(), (String, u32)> {
        let mut unsigned: u32 = 0;
        let mut signed: i32 = 0;
        for (i, &b) in self.0.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u32::from(b);
            signed += i32::from(b as i8);
        }
        let field = &self.0[148..156];
        let stored = parse_numeric(field);
        match stored {
            Some(s) if s == i64::from(unsigned) || s == i64::from(signed) => Ok(()),
            _ => Err((String::from_utf8_lossy(field).into_owned(), unsigned)),
        }
    }
}

impl<I: Input> Parser<I> {
    pub fn new(input: I) -> Self {
        Parser { input, done: false }
    }

    fn read_exact_inline(
        &mut self,
        buf: &mut [u8],
        entry: &EntryName,
        what: &'static str,
    ) -> Result<(), LayerError> {
        let n = self.input.read_inline(buf).map_err(|e| io_err(entry, e))?;
        if n < buf.len() {
            return Err(LayerError::Truncated {
                entry: entry.clone(),
                offset: self.input.offset(),
                what,
            });
        }
        Ok(())
    }

    fn skip_exact(
        &mut self,
        n: u64,
        entry: &EntryName,
        what: &'static str,
    ) -> Result<(), LayerError> {
        let got = self.input.skip_inline(n).map_err(|e| io_err(entry, e))?;
        if got < n {
            return Err(LayerError::Truncated {
                entry: entry.clone(),
                offset: self.input.offset(),
                what,
            });
        }
        Ok(())
    }

    fn skip_padding(&mut self, size: u64, entry: &EntryName) -> Result<(), LayerError> {
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.skip_exact(pad, entry, "padding after entry data")
    }

    /// Reads an extended record body (PAX header, GNU long name/link) of
    /// `size` bytes plus padding.
    fn read_record(
        &mut self,
        size: u64,
        pending: &mut Pending,
        entry: &EntryName,
        what: &'static str,
    ) -> Result<Vec<u8>, LayerError> {
        if size > META_MAX {
            return Err(LayerError::TooLarge {
                entry: entry.clone(),
                what,
                size,
                limit: META_MAX,
            });
        }
        pending.total += size;
        if pending.total > META_TOTAL_MAX {
            return Err(LayerError::TooLarge {
                entry: entry.clone(),
                what: "extended records for one entry",
                size: pending.total,
                limit: META_TOTAL_MAX,
            });
        }
        let mut buf = vec![0u8; size as usize];
        self.read_exact_inline(&mut buf, entry, what)?;
        self.skip_padding(size, entry)?;
        Ok(buf)
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<LayerEntry>, LayerError> {
        if self.done {
            return Ok(None);
        }
        let mut pending = Pending::default();
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.input.offset();
            let here = EntryName::new(
                pending
                    .path
                    .as_deref()
                    .or(pending.long_name.as_deref())
                    .unwrap_or(&[]),
                pending.first_offset.unwrap_or(offset),
            );
            let n = self
                .input
                .read_inline(&mut block)
                .map_err(|e| io_err(&here, e))?;
            if n == 0 || (n == BLOCK && is_zero(&block)) {
                self.done = true;
                if n == BLOCK {
                    self.input.rest().map_err(|e| io_err(&here, e))?;
                }
                if !pending.is_empty() {
                    return Err(LayerError::Truncated {
                        entry: here,
                        offset: self.input.offset(),
                        what: "extended header not followed by an entry",
                    });
                }
                return Ok(None);
            }
            let hdr = Header(&block);
            let entry = if pending.is_empty() {
                EntryName::new(&hdr.path(), offset)
            } else {
                here
            };
            if n < BLOCK {
                return Err(LayerError::Truncated {
                    entry,
                    offset: self.input.offset(),
                    what: "header block",
                });
            }
            if let Err((stored, computed)) = hdr.checksum_ok() {
                return Err(LayerError::BadChecksum {
                    entry,
                    stored,
                    computed,
                });
            }
            let num = |range: std::ops::Range<usize>, field: &'static str| {
                header_number(&block, range, field, &entry)
            };
            let header_size = num(124..136, "size field")?;
            let typeflag = hdr.typeflag();
            match typeflag {
                b'x' | b'L' | b'K' => {
                    pending.first_offset.get_or_insert(offset);
                    let what = match typeflag {
                        b'x' => "PAX extended header",
                        b'L' => "GNU long name",
                        _ => "GNU long link name",
                    };
                    let rec = self.read_record(header_size, &mut pending, &entry, what)?;
                    match typeflag {
                        b'x' => parse_pax(&rec, &mut pending, &entry)?,
                        b'L' => pending.long_name = Some(cstr(&rec).to_vec()),
                        _ => pending.long_link = Some(cstr(&rec).to_vec()),
                    }
                    continue;
                }
                b'g' => {
                    // Global PAX header: kept, not interpreted.
                    self.skip_exact(header_size, &entry, "PAX global header")?;
                    self.skip_padding(header_size, &entry)?;
                    continue;
                }
                _ => {}
            }
            let path = pending
                .path
                .take()
                .or(pending.long_name.take())
                .unwrap_or_else(|| hdr.path());
            let entry = EntryName::new(&path, pending.first_offset.unwrap_or(offset));
            let mut kind = match typeflag {
                b'0' | b'\0' | b'7' => EntryKind::Regular,
                b'1' | b'2' => {
                    let target = pending
                        .linkpath
                        .take()
                        .or(pending.long_link.take())
                        .unwrap_or_else(|| hdr.linkname().to_vec());
                    if typeflag == b'1' {
                        EntryKind::Hardlink(target)
                    } else {
                        EntryKind::Symlink(target)
                    }
                }
                b'3' => EntryKind::CharDevice,
                b'4' => EntryKind::BlockDevice,
                b'5' => EntryKind::Directory,
                b'6' => EntryKind::Fifo,
                b'S' => {
                    return Err(LayerError::Unsupported {
                        entry,
                        what: "GNU sparse file (type 'S')".into(),
                    })
                }
                t => {
                    return Err(LayerError::Unsupported {
                        entry,
                        what: format!("entry type {:?}", char::from(t)),
                    })
                }
            };
            if typeflag == b'\0' && path.ends_with(b"/") {
                kind = EntryKind::Directory;
            }
            let num = |range: std::ops::Range<usize>, field: &'static str| {
                header_number(&block, range, field, &entry)
            };
            let id = |v: u64, field: &'static str| -> Result<u32, LayerError> {
                u32::try_from(v).map_err(|_| LayerError::BadNumber {
                    entry: entry.clone(),
                    field,
                    value: v.to_string(),
                })
            };
            let mode = (num(100..108, "mode field")? & 0o7777) as u32;
            let uid = id(
                match pending.uid {
                    Some(v) => v,
                    None => num(108..116, "uid field")?,
                },
                "uid",
            )?;
            let gid = id(
                match pending.gid {
                    Some(v) => v,
                    None => num(116..124, "gid field")?,
                },
                "gid",
            )?;
            let mtime = match pending.mtime {
                Some(t) => t,
                None => {
                    let sec =
                        parse_numeric(&block[136..148]).ok_or_else(|| LayerError::BadNumber {
                            entry: entry.clone(),
                            field: "mtime field",
                            value: String::from_utf8_lossy(&block[136..148]).into_owned(),
                        })?;
                    Timespec { sec, nsec: 0 }
                }
            };
            let rdev = match kind {
                EntryKind::CharDevice | EntryKind::BlockDevice
                    if hdr.is_posix() || hdr.is_gnu() =>
                {
                    makedev(
                        num(329..337, "devmajor field")?,
                        num(337..345, "devminor field")?,
                    )
                }
                _ => 0,
            };
            let size = pending.size.unwrap_or(header_size);
            let mut out = LayerEntry {
                path,
                kind,
                mode,
                uid,
                gid,
                mtime,
                rdev,
                size: 0,
                xattrs: std::mem::take(&mut pending.xattrs),
                data: None,
            };
            if out.kind == EntryKind::Regular {
                out.size = size;
                if size <= INLINE_MAX {
                    let mut buf = vec![0u8; size as usize];
                    self.read_exact_inline(&mut buf, &entry, "file data")?;
                    out.data = Some(EntryData::Inline(buf));
                } else {
                    let digest = self.input.payload(size, &entry)?;
                    // The importer fills in the real digest once it is known.
                    out.data = Some(EntryData::Object(digest.unwrap_or_else(placeholder)));
                }
                self.skip_padding(size, &entry)?;
            }
            return Ok(Some(out));
        }
    }
}

/// Stand-in digest for payloads whose digest the importer learns later.
fn placeholder() -> Digest {
    Digest::from_bytes(crate::fsverity::Algorithm::Sha256, &[0; 32]).expect("32 bytes")
}

fn io_err(entry: &EntryName, e: io::Error) -> LayerError {
    LayerError::Io {
        entry: entry.clone(),
        source: e,
    }
}

/// Reads until `buf` is full or EOF, retrying on `Interrupted`.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"  644 \0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"0009"), None);
        assert_eq!(parse_numeric(b"abc"), None);
        // base-256
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..12].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_numeric(&f), Some(1 << 40));
        let f = [0xffu8; 12];
        assert_eq!(parse_numeric(&f), Some(-1));
        let mut f = [0xffu8; 12];
        f[11] = 0xfe;
        assert_eq!(parse_numeric(&f), Some(-2));
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[1] = 1; // > 2^63
        assert_eq!(parse_numeric(&f), None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1"), Some(Timespec { sec: 1, nsec: 0 }));
        assert_eq!(
            pax_time(b"1700000000.123456789123"),
            Some(Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_789
            })
        );
        assert_eq!(
            pax_time(b"5.5"),
            Some(Timespec {
                sec: 5,
                nsec: 500_000_000
            })
        );
        assert_eq!(
            pax_time(b"-1.25"),
            Some(Timespec {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(pax_time(b"-3"), Some(Timespec { sec: -3, nsec: 0 }));
        assert_eq!(pax_time(b"1."), None);
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"99999999999999999999999"), None);
    }

    #[test]
    fn makedev_linux() {
        assert_eq!(makedev(1, 3), 0x103);
        assert_eq!(makedev(8, 0x12345), 0x12300845);
        assert_eq!(makedev(0x1234, 0), 0x1000_0000_0000 | 0x23400);
    }
}
