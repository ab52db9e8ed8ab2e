//! Re-serialising a layer's uncompressed tar from its headers and stored contents.
//!
//! The stream is a sequence of pieces: header bytes (from the tar-split's segments, or
//! the decompressed frames between files) and file contents (objects, or small inline
//! contents). It is read by the same importer as a full pull's tar, which is told the
//! object behind each payload so that nothing is hashed or written twice; every byte is
//! hashed here for the diff_id check.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{Content, PartialError};
use crate::fsverity::Digest;
use crate::oci::source::LayerDesc;
use crate::oci::splitstream::{LocalFile, TarStream};
use crate::oci::tarsplit::{self, Entry};
use crate::oci::toc::{decompress, Headers, LayerToc, Sha256Sum};
use crate::repo::objects::ObjectDir;

enum Piece {
    Bytes(Vec<u8>),
    File(usize),
}

enum Pieces {
    /// gap 0, file 0, gap 1, file 1, …, gap n.
    Gaps {
        gaps: Vec<Option<Vec<u8>>>,
        next: usize,
    },
    TarSplit {
        reader: tarsplit::Reader<io::Cursor<Vec<u8>>>,
        next_file: usize,
    },
}

enum Cur {
    Empty,
    Bytes(Vec<u8>, usize),
    Inline(Arc<Vec<u8>>, usize),
    Object {
        file: fs::File,
        left: u64,
        size: u64,
        digest: Digest,
    },
}

/// The re-serialised tar of one layer.
pub struct Rebuild<'a> {
    layer: &'a LayerDesc,
    toc: &'a LayerToc,
    contents: &'a HashMap<Sha256Sum, Content>,
    objects: &'a ObjectDir,
    pieces: Pieces,
    cur: Cur,
    hasher: Hasher,
    ended: bool,
    error: Option<PartialError>,
}

/// Bytes hashed on a thread of their own, in batches, so that hashing overlaps reading.
struct Hasher {
    pending: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<Sha256Sum>>,
}

const HASH_BATCH: usize = 1 << 20;

impl Hasher {
    fn new() -> Hasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let thread = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for b in rx {
                h.update(&b);
            }
            h.finalize().into()
        });
        Hasher {
            pending: Vec::with_capacity(HASH_BATCH),
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A hasher with no thread (what is left in a finished stream).
    fn idle() -> Hasher {
        Hasher {
            pending: Vec::new(),
            tx: None,
            thread: None,
        }
    }

    fn update(&mut self, b: &[u8]) {
        self.pending.extend_from_slice(b);
        if self.pending.len() >= HASH_BATCH {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_BATCH));
            if let Some(tx) = &self.tx {
                let _ = tx.send(full);
            }
        }
    }

    fn finish(mut self) -> Result<Sha256Sum, String> {
        let rest = std::mem::take(&mut self.pending);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(rest);
        }
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| "the hashing thread failed".to_string())
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tar-split or TOC name, compared without `./`, `/` prefixes or a trailing `/`.
fn norm(name: &[u8]) -> &[u8] {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix(b"./") {
            n = r;
        } else if let Some(r) = n.strip_prefix(b"/") {
            n = r;
        } else {
            break;
        }
    }
    n.strip_suffix(b"/").unwrap_or(n)
}

impl<'a> Rebuild<'a> {
    pub fn new(
        layer: &'a LayerDesc,
        toc: &'a LayerToc,
        contents: &'a HashMap<Sha256Sum, Content>,
        objects: &'a ObjectDir,
        gaps: Vec<Option<Vec<u8>>>,
        tar_split: Option<&[u8]>,
    ) -> Result<Self, String> {
        let pieces = match (&toc.headers, tar_split) {
            (Headers::TarSplit { uncompressed, .. }, Some(ts)) => {
                let raw = decompress(ts, *uncompressed, "tar-split").map_err(|e| e.to_string())?;
                Pieces::TarSplit {
                    reader: tarsplit::Reader::new(io::Cursor::new(raw)),
                    next_file: 0,
                }
            }
            (Headers::Gaps, _) => Pieces::Gaps { gaps, next: 0 },
            (Headers::TarSplit { .. }, None) => return Err("tar-split was not fetched".into()),
        };
        Ok(Rebuild {
            layer,
            toc,
            contents,
            objects,
            pieces,
            cur: Cur::Empty,
            hasher: Hasher::new(),
            ended: false,
            error: None,
        })
    }

    /// The typed error behind a failed read, if there was one.
    pub fn take_error(&mut self) -> Option<PartialError> {
        self.error.take()
    }

