//! Userspace computation of fs-verity file digests.
//!
//! [`FsVerityHasher`] keeps one pending block per tree level (plus one data
//! block), so memory is `O(log n)` blocks for an `n`-byte file. Full blocks
//! are flushed lazily, only once more input arrives for their level: at
//! [`FsVerityHasher::finish`] the highest level then holds exactly one block,
//! the root block.
//!
//! The parallel variants hash the data blocks (all but the last one) in
//! independent 1 MiB runs on the rayon pool, then feed the resulting level-0
//! hashes, in order, into the same tree state; the upper levels are only
//! 1/128 (SHA-256) or 1/64 (SHA-512) of the data and are built sequentially.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use rayon::prelude::*;
use sha2::Digest as _;

use super::{Algorithm, Digest, BLOCK_SIZE, LOG_BLOCK_SIZE, MAX_DIGEST_SIZE};

/// Size of the fs-verity descriptor that the file digest is computed over.
const DESCRIPTOR_SIZE: usize = 256;

static ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// Bytes of data hashed by one parallel task (a multiple of the block size
/// and of a full level-0 tree block's coverage for both algorithms).
const PAR_CHUNK: usize = 1 << 20;
/// Chunks of data processed per parallel round (256 MiB); bounds the memory used for
/// level-0 hashes (2 MiB for SHA-256) and for read buffers.
const PAR_WINDOW_CHUNKS: usize = 256;
/// Below this size the parallel entry points just hash sequentially.
const PAR_MIN: usize = 2 * PAR_CHUNK;
/// Read buffer size for sequential file/reader hashing.
const READ_BUF: usize = 256 << 10;

type HashBuf = [u8; MAX_DIGEST_SIZE];

/// Hashes one (possibly short) block, zero-padded to [`BLOCK_SIZE`], into
/// `out[..alg.digest_size()]`.
#[inline]
fn hash_block(alg: Algorithm, block: &[u8], out: &mut [u8]) {
    debug_assert!(block.len() <= BLOCK_SIZE);
    let pad = &ZERO_BLOCK[block.len()..];
    match alg {
        Algorithm::Sha256 => {
            let mut h = sha2::Sha256::new();
            h.update(block);
            h.update(pad);
            out[..32].copy_from_slice(&h.finalize());
        }
        Algorithm::Sha512 => {
            let mut h = sha2::Sha512::new();
            h.update(block);
            h.update(pad);
            out[..64].copy_from_slice(&h.finalize());
        }
    }
}

/// Hashes consecutive data blocks of `data` (the last may be short) into
/// consecutive digests in `out`.
fn hash_blocks(alg: Algorithm, data: &[u8], out: &mut [u8]) {
    let d = alg.digest_size();
    debug_assert_eq!(out.len(), data.len().div_ceil(BLOCK_SIZE) * d);
    for (block, o) in data.chunks(BLOCK_SIZE).zip(out.chunks_exact_mut(d)) {
        hash_block(alg, block, o);
    }
}

/// One pending tree block.
struct Level {
    buf: Box<[u8; BLOCK_SIZE]>,
    len: usize,
}

/// Streaming fs-verity digest computation (4 KiB blocks, no salt).
///
/// Feed the file contents in any chunking with [`update`](Self::update) (or
/// via [`std::io::Write`]) and call [`finish`](Self::finish). Memory use is
/// one 4 KiB block per tree level plus one data block. The type is `Send`,
/// so independent files can be hashed on different threads.
pub struct FsVerityHasher {
    alg: Algorithm,
    total: u64,
    /// Pending data block; holds 1..=BLOCK_SIZE bytes whenever `total > 0`.
    data: Box<[u8; BLOCK_SIZE]>,
    data_len: usize,
    /// `levels[0]` collects hashes of data blocks, `levels[i + 1]` hashes of
    /// `levels[i]` blocks.
    levels: Vec<Level>,
}

impl std::fmt::Debug for FsVerityHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsVerityHasher")
            .field("alg", &self.alg)
            .field("total", &self.total)
            .field("levels", &self.levels.len())
            .finish()
    }
}

