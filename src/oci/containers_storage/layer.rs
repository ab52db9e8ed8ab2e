//! One layer of the store as its exact tar stream: the bytes of the tar-split's segments,
//! and for each file entry the contents of that file in the layer's `diff` directory.
//!
//! The stream is hashed as it is produced and must end with the layer's diff_id; on a
//! mismatch the files are checked against the tar-split's CRC-64s so that the error names
//! the file that changed. Files are opened beneath the diff directory only
//! (`openat2(RESOLVE_IN_ROOT)`, never following a final symlink), must be regular files of
//! exactly the size the tar-split gives, and each is offered to the importer as the local
//! file behind its payload (for a reflink).

use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

use super::StorageError;
use crate::oci::error::SourceError;
use crate::oci::splitstream::{LocalFile, TarStream};
use crate::oci::tarsplit::{self, Crc64, Entry};
use crate::repo::objects::FileStamp;

type SplitReader = tarsplit::Reader<flate2::read::MultiGzDecoder<fs::File>>;

enum Cur {
    None,
    Segment(Vec<u8>, usize),
    File {
        file: Arc<fs::File>,
        stamp: FileStamp,
        path: PathBuf,
        size: u64,
        left: u64,
    },
}

/// The re-serialised tar stream of one layer.
pub(super) struct LayerTar {
    entries: SplitReader,
    split_path: PathBuf,
    diff: OwnedFd,
    diff_path: PathBuf,
    diff_id: String,
    hasher: Sha256,
    cur: Cur,
    done: bool,
    failed: bool,
}

fn to_io(e: StorageError) -> io::Error {
    io::Error::other(SourceError::from(e))
}

/// The path of a tar entry name beneath the layer root: leading `/` and `./` removed.
fn relative(name: &[u8]) -> &[u8] {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix(b"/") {
            n = r;
        } else if let Some(r) = n.strip_prefix(b"./") {
            n = r;
        } else {
            return n;
        }
    }
}

impl LayerTar {
    pub(super) fn open(root: &Path, layer_id: &str, diff_id: &str) -> Result<Self, StorageError> {
        let split_path = root
            .join("overlay-layers")
            .join(format!("{layer_id}.tar-split.gz"));
        let f = fs::File::open(&split_path).map_err(|source| StorageError::Io {
            path: split_path.clone(),
            what: "cannot open the layer's tar-split",
            source,
        })?;
        let diff_path = root.join("overlay").join(layer_id).join("diff");
        let diff = rustix::fs::open(
            &diff_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StorageError::Io {
            path: diff_path.clone(),
            what: "cannot open the layer's diff directory",
            source: e.into(),
        })?;
        Ok(LayerTar {
            entries: tarsplit::open_gz(f),
            split_path,
            diff,
            diff_path,
            diff_id: diff_id.to_string(),
            hasher: Sha256::new(),
            cur: Cur::None,
            done: false,
            failed: false,
        })
    }

