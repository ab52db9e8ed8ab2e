//! Streaming verification: blob size + sha256, layer decompression, diff_id check.
//!
//! Everything here is a `Read` adapter with bounded memory: nothing buffers a whole blob.
//! Errors surface as `io::Error`s whose inner error is a [`SourceError`] (use
//! [`SourceError::from_io`] to get it back).

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256};

use super::error::SourceError;
use super::media::Compression;

/// Parse `sha256:<hex>` into raw bytes; other algorithms are not verifiable here.
pub(crate) fn sha256_bytes(digest: &str) -> Result<[u8; 32], SourceError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| SourceError::UnsupportedDigest(digest.to_string()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out)
        .map_err(|_| SourceError::UnsupportedDigest(digest.to_string()))?;
    Ok(out)
}

fn err(e: SourceError) -> io::Error {
    io::Error::other(e)
}

/// Reads a blob and checks its size and sha256. A blob longer than expected fails as soon as
/// the excess is seen; a short one or a digest mismatch fails at EOF. Errors are sticky.
pub struct VerifiedReader<R> {
    inner: R,
    digest: String,
    expected: [u8; 32],
    size: u64,
    read: u64,
    hasher: Sha256,
    state: State,
}

#[derive(PartialEq, Eq)]
enum State {
    Reading,
    Verified,
    Failed,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(inner: R, digest: &str, size: u64) -> Result<Self, SourceError> {
        Ok(Self {
            inner,
            expected: sha256_bytes(digest)?,
            digest: digest.to_string(),
            size,
            read: 0,
            hasher: Sha256::new(),
            state: State::Reading,
        })
    }

    fn fail(&mut self, e: SourceError) -> io::Error {
        self.state = State::Failed;
        err(e)
    }

    fn failed_again(&self) -> io::Error {
        err(SourceError::BlobFailed {
            digest: self.digest.clone(),
        })
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed => return Err(self.failed_again()),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for at most one byte more than expected so an over-long blob is caught early.
        let remaining = self.size - self.read;
        let want = buf
            .len()
            .min(usize::try_from(remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        };
        if n == 0 {
            if self.read < self.size {
                return Err(self.fail(SourceError::BlobTruncated {
                    digest: self.digest.clone(),
                    expected: self.size,
                    got: self.read,
                }));
            }
            let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if got != self.expected {
                return Err(self.fail(SourceError::BlobDigestMismatch {
                    digest: self.digest.clone(),
                    got: format!("sha256:{}", hex::encode(got)),
                }));
            }
            self.state = State::Verified;
            return Ok(0);
        }
        if n as u64 > remaining {
            return Err(self.fail(SourceError::BlobTooLong {
                digest: self.digest.clone(),
                expected: self.size,
            }));
        }
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks the sha256 of everything read through it against a layer's diff_id at EOF.
struct DiffIdReader<R> {
    inner: R,
    diff_id: String,
    expected: [u8; 32],
    /// `None` when the blob is the uncompressed tar and its digest is the diff_id: the
    /// blob check already proves it, so the bytes are not hashed twice.
    hasher: Option<Sha256>,
    state: State,
}

impl<R: Read> Read for DiffIdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed => {
                return Err(err(SourceError::LayerFailed {
                    diff_id: self.diff_id.clone(),
                }))
            }
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state = State::Failed;
                }
                return Err(e);
            }
        };
        if n == 0 {
            let Some(hasher) = self.hasher.take() else {
                self.state = State::Verified;
                return Ok(0);
            };
            let got: [u8; 32] = hasher.finalize().into();
            if got != self.expected {
                self.state = State::Failed;
                return Err(err(SourceError::DiffIdMismatch {
                    diff_id: self.diff_id.clone(),
                    got: format!("sha256:{}", hex::encode(got)),
                }));
            }
            self.state = State::Verified;
            return Ok(0);
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A verified blob stream, as [`super::source::open_blob`] returns it.
pub type BlobReader = VerifiedReader<Box<dyn Read + Send>>;

const BUF: usize = 256 * 1024;

/// The decompressor stage. At the end of the compressed stream the underlying verified
/// blob reader is drained to its EOF so its size and digest are always checked, even if a
/// decoder stops reading at the end of its last frame.
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

struct Decompress<R: BufRead> {
    dec: Decoder<R>,
    /// Compressed digest, for error messages.
    digest: String,
}

impl<R: BufRead> Read for Decompress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.dec {
            Decoder::Plain(r) => return r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        };
        let n = r.map_err(|e| self.decode_error(e))?;
        if n == 0 && !buf.is_empty() {
            // Drain (and thereby verify) whatever follows the compressed stream.
            io::copy(self.inner(), &mut io::sink())?;
        }
        Ok(n)
    }
}

impl<R: BufRead> Decompress<R> {
    fn inner(&mut self) -> &mut R {
        match &mut self.dec {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        }
    }

    /// Keep our own verification errors. On a decoder error, first read the rest of the
    /// blob: if the blob itself is corrupt (digest or size), that is the one real cause and
    /// is reported instead of the decoder's complaint.
    fn decode_error(&mut self, e: io::Error) -> io::Error {
        if SourceError::is_ours(&e) {
            return e;
        }
        if let Err(verify) = io::copy(self.inner(), &mut io::sink()) {
            if SourceError::is_ours(&verify) {
                return verify;
            }
        }
        err(SourceError::Decompress {
            digest: self.digest.clone(),
            source: e,
        })
    }
}

