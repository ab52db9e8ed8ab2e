//! Splitstreams: a layer tar stored as its metadata plus references to
//! content objects, from which the original tar is rebuilt byte for byte.
//!
//! The format is described in `doc/splitstream.md`. In short: a 32-byte
//! header (magic, version, fs-verity algorithm, compression, tar size,
//! reference count), the table of referenced object digests (uncompressed,
//! so [`object_refs`] needs no decompression), then one zstd frame holding
//! a sequence of records: inline bytes, references to the next digest of
//! the table, and an end marker.
//!
//! [`import_layer`] decodes a tar stream (see [`super::tar`]), storing each
//! regular file larger than [`INLINE_MAX`](super::tar::INLINE_MAX) bytes as an object. Object
//! hashing and writing run on a worker thread, overlapping with reading and
//! parsing (and with whatever decompression the reader does).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use super::tar::{read_full, EntryName, Input, LayerError, Parser};
use super::{EntryData, LayerEntry};
use crate::fsverity::{Algorithm, Digest};
use crate::repo::objects::{Added, FileStamp, ObjectDir, ObjectError};

/// First bytes of every splitstream.
pub const MAGIC: [u8; 8] = *b"STRSPLT\0";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Compression id: the record section is one zstd frame.
const COMPRESSION_ZSTD: u8 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 32;
/// zstd level for the record section.
const ZSTD_LEVEL: i32 = 3;

const REC_END: u8 = 0;
const REC_INLINE: u8 = 1;
const REC_REF: u8 = 2;

/// Inline bytes are gathered into records of about this size.
const INLINE_RECORD: usize = 64 << 10;
/// Payloads are read and handed to the object worker in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Chunks queued for the worker (bounds memory to about `QUEUE * CHUNK`).
const QUEUE: usize = 8;
/// Objects up to this size are hashed in memory and written only if
/// absent; larger ones are streamed to a temporary file while hashing.
const BUFFER_MAX: u64 = 8 << 20;

/// Counters from one [`import_layer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Bytes of tar read (including everything after the end marker).
    pub tar_bytes: u64,
    /// Entries decoded.
    pub entries: u64,
    /// Regular files kept inline (at most [`INLINE_MAX`](super::tar::INLINE_MAX) bytes).
    pub inline_files: u64,
    /// Regular files stored as objects, and their total size.
    pub object_files: u64,
    pub object_bytes: u64,
    /// Of those, objects that were new to the object directory, and their
    /// size. (A file that appears twice in one layer may rarely be counted
    /// twice, when two workers store it at the same time.)
    pub objects_written: u64,
    pub objects_written_bytes: u64,
    /// Size of the encoded splitstream.
    pub splitstream_bytes: u64,
}

/// The result of [`import_layer`].
#[derive(Debug, Clone)]
pub struct ImportedLayer {
    /// The encoded splitstream (for the caller to store as an object).
    pub splitstream: Vec<u8>,
    /// The layer's entries, in tar order.
    pub entries: Vec<LayerEntry>,
    pub stats: ImportStats,
}

// ---------------------------------------------------------------------------
// Encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Writes the record section.
struct RecordWriter {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    pending: Vec<u8>,
    tar_size: u64,
    refs: u64,
}

impl RecordWriter {
    fn new() -> io::Result<Self> {
        Ok(RecordWriter {
            enc: zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?,
            pending: Vec::with_capacity(INLINE_RECORD + 8),
            tar_size: 0,
            refs: 0,
        })
    }

    fn inline(&mut self, b: &[u8]) -> io::Result<()> {
        self.tar_size += b.len() as u64;
        self.pending.extend_from_slice(b);
        if self.pending.len() >= INLINE_RECORD {
            self.flush_inline()?;
        }
        Ok(())
    }

