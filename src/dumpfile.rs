//! composefs-dump(5) dumpfiles: a parser ([`parse`]) that builds the same
//! tree `mkcomposefs --from-file` builds, and a printer ([`print`]) that
//! writes what `composefs-info dump` prints for an image of a tree.
//!
//! # Format
//!
//! One line per file: eleven space-separated fields (`PATH SIZE MODE NLINK
//! UID GID RDEV MTIME PAYLOAD CONTENT DIGEST`) followed by `KEY=VALUE`
//! xattrs. Fields use `\\`, `\n`, `\r`, `\t` and `\xHH` escapes; an optional
//! field holding exactly `-` is unset. A `@` in front of MODE makes the line
//! a hard link to the path in PAYLOAD.
//!
//! # Parse modes
//!
//! composefs C 1.0.8 `mkcomposefs` parses leniently unless the environment
//! variable `CFS_PARSE_STRICT` is set (to anything). [`ParseMode::Lenient`]
//! is therefore the default; [`ParseMode::from_env`] mirrors the C switch.
//! Strict mode additionally refuses:
//! - a last line without a trailing newline,
//! - a non-zero RDEV on anything but a block or character device,
//! - a symlink whose SIZE differs from the length of its target,
//! - a symlink with non-empty CONTENT,
//! - (our addition) a DIGEST that is not exactly 64 hex digits, on any file.
//!
//! # Where we differ from C on purpose
//!
//! Only for input on which C misbehaves, and the result is always an error:
//! - an invalid GID or RDEV integer is an error (C silently uses 0 when the
//!   UID is non-zero: it tests the wrong variable);
//! - a DIGEST C would only half-decode (fewer than 64 hex digits, or a
//!   non-hex character among the first 64) is an error when the digest is
//!   used (external regular file; in strict mode always) — C would store
//!   uninitialised bytes;
//! - hard-link cycles and hard links to directories are parse errors (C
//!   accepts them here and fails, or writes a broken image, later).
//!
//! Two facts of C's node tree have no place in [`Tree`] and are dropped:
//! the SIZE of a device/fifo/socket (C only uses it to pick an extended
//! inode when it exceeds 4 GiB) and the CONTENT/PAYLOAD/DIGEST fields of
//! files that do not use them (C ignores them when writing).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use erofs::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use erofs::tree::{mode_is_valid, NAME_MAX};
use erofs::{Content, File, FileData, Inode, InodeId, Stat, Timespec, Tree, TreeBuilder, Xattr};

/// Largest inline CONTENT mkcomposefs accepts (`LCFS_INLINE_CONTENT_MAX`).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Budget for one file's xattrs from a dumpfile
/// (`LCFS_INODE_EXTERNAL_XATTR_MAX`, accounted like composefs C does).
pub const EXTERNAL_XATTR_MAX: usize = (u16::MAX / 2) as usize;
/// Longest payload (symlink target, backing path) without the NUL (PATH_MAX - 1).
pub const PAYLOAD_MAX: usize = 4095;
/// Longest xattr name (XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Longest xattr value.
pub const XATTR_VALUE_MAX: usize = u16::MAX as usize;
/// Longest xattr area (everything after DIGEST) on one line.
pub const XATTR_LINE_MAX: usize = u16::MAX as usize;

const DIGEST_LEN: usize = 32;

/// How forgiving [`parse`] is; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParseMode {
    /// `mkcomposefs` with `CFS_PARSE_STRICT` set.
    Strict,
    /// `mkcomposefs` default.
    #[default]
    Lenient,
}

impl ParseMode {
    /// Strict when `CFS_PARSE_STRICT` is set in the environment, like mkcomposefs.
    pub fn from_env() -> Self {
        if std::env::var_os("CFS_PARSE_STRICT").is_some() {
            ParseMode::Strict
        } else {
            ParseMode::Lenient
        }
    }
}

/// Which fixed field a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Path,
    Size,
    Mode,
    Nlink,
    Uid,
    Gid,
    Rdev,
    Mtime,
    Payload,
    Content,
    Digest,
    Xattr,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Path => "PATH",
            Field::Size => "SIZE",
            Field::Mode => "MODE",
            Field::Nlink => "NLINK",
            Field::Uid => "UID",
            Field::Gid => "GID",
            Field::Rdev => "RDEV",
            Field::Mtime => "MTIME",
            Field::Payload => "PAYLOAD",
            Field::Content => "CONTENT",
            Field::Digest => "DIGEST",
            Field::Xattr => "xattr",
        })
    }
}

