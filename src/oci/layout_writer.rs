//! Writing an OCI image layout (for `strata export NAME oci:PATH:TAG`).
//!
//! Layers are compressed while streaming: each goes through a sha256 of the uncompressed
//! bytes (checked against the given diff_id), the encoder, and a sha256 + byte count of the
//! compressed bytes, into a temporary file in the layout that is renamed to
//! `blobs/sha256/<digest>` once complete. Every file that other files point to is synced
//! before what points to it is written, and `index.json` is replaced atomically.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::error::SourceError;
use super::manifest::{
    Compression, ANNOTATION_REF_NAME, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use super::reference::is_valid_tag;

/// zstd level for exported layers (the zstd default: fast, with a good ratio).
const ZSTD_LEVEL: i32 = 3;

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A blob written to the layout.
struct Written {
    digest: String,
    size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stream `data` through a temp file into `blobs/sha256/`, returning its digest and size.
/// `fill` writes the content into the given writer.
fn write_blob(
    dir: &Path,
    fill: impl FnOnce(&mut HashWriter<BufWriter<File>>) -> Result<(), SourceError>,
) -> Result<Written, SourceError> {
    let blobs = dir.join("blobs/sha256");
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-blob-")
        .tempfile_in(&blobs)
        .map_err(io_err(&blobs))?;
    let mut w = HashWriter {
        inner: BufWriter::with_capacity(
            256 * 1024,
            tmp.as_file().try_clone().map_err(io_err(tmp.path()))?,
        ),
        hasher: Sha256::new(),
        count: 0,
    };
    fill(&mut w)?;
    w.flush().map_err(io_err(tmp.path()))?;
    let HashWriter {
        inner,
        hasher,
        count,
    } = w;
    drop(inner);
    set_readable(tmp.as_file(), tmp.path())?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let hex = hex::encode(hasher.finalize());
    let dest = blobs.join(&hex);
    tmp.persist(&dest).map_err(|e| SourceError::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    Ok(Written {
        digest: format!("sha256:{hex}"),
        size: count,
    })
}

fn write_bytes_blob(dir: &Path, bytes: &[u8]) -> Result<Written, SourceError> {
    write_blob(dir, |w| {
        w.write_all(bytes).map_err(io_err(dir))?;
        Ok(())
    })
}

/// Write an image into the OCI layout at `dir` (created if needed) under `tag`, and return
/// the manifest digest.
///
/// `config` is stored byte for byte, so its digest and `rootfs.diff_ids` are preserved;
/// `layers` must be the uncompressed tars in config order, each with its diff_id (checked
/// against the config, and against the stream while it is compressed). An existing
/// `index.json` keeps its other entries; an entry with the same tag is replaced.
pub fn write_layout<R: Read>(
    dir: &Path,
    tag: &str,
    config: &[u8],
    layers: Vec<(String, R)>,
    compression: Compression,
) -> Result<String, SourceError> {
    if !is_valid_tag(tag) {
        return Err(SourceError::InvalidTag(tag.to_string()));
    }
    let parsed: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(config).map_err(|source| SourceError::InvalidJson {
            digest: "(export config)".into(),
            what: "image config",
            source,
        })?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(SourceError::LayerCountMismatch {
            manifest: "(export)".into(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for (i, ((given, _), config_id)) in layers.iter().zip(diff_ids).enumerate() {
        if given != config_id {
            return Err(SourceError::ExportDiffIdMismatch {
                index: i,
                given: given.clone(),
                config: config_id.clone(),
            });
        }
        super::verify::sha256_bytes(given)?;
    }

    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        write_atomic(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }

    let mut layer_descs = Vec::with_capacity(layers.len());
    for (diff_id, reader) in layers {
        let written = write_layer(dir, &diff_id, reader, compression)?;
        layer_descs.push(json!({
            "mediaType": compression.oci_media_type(),
            "digest": written.digest,
            "size": written.size,
        }));
    }
    let cfg = write_bytes_blob(dir, config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {
            "mediaType": MT_OCI_CONFIG,
            "digest": cfg.digest,
            "size": cfg.size,
        },
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("serializing a Value");
    let m = write_bytes_blob(dir, &manifest_bytes)?;

    // Merge into index.json, replacing any entry with the same tag.
    let index_path = dir.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| SourceError::InvalidLayoutJson {
            path: index_path.clone(),
            what: "index.json",
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []})
        }
        Err(e) => return Err(io_err(&index_path)(e)),
    };
    let obj = index
        .as_object_mut()
        .ok_or_else(|| SourceError::InvalidLayoutJson {
            path: index_path.clone(),
            what: "index.json",
            source: serde::de::Error::custom("not a JSON object"),
        })?;
    let mut manifests = match obj.remove("manifests") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    manifests.retain(|d| d["annotations"][ANNOTATION_REF_NAME].as_str() != Some(tag));
    manifests.push(json!({
        "mediaType": MT_OCI_MANIFEST,
        "digest": m.digest,
        "size": m.size,
        "annotations": { ANNOTATION_REF_NAME: tag },
    }));
    obj.insert("manifests".into(), Value::Array(manifests));
    let index_bytes = serde_json::to_vec(&index).expect("serializing a Value");
    write_atomic(dir, "index.json", &index_bytes)?;
    Ok(m.digest)
}

fn write_layer<R: Read>(
    dir: &Path,
    diff_id: &str,
    reader: R,
    compression: Compression,
) -> Result<Written, SourceError> {
    let mut src = HashReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    let written = write_blob(dir, |w| {
        let copy_err = |e: io::Error| SourceError::Read(e);
        match compression {
            Compression::None => {
                io::copy(&mut src, w).map_err(copy_err)?;
            }
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::default());
                io::copy(&mut src, &mut enc).map_err(copy_err)?;
                enc.finish().map_err(copy_err)?;
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL).map_err(copy_err)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                if threads > 1 {
                    enc.multithread(threads as u32).map_err(copy_err)?;
                }
                io::copy(&mut src, &mut enc).map_err(copy_err)?;
                enc.finish().map_err(copy_err)?;
            }
        }
        Ok(())
    })?;
    let got = format!("sha256:{}", hex::encode(src.hasher.finalize()));
    if got != diff_id {
        // The blob is complete and correctly named, just not the layer we were promised;
        // leave it (gc-able garbage) but write no manifest referring to it.
        return Err(SourceError::DiffIdMismatch {
            diff_id: diff_id.to_string(),
            got,
        });
    }
    Ok(written)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SourceError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{name}-"))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    set_readable(tmp.as_file(), tmp.path())?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let dest = dir.join(name);
    tmp.persist(&dest).map_err(|e| SourceError::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    Ok(())
}

/// Temp files are created 0600; layout files are meant to be readable by all (0644).
fn set_readable(f: &File, path: &Path) -> Result<(), SourceError> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_err(path))
}