    fn flush_inline(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut head = vec![REC_INLINE];
        put_varint(&mut head, self.pending.len() as u64);
        self.enc.write_all(&head)?;
        self.enc.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn reference(&mut self, size: u64) -> io::Result<()> {
        self.flush_inline()?;
        let mut head = vec![REC_REF];
        put_varint(&mut head, size);
        self.enc.write_all(&head)?;
        self.tar_size += size;
        self.refs += 1;
        Ok(())
    }

    fn finish(mut self, alg: Algorithm, digests: &[Digest]) -> io::Result<Vec<u8>> {
        self.flush_inline()?;
        self.enc.write_all(&[REC_END])?;
        let body = self.enc.finish()?;
        debug_assert_eq!(digests.len() as u64, self.refs);
        let mut out =
            Vec::with_capacity(HEADER_SIZE + digests.len() * alg.digest_size() + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(alg.kernel_id());
        out.push(COMPRESSION_ZSTD);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.tar_size.to_le_bytes());
        out.extend_from_slice(&(digests.len() as u64).to_le_bytes());
        for d in digests {
            out.extend_from_slice(d.as_bytes());
        }
        out.extend_from_slice(&body);
        Ok(out)
    }
}

fn enc_err(e: io::Error) -> LayerError {
    LayerError::Splitstream(format!("cannot encode: {e}"))
}

/// Work for the object workers. Each payload has an index (its position in
/// the digest table).
enum Job {
    /// A whole object of at most [`BUFFER_MAX`] bytes.
    Bytes(usize, Vec<u8>, Option<LocalFile>),
    /// A larger object of the given size, whose data arrives in chunks (the
    /// sender is dropped after the last one).
    Stream(usize, u64, mpsc::Receiver<Vec<u8>>, Option<LocalFile>),
}

/// A local file whose contents are the payload being read: the object is
/// then cloned from it (a reflink where the filesystem can, a copy where
/// not) instead of written from the bytes, which are still read through the
/// tar stream (so that the stream's checks cover them) and hashed.
#[derive(Debug)]
pub struct LocalFile {
    /// Shared with the stream, which reads the bytes through it (a clone
    /// does not use the file offset).
    pub file: std::sync::Arc<fs::File>,
    /// The file's stamp when it was opened: if it changed by the time it is
    /// cloned, the object is refused (see [`ObjectDir::add_file`]).
    pub stamp: FileStamp,
}

/// A tar stream that may know a local file holding each payload.
pub trait TarStream: Read {
    /// Called when the next `size` bytes of the stream are the contents of
    /// a regular file: the local file that holds exactly those bytes, if
    /// the stream has one. The stream still yields the bytes.
    fn payload_file(&mut self, size: u64) -> io::Result<Option<LocalFile>>;

    /// Called before [`payload_file`](Self::payload_file): the stored object whose
    /// contents are exactly the next `size` bytes, if the stream knows one (a partial pull
    /// rebuilding a layer from objects it already has or just stored). The stream still
    /// yields the bytes; the importer then neither hashes nor writes them again.
    fn payload_object(&mut self, _size: u64) -> io::Result<Option<Digest>> {
        Ok(None)
    }
}

impl<T: TarStream + ?Sized> TarStream for Box<T> {
    fn payload_file(&mut self, size: u64) -> io::Result<Option<LocalFile>> {
        (**self).payload_file(size)
    }
    fn payload_object(&mut self, size: u64) -> io::Result<Option<Digest>> {
        (**self).payload_object(size)
    }
}

impl<T: TarStream + ?Sized> TarStream for &mut T {
    fn payload_file(&mut self, size: u64) -> io::Result<Option<LocalFile>> {
        (**self).payload_file(size)
    }
    fn payload_object(&mut self, size: u64) -> io::Result<Option<Digest>> {
        (**self).payload_object(size)
    }
}

/// A plain tar stream: no local files.
struct Plain<R>(R);

impl<R: Read> Read for Plain<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> TarStream for Plain<R> {
    fn payload_file(&mut self, _size: u64) -> io::Result<Option<LocalFile>> {
        Ok(None)
    }
}

/// What a worker reports for one object.
type Outcome = (usize, Result<(Digest, Added), ObjectError>);

/// The worker pool stopped (the real error is reported instead).
fn worker_gone() -> LayerError {
    LayerError::Splitstream("object writer stopped".into())
}

/// The import-side [`Input`]: reads the tar, records inline bytes, and hands
/// payloads to the object workers.
struct Importer<'a, R> {
    reader: R,
    offset: u64,
    rec: RecordWriter,
    jobs: mpsc::SyncSender<Job>,
    recycled: mpsc::Receiver<Vec<u8>>,
    failed: &'a AtomicBool,
    scratch: Vec<u8>,
    /// The entry of each payload, in order (for error messages).
    payload_entries: Vec<EntryName>,
    /// Where payloads the stream knows as stored objects are reported.
    known: mpsc::Sender<Outcome>,
}