/// What is wrong with a dumpfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpErrorKind {
    #[error("no files in dump file")]
    Empty,
    #[error("missing trailing newline (strict mode)")]
    MissingTrailingNewline,
    #[error("embedded NUL byte at offset {0}")]
    EmbeddedNul(usize),
    #[error("{field}: {why}")]
    BadEscape { field: Field, why: String },
    #[error("empty path")]
    EmptyPath,
    #[error("{field}: invalid integer {value:?}")]
    InvalidInteger { field: Field, value: String },
    #[error("invalid mode {0:o} (unknown file type)")]
    InvalidMode(u32),
    #[error("root must be a directory")]
    RootNotDirectory,
    #[error("root appears more than once")]
    MultipleRoots,
    #[error("root \"/\" must be the first line")]
    RootMissing,
    #[error("parent directory missing")]
    ParentMissing,
    #[error("parent is not a directory")]
    ParentNotDirectory,
    #[error("invalid file name ({0})")]
    BadName(&'static str),
    #[error("path already exists")]
    AlreadyExists,
    #[error("directories can't be hard links")]
    DirectoryHardlink,
    #[error("hard link without a target path")]
    MissingHardlinkTarget,
    #[error("hard link target {0} not found")]
    HardlinkTargetNotFound(String),
    #[error("hard link to itself")]
    SelfHardlink,
    #[error("hard link cycle through {0}")]
    HardlinkCycle(String),
    #[error("hard link target {0} is a directory")]
    HardlinkToDirectory(String),
    #[error("content length {content} differs from size {size}")]
    ContentSize { content: usize, size: u64 },
    #[error("inline content of {0} bytes exceeds the maximum of {INLINE_CONTENT_MAX}")]
    InlineTooBig(usize),
    #[error("non-zero RDEV on a file that is not a device (strict mode)")]
    NonZeroRdev,
    #[error("symlink target is empty")]
    EmptySymlink,
    #[error("symlink target longer than {PAYLOAD_MAX} bytes")]
    LongSymlink,
    #[error("symlink size {size} differs from target length {len} (strict mode)")]
    SymlinkSize { size: u64, len: usize },
    #[error("symlink cannot have content (strict mode)")]
    SymlinkContent,
    #[error("payload longer than {PAYLOAD_MAX} bytes")]
    LongPayload,
    #[error("invalid digest {0:?} (want 64 hex digits)")]
    BadDigest(String),
    #[error("xattrs take more than {XATTR_LINE_MAX} bytes on the line")]
    XattrLineTooLong,
    #[error("xattr {0:?} has no '='")]
    XattrMissingEquals(String),
    #[error("xattr name {0:?} is empty or longer than {XATTR_NAME_MAX} bytes")]
    XattrName(String),
    #[error("xattr {0} value longer than {XATTR_VALUE_MAX} bytes")]
    XattrValueTooLong(String),
    #[error("xattr {0} exceeds the per-file xattr budget of {EXTERNAL_XATTR_MAX} bytes")]
    XattrsTooBig(String),
}

/// A dumpfile error: 1-based line number, the line's path (as far as known) and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError {
    /// 1-based line number; 0 when the error is about the whole file.
    pub line: usize,
    /// The path on that line (lossy UTF-8, escapes decoded), may be empty.
    pub path: String,
    pub kind: DumpErrorKind,
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for DumpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// FxHash-style hasher: paths are trusted to be fine for a non-DoS-resistant hash.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            h = (h.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Cuts a byte string at its first NUL, as C string handling does.
fn c_str(b: &[u8]) -> &[u8] {
    match memchr(0, b) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

/// `split_at` of mkcomposefs: the part before `sep` (or all of it), and the
/// rest after `sep` (empty when there was none).
fn split_field<'a>(s: &mut &'a [u8], sep: u8) -> &'a [u8] {
    match memchr(sep, s) {
        Some(i) => {
            let part = &s[..i];
            *s = &s[i + 1..];
            part
        }
        None => std::mem::take(s),
    }
}

fn hexdigit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes the dumpfile escapes. Borrows when there is nothing to decode.
fn unescape(s: &[u8], field: Field) -> Result<std::borrow::Cow<'_, [u8]>, DumpErrorKind> {
    let Some(first) = memchr(b'\\', s) else {
        return Ok(std::borrow::Cow::Borrowed(s));
    };
    let bad = |why: String| DumpErrorKind::BadEscape { field, why };
    let mut out = Vec::with_capacity(s.len());
    out.extend_from_slice(&s[..first]);
    let mut i = first;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err(bad("no character after escape '\\'".into()));
        };
        i += 1;
        match e {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                if i + 2 > s.len() {
                    return Err(bad("no hex digits after '\\x'".into()));
                }
                match (hexdigit(s[i]), hexdigit(s[i + 1])) {
                    (Some(a), Some(b)) => out.push(a << 4 | b),
                    _ => return Err(bad("invalid hex digits after '\\x'".into())),
                }
                i += 2;
            }
            other => {
                return Err(bad(format!(
                    "unsupported escape '\\{}'",
                    (other as char).escape_default()
                )))
            }
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// An optional field: exactly `-` is unset.
fn unescape_opt(
    s: &[u8],
    field: Field,
) -> Result<Option<std::borrow::Cow<'_, [u8]>>, DumpErrorKind> {
    if s == b"-" {
        Ok(None)
    } else {
        unescape(s, field).map(Some)
    }
}

