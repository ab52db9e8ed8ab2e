//! zstd:chunked, both forms found in the wild.
//!
//! Facts (from the containers/storage `pkg/chunked` documentation and blobs written by
//! skopeo 1.9 and 1.18; no code taken):
//!
//! * The blob is a sequence of zstd frames: every regular file's contents sit in frames of
//!   their own, and the frames between them hold the tar headers and padding. Appended
//!   after the tar: the TOC (zstd-compressed JSON) inside a zstd *skippable frame*
//!   (magic `0x184D2A50`, 4-byte little-endian length), in the newer form the tar-split in
//!   another skippable frame, then a footer in a third (40 bytes in the older form, 64 in
//!   the newer, ending in the magic `GnUlInUx`). Skippable frames decompress to nothing,
//!   so the blob is still a valid zstd stream of the tar.
//! * Older writers annotate the layer with `io.containers.zstd-chunked.manifest-checksum`
//!   (`sha256:` of the compressed TOC bytes) and `…manifest-position`
//!   (`offset:length:uncompressed length:1`, the offset of the skippable frame's payload).
//! * Newer writers use `io.github.containers.zstd-chunked.` for the same two, add
//!   `…tarsplit-position` (`offset:length:uncompressed length`) and put `tarSplitDigest`
//!   (`sha256:` of the compressed tar-split bytes) in the TOC.
//! * TOC: `{"version": 1, "entries": [...], "tarSplitDigest": …}`; a `reg` entry with
//!   contents has `size`, `digest` (`sha256:` of the contents), `offset` and `endOffset`
//!   (the compressed range of all of the file's frames); `chunk` entries split big files
//!   inside that range and are not needed here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    decompress, parse_sha256, FileRange, Format, Headers, LayerToc, Location, TocError,
    MAX_COMPRESSED,
};

const OLD: &str = "io.containers.zstd-chunked.";
const NEW: &str = "io.github.containers.zstd-chunked.";
/// Size of a skippable frame's header.
const SKIPPABLE_HEADER: u64 = 8;

fn numbers(key: &str, v: &str, n: usize) -> Result<Vec<u64>, TocError> {
    let bad = |why: &str| TocError::Annotation {
        key: key.to_string(),
        why: format!("{why} in {v:?}"),
    };
    let parts: Vec<u64> = v
        .split(':')
        .map(|p| p.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("not numbers"))?;
    if parts.len() < n {
        return Err(bad("too few fields"));
    }
    Ok(parts)
}

/// The TOC's location from a layer's annotations: `None` when the layer is not
/// zstd:chunked.
pub fn locate(
    annotations: &BTreeMap<String, String>,
    blob_size: u64,
) -> Option<Result<Location, TocError>> {
    let (prefix, format) = if annotations.contains_key(&format!("{NEW}manifest-position")) {
        (NEW, Format::ChunkedV2)
    } else if annotations.contains_key(&format!("{OLD}manifest-position")) {
        (OLD, Format::ChunkedV1)
    } else {
        return None;
    };
    Some((|| {
        let key = format!("{prefix}manifest-position");
        let pos = numbers(&key, &annotations[&key], 3)?;
        let ckey = format!("{prefix}manifest-checksum");
        let checksum = annotations
            .get(&ckey)
            .and_then(|v| parse_sha256(v))
            .ok_or_else(|| TocError::Annotation {
                key: ckey.clone(),
                why: "missing or not a sha256 digest".into(),
            })?;
        let check = |key: &str, offset: u64, len: u64| -> Result<(), TocError> {
            if offset < SKIPPABLE_HEADER || offset.checked_add(len).is_none_or(|e| e > blob_size) {
                return Err(TocError::Annotation {
                    key: key.to_string(),
                    why: format!("bytes {offset}+{len} are outside the {blob_size}-byte blob"),
                });
            }
            if len > MAX_COMPRESSED {
                return Err(TocError::TooLarge {
                    what: "compressed TOC or tar-split",
                    size: len,
                    limit: MAX_COMPRESSED,
                });
            }
            Ok(())
        };
        check(&key, pos[0], pos[1])?;
        let tar_split = if format == Format::ChunkedV2 {
            let tkey = format!("{prefix}tarsplit-position");
            match annotations.get(&tkey) {
                Some(v) => {
                    let t = numbers(&tkey, v, 3)?;
                    check(&tkey, t[0], t[1])?;
                    Some((t[0], t[1], t[2]))
                }
                None => None,
            }
        } else {
            None
        };
        Ok(Location {
            format,
            offset: pos[0],
            len: pos[1],
            uncompressed: pos[2],
            checksum,
            tar_split,
        })
    })())
}

#[derive(Deserialize)]
struct RawToc {
    #[serde(default)]
    entries: Vec<RawEntry>,
    #[serde(default, rename = "tarSplitDigest")]
    tar_split_digest: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, rename = "endOffset")]
    end_offset: Option<u64>,
}