impl<R: TarStream> Importer<'_, R> {
    fn pump(&mut self, limit: Option<u64>) -> io::Result<u64> {
        let mut done = 0u64;
        loop {
            let want = match limit {
                Some(l) if l - done < self.scratch.len() as u64 => (l - done) as usize,
                _ => self.scratch.len(),
            };
            if want == 0 {
                return Ok(done);
            }
            let n = read_full(&mut self.reader, &mut self.scratch[..want])?;
            self.rec.inline(&self.scratch[..n])?;
            self.offset += n as u64;
            done += n as u64;
            if n < want {
                return Ok(done);
            }
        }
    }

    /// Reads exactly `want` payload bytes into `buf` (cleared first).
    fn read_chunk(
        &mut self,
        buf: &mut Vec<u8>,
        want: u64,
        entry: &EntryName,
    ) -> Result<(), LayerError> {
        buf.clear();
        buf.reserve_exact(want as usize);
        let n = (&mut self.reader)
            .take(want)
            .read_to_end(buf)
            .map_err(|e| LayerError::Io {
                entry: entry.clone(),
                source: e,
            })? as u64;
        self.offset += n;
        if n < want {
            return Err(LayerError::Truncated {
                entry: entry.clone(),
                offset: self.offset,
                what: "file data",
            });
        }
        Ok(())
    }
}

impl<R: TarStream> Input for Importer<'_, R> {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn read_inline(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.reader, buf)?;
        self.rec.inline(&buf[..n])?;
        self.offset += n as u64;
        Ok(n)
    }

    fn skip_inline(&mut self, n: u64) -> io::Result<u64> {
        self.pump(Some(n))
    }

    fn rest(&mut self) -> io::Result<u64> {
        self.pump(None)
    }

    fn payload(&mut self, size: u64, entry: &EntryName) -> Result<Option<Digest>, LayerError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(worker_gone());
        }
        let index = self.payload_entries.len();
        self.payload_entries.push(entry.clone());
        self.rec.reference(size).map_err(enc_err)?;
        let io_err = |source| LayerError::Io {
            entry: entry.clone(),
            source,
        };
        if let Some(d) = self.reader.payload_object(size).map_err(io_err)? {
            // Read (the stream's checks cover the bytes) but neither hash nor store.
            let mut left = size;
            while left > 0 {
                let want = left.min(self.scratch.len() as u64) as usize;
                let n = read_full(&mut self.reader, &mut self.scratch[..want]).map_err(io_err)?;
                self.offset += n as u64;
                if n < want {
                    return Err(LayerError::Truncated {
                        entry: entry.clone(),
                        offset: self.offset,
                        what: "file data",
                    });
                }
                left -= n as u64;
            }
            let _ = self.known.send((index, Ok((d, Added::Present))));
            return Ok(None);
        }
        let local = self
            .reader
            .payload_file(size)
            .map_err(|source| LayerError::Io {
                entry: entry.clone(),
                source,
            })?;
        if size <= BUFFER_MAX {
            let mut data = Vec::new();
            self.read_chunk(&mut data, size, entry)?;
            self.jobs
                .send(Job::Bytes(index, data, local))
                .map_err(|_| worker_gone())?;
            return Ok(None);
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        self.jobs
            .send(Job::Stream(index, size, rx, local))
            .map_err(|_| worker_gone())?;
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64);
            let mut buf = self.recycled.try_recv().unwrap_or_default();
            self.read_chunk(&mut buf, want, entry)?;
            left -= want;
            tx.send(buf).map_err(|_| worker_gone())?;
        }
        Ok(None)
    }
}