/// `strtoull(s, &end, base)` with the whole string required to be consumed,
/// as mkcomposefs parses integers: leading whitespace and a sign are allowed,
/// a minus negates modulo 2^64, overflow saturates.
fn parse_uint(s: &[u8], base: u64, field: Field) -> Result<u64, DumpErrorKind> {
    let bad = || DumpErrorKind::InvalidInteger {
        field,
        value: lossy(s),
    };
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < s.len() {
        let d = match s[i] {
            c @ b'0'..=b'9' if u64::from(c - b'0') < base => u64::from(c - b'0'),
            _ => break,
        };
        match v.checked_mul(base).and_then(|x| x.checked_add(d)) {
            Some(x) => v = x,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start || i != s.len() {
        return Err(bad());
    }
    Ok(if overflow {
        u64::MAX
    } else if neg {
        v.wrapping_neg()
    } else {
        v
    })
}

// ---------------------------------------------------------------------------
// Parser

/// The decoded PATH of a line, for messages.
fn path_of_line(line: &[u8]) -> String {
    let mut r = line;
    let first = split_field(&mut r, b' ');
    match unescape(first, Field::Path) {
        Ok(p) => lossy(c_str(&p)),
        Err(_) => lossy(first),
    }
}

/// What a path in the dump names so far.
#[derive(Clone, Copy)]
enum Slot {
    Inode(InodeId),
    /// Index into `Parser::links`.
    Link(u32),
}

struct PendingLink {
    line: usize,
    path: String,
    dir: InodeId,
    name: Vec<u8>,
    target: Option<Vec<u8>>,
    direct: Option<Slot>,
}

struct Parser {
    mode: ParseMode,
    builder: Option<TreeBuilder>,
    /// Canonical path (no leading '/', single separators; root is empty) → node.
    paths: FastMap<Vec<u8>, Slot>,
    links: Vec<PendingLink>,
}

/// Where a new path goes: its parent directory and its name, as mkcomposefs
/// resolves it (repeated slashes are fine; a trailing slash leaves an empty name).
struct Placement<'a> {
    key: std::borrow::Cow<'a, [u8]>,
    parent: InodeId,
    name: &'a [u8],
}

/// Splits a path into its canonical key (components joined by single '/').
fn canonical_key(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let trimmed = {
        let mut p = path;
        while let [b'/', rest @ ..] = p {
            p = rest;
        }
        p
    };
    let clean = !trimmed.windows(2).any(|w| w == b"//") && trimmed.last() != Some(&b'/');
    if clean {
        return std::borrow::Cow::Borrowed(trimmed);
    }
    let mut out = Vec::with_capacity(trimmed.len());
    for comp in trimmed.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    std::borrow::Cow::Owned(out)
}

impl Parser {
    fn lookup(&self, key: &[u8]) -> Option<Slot> {
        self.paths.get(key).copied()
    }

    fn is_dir(&self, slot: Slot) -> bool {
        match (slot, &self.builder) {
            (Slot::Inode(id), Some(b)) => b.tree().inode(id).is_dir(),
            _ => false,
        }
    }

    /// Resolves where `path` goes (not the root), like `tree_add_node`.
    fn place<'a>(&self, path: &'a [u8]) -> Result<Placement<'a>, DumpErrorKind> {
        if self.builder.is_none() {
            return Err(DumpErrorKind::RootMissing);
        }
        let mut p = path;
        while let [b'/', rest @ ..] = p {
            p = rest;
        }
        // The name is what follows the last slash (empty after a trailing one).
        let (parent_part, name) = match p.iter().rposition(|&c| c == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&p[..0], p),
        };
        let parent_key = canonical_key(parent_part);
        let parent = match self.lookup(&parent_key) {
            Some(s) => s,
            None => return Err(DumpErrorKind::ParentMissing),
        };
        if !self.is_dir(parent) {
            return Err(DumpErrorKind::ParentNotDirectory);
        }
        let Slot::Inode(parent) = parent else {
            return Err(DumpErrorKind::ParentNotDirectory);
        };
        if name == b"." || name == b".." {
            return Err(DumpErrorKind::BadName("'.' and '..' are not allowed"));
        }
        if name.is_empty() {
            return Err(DumpErrorKind::BadName("empty"));
        }
        if name.len() > NAME_MAX {
            return Err(DumpErrorKind::BadName("longer than 255 bytes"));
        }
        let key = if parent_key.is_empty() {
            std::borrow::Cow::Borrowed(name)
        } else if let std::borrow::Cow::Borrowed(_) = parent_key {
            // The parent part was already canonical, so the whole path is too.
            std::borrow::Cow::Borrowed(p)
        } else {
            let mut k = parent_key.into_owned();
            k.push(b'/');
            k.extend_from_slice(name);
            std::borrow::Cow::Owned(k)
        };
        if self.paths.contains_key(key.as_ref()) {
            return Err(DumpErrorKind::AlreadyExists);
        }
        Ok(Placement { key, parent, name })
    }

    fn line(&mut self, line_no: usize, line: &[u8]) -> Result<(), DumpError> {
        self.line_inner(line_no, line).map_err(|kind| DumpError {
            line: line_no,
            path: path_of_line(line),
            kind,
        })
    }

    fn line_inner(&mut self, line_no: usize, line: &[u8]) -> Result<(), DumpErrorKind> {
        let strict = self.mode == ParseMode::Strict;
        if let Some(off) = memchr(0, line) {
            return Err(DumpErrorKind::EmbeddedNul(off));
        }
        let mut rest = line;
        let f_path = split_field(&mut rest, b' ');
        let f_size = split_field(&mut rest, b' ');
        let f_mode = split_field(&mut rest, b' ');
        let f_nlink = split_field(&mut rest, b' ');
        let f_uid = split_field(&mut rest, b' ');
        let f_gid = split_field(&mut rest, b' ');
        let f_rdev = split_field(&mut rest, b' ');
        let f_mtime = split_field(&mut rest, b' ');
        let f_payload = split_field(&mut rest, b' ');
        let f_content = split_field(&mut rest, b' ');
        let f_digest = split_field(&mut rest, b' ');
        let xattr_area = rest;

        let path_buf = unescape(f_path, Field::Path)?;
        let path = c_str(&path_buf);
        if path.is_empty() {
            return Err(DumpErrorKind::EmptyPath);
        }

        let (is_link, f_mode) = match f_mode {
            [b'@', m @ ..] => (true, m),
            m => (false, m),
        };
        let mode = parse_uint(f_mode, 8, Field::Mode)? as u32;
        if !mode_is_valid(mode) {
            return Err(DumpErrorKind::InvalidMode(mode));
        }
        let ftype = mode & S_IFMT;

        let is_root = path == b"/";
        let placement = if is_root {
            if ftype != S_IFDIR {
                return Err(DumpErrorKind::RootNotDirectory);
            }
            if self.builder.is_some() {
                return Err(DumpErrorKind::MultipleRoots);
            }
            None
        } else {
            Some(self.place(path)?)
        };

        if is_link {
            if ftype == S_IFDIR {
                return Err(DumpErrorKind::DirectoryHardlink);
            }
            let target = unescape_opt(f_payload, Field::Payload)?.map(|t| c_str(&t).to_vec());
            // A hard-link line is never the root (that needs a directory mode).
            let Some(pl) = placement else {
                return Err(DumpErrorKind::DirectoryHardlink);
            };
            let idx = u32::try_from(self.links.len()).unwrap_or(u32::MAX);
            self.links.push(PendingLink {
                line: line_no,
                path: lossy(path),
                dir: pl.parent,
                name: pl.name.to_vec(),
                target,
                direct: None,
            });
            self.paths.insert(pl.key.into_owned(), Slot::Link(idx));
            return Ok(());
        }

        let size = parse_uint(f_size, 10, Field::Size)?;
        let nlink = parse_uint(f_nlink, 10, Field::Nlink)? as u32;
        let uid = parse_uint(f_uid, 10, Field::Uid)? as u32;
        let gid = parse_uint(f_gid, 10, Field::Gid)? as u32;
        let rdev = parse_uint(f_rdev, 10, Field::Rdev)?;
        let mtime = {
            let mut m = f_mtime;
            let sec = split_field(&mut m, b'.');
            let sec = parse_uint(sec, 10, Field::Mtime)? as i64;
            let nsec = parse_uint(m, 10, Field::Mtime)? as u32;
            Timespec { sec, nsec }
        };
        let payload = unescape_opt(f_payload, Field::Payload)?;
        let payload = payload.as_deref().map(c_str);
        let content = unescape_opt(f_content, Field::Content)?;
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(DumpErrorKind::ContentSize {
                    content: c.len(),
                    size,
                });
            }
        }
        let digest = unescape_opt(f_digest, Field::Digest)?;
        let digest = digest.as_deref().map(c_str);

        let is_device = ftype == S_IFCHR || ftype == S_IFBLK;
        if !is_device && strict && rdev != 0 {
            return Err(DumpErrorKind::NonZeroRdev);
        }
        let content_data = match ftype {
            S_IFLNK => {
                let target = payload.unwrap_or_default();
                if target.is_empty() {
                    return Err(DumpErrorKind::EmptySymlink);
                }
                if target.len() > PAYLOAD_MAX {
                    return Err(DumpErrorKind::LongSymlink);
                }
                if strict {
                    if size != target.len() as u64 {
                        return Err(DumpErrorKind::SymlinkSize {
                            size,
                            len: target.len(),
                        });
                    }
                    if content.as_ref().is_some_and(|c| !c.is_empty()) {
                        return Err(DumpErrorKind::SymlinkContent);
                    }
                }
                Content::Symlink(target.to_vec())
            }
            _ => {
                if payload.is_some_and(|p| p.len() > PAYLOAD_MAX) {
                    return Err(DumpErrorKind::LongPayload);
                }
                if let Some(c) = &content {
                    if c.len() > INLINE_CONTENT_MAX {
                        return Err(DumpErrorKind::InlineTooBig(c.len()));
                    }
                }
                match ftype {
                    S_IFDIR => Content::Directory(Vec::new()),
                    S_IFREG => {
                        let data = match &content {
                            _ if size == 0 => FileData::Inline(Vec::new()),
                            Some(c) => FileData::Inline(c.to_vec()),
                            None => FileData::External {
                                redirect: payload.filter(|p| !p.is_empty()).map(<[u8]>::to_vec),
                                verity: match digest {
                                    Some(d) => Some(parse_digest(d, strict)?),
                                    None => None,
                                },
                            },
                        };
                        Content::Regular(File { size, data })
                    }
                    _ => Content::Special,
                }
            }
        };
        if strict {
            if let Some(d) = digest {
                parse_digest(d, true)?;
            }
        }

        if xattr_area.len() > XATTR_LINE_MAX {
            return Err(DumpErrorKind::XattrLineTooLong);
        }
        let xattrs = parse_xattrs(xattr_area)?;

        let stat = Stat {
            mode,
            uid,
            gid,
            nlink,
            mtime,
            rdev: if is_device { u64::from(rdev as u32) } else { 0 },
        };
        match placement {
            None => {
                let mut b = TreeBuilder::new(stat);
                b.tree_mut().inodes[0].xattrs = xattrs;
                self.builder = Some(b);
                self.paths.insert(Vec::new(), Slot::Inode(InodeId::ROOT));
            }
            Some(pl) => {
                let inode = Inode {
                    stat,
                    xattrs,
                    content: content_data,
                };
                let Some(b) = self.builder.as_mut() else {
                    return Err(DumpErrorKind::RootMissing);
                };
                let id = b.add(pl.parent, pl.name.to_vec(), inode);
                self.paths.insert(pl.key.into_owned(), Slot::Inode(id));
            }
        }
        Ok(())
    }

    fn resolve_links(&mut self) -> Result<(), DumpError> {
        // composefs C resolves hard links last-first; report errors in that order.
        for i in (0..self.links.len()).rev() {
            let l = &self.links[i];
            let err = |kind| DumpError {
                line: l.line,
                path: l.path.clone(),
                kind,
            };
            let Some(target) = &l.target else {
                return Err(err(DumpErrorKind::MissingHardlinkTarget));
            };
            let slot = self
                .lookup(&canonical_key(target))
                .ok_or_else(|| err(DumpErrorKind::HardlinkTargetNotFound(lossy(target))))?;
            if matches!(slot, Slot::Link(j) if j as usize == i) {
                return Err(err(DumpErrorKind::SelfHardlink));
            }
            self.links[i].direct = Some(slot);
        }
        let links = std::mem::take(&mut self.links);
        let Some(builder) = self.builder.as_mut() else {
            return Ok(());
        };
        for l in &links {
            let err = |kind| DumpError {
                line: l.line,
                path: l.path.clone(),
                kind,
            };
            let mut slot = l.direct.unwrap_or(Slot::Inode(InodeId::ROOT));
            let mut steps = 0;
            let id = loop {
                match slot {
                    Slot::Inode(id) => break id,
                    Slot::Link(j) => {
                        steps += 1;
                        if steps > links.len() {
                            return Err(err(DumpErrorKind::HardlinkCycle(
                                l.target.as_deref().map(lossy).unwrap_or_default(),
                            )));
                        }
                        slot = links[j as usize]
                            .direct
                            .unwrap_or(Slot::Inode(InodeId::ROOT));
                    }
                }
            };
            if builder.tree().inode(id).is_dir() {
                return Err(err(DumpErrorKind::HardlinkToDirectory(
                    l.target.as_deref().map(lossy).unwrap_or_default(),
                )));
            }
            builder.link(l.dir, l.name.clone(), id);
        }
        Ok(())
    }
}