    fn file_error(&self, path: &Path, what: impl Into<String>) -> StorageError {
        StorageError::File {
            diff_id: self.diff_id.clone(),
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    fn open_file(&self, name: &[u8]) -> Result<(fs::File, PathBuf), StorageError> {
        let rel = relative(name);
        let path = self.diff_path.join(std::ffi::OsStr::from_bytes(rel));
        if rel.is_empty() {
            return Err(self.file_error(&path, "file entry without a name"));
        }
        let fd = rustix::fs::openat2(
            &self.diff,
            std::ffi::OsStr::from_bytes(rel),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| self.file_error(&path, format!("cannot open: {}", io::Error::from(e))))?;
        Ok((fs::File::from(fd), path))
    }

    /// Makes `cur` something with bytes left, or marks the end (after checking the
    /// diff_id).
    fn settle(&mut self) -> Result<(), StorageError> {
        loop {
            match &self.cur {
                Cur::Segment(b, pos) if *pos < b.len() => return Ok(()),
                Cur::File { left, .. } if *left > 0 => return Ok(()),
                _ => {}
            }
            if self.done {
                return Ok(());
            }
            let next = self
                .entries
                .next_entry()
                .map_err(|source| StorageError::TarSplit {
                    path: self.split_path.clone(),
                    source,
                })?;
            match next {
                None => {
                    self.cur = Cur::None;
                    self.done = true;
                    return self.check_diff_id();
                }
                Some(Entry::Segment(b)) => self.cur = Cur::Segment(b, 0),
                Some(Entry::File { size: 0, .. }) => self.cur = Cur::None,
                Some(Entry::File { name, size, .. }) => {
                    let (file, path) = self.open_file(&name)?;
                    let st = rustix::fs::fstat(&file)
                        .map_err(|e| self.file_error(&path, format!("cannot stat: {e}")))?;
                    // What `FileStamp::of` reads, from the one fstat.
                    let stamp = FileStamp {
                        size: st.st_size as u64,
                        mtime: (st.st_mtime, st.st_mtime_nsec as u64),
                        ctime: (st.st_ctime, st.st_ctime_nsec as u64),
                        ino: st.st_ino,
                    };
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::RegularFile
                    {
                        return Err(self.file_error(&path, "not a regular file"));
                    }
                    if stamp.size != size {
                        return Err(self.file_error(
                            &path,
                            format!(
                                "is {} bytes but the layer's file is {size} (changed in the store?)",
                                stamp.size
                            ),
                        ));
                    }
                    self.cur = Cur::File {
                        file: Arc::new(file),
                        stamp,
                        path,
                        size,
                        left: size,
                    };
                }
            }
        }
    }

    fn check_diff_id(&mut self) -> Result<(), StorageError> {
        let got = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if got == self.diff_id {
            return Ok(());
        }
        // Name the culprit: the first file whose contents no longer match the CRC-64 the
        // tar-split recorded.
        if let Some(e) = self.find_changed_file() {
            return Err(e);
        }
        Err(StorageError::DiffIdMismatch {
            diff_id: self.diff_id.clone(),
            diff: self.diff_path.clone(),
            got,
        })
    }

    fn find_changed_file(&self) -> Option<StorageError> {
        let f = fs::File::open(&self.split_path).ok()?;
        let mut entries = tarsplit::open_gz(f);
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(Some(e)) = entries.next_entry() {
            let Entry::File {
                name,
                size,
                crc: Some(want),
            } = e
            else {
                continue;
            };
            let Ok((mut file, path)) = self.open_file(&name) else {
                continue;
            };
            let mut crc = Crc64::new();
            let mut total = 0u64;
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        crc.update(&buf[..n]);
                        total += n as u64;
                    }
                    Err(_) => break,
                }
            }
            if total != size || crc.finish() != want {
                return Some(self.file_error(
                    &path,
                    "contents differ from the layer's (file changed in the store)",
                ));
            }
        }
        None
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        self.settle()?;
        let n = match &mut self.cur {
            Cur::None => return Ok(0),
            Cur::Segment(b, pos) => {
                let n = (b.len() - *pos).min(buf.len());
                buf[..n].copy_from_slice(&b[*pos..*pos + n]);
                *pos += n;
                n
            }
            Cur::File {
                file, left, path, ..
            } => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = file
                    .read(&mut buf[..want])
                    .map_err(|e| StorageError::File {
                        diff_id: self.diff_id.clone(),
                        path: path.clone(),
                        what: format!("cannot read: {e}"),
                    })?;
                if n == 0 {
                    let path = path.clone();
                    return Err(self.file_error(
                        &path,
                        "shorter than the layer's file (changed in the store?)",
                    ));
                }
                *left -= n as u64;
                n
            }
        };
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl Read for LayerTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(to_io(StorageError::DiffIdMismatch {
                diff_id: self.diff_id.clone(),
                diff: self.diff_path.clone(),
                got: "(read after a failure)".into(),
            }));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_inner(buf).map_err(|e| {
            self.failed = true;
            to_io(e)
        })
    }
}

impl TarStream for LayerTar {
    fn payload_file(&mut self, size: u64) -> io::Result<Option<LocalFile>> {
        if let Err(e) = self.settle() {
            self.failed = true;
            return Err(to_io(e));
        }
        match &self.cur {
            Cur::File {
                file,
                stamp,
                size: s,
                left,
                ..
            } if *s == size && *left == size => Ok(Some(LocalFile {
                file: Arc::clone(file),
                stamp: *stamp,
            })),
            _ => Ok(None),
        }
    }
}