/// Stores the objects of the jobs it takes from `jobs` until that closes.
fn store_worker(
    objects: &ObjectDir,
    jobs: &Mutex<mpsc::Receiver<Job>>,
    results: mpsc::Sender<Outcome>,
    recycle: mpsc::Sender<Vec<u8>>,
    failed: &AtomicBool,
) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        if failed.load(Ordering::Relaxed) {
            continue; // drain without working
        }
        let (index, result) = match job {
            Job::Bytes(index, data, None) => (index, objects.add_bytes(&data)),
            Job::Bytes(index, data, Some(local)) => {
                let digest = crate::fsverity::par_digest_bytes(objects.algorithm(), &data);
                (index, clone_local(objects, &digest, &local))
            }
            Job::Stream(index, size, chunks, Some(local)) => {
                let mut hasher = crate::fsverity::FsVerityHasher::new(objects.algorithm());
                for chunk in chunks {
                    hasher.update(&chunk);
                    let _ = recycle.send(chunk);
                }
                if hasher.len() != size {
                    // Fewer bytes than announced: the parser failed; it reports why.
                    continue;
                }
                (index, clone_local(objects, &hasher.finish(), &local))
            }
            Job::Stream(index, size, chunks, None) => {
                let mut w = match objects.writer() {
                    Ok(w) => w,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        let _ = results.send((index, Err(e)));
                        continue;
                    }
                };
                let mut write_err = None;
                for chunk in chunks {
                    if write_err.is_none() {
                        if let Err(e) = w.write_all(&chunk) {
                            write_err = Some(e);
                        }
                    }
                    let _ = recycle.send(chunk);
                }
                match write_err {
                    Some(e) => (
                        index,
                        Err(ObjectError {
                            path: objects.path().to_path_buf(),
                            what: "cannot write object data",
                            source: e,
                        }),
                    ),
                    // Fewer bytes than announced: the parser failed; it reports why.
                    None if w.len() != size => continue,
                    None => (index, w.commit()),
                }
            }
        };
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        let _ = results.send((index, result));
    }
}

/// Stores the object `digest` (computed from the bytes read through the
/// stream) by cloning the local file that holds them.
fn clone_local(
    objects: &ObjectDir,
    digest: &Digest,
    local: &LocalFile,
) -> Result<(Digest, Added), ObjectError> {
    objects
        .add_file(&local.file, digest, &local.stamp)
        .map(|added| (*digest, added))
}

/// Number of object worker threads.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Decodes a layer tar from `reader`, storing file contents larger than
/// [`INLINE_MAX`](super::tar::INLINE_MAX) bytes in `objects`, and returns its
/// splitstream and entries. Objects are hashed and written by worker
/// threads while the tar is being read.
pub fn import_layer(reader: impl Read, objects: &ObjectDir) -> Result<ImportedLayer, LayerError> {
    import_layer_from(Plain(reader), objects)
}

/// [`import_layer`] for a tar stream that knows local files holding its
/// payloads ([`TarStream`]): those objects are cloned from the files. The
/// splitstream and entries are the same as [`import_layer`] of the same
/// bytes would give.
pub fn import_layer_from(
    reader: impl TarStream,
    objects: &ObjectDir,
) -> Result<ImportedLayer, LayerError> {
    let alg = objects.algorithm();
    let n_workers = workers();
    let (jobs_tx, jobs_rx) = mpsc::sync_channel(2 * n_workers);
    let jobs_rx = Mutex::new(jobs_rx);
    let (results_tx, results) = mpsc::channel();
    let (recycle_tx, recycled) = mpsc::channel();
    let failed = AtomicBool::new(false);
    let rec = RecordWriter::new().map_err(enc_err)?;
    let (parsed, mut entries, mut stats, importer) = std::thread::scope(|s| {
        for _ in 0..n_workers {
            let (jobs_rx, results_tx, recycle_tx, failed) =
                (&jobs_rx, results_tx.clone(), recycle_tx.clone(), &failed);
            s.spawn(move || store_worker(objects, jobs_rx, results_tx, recycle_tx, failed));
        }
        let known = results_tx.clone();
        drop((results_tx, recycle_tx));
        let mut parser = Parser::new(Importer {
            known,
            reader,
            offset: 0,
            rec,
            jobs: jobs_tx,
            recycled,
            failed: &failed,
            scratch: vec![0u8; INLINE_RECORD],
            payload_entries: Vec::new(),
        });
        let mut entries = Vec::new();
        let mut stats = ImportStats::default();
        let parsed = (|| {
            while let Some(e) = parser.next_entry()? {
                match &e.data {
                    Some(EntryData::Inline(_)) => stats.inline_files += 1,
                    Some(EntryData::Object(_)) => {
                        stats.object_files += 1;
                        stats.object_bytes += e.size;
                    }
                    None => {}
                }
                entries.push(e);
            }
            Ok::<(), LayerError>(())
        })();
        // Dropping the parser closes the job queue; the scope then waits
        // for the workers to finish.
        let Importer {
            rec,
            offset,
            payload_entries,
            ..
        } = parser.input;
        (parsed, entries, stats, (rec, offset, payload_entries))
    });
    let (rec, offset, payload_entries) = importer;
    let mut stored: Vec<Option<(Digest, Added)>> = vec![None; payload_entries.len()];
    let mut first_err: Option<(usize, ObjectError)> = None;
    for (index, result) in results.try_iter() {
        match result {
            Ok(r) => {
                if let Some(slot) = stored.get_mut(index) {
                    *slot = Some(r);
                }
            }
            Err(e) => {
                if first_err.as_ref().is_none_or(|(i, _)| index < *i) {
                    first_err = Some((index, e));
                }
            }
        }
    }
    if let Some((index, source)) = first_err {
        let entry = payload_entries.get(index).cloned().unwrap_or(EntryName {
            path: String::new(),
            offset,
        });
        return Err(LayerError::Object { entry, source });
    }
    parsed?;
    let stored: Vec<(Digest, Added)> = stored
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(worker_gone)?;
    if stored.len() as u64 != rec.refs {
        return Err(worker_gone());
    }
    let mut next = stored.iter();
    for e in &mut entries {
        if let Some(EntryData::Object(d)) = &mut e.data {
            let (digest, added) = next.next().ok_or_else(worker_gone)?;
            *d = *digest;
            if let Added::Written { .. } = added {
                stats.objects_written += 1;
                stats.objects_written_bytes += e.size;
            }
        }
    }
    let table: Vec<Digest> = stored.into_iter().map(|(d, _)| d).collect();
    stats.tar_bytes = rec.tar_size;
    stats.entries = entries.len() as u64;
    let splitstream = rec.finish(alg, &table).map_err(enc_err)?;
    stats.splitstream_bytes = splitstream.len() as u64;
    Ok(ImportedLayer {
        splitstream,
        entries,
        stats,
    })
}