/// Decodes a DIGEST field the way composefs C's `digest_to_raw` does when it
/// succeeds: the first 64 characters as hex (strict: exactly 64).
fn parse_digest(d: &[u8], strict: bool) -> Result<Vec<u8>, DumpErrorKind> {
    let bad = || DumpErrorKind::BadDigest(lossy(d));
    if d.len() < 2 * DIGEST_LEN || (strict && d.len() != 2 * DIGEST_LEN) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(DIGEST_LEN);
    for pair in d[..2 * DIGEST_LEN].chunks_exact(2) {
        match (hexdigit(pair[0]), hexdigit(pair[1])) {
            (Some(a), Some(b)) => out.push(a << 4 | b),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Parses the `KEY=VALUE` area with mkcomposefs' replace-on-duplicate and
/// size accounting (`lcfs_node_set_xattr` from external input).
fn parse_xattrs(mut area: &[u8]) -> Result<Vec<Xattr>, DumpErrorKind> {
    const META: usize = 4; // erofs_xattr_entry
    const HEADER: usize = 12; // erofs_xattr_ibody_header
    let mut xattrs: Vec<Xattr> = Vec::new();
    let mut budget_used = 0usize;
    while !area.is_empty() {
        let item = split_field(&mut area, b' ');
        let Some(eq) = memchr(b'=', item) else {
            return Err(DumpErrorKind::XattrMissingEquals(lossy(item)));
        };
        let key = unescape(&item[..eq], Field::Xattr)?;
        let key = c_str(&key);
        let value = unescape(&item[eq + 1..], Field::Xattr)?.into_owned();
        if key.is_empty() || key.len() > XATTR_NAME_MAX {
            return Err(DumpErrorKind::XattrName(lossy(key)));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(DumpErrorKind::XattrValueTooLong(lossy(key)));
        }
        if let Some(i) = xattrs.iter().position(|x| x.name == key) {
            let old = xattrs.swap_remove(i);
            budget_used = if xattrs.is_empty() {
                0
            } else {
                budget_used - (2 * META - 1 + key.len() + old.value.len())
            };
        }
        let mut entry = 2 * META - 1 + key.len() + value.len();
        if xattrs.is_empty() {
            entry += HEADER;
        }
        if budget_used + entry > EXTERNAL_XATTR_MAX {
            return Err(DumpErrorKind::XattrsTooBig(lossy(key)));
        }
        budget_used += entry;
        xattrs.push(Xattr {
            name: key.to_vec(),
            value,
        });
    }
    Ok(xattrs)
}

/// Parses a dumpfile into the tree `mkcomposefs --from-file` would build.
///
/// Errors name the line, the path and the cause. Never panics.
pub fn parse(input: &[u8], mode: ParseMode) -> Result<Tree, DumpError> {
    let mut p = Parser {
        mode,
        builder: None,
        paths: FastMap::default(),
        links: Vec::new(),
    };
    // Rough capacity guess: one file per ~100 bytes.
    p.paths.reserve(input.len() / 128);
    let mut rest = input;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        match memchr(b'\n', rest) {
            Some(i) => {
                p.line(line_no, &rest[..i])?;
                rest = &rest[i + 1..];
            }
            None => {
                if mode == ParseMode::Strict {
                    return Err(DumpError {
                        line: line_no,
                        path: path_of_line(rest),
                        kind: DumpErrorKind::MissingTrailingNewline,
                    });
                }
                p.line(line_no, rest)?;
                rest = &[];
            }
        }
    }
    p.resolve_links()?;
    match p.builder {
        Some(b) => Ok(b.finish_unchecked()),
        None => Err(DumpError {
            line: 0,
            path: String::new(),
            kind: DumpErrorKind::Empty,
        }),
    }
}

// ---------------------------------------------------------------------------
// Printer

/// Image format options that change what `composefs-info dump` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrintOptions {
    /// `mkcomposefs --min-version` (default 0).
    pub min_version: u32,
    /// `mkcomposefs --max-version` (default 1).
    pub max_version: u32,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            min_version: 0,
            max_version: 1,
        }
    }
}