/// Size of the pieces [`Prefetch`] hands over.
const PIECE: usize = 256 * 1024;
/// Pieces read ahead (bounds memory to about `AHEAD * PIECE`).
const AHEAD: usize = 8;

/// Runs a reader on a thread of its own, a few pieces ahead of the consumer,
/// so that reading the blob, checking its digest and decompressing it
/// overlap with whatever the consumer does (diff_id hashing, tar parsing).
/// The first error ends the stream; the consumer sees it once (the
/// [`DiffIdReader`] above makes it sticky). Dropping the reader stops the
/// thread and waits for it.
struct Prefetch {
    pieces: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    spare: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    eof: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetch {
    fn spawn<R: Read + Send + 'static>(mut inner: R) -> Prefetch {
        let (tx, pieces) = mpsc::sync_channel(AHEAD);
        let (spare, spares) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::spawn(move || loop {
            let mut buf = spares.try_recv().unwrap_or_default();
            buf.resize(PIECE, 0);
            let mut n = 0;
            let piece = loop {
                match inner.read(&mut buf[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        n += k;
                        if n == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(n);
            let end = n == 0 || piece.is_err();
            // Data read before an error still goes first.
            if n > 0 && tx.send(Ok(buf)).is_err() {
                return;
            }
            if end {
                let _ = tx.send(piece.map(|()| Vec::new()));
                return;
            }
        });
        Prefetch {
            pieces: Some(pieces),
            spare,
            cur: Vec::new(),
            pos: 0,
            eof: false,
            thread: Some(thread),
        }
    }
}

impl Read for Prefetch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.eof || buf.is_empty() {
                return Ok(0);
            }
            let next = self.pieces.as_ref().and_then(|rx| rx.recv().ok());
            match next {
                Some(Ok(piece)) => {
                    let done = std::mem::replace(&mut self.cur, piece);
                    let _ = self.spare.send(done);
                    self.pos = 0;
                    self.eof = self.cur.is_empty();
                }
                Some(Err(e)) => {
                    self.eof = true;
                    return Err(e);
                }
                None => {
                    self.eof = true;
                    return Err(io::Error::other("layer reader thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail.
        self.pieces = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A layer's uncompressed tar stream, verified twice: the compressed blob against its digest
/// and size, the uncompressed bytes against the diff_id. Verification completes at EOF;
/// read to the end (or call [`LayerReader::finish`]) before trusting what was read.
pub struct LayerReader {
    inner: DiffIdReader<Prefetch>,
}

impl LayerReader {
    pub(crate) fn new(
        blob: BlobReader,
        compression: Compression,
        diff_id: &str,
    ) -> Result<Self, SourceError> {
        let digest = blob.digest.clone();
        let hasher = (compression != Compression::None || digest != diff_id).then(Sha256::new);
        let buffered = BufReader::with_capacity(BUF, blob);
        let dec = match compression {
            Compression::None => Decoder::Plain(buffered),
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
            }
            Compression::Zstd => {
                Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(buffered).map_err(
                    |source| SourceError::Decompress {
                        digest: digest.clone(),
                        source,
                    },
                )?)
            }
        };
        Ok(Self {
            inner: DiffIdReader {
                inner: Prefetch::spawn(Decompress { dec, digest }),
                expected: sha256_bytes(diff_id)?,
                diff_id: diff_id.to_string(),
                hasher,
                state: State::Reading,
            },
        })
    }

    /// Read and discard the rest of the stream, completing verification.
    pub fn finish(mut self) -> Result<u64, SourceError> {
        io::copy(&mut self, &mut io::sink()).map_err(SourceError::from_io)
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in uneven reads, then fails with `fail` (if any).
    struct Script {
        data: Vec<u8>,
        at: usize,
        fail: Option<&'static str>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.fail.take() {
                    Some(m) => Err(io::Error::other(m)),
                    None => Ok(0),
                };
            }
            // 1..=7000 bytes per call, varying: exercises piece boundaries.
            let want = 1 + (self.at * 31 + 7) % 7000;
            let n = want.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn prefetch_passes_every_byte_in_order() {
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 12345] {
            let d = data(len);
            let mut p = Prefetch::spawn(Script {
                data: d.clone(),
                at: 0,
                fail: None,
            });
            let mut got = Vec::new();
            p.read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), d.len());
            assert!(got == d, "bytes differ for length {len}");
            // EOF stays EOF.
            assert_eq!(p.read(&mut [0u8; 16]).unwrap(), 0);
        }
    }

    #[test]
    fn prefetch_delivers_data_then_the_error() {
        let d = data(2 * PIECE + 100);
        let mut p = Prefetch::spawn(Script {
            data: d.clone(),
            at: 0,
            fail: Some("disk on fire"),
        });
        let mut got = Vec::new();
        let e = p.read_to_end(&mut got).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        assert!(got == d, "data before the error must arrive");
    }

    #[test]
    fn dropping_prefetch_early_stops_its_thread() {
        // Far more than the read-ahead: the thread must stop when dropped.
        let mut p = Prefetch::spawn(Script {
            data: data(AHEAD * PIECE * 4),
            at: 0,
            fail: None,
        });
        let mut first = [0u8; 10];
        p.read_exact(&mut first).unwrap();
        drop(p); // joins; hangs here if the thread kept waiting to send
    }
}