// ---------------------------------------------------------------------------
// Decoding

fn corrupt(what: impl Into<String>) -> LayerError {
    LayerError::Splitstream(what.into())
}

/// The fixed header and digest table of a splitstream.
struct Parsed<'a> {
    tar_size: u64,
    digests: Vec<Digest>,
    body: &'a [u8],
}

fn parse(split: &[u8]) -> Result<Parsed<'_>, LayerError> {
    if split.len() < HEADER_SIZE || split[..8] != MAGIC {
        return Err(corrupt("not a strata splitstream (bad magic)"));
    }
    let version = u16::from_le_bytes([split[8], split[9]]);
    if version != VERSION {
        return Err(corrupt(format!(
            "unsupported version {version} (this strata reads {VERSION})"
        )));
    }
    let alg = Algorithm::from_kernel_id(u32::from(split[10]))
        .ok_or_else(|| corrupt(format!("unknown hash algorithm id {}", split[10])))?;
    if split[11] != COMPRESSION_ZSTD {
        return Err(corrupt(format!("unknown compression id {}", split[11])));
    }
    let tar_size = u64::from_le_bytes(split[16..24].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(split[24..32].try_into().expect("8 bytes"));
    let d = alg.digest_size();
    let rest = &split[HEADER_SIZE..];
    let table_len = count
        .checked_mul(d as u64)
        .filter(|&n| n <= rest.len() as u64)
        .ok_or_else(|| corrupt(format!("digest table of {count} entries does not fit")))?
        as usize;
    let digests = rest[..table_len]
        .chunks_exact(d)
        .map(|c| Digest::from_bytes(alg, c).expect("digest size"))
        .collect();
    Ok(Parsed {
        tar_size,
        digests,
        body: &rest[table_len..],
    })
}

/// One record of the record section.
enum Record {
    Inline(u64),
    Ref(u64),
    End,
}

/// Sequential reader of the record section.
struct Records<'a> {
    dec: BufReader<zstd::stream::read::Decoder<'a, &'a [u8]>>,
    next_ref: usize,
    total: u64,
}

impl<'a> Records<'a> {
    fn new(body: &'a [u8]) -> Result<Self, LayerError> {
        let dec = zstd::stream::read::Decoder::with_buffer(body)
            .map_err(|e| corrupt(format!("cannot start decompression: {e}")))?
            .single_frame();
        Ok(Records {
            dec: BufReader::with_capacity(INLINE_RECORD, dec),
            next_ref: 0,
            total: 0,
        })
    }