const XATTR_TRUSTED_PREFIX: &[u8] = b"trusted.";
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPE_PREFIX: &[u8] = b"trusted.overlay.overlay.";
const OVERLAY_METACOPY: &[u8] = b"trusted.overlay.metacopy";
const OVERLAY_REDIRECT: &[u8] = b"trusted.overlay.redirect";
const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
const ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
const ESCAPED_WHITEOUTS: &[u8] = b"trusted.overlay.overlay.whiteouts";
const ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";
const USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
const USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
/// At most this many shared xattrs per inode (`EROFS_XATTR_LONG_PREFIX`).
const MAX_SHARED_PER_INODE: usize = 0x80;
const EROFS_BLKSIZ: u64 = 4096;
const EROFS_DIRENT_SIZE: u64 = 12;

type XattrList<'a> = Vec<(std::borrow::Cow<'a, [u8]>, std::borrow::Cow<'a, [u8]>)>;

fn set_xattr<'a>(list: &mut XattrList<'a>, name: &'a [u8], value: &'a [u8]) {
    let name = std::borrow::Cow::Borrowed(name);
    let value = std::borrow::Cow::Borrowed(value);
    if let Some(i) = list.iter().position(|(n, _)| *n == name) {
        list.swap_remove(i);
    }
    list.push((name, value));
}

fn is_whiteout_c(inode: &Inode) -> bool {
    inode.stat.file_type() == S_IFCHR && inode.stat.rdev as u32 == 0
}

/// An inode as `composefs-info` sees it after loading the image.
struct Loaded<'a> {
    mode: u32,
    size: u64,
    rdev: u64,
    payload: Option<&'a [u8]>,
    content: Option<&'a [u8]>,
    digest: Option<&'a [u8]>,
    xattrs: Vec<(std::borrow::Cow<'a, [u8]>, &'a [u8])>,
}