    /// The sha256 of everything read; fails if the stream was not read to its end.
    pub fn finish(mut self) -> Result<Sha256Sum, String> {
        let mut rest = [0u8; 4096];
        match self.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => return Err("bytes left after the tar's end".into()),
            Err(e) => return Err(e.to_string()),
        }
        let hasher = std::mem::replace(&mut self.hasher, Hasher::idle());
        hasher.finish()
    }

    fn fail(&mut self, why: String) -> io::Error {
        let e = PartialError::Rebuild {
            layer: self.layer.digest.clone(),
            why,
        };
        let msg = e.to_string();
        self.error.get_or_insert(e);
        io::Error::other(msg)
    }

    fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        match &mut self.pieces {
            Pieces::Gaps { gaps, next } => {
                let n = self.toc.files.len();
                let k = *next;
                if k > 2 * n {
                    return Ok(None);
                }
                *next += 1;
                Ok(Some(if k % 2 == 0 {
                    Piece::Bytes(
                        gaps.get_mut(k / 2)
                            .and_then(Option::take)
                            .unwrap_or_default(),
                    )
                } else {
                    Piece::File(k / 2)
                }))
            }
            Pieces::TarSplit { reader, next_file } => loop {
                let entry = match reader.next_entry() {
                    Ok(e) => e,
                    Err(e) => {
                        let why = format!("tar-split: {e}");
                        return Err(self.fail(why));
                    }
                };
                match entry {
                    None => {
                        if *next_file != self.toc.files.len() {
                            let why = format!(
                                "the tar-split lists {} files with contents, the TOC {}",
                                *next_file,
                                self.toc.files.len()
                            );
                            return Err(self.fail(why));
                        }
                        return Ok(None);
                    }
                    Some(Entry::Segment(b)) => {
                        if !b.is_empty() {
                            return Ok(Some(Piece::Bytes(b)));
                        }
                    }
                    Some(Entry::File { size: 0, .. }) => {}
                    Some(Entry::File { name, size, .. }) => {
                        let k = *next_file;
                        let same = self.toc.files.get(k).is_some_and(|f| {
                            f.size == size && norm(f.name.as_bytes()) == norm(&name)
                        });
                        if !same {
                            let why = format!(
                                "the tar-split and the TOC disagree at file {:?} ({size} bytes)",
                                String::from_utf8_lossy(&name)
                            );
                            return Err(self.fail(why));
                        }
                        *next_file += 1;
                        return Ok(Some(Piece::File(k)));
                    }
                }
            },
        }
    }

    /// Moves past finished pieces; false at the end of the stream.
    fn settle(&mut self) -> io::Result<bool> {
        loop {
            let done = match &self.cur {
                Cur::Empty => true,
                Cur::Bytes(b, p) => *p >= b.len(),
                Cur::Inline(b, p) => *p >= b.len(),
                Cur::Object { left, .. } => *left == 0,
            };
            if !done {
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
            }
            match self.next_piece()? {
                None => {
                    self.ended = true;
                    self.cur = Cur::Empty;
                    return Ok(false);
                }
                Some(Piece::Bytes(b)) => self.cur = Cur::Bytes(b, 0),
                Some(Piece::File(i)) => {
                    let f = &self.toc.files[i];
                    self.cur = match self.contents.get(&f.sha256) {
                        Some(Content::Inline(b)) => Cur::Inline(b.clone(), 0),
                        Some(Content::Object(d)) => {
                            let path = self.objects.object_path(d);
                            let file = fs::File::open(&path).map_err(|e| {
                                let why = format!("{}: {e}", path.display());
                                self.fail(why)
                            })?;
                            Cur::Object {
                                file,
                                left: f.size,
                                size: f.size,
                                digest: *d,
                            }
                        }
                        None => {
                            let why = format!("file {}: contents not fetched", f.name);
                            return Err(self.fail(why));
                        }
                    };
                }
            }
        }
    }
}

impl Read for Rebuild<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || !self.settle()? {
            return Ok(0);
        }
        let n = match &mut self.cur {
            Cur::Empty => 0,
            Cur::Bytes(b, p) => {
                let n = buf.len().min(b.len() - *p);
                buf[..n].copy_from_slice(&b[*p..*p + n]);
                *p += n;
                n
            }
            Cur::Inline(b, p) => {
                let n = buf.len().min(b.len() - *p);
                buf[..n].copy_from_slice(&b[*p..*p + n]);
                *p += n;
                n
            }
            Cur::Object { file, left, .. } => {
                let want = buf.len().min(*left as usize);
                let n = file.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(self.fail("a stored object is shorter than its file".into()));
                }
                *left -= n as u64;
                n
            }
        };
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl TarStream for Rebuild<'_> {
    fn payload_file(&mut self, _size: u64) -> io::Result<Option<LocalFile>> {
        Ok(None)
    }

    fn payload_object(&mut self, size: u64) -> io::Result<Option<Digest>> {
        if !self.settle()? {
            return Ok(None);
        }
        Ok(match &self.cur {
            Cur::Object {
                left,
                size: s,
                digest,
                ..
            } if *left == *s && *s == size => Some(*digest),
            _ => None,
        })
    }
}