    fn byte(&mut self) -> Result<u8, LayerError> {
        let mut b = [0u8];
        self.dec
            .read_exact(&mut b)
            .map_err(|e| corrupt(format!("record section: {e}")))?;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, LayerError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("bad varint in record section"))
    }

    fn next(&mut self, tar_size: u64) -> Result<Record, LayerError> {
        let rec = match self.byte()? {
            REC_END => {
                if self.total != tar_size {
                    return Err(corrupt(format!(
                        "records describe {} bytes, header says {tar_size}",
                        self.total
                    )));
                }
                let mut extra = [0u8];
                if self
                    .dec
                    .read(&mut extra)
                    .map_err(|e| corrupt(e.to_string()))?
                    != 0
                {
                    return Err(corrupt("data after the end record"));
                }
                return Ok(Record::End);
            }
            REC_INLINE => Record::Inline(self.varint()?),
            REC_REF => Record::Ref(self.varint()?),
            t => return Err(corrupt(format!("unknown record type {t}"))),
        };
        let (Record::Inline(n) | Record::Ref(n)) = rec else {
            unreachable!()
        };
        self.total = self
            .total
            .checked_add(n)
            .filter(|&t| t <= tar_size)
            .ok_or_else(|| corrupt("records describe more bytes than the header says"))?;
        Ok(rec)
    }

    fn digest(&mut self, digests: &[Digest]) -> Result<Digest, LayerError> {
        let d = digests
            .get(self.next_ref)
            .copied()
            .ok_or_else(|| corrupt("more references than digests"))?;
        self.next_ref += 1;
        Ok(d)
    }
}

/// Replays a splitstream's records as the parser's [`Input`].
struct Replay<'a> {
    rec: Records<'a>,
    tar_size: u64,
    digests: Vec<Digest>,
    /// Inline bytes left in the current record.
    inline_left: u64,
    ended: bool,
    offset: u64,
}

impl Replay<'_> {
    /// Makes sure an inline record is current; false at the end.
    fn want_inline(&mut self) -> io::Result<bool> {
        while self.inline_left == 0 {
            if self.ended {
                return Ok(false);
            }
            match self.rec.next(self.tar_size).map_err(io::Error::other)? {
                Record::Inline(n) => self.inline_left = n,
                Record::Ref(_) => {
                    return Err(io::Error::other(corrupt(
                        "object reference where the tar has metadata",
                    )))
                }
                Record::End => self.ended = true,
            }
        }
        Ok(true)
    }

    fn consume(&mut self, mut buf: Option<&mut [u8]>, n: u64) -> io::Result<u64> {
        let mut done = 0u64;
        let mut sink = [0u8; 4096];
        while done < n && self.want_inline()? {
            let step = (n - done).min(self.inline_left);
            let got = match buf.as_deref_mut() {
                Some(b) => {
                    let dst = &mut b[done as usize..(done + step) as usize];
                    self.rec.dec.read_exact(dst).map(|_| step)
                }
                None => {
                    let step = step.min(sink.len() as u64) as usize;
                    self.rec
                        .dec
                        .read_exact(&mut sink[..step])
                        .map(|_| step as u64)
                }
            }
            .map_err(|e| io::Error::other(corrupt(format!("record section: {e}"))))?;
            self.inline_left -= got;
            self.offset += got;
            done += got;
        }
        Ok(done)
    }
}

impl Input for Replay<'_> {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn read_inline(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        Ok(self.consume(Some(buf), n)? as usize)
    }

    fn skip_inline(&mut self, n: u64) -> io::Result<u64> {
        self.consume(None, n)
    }

    fn rest(&mut self) -> io::Result<u64> {
        self.consume(None, u64::MAX)
    }

    fn payload(&mut self, size: u64, _entry: &EntryName) -> Result<Option<Digest>, LayerError> {
        if self.inline_left != 0 || self.ended {
            return Err(corrupt("metadata where the tar has file contents"));
        }
        match self.rec.next(self.tar_size)? {
            Record::Ref(n) if n == size => {
                self.offset += n;
                Ok(Some(self.rec.digest(&self.digests)?))
            }
            Record::Ref(n) => Err(corrupt(format!(
                "reference of {n} bytes for a file of {size}"
            ))),
            _ => Err(corrupt("metadata where the tar has file contents")),
        }
    }
}