/// i_size of a directory as the composefs writer computes it (with `.`,
/// `..`, and for the root the `00`..`ff` whiteouts it adds).
fn dir_size(names: &mut Vec<&[u8]>) -> u64 {
    names.sort_unstable();
    let mut blocks = 0u64;
    let mut used = 0u64;
    for n in names.iter() {
        let len = EROFS_DIRENT_SIZE + n.len() as u64;
        if used + len > EROFS_BLKSIZ {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    if used > EROFS_BLKSIZ / 2 {
        blocks += 1;
        used = 0;
    }
    blocks * EROFS_BLKSIZ + used
}

/// Length of an xattr name once the writer strips its EROFS prefix.
fn erofs_name_suffix_len(name: &[u8]) -> usize {
    const PREFIXES: [&[u8]; 5] = [
        b"user.",
        b"system.posix_acl_access",
        b"system.posix_acl_default",
        b"trusted.",
        b"security.",
    ];
    let p = PREFIXES
        .iter()
        .find(|p| name.starts_with(p))
        .map_or(0, |p| p.len());
    name.len() - p
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `print_escaped` of composefs-info: `\\ \n \r \t` named, other bytes that
/// are not graphic ASCII (or `=` when `escape_equal`) as `\xHH`.
fn push_escaped(out: &mut Vec<u8>, s: &[u8], escape_equal: bool, escape_lone_dash: bool) {
    if escape_lone_dash && s == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if escape_equal => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]),
        }
    }
}

fn push_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        None => out.push(b'-'),
        Some(s) => push_escaped(out, s, false, true),
    }
}

fn push_num(out: &mut Vec<u8>, v: impl fmt::Display) {
    use std::io::Write as _;
    let _ = write!(out, "{v}");
}

/// Prints what `composefs-info dump` prints for the image `mkcomposefs`
/// (default versions) writes from `tree`.
pub fn print(tree: &Tree, out: &mut impl io::Write) -> io::Result<()> {
    print_with(tree, PrintOptions::default(), out)
}