/// Checks the compressed TOC bytes against the location's checksum, decompresses and
/// parses them.
pub fn parse(loc: &Location, compressed: &[u8]) -> Result<LayerToc, TocError> {
    use sha2::{Digest as _, Sha256};
    let got: [u8; 32] = Sha256::digest(compressed).into();
    if got != loc.checksum {
        return Err(TocError::Checksum {
            want: format!("sha256:{}", hex::encode(loc.checksum)),
            got: format!("sha256:{}", hex::encode(got)),
        });
    }
    let json = decompress(compressed, loc.uncompressed, "TOC")?;
    let raw: RawToc =
        serde_json::from_slice(&json).map_err(|e| TocError::Invalid(format!("JSON: {e}")))?;
    drop(json);
    let data_end = loc
        .offset
        .min(loc.tar_split.map_or(u64::MAX, |t| t.0))
        .saturating_sub(SKIPPABLE_HEADER);
    let mut files = Vec::new();
    let mut prev_end = 0u64;
    for e in raw.entries {
        if e.kind != "reg" || e.size.unwrap_or(0) == 0 {
            continue;
        }
        let size = e.size.unwrap_or(0);
        let bad = |why: String| TocError::Invalid(format!("entry {:?}: {why}", e.name));
        let sha256 = e
            .digest
            .as_deref()
            .and_then(parse_sha256)
            .ok_or_else(|| bad("no sha256 digest".into()))?;
        let (Some(start), Some(end)) = (e.offset, e.end_offset) else {
            return Err(bad("no offset or endOffset".into()));
        };
        if start >= end || end > data_end {
            return Err(bad(format!(
                "range {start}..{end} is empty or past the tar data ({data_end} bytes)"
            )));
        }
        if start < prev_end {
            return Err(bad(format!(
                "range {start}..{end} overlaps the previous file's (ends at {prev_end})"
            )));
        }
        prev_end = end;
        files.push(FileRange {
            name: e.name,
            size,
            sha256,
            start,
            end,
        });
    }
    let headers = match (loc.format, loc.tar_split) {
        (Format::ChunkedV2, Some((offset, len, uncompressed))) => {
            let digest = raw
                .tar_split_digest
                .as_deref()
                .and_then(parse_sha256)
                .ok_or_else(|| {
                    TocError::Invalid("tarsplit-position given but no tarSplitDigest".into())
                })?;
            Headers::TarSplit {
                offset,
                len,
                uncompressed,
                digest,
            }
        }
        _ => Headers::Gaps,
    };
    Ok(LayerToc {
        format: loc.format,
        files,
        headers,
        data_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn locates_both_forms() {
        let sum = format!("sha256:{}", "ab".repeat(32));
        let old = ann(&[
            (
                "io.containers.zstd-chunked.manifest-position",
                "100:50:400:1",
            ),
            ("io.containers.zstd-chunked.manifest-checksum", &sum),
        ]);
        let l = locate(&old, 1000).unwrap().unwrap();
        assert_eq!(
            (l.format, l.offset, l.len, l.uncompressed),
            (Format::ChunkedV1, 100, 50, 400)
        );
        let new = ann(&[
            (
                "io.github.containers.zstd-chunked.manifest-position",
                "100:50:400:1",
            ),
            ("io.github.containers.zstd-chunked.manifest-checksum", &sum),
            (
                "io.github.containers.zstd-chunked.tarsplit-position",
                "158:20:90",
            ),
        ]);
        let l = locate(&new, 1000).unwrap().unwrap();
        assert_eq!(l.tar_split, Some((158, 20, 90)));
        assert!(locate(&ann(&[]), 1000).is_none());
        // Out of the blob, or garbage: refused with the key named.
        let e = locate(&old, 120).unwrap().unwrap_err().to_string();
        assert!(
            e.contains("manifest-position") && e.contains("outside"),
            "{e}"
        );
        let bad = ann(&[
            ("io.containers.zstd-chunked.manifest-position", "x:1"),
            ("io.containers.zstd-chunked.manifest-checksum", &sum),
        ]);
        assert!(locate(&bad, 1000).unwrap().is_err());
    }

    #[test]
    fn checks_checksum_and_ranges() {
        let json = br#"{"version":1,"entries":[
            {"type":"reg","name":"a","size":3,"digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","offset":10,"endOffset":20},
            {"type":"reg","name":"b","size":3,"digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","offset":15,"endOffset":30}]}"#;
        let z = zstd::encode_all(&json[..], 3).unwrap();
        use sha2::{Digest as _, Sha256};
        let mut loc = Location {
            format: Format::ChunkedV1,
            offset: 100,
            len: z.len() as u64,
            uncompressed: json.len() as u64,
            checksum: Sha256::digest(&z).into(),
            tar_split: None,
        };
        let e = parse(&loc, &z).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        loc.checksum = [0; 32];
        assert!(matches!(parse(&loc, &z), Err(TocError::Checksum { .. })));
    }
}
