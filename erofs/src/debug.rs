//! Human-readable structural dump of an image, for debugging: header,
//! superblock, then every inode reachable from the root in breadth-first
//! order with its on-disk fields, xattrs (inline or shared) and directory
//! entries. Parsing uses the reader's bounds-checked primitives; on a
//! malformed image the dump ends with an `error:` line naming the problem.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write;

use zerocopy::FromBytes;

use crate::format::{
    ComposefsHeader, Superblock, LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN,
    SUPER_OFFSET, S_IFDIR, S_IFMT,
};
use crate::reader::{ReadError, Reader};

/// Longest xattr value or name shown in full.
const SHOW_MAX: usize = 64;

fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(SHOW_MAX) {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > SHOW_MAX {
        let _ = write!(s, "…(+{} bytes)", bytes.len() - SHOW_MAX);
    }
    s
}

fn layout_name(layout: u16) -> String {
    match layout {
        LAYOUT_FLAT_PLAIN => "flat-plain".into(),
        LAYOUT_FLAT_INLINE => "flat-inline".into(),
        LAYOUT_CHUNK_BASED => "chunk-based".into(),
        other => format!("layout-{other}"),
    }
}

/// Dumps the structure of `bytes`. Never fails: problems are reported in
/// the text.
pub fn dump_image(bytes: &[u8]) -> String {
    let mut out = String::new();
    if let Err(e) = dump_into(bytes, &mut out) {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

fn dump_into(bytes: &[u8], out: &mut String) -> Result<(), ReadError> {
    let mut r = Reader::new(bytes)?;
    // Reader::new checked that both structures are in bounds.
    let sb_range = SUPER_OFFSET as usize..SUPER_OFFSET as usize + size_of::<Superblock>();
    if let (Ok(h), Ok(sb)) = (
        ComposefsHeader::read_from_bytes(&bytes[..size_of::<ComposefsHeader>()]),
        Superblock::read_from_bytes(&bytes[sb_range]),
    ) {
        if r.composefs {
            let _ = writeln!(
                out,
                "composefs header: version {}, flags {:#x}, format version {}",
                h.version.get(),
                h.flags.get(),
                h.composefs_version.get()
            );
        } else {
            let _ = writeln!(out, "no composefs header (plain EROFS image)");
        }
        let _ = writeln!(
            out,
            "superblock: image {} bytes, blkszbits {}, root_nid {}, inos {}, build_time {}.{:09}, blocks {}, meta_blkaddr {}, xattr_blkaddr {}, feature_compat {:#x}, feature_incompat {:#x}",
            bytes.len(),
            sb.blkszbits,
            sb.root_nid.get(),
            sb.inos.get(),
            sb.build_time.get() as i64,
            sb.build_time_nsec.get(),
            sb.blocks.get(),
            sb.meta_blkaddr.get(),
            sb.xattr_blkaddr.get(),
            sb.feature_compat.get(),
            sb.feature_incompat.get(),
        );
    }
    let mut seen = HashSet::from([r.root_nid]);
    let mut queue = VecDeque::from([r.root_nid]);
    while let Some(nid) = queue.pop_front() {
        let ino = r.read_raw_inode(nid)?;
        let _ = writeln!(
            out,
            "nid {nid} @{:#x}: {}, {}, mode {:06o}, nlink {}, uid {}, gid {}, size {}, mtime {}.{:09}, i_u {:#x}, xattr_icount {}",
            ino.offset,
            if ino.isize == 32 { "compact" } else { "extended" },
            layout_name(ino.layout),
            ino.mode,
            ino.nlink,
            ino.uid,
            ino.gid,
            ino.size,
            ino.mtime.sec,
            ino.mtime.nsec,
            ino.i_u,
            ino.xattr_icount,
        );
        for (name, value, shared) in r.raw_xattrs(&ino)? {
            let place = match shared {
                Some(id) => format!("shared {id}"),
                None => "inline".to_string(),
            };
            let _ = writeln!(
                out,
                "  xattr [{place}] {} = \"{}\"",
                show(&name),
                show(&value)
            );
        }
        if ino.mode & S_IFMT == S_IFDIR {
            for (name, child) in r.read_dir(nid, true)? {
                let _ = writeln!(out, "  entry \"{}\" -> nid {child}", show(&name));
                if name != b"." && name != b".." && seen.insert(child) {
                    // Every inode is shown once, at its first entry.
                    queue.push_back(child);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_fixture_and_reports_errors() {
        let img = include_bytes!("../tests/fixtures/special_v1.cfs");
        let d = dump_image(img);
        assert!(d.starts_with("composefs header: version 1, flags 0x0, format version 1\n"));
        assert!(d.contains("entry \"inline\" -> nid"));
        assert!(d.contains("xattr [inline] trusted.overlay.opaque = \"y\""));
        assert!(!d.contains("error:"), "{d}");
        let d = dump_image(&img[..5000]);
        assert!(d.contains("error: "), "{d}");
        assert!(dump_image(&[]).starts_with("error: image is 0 bytes"));
    }
}