impl FsVerityHasher {
    /// A hasher for an empty file.
    pub fn new(alg: Algorithm) -> FsVerityHasher {
        FsVerityHasher {
            alg,
            total: 0,
            data: Box::new([0; BLOCK_SIZE]),
            data_len: 0,
            levels: Vec::new(),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Number of data bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether no data has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Appends `hash` to tree level `level`, flushing full blocks upwards.
    fn push_hash(&mut self, mut level: usize, hash: &[u8]) {
        let d = self.alg.digest_size();
        let mut carry: HashBuf = [0; MAX_DIGEST_SIZE];
        carry[..d].copy_from_slice(&hash[..d]);
        loop {
            if level == self.levels.len() {
                self.levels.push(Level {
                    buf: Box::new([0; BLOCK_SIZE]),
                    len: 0,
                });
            }
            let lv = &mut self.levels[level];
            if lv.len < BLOCK_SIZE {
                lv.buf[lv.len..lv.len + d].copy_from_slice(&carry[..d]);
                lv.len += d;
                return;
            }
            // The block is full and more hashes follow: it is not the root,
            // so hash it into the next level and start a new block.
            let mut up: HashBuf = [0; MAX_DIGEST_SIZE];
            hash_block(self.alg, &lv.buf[..], &mut up);
            lv.buf[..d].copy_from_slice(&carry[..d]);
            lv.len = d;
            carry = up;
            level += 1;
        }
    }

    /// Hashes the pending (full) data block into level 0.
    fn flush_data_block(&mut self) {
        let mut h: HashBuf = [0; MAX_DIGEST_SIZE];
        hash_block(self.alg, &self.data[..self.data_len], &mut h);
        self.data_len = 0;
        self.push_hash(0, &h);
    }

    /// Feeds file contents.
    pub fn update(&mut self, mut input: &[u8]) {
        self.total += input.len() as u64;
        let d = self.alg.digest_size();
        while !input.is_empty() {
            if self.data_len == BLOCK_SIZE {
                self.flush_data_block();
            }
            if self.data_len == 0 && input.len() > BLOCK_SIZE {
                // Hash whole blocks straight from the input, keeping the
                // last (possibly full) block pending.
                let n = (input.len() - 1) / BLOCK_SIZE;
                let mut h: HashBuf = [0; MAX_DIGEST_SIZE];
                for block in input[..n * BLOCK_SIZE].chunks_exact(BLOCK_SIZE) {
                    hash_block(self.alg, block, &mut h);
                    self.push_hash(0, &h[..d]);
                }
                input = &input[n * BLOCK_SIZE..];
            }
            let take = (BLOCK_SIZE - self.data_len).min(input.len());
            self.data[self.data_len..self.data_len + take].copy_from_slice(&input[..take]);
            self.data_len += take;
            input = &input[take..];
        }
    }

    /// Appends precomputed hashes of `nbytes` worth of full data blocks.
    /// Only valid on a block boundary with no pending data block.
    fn push_data_hashes(&mut self, hashes: &[u8], nbytes: u64) {
        let d = self.alg.digest_size();
        debug_assert_eq!(self.data_len, 0);
        debug_assert_eq!(self.total % BLOCK_SIZE as u64, 0);
        debug_assert_eq!(nbytes, (hashes.len() / d * BLOCK_SIZE) as u64);
        self.total += nbytes;
        for h in hashes.chunks_exact(d) {
            self.push_hash(0, h);
        }
    }

    /// The Merkle tree root hash of the data fed so far (all zeros for an
    /// empty file). Consumes the hasher; see [`finish`](Self::finish) for the
    /// file digest.
    pub fn root_hash(mut self) -> Digest {
        let mut root: HashBuf = [0; MAX_DIGEST_SIZE];
        if self.total > 0 {
            // Data block 0 alone: its hash is the root. Otherwise push the
            // last data block and close every level bottom-up; the topmost
            // level has (by lazy flushing) exactly one block, the root block.
            hash_block(self.alg, &self.data[..self.data_len], &mut root);
            if !self.levels.is_empty() {
                self.push_hash(0, &root);
                let mut level = 0;
                loop {
                    let lv = &self.levels[level];
                    hash_block(self.alg, &lv.buf[..lv.len], &mut root);
                    if level + 1 == self.levels.len() {
                        break;
                    }
                    self.push_hash(level + 1, &root);
                    level += 1;
                }
            }
        }
        let d = self.alg.digest_size();
        Digest::from_bytes(self.alg, &root[..d]).expect("digest size matches algorithm")
    }

    /// The fs-verity file digest: the hash of the `fsverity_descriptor`.
    pub fn finish(self) -> Digest {
        let alg = self.alg;
        let size = self.total;
        let root = self.root_hash();
        let mut desc = [0u8; DESCRIPTOR_SIZE];
        desc[0] = 1; // version
        desc[1] = alg.kernel_id();
        desc[2] = LOG_BLOCK_SIZE;
        desc[3] = 0; // salt_size; bytes 4..8 reserved
        desc[8..16].copy_from_slice(&size.to_le_bytes());
        desc[16..16 + alg.digest_size()].copy_from_slice(root.as_bytes());
        // salt[32] at 80..112 and reserved[144] at 112..256 stay zero.
        let out = match alg {
            Algorithm::Sha256 => Digest::from_bytes(alg, &sha2::Sha256::digest(desc)),
            Algorithm::Sha512 => Digest::from_bytes(alg, &sha2::Sha512::digest(desc)),
        };
        out.expect("digest size matches algorithm")
    }
}

impl io::Write for FsVerityHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// fs-verity digest of an in-memory buffer (single-threaded).
pub fn digest_bytes(alg: Algorithm, data: &[u8]) -> Digest {
    let mut h = FsVerityHasher::new(alg);
    h.update(data);
    h.finish()
}

/// fs-verity digest of everything `reader` yields until EOF
/// (single-threaded, bounded memory).
pub fn digest_reader<R: Read>(alg: Algorithm, mut reader: R) -> io::Result<Digest> {
    let mut h = FsVerityHasher::new(alg);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(h.finish())
}

/// fs-verity digest of a whole file, read with positional reads from offset
/// 0 to EOF (the file position is neither used nor changed).
/// Single-threaded; use [`par_digest_file`] for large files.
pub fn digest_file(alg: Algorithm, file: &File) -> io::Result<Digest> {
    thread_local! {
        // One read buffer per thread, reused: hashing many small files must
        // not allocate and zero a fresh buffer for each.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut local;
        let buf: &mut Vec<u8> = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => {
                local = Vec::new();
                &mut local
            }
        };
        if buf.len() < READ_BUF {
            buf.resize(READ_BUF, 0);
        }
        let mut h = FsVerityHasher::new(alg);
        let mut off = 0u64;
        loop {
            match file.read_at(buf, off) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(h.finish())
    })
}

/// Length of the prefix made of complete data blocks that are *not* the last
/// block (the last block, full or not, is left to the streaming hasher).
fn body_len(total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        (total - 1) / BLOCK_SIZE as u64 * BLOCK_SIZE as u64
    }
}