/// [`print`] for an image written with explicit format versions.
pub fn print_with(tree: &Tree, opts: PrintOptions, out: &mut impl io::Write) -> io::Result<()> {
    let n = tree.inodes.len();
    if n == 0 || !tree.root().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tree root is not a directory",
        ));
    }
    let valid = |id: InodeId| id.index() < n && id != InodeId::ROOT;
    let sorted_entries = |id: InodeId| -> std::borrow::Cow<'_, [erofs::Entry]> {
        let e = tree.inode(id).entries();
        if e.is_sorted_by(|a, b| a.name <= b.name) {
            std::borrow::Cow::Borrowed(e)
        } else {
            let mut v = e.to_vec();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            std::borrow::Cow::Owned(v)
        }
    };

    // --- Writer side: parents by home entry, format version.
    let mut parent = vec![InodeId::ROOT; n];
    let mut reachable = vec![false; n];
    reachable[0] = true;
    let mut queue = vec![InodeId::ROOT];
    let mut qi = 0;
    while qi < queue.len() {
        let id = queue[qi];
        qi += 1;
        for e in tree.inode(id).entries() {
            if !e.hardlink && valid(e.inode) && !reachable[e.inode.index()] {
                reachable[e.inode.index()] = true;
                parent[e.inode.index()] = id;
                queue.push(e.inode);
            }
        }
    }
    let mut version = opts.min_version;
    if version < 1 && opts.max_version >= 1 && queue.iter().any(|&id| is_whiteout_c(tree.inode(id)))
    {
        version = 1;
    }

    // --- The xattrs the writer stores, per inode (escaped names).
    let mut image_xattrs: Vec<XattrList<'_>> = Vec::with_capacity(n);
    let mut redirects: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut metacopies: Vec<Option<Vec<u8>>> = vec![None; n];
    for (i, inode) in tree.inodes.iter().enumerate() {
        if let Content::Regular(File {
            size,
            data: FileData::External { redirect, verity },
        }) = &inode.content
        {
            if *size > 0 {
                metacopies[i] = Some(match verity {
                    Some(d) => {
                        let mut v =
                            vec![0, (4 + d.len()) as u8, 0, if d.len() == 32 { 1 } else { 2 }];
                        v.extend_from_slice(d);
                        v
                    }
                    None => Vec::new(),
                });
                if let Some(r) = redirect.as_deref().map(c_str).filter(|r| !r.is_empty()) {
                    let mut v = Vec::with_capacity(r.len() + 1);
                    v.push(b'/');
                    v.extend_from_slice(r);
                    redirects[i] = Some(v);
                }
            }
        }
    }
    for (i, inode) in tree.inodes.iter().enumerate() {
        let mut list: XattrList<'_> = Vec::with_capacity(inode.xattrs.len() + 2);
        for x in &inode.xattrs {
            let name = if x.name.starts_with(OVERLAY_PREFIX) {
                let mut v = OVERLAY_ESCAPE_PREFIX.to_vec();
                v.extend_from_slice(&x.name[OVERLAY_PREFIX.len()..]);
                std::borrow::Cow::Owned(v)
            } else {
                std::borrow::Cow::Borrowed(c_str(&x.name))
            };
            list.push((name, std::borrow::Cow::Borrowed(&x.value[..])));
        }
        if let Some(m) = &metacopies[i] {
            set_xattr(&mut list, OVERLAY_METACOPY, m);
        }
        if let Some(r) = &redirects[i] {
            set_xattr(&mut list, OVERLAY_REDIRECT, r);
        }
        image_xattrs.push(list);
    }
    for &id in &queue {
        if id != InodeId::ROOT && is_whiteout_c(tree.inode(id)) {
            let i = id.index();
            set_xattr(&mut image_xattrs[i], ESCAPED_WHITEOUT, b"");
            set_xattr(&mut image_xattrs[i], USER_WHITEOUT, b"");
            let p = parent[i].index();
            set_xattr(&mut image_xattrs[p], ESCAPED_WHITEOUTS, b"");
            set_xattr(&mut image_xattrs[p], USER_WHITEOUTS, b"");
            if version >= 1 {
                set_xattr(&mut image_xattrs[p], ESCAPED_OPAQUE, b"x");
                set_xattr(&mut image_xattrs[p], USER_OPAQUE, b"x");
            }
        }
    }
    set_xattr(&mut image_xattrs[0], OVERLAY_OPAQUE, b"y");
    // The writer adds whiteouts 00..ff to the root, each with its selinux label.
    let root_names: std::collections::HashSet<&[u8]> =
        tree.root().entries().iter().map(|e| &e.name[..]).collect();
    let missing_whiteouts: Vec<[u8; 2]> = (0..=255u8)
        .map(|b| [HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
        .filter(|nm| !root_names.contains(&nm[..]))
        .collect();
    let root_selinux = tree.root().xattr(b"security.selinux");

    // --- Which xattrs are shared (used by more than one inode in the image).
    let mut counts: FastMap<(&[u8], &[u8]), u32> = FastMap::default();
    for &id in &queue {
        for (k, v) in &image_xattrs[id.index()] {
            *counts.entry((k, v)).or_insert(0) += 1;
        }
    }
    if let Some(sel) = root_selinux {
        *counts.entry((b"security.selinux", sel)).or_insert(0) += missing_whiteouts.len() as u32;
    }

    // --- Loader side: what composefs-info reads back, per inode.
    let mut loaded: Vec<Option<Loaded<'_>>> = (0..n).map(|_| None).collect();
    for &id in &queue {
        let i = id.index();
        let inode = tree.inode(id);
        let mut list: Vec<(&[u8], &[u8])> = image_xattrs[i]
            .iter()
            .map(|(k, v)| (&k[..], &v[..]))
            .collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        let mut shared = Vec::new();
        let mut ordered = Vec::with_capacity(list.len());
        for &(k, v) in &list {
            if counts.get(&(k, v)).copied().unwrap_or(0) > 1 && shared.len() < MAX_SHARED_PER_INODE
            {
                shared.push((k, v));
            } else {
                ordered.push((k, v));
            }
        }
        // composefs C's loader never reads a last inline entry of only 4
        // bytes (empty name suffix and empty value): its loop stops early.
        if ordered
            .last()
            .is_some_and(|(k, v)| v.is_empty() && erofs_name_suffix_len(k) == 0)
        {
            ordered.pop();
        }
        ordered.extend(shared);

        let whiteout = is_whiteout_c(inode);
        let mut mode = inode.stat.mode & 0xffff;
        if whiteout {
            mode = (mode & !S_IFMT) | S_IFREG;
        }
        let (size, payload, content) = match &inode.content {
            Content::Directory(entries) => {
                let mut names: Vec<&[u8]> = entries.iter().map(|e| &e.name[..]).collect();
                names.push(b".");
                names.push(b"..");
                if id == InodeId::ROOT {
                    names.extend(missing_whiteouts.iter().map(|w| &w[..]));
                }
                (dir_size(&mut names), None, None)
            }
            Content::Symlink(t) => {
                let t = c_str(t);
                (t.len() as u64, Some(t), None)
            }
            Content::Regular(f) if !whiteout => match &f.data {
                FileData::Inline(d) if f.size > 0 => (f.size, None, Some(&d[..])),
                _ => (f.size, None, None),
            },
            _ => (0, None, None),
        };
        let mut l = Loaded {
            mode,
            size,
            rdev: u64::from(inode.stat.rdev as u32),
            payload,
            content,
            digest: None,
            xattrs: Vec::with_capacity(ordered.len()),
        };
        for (k, v) in ordered {
            let is_reg = l.mode & S_IFMT == S_IFREG;
            if k == OVERLAY_REDIRECT {
                if is_reg {
                    let v = if v.len() > 1 && v[0] == b'/' {
                        &v[1..]
                    } else {
                        v
                    };
                    l.payload = Some(c_str(v));
                }
                continue;
            }
            if k == OVERLAY_METACOPY {
                if is_reg && v.len() == 4 + DIGEST_LEN {
                    l.digest = Some(&v[4..]);
                }
                continue;
            }
            if k == ESCAPED_WHITEOUT && is_reg {
                l.mode = (l.mode & !S_IFMT) | S_IFCHR;
                l.rdev = 0;
                l.size = 0;
                continue;
            }
            if k == ESCAPED_WHITEOUTS || k == USER_WHITEOUT || k == USER_WHITEOUTS {
                continue;
            }
            let name = if let Some(rest) = k.strip_prefix(OVERLAY_ESCAPE_PREFIX) {
                let mut nm = XATTR_TRUSTED_PREFIX.to_vec();
                nm.extend_from_slice(b"overlay.");
                nm.extend_from_slice(rest);
                std::borrow::Cow::Owned(nm)
            } else if k.starts_with(OVERLAY_PREFIX) {
                continue;
            } else {
                std::borrow::Cow::Borrowed(k)
            };
            l.xattrs.push((name, v));
        }
        if !matches!(l.mode & S_IFMT, S_IFCHR | S_IFBLK) {
            l.rdev = 0;
        }
        loaded[i] = Some(l);
    }
    let nlink_of = |id: InodeId| -> u32 {
        let inode = tree.inode(id);
        match &inode.content {
            Content::Directory(entries) => {
                2 + entries
                    .iter()
                    .filter(|e| valid(e.inode) && tree.inode(e.inode).is_dir())
                    .count() as u32
            }
            _ => inode.stat.nlink,
        }
    };

    // --- Print depth-first in name order; the first path of an inode is
    // where the loader puts it, later ones are hard links to it.
    let mut first_path: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut line = |buf: &mut Vec<u8>, path: &[u8], id: InodeId, link_to: Option<&[u8]>| {
        let Some(l) = loaded[id.index()].as_ref() else {
            return;
        };
        push_escaped(buf, if path.is_empty() { b"/" } else { path }, false, false);
        buf.push(b' ');
        push_num(buf, l.size);
        buf.push(b' ');
        if link_to.is_some() {
            buf.push(b'@');
        }
        push_num(buf, format_args!("{:o}", l.mode));
        buf.push(b' ');
        push_num(buf, nlink_of(id));
        buf.push(b' ');
        let st = &tree.inode(id).stat;
        push_num(
            buf,
            format_args!(
                "{} {} {} {}.{} ",
                st.uid, st.gid, l.rdev, st.mtime.sec, st.mtime.nsec
            ),
        );
        push_opt(buf, link_to.or(l.payload));
        buf.push(b' ');
        push_opt(buf, l.content.map(|c| &c[..(l.size as usize).min(c.len())]));
        buf.push(b' ');
        match l.digest {
            Some(d) => {
                for &b in d {
                    buf.push(HEX[(b >> 4) as usize]);
                    buf.push(HEX[(b & 15) as usize]);
                }
            }
            None => buf.push(b'-'),
        }
        for (k, v) in &l.xattrs {
            buf.push(b' ');
            push_escaped(buf, k, true, false);
            buf.push(b'=');
            push_escaped(buf, v, true, false);
        }
        buf.push(b'\n');
    };
    line(&mut buf, b"", InodeId::ROOT, None);
    first_path[0] = Some(b"/".to_vec());
    // Explicit stack of (directory, its path, next entry index).
    let mut stack: Vec<(std::borrow::Cow<'_, [erofs::Entry]>, Vec<u8>, usize)> =
        vec![(sorted_entries(InodeId::ROOT), Vec::new(), 0)];
    while let Some(top) = stack.last_mut() {
        let Some(e) = top.0.get(top.2).cloned() else {
            stack.pop();
            continue;
        };
        top.2 += 1;
        if !valid(e.inode) || loaded[e.inode.index()].is_none() {
            continue;
        }
        let mut path = top.1.clone();
        path.push(b'/');
        path.extend_from_slice(c_str(&e.name));
        match &first_path[e.inode.index()] {
            Some(target) => {
                let target = target.clone();
                line(&mut buf, &path, e.inode, Some(&target));
            }
            None => {
                line(&mut buf, &path, e.inode, None);
                first_path[e.inode.index()] = Some(path.clone());
                if tree.inode(e.inode).is_dir() {
                    stack.push((sorted_entries(e.inode), path, 0));
                }
            }
        }
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn conformance(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/conformance")
            .join(name);
        let mut raw = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // Git symlinks checked out as plain files hold the target's name.
        if raw.len() < 100 && !raw.contains(&b'\n') {
            let target = p.with_file_name(String::from_utf8(raw.clone()).unwrap());
            raw = std::fs::read(target).unwrap();
        }
        if name.ends_with(".gz") {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
                .unwrap();
            out
        } else {
            raw
        }
    }

    /// Writes `print(parse(case))` of every conformance case into
    /// `$STRATA_DUMP_OUT`, to diff against `composefs-info dump` of the
    /// image `mkcomposefs` makes from the same case.
    fn case_names() -> Vec<String> {
        let mut names: Vec<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".dump") || n.ends_with(".dump.gz"))
                .collect();
        names.sort();
        names
    }

    /// The `mkcomposefs --min-version/--max-version` a case is built with.
    fn version_of(name: &str) -> PrintOptions {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/conformance")
            .join(format!("{name}.version"));
        match std::fs::read_to_string(p) {
            Ok(v) => {
                let v: u32 = v.trim().parse().unwrap();
                PrintOptions {
                    min_version: v,
                    max_version: v,
                }
            }
            Err(_) => PrintOptions::default(),
        }
    }

    #[test]
    #[ignore]
    fn dumpfile_print_conformance_to_dir() {
        let Some(dir) = std::env::var_os("STRATA_DUMP_OUT") else {
            return;
        };
        for n in case_names() {
            let d = conformance(&n);
            let Ok(t) = parse(&d, ParseMode::Lenient) else {
                continue;
            };
            let v = version_of(&n);
            let mut out = Vec::new();
            print_with(&t, v, &mut out).unwrap();
            std::fs::write(PathBuf::from(&dir).join(n.trim_end_matches(".gz")), out).unwrap();
        }
    }

    /// Differential testing aid: for every `*.dump` in `$STRATA_FUZZ_DIR`,
    /// writes `NAME.MODE.out` with `print(parse(..))` or `ERR <message>`.
    #[test]
    #[ignore]
    fn dumpfile_batch_for_differential_testing() {
        let Some(dir) = std::env::var_os("STRATA_FUZZ_DIR") else {
            return;
        };
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "dump") {
                continue;
            }
            let d = std::fs::read(&p).unwrap();
            for (m, tag) in [
                (ParseMode::Strict, "strict"),
                (ParseMode::Lenient, "lenient"),
            ] {
                let out = match parse(&d, m) {
                    Ok(t) => {
                        let mut o = Vec::new();
                        print(&t, &mut o).unwrap();
                        o
                    }
                    Err(e) => format!("ERR {e}\n").into_bytes(),
                };
                std::fs::write(p.with_extension(format!("{tag}.out")), out).unwrap();
            }
        }
    }

    #[test]
    fn dumpfile_explore() {
        let mut names: Vec<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".dump") || n.ends_with(".dump.gz"))
                .collect();
        names.sort();
        for n in names {
            let d = conformance(&n);
            for m in [ParseMode::Strict, ParseMode::Lenient] {
                let t0 = std::time::Instant::now();
                let r = parse(&d, m);
                let el = t0.elapsed();
                match r {
                    Ok(t) => {
                        if let Err(e) = t.validate() {
                            println!("{n} {m:?}: VALIDATE {e}");
                        }
                        println!("{n} {m:?}: ok {} inodes {:?}", t.inodes.len(), el)
                    }
                    Err(e) => println!("{n} {m:?}: ERR {e}"),
                }
            }
        }
    }
}