/// Unwraps splitstream errors that travelled through `io::Error`.
fn unwrap_io(e: LayerError) -> LayerError {
    match e {
        LayerError::Io { source, entry } => match source.downcast::<LayerError>() {
            Ok(inner) => inner,
            Err(source) => LayerError::Io { entry, source },
        },
        e => e,
    }
}

/// Re-derives a layer's entries from its splitstream alone.
pub fn read_entries(splitstream: &[u8]) -> Result<Vec<LayerEntry>, LayerError> {
    let p = parse(splitstream)?;
    let mut parser = Parser::new(Replay {
        rec: Records::new(p.body)?,
        tar_size: p.tar_size,
        digests: p.digests,
        inline_left: 0,
        ended: false,
        offset: 0,
    });
    let mut entries = Vec::new();
    loop {
        match parser.next_entry() {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => break,
            Err(e) => return Err(unwrap_io(e)),
        }
    }
    let r = &mut parser.input;
    if !r.ended {
        // The parser stops at a header boundary only at the end.
        r.rest().map_err(|e| {
            unwrap_io(LayerError::Io {
                entry: EntryName {
                    path: String::new(),
                    offset: r.offset,
                },
                source: e,
            })
        })?;
    }
    if r.rec.next_ref != r.digests.len() {
        return Err(corrupt("digest table has unreferenced entries"));
    }
    Ok(entries)
}

/// Writes the original tar stream: inline bytes from the splitstream and
/// referenced objects from `objects` (each checked for its recorded length).
pub fn cat(
    splitstream: &[u8],
    objects: &ObjectDir,
    out: &mut impl Write,
) -> Result<(), LayerError> {
    let p = parse(splitstream)?;
    let mut rec = Records::new(p.body)?;
    loop {
        match rec.next(p.tar_size)? {
            Record::End => break,
            Record::Inline(n) => {
                let mut left = n;
                while left > 0 {
                    let buf = rec
                        .dec
                        .fill_buf()
                        .map_err(|e| corrupt(format!("record section: {e}")))?;
                    if buf.is_empty() {
                        return Err(corrupt("record section ends inside inline data"));
                    }
                    let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.write_all(&buf[..k]).map_err(LayerError::Output)?;
                    rec.dec.consume(k);
                    left -= k as u64;
                }
            }
            Record::Ref(size) => {
                let digest = rec.digest(&p.digests)?;
                copy_object(objects, &digest, size, out)?;
            }
        }
    }
    if rec.next_ref != p.digests.len() {
        return Err(corrupt("digest table has unreferenced entries"));
    }
    Ok(())
}

fn copy_object(
    objects: &ObjectDir,
    digest: &Digest,
    size: u64,
    out: &mut impl Write,
) -> Result<(), LayerError> {
    let path = objects.object_path(digest);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LayerError::MissingObject {
                digest: *digest,
                path,
            })
        }
        Err(source) => {
            return Err(LayerError::ObjectRead {
                digest: *digest,
                path,
                source,
            })
        }
    };
    let read_err = |source| LayerError::ObjectRead {
        digest: *digest,
        path: path.clone(),
        source,
    };
    let actual = file.metadata().map_err(read_err)?.len();
    if actual != size {
        return Err(LayerError::ObjectSize {
            digest: *digest,
            path,
            expected: size,
            actual,
        });
    }
    let mut reader = (&file).take(size);
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut copied = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(LayerError::Output)?;
        copied += n as u64;
    }
    if copied != size {
        return Err(LayerError::ObjectSize {
            digest: *digest,
            path,
            expected: size,
            actual: copied,
        });
    }
    Ok(())
}

/// The distinct objects a splitstream references (for garbage collection).
pub fn object_refs(splitstream: &[u8]) -> Result<Vec<Digest>, LayerError> {
    let mut digests = parse(splitstream)?.digests;
    let mut seen = std::collections::HashSet::new();
    digests.retain(|d| seen.insert(*d));
    Ok(digests)
}

/// The size of the tar a splitstream rebuilds.
pub fn tar_size(splitstream: &[u8]) -> Result<u64, LayerError> {
    Ok(parse(splitstream)?.tar_size)
}

#[cfg(test)]
mod tests;