/// fs-verity digest of an in-memory buffer, hashing 1 MiB runs of blocks on
/// the rayon thread pool. Always equal to [`digest_bytes`].
pub fn par_digest_bytes(alg: Algorithm, data: &[u8]) -> Digest {
    par_digest_bytes_with(alg, data, PAR_WINDOW_CHUNKS)
}

/// [`par_digest_bytes`] processing `window_chunks` chunks per round.
pub(super) fn par_digest_bytes_with(alg: Algorithm, data: &[u8], window_chunks: usize) -> Digest {
    assert!(window_chunks > 0);
    let window = window_chunks * PAR_CHUNK;
    if data.len() < PAR_MIN {
        return digest_bytes(alg, data);
    }
    let d = alg.digest_size();
    let body = body_len(data.len() as u64) as usize;
    let mut h = FsVerityHasher::new(alg);
    let mut hashes = vec![0u8; window / BLOCK_SIZE * d];
    for window in data[..body].chunks(window) {
        let out = &mut hashes[..window.len() / BLOCK_SIZE * d];
        out.par_chunks_mut(PAR_CHUNK / BLOCK_SIZE * d)
            .zip(window.par_chunks(PAR_CHUNK))
            .for_each(|(o, w)| hash_blocks(alg, w, o));
        h.push_data_hashes(out, window.len() as u64);
    }
    h.update(&data[body..]);
    h.finish()
}

/// fs-verity digest of a whole file (offset 0 to EOF), reading and hashing
/// 1 MiB runs of blocks with positional reads on the rayon thread pool.
/// Always equal to [`digest_file`]. Fails with `UnexpectedEof` /
/// `InvalidData` if the file shrinks or grows while being hashed.
pub fn par_digest_file(alg: Algorithm, file: &File) -> io::Result<Digest> {
    par_digest_file_with(alg, file, PAR_WINDOW_CHUNKS)
}

/// [`par_digest_file`] processing `window_chunks` chunks per round.
pub(super) fn par_digest_file_with(
    alg: Algorithm,
    file: &File,
    window_chunks: usize,
) -> io::Result<Digest> {
    assert!(window_chunks > 0);
    let window = window_chunks * PAR_CHUNK;
    let size = file.metadata()?.len();
    if size < PAR_MIN as u64 {
        return digest_file(alg, file);
    }
    let d = alg.digest_size();
    let body = body_len(size);
    let mut h = FsVerityHasher::new(alg);
    let mut hashes = vec![0u8; window / BLOCK_SIZE * d];
    let mut start = 0u64;
    while start < body {
        let wlen = (body - start).min(window as u64) as usize;
        let out = &mut hashes[..wlen / BLOCK_SIZE * d];
        out.par_chunks_mut(PAR_CHUNK / BLOCK_SIZE * d)
            .enumerate()
            .try_for_each_init(
                || vec![0u8; PAR_CHUNK],
                |buf, (i, o)| -> io::Result<()> {
                    let n = o.len() / d * BLOCK_SIZE;
                    let off = start + (i * PAR_CHUNK) as u64;
                    file.read_exact_at(&mut buf[..n], off)?;
                    hash_blocks(alg, &buf[..n], o);
                    Ok(())
                },
            )?;
        h.push_data_hashes(out, wlen as u64);
        start += wlen as u64;
    }
    // Last block: 1..=BLOCK_SIZE bytes, then make sure the file ends there.
    let mut tail = [0u8; BLOCK_SIZE + 1];
    let tail_len = (size - body) as usize;
    file.read_exact_at(&mut tail[..tail_len], body)?;
    h.update(&tail[..tail_len]);
    let extra = loop {
        match file.read_at(&mut tail[..1], size) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if extra != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file grew while computing its fs-verity digest",
        ));
    }
    Ok(h.finish())
}
