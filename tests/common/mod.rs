//! Helpers shared by the integration tests.

pub mod chunked;
pub mod registry;
pub mod sandbox;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Every entry under `p` that is not a directory (files, symlinks, …),
/// recursively, in directory order.
#[allow(dead_code)]
pub fn non_dirs_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(non_dirs_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A file's xattrs (not following symlinks), without overlayfs' own
/// `trusted.overlay.*` ones, which are not part of a mounted tree.
#[allow(dead_code)]
pub fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let m = rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]).unwrap();
        v.truncate(m);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Every xattr of a path as a mounted composefs shows it (overlayfs hides
/// its own internals and unescapes `trusted.overlay.overlay.*`).
#[allow(dead_code)]
pub fn all_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        match rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]) {
            Ok(m) => v.truncate(m),
            Err(rustix::io::Errno::NODATA) => v = b"<listed, ENODATA>".to_vec(),
            Err(e) => v = format!("<listed, but getxattr: {e}>").into_bytes(),
        }
        out.insert(name.to_vec(), v);
    }
    out
}

/// The first bytes a placeholder object for `redirect` holds (the rest is
/// a sparse hole up to the file's size): enough to tell objects apart.
#[allow(dead_code)]
pub fn placeholder_head(redirect: &[u8], size: u64) -> Vec<u8> {
    let mut head = redirect.to_vec();
    head.truncate(size as usize);
    head
}

/// Creates a placeholder object under `objects` for every external file of
/// `tree` (for images whose real objects do not exist, e.g. ones built from
/// dumpfiles): the redirect path as its first bytes, a hole up to its size.
#[allow(dead_code)]
pub fn make_placeholder_objects(tree: &erofs::tree::Tree, objects: &Path) -> usize {
    use erofs::tree::{Content, FileData};
    use std::os::unix::ffi::OsStrExt;
    let mut n = 0;
    for id in tree.bfs_order() {
        if let Content::Regular(f) = &tree.inode(id).content {
            if let FileData::External {
                redirect: Some(r), ..
            } = &f.data
            {
                let rel = std::ffi::OsStr::from_bytes(r.strip_prefix(b"/").unwrap_or(r));
                let p = objects.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let head = placeholder_head(r, f.size);
                std::fs::write(&p, &head).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(f.size)
                    .unwrap();
                n += 1;
            }
        }
    }
    n
}

/// Compares a mounted composefs tree with the image's own tree (as
/// `erofs::read_image` gives it): names, types, modes, owners, mtimes,
/// device numbers, symlink targets, xattrs, sizes, inline bytes, hardlink
/// identity, and file contents — the whole object when `objects_real`, else
/// the placeholder head. Returns the differences, one line each.
#[allow(dead_code)]
pub fn diff_mount(
    mnt: &Path,
    image: &erofs::ReadImage,
    objects_real: Option<&Path>,
) -> Vec<String> {
    let (tree, version) = (&image.tree, image.version);
    use erofs::tree::{Content, FileData, InodeId};
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut diffs = Vec::new();
    let mut inos: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    let mut stack: Vec<(InodeId, std::path::PathBuf, String)> =
        vec![(InodeId(0), mnt.to_path_buf(), "/".to_string())];
    let root = tree.bfs_order()[0];
    stack[0].0 = root;
    while let Some((id, p, shown)) = stack.pop() {
        let inode = tree.inode(id);
        // A metacopy file with neither redirect nor inline data (dumpfiles
        // can say so) has no lower data anywhere: overlayfs refuses it.
        if let Content::Regular(erofs::tree::File {
            data: FileData::External { redirect: None, .. },
            ..
        }) = &inode.content
        {
            match std::fs::symlink_metadata(&p) {
                Err(e) if e.raw_os_error() == Some(5) => {}
                other => diffs.push(format!(
                    "{shown}: data-less metacopy file gave {other:?}, not EIO"
                )),
            }
            continue;
        }
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                diffs.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let st = &inode.stat;
        let d = |diffs: &mut Vec<String>, what: &str, got: String, want: String| {
            if got != want {
                diffs.push(format!("{shown}: {what} {got}, image has {want}"));
            }
        };
        let want_mode = if inode.is_whiteout() {
            0o100000 | (st.mode & 0o7777)
        } else {
            st.mode
        };
        d(
            &mut diffs,
            "mode",
            format!("{:o}", md.mode()),
            format!("{want_mode:o}"),
        );
        d(&mut diffs, "uid", md.uid().to_string(), st.uid.to_string());
        d(&mut diffs, "gid", md.gid().to_string(), st.gid.to_string());
        d(
            &mut diffs,
            "mtime",
            format!("{}.{:09}", md.mtime(), md.mtime_nsec()),
            format!("{}.{:09}", st.mtime.sec, st.mtime.nsec),
        );
        // The VFS lists user.* xattrs of symlinks and special files but will
        // not read them (ENODATA): user.* is for regular files and dirs only.
        let user_ok = matches!(inode.content, Content::Regular(_) | Content::Directory(_));
        let mut want_x: BTreeMap<Vec<u8>, Vec<u8>> = inode
            .xattrs
            .iter()
            .map(|x| {
                if !user_ok && x.name.starts_with(b"user.") {
                    (x.name.clone(), b"<listed, ENODATA>".to_vec())
                } else {
                    (x.name.clone(), x.value.clone())
                }
            })
            .collect();
        // composefs stores whiteouts escaped ("xwhiteouts", overlayfs ≥ 6.7):
        // an empty regular file marked trusted.overlay.whiteout (and the
        // user.* twin), its directory marked as holding such entries. The
        // mount shows them that way, so that it can itself be an overlay
        // lower layer whose whiteouts hide the files below.
        let whiteout = inode.is_whiteout();
        if whiteout {
            want_x.insert(b"trusted.overlay.whiteout".to_vec(), vec![]);
            want_x.insert(b"user.overlay.whiteout".to_vec(), vec![]);
        }
        if let Content::Directory(entries) = &inode.content {
            // (Only a whiteout's home entry counts; `opaque=x` is written
            // from format version 1 on.)
            if entries
                .iter()
                .any(|e| !e.hardlink && tree.inode(e.inode).is_whiteout())
            {
                want_x.insert(b"trusted.overlay.whiteouts".to_vec(), vec![]);
                want_x.insert(b"user.overlay.whiteouts".to_vec(), vec![]);
                if version >= 1 {
                    want_x.insert(b"trusted.overlay.opaque".to_vec(), b"x".to_vec());
                    want_x.insert(b"user.overlay.opaque".to_vec(), b"x".to_vec());
                }
            }
        }
        let got_x = all_xattrs(&p);
        if got_x != want_x {
            let show = |m: &BTreeMap<Vec<u8>, Vec<u8>>| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(k),
                            String::from_utf8_lossy(v)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            diffs.push(format!(
                "{shown}: xattrs [{}], image has [{}]",
                show(&got_x),
                show(&want_x)
            ));
        }
        if !inode.is_dir() {
            if let Some((ino, first)) = inos.get(&id.0) {
                if *ino != md.ino() {
                    diffs.push(format!(
                        "{shown}: not the same inode as its hardlink {first}"
                    ));
                }
            } else {
                inos.insert(id.0, (md.ino(), shown.clone()));
            }
        }
        match &inode.content {
            Content::Directory(entries) => {
                let mut got: Vec<Vec<u8>> = std::fs::read_dir(&p)
                    .map(|rd| {
                        rd.map(|e| e.unwrap().file_name().as_bytes().to_vec())
                            .collect()
                    })
                    .unwrap_or_default();
                got.sort();
                let want: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
                if got != want {
                    diffs.push(format!(
                        "{shown}: entries {:?}, image has {:?}",
                        got.iter()
                            .map(|n| String::from_utf8_lossy(n))
                            .collect::<Vec<_>>(),
                        want.iter()
                            .map(|n| String::from_utf8_lossy(n))
                            .collect::<Vec<_>>()
                    ));
                }
                for e in entries {
                    let name = std::ffi::OsStr::from_bytes(&e.name);
                    stack.push((
                        e.inode,
                        p.join(name),
                        format!(
                            "{}{}{}",
                            shown,
                            if shown.ends_with('/') { "" } else { "/" },
                            String::from_utf8_lossy(&e.name)
                        ),
                    ));
                }
            }
            Content::Regular(f) => {
                d(
                    &mut diffs,
                    "size",
                    md.size().to_string(),
                    f.size.to_string(),
                );
                let mut data = Vec::new();
                let read = std::fs::File::open(&p).and_then(|file| match (&f.data, objects_real) {
                    (FileData::Inline(_), _) | (FileData::External { .. }, Some(_)) => {
                        file.take(f.size + 1).read_to_end(&mut data)
                    }
                    (FileData::External { .. }, None) => file.take(4096).read_to_end(&mut data),
                });
                if let Err(e) = read {
                    diffs.push(format!("{shown}: cannot read: {e}"));
                    continue;
                }
                let want = match (&f.data, objects_real) {
                    (FileData::Inline(b), _) => b.clone(),
                    (
                        FileData::External {
                            redirect: Some(r), ..
                        },
                        Some(objs),
                    ) => {
                        let rel = std::ffi::OsStr::from_bytes(r.strip_prefix(b"/").unwrap_or(r));
                        std::fs::read(objs.join(rel)).unwrap_or_default()
                    }
                    (
                        FileData::External {
                            redirect: Some(r), ..
                        },
                        None,
                    ) => {
                        let mut h = placeholder_head(r, f.size);
                        h.resize(f.size.min(4096) as usize, 0);
                        h
                    }
                    (FileData::External { redirect: None, .. }, _) => unreachable!(),
                };
                if data != want {
                    diffs.push(format!(
                        "{shown}: {} bytes read differ from the image's",
                        data.len()
                    ));
                }
            }
            Content::Symlink(t) => {
                let got = std::fs::read_link(&p)
                    .map(|t| t.as_os_str().as_bytes().to_vec())
                    .unwrap_or_default();
                if &got != t {
                    diffs.push(format!(
                        "{shown}: symlink to {:?}, image has {:?}",
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(t)
                    ));
                }
            }
            Content::Special if inode.is_whiteout() => {
                d(&mut diffs, "size", md.size().to_string(), "0".into());
            }
            Content::Special => {
                d(
                    &mut diffs,
                    "rdev",
                    md.rdev().to_string(),
                    st.rdev.to_string(),
                );
            }
        }
    }
    diffs
}

/// Why this machine cannot run the test, if it cannot.
#[allow(dead_code)]
pub fn mount_skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("mount test needs root".into());
    }
    if let Err(e) = strata::mount::check_kernel() {
        return Some(e.to_string());
    }
    for fs_name in ["erofs", "overlay"] {
        let has = || {
            std::fs::read_to_string("/proc/filesystems")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().last() == Some(fs_name))
        };
        if !has() {
            let _ = std::process::Command::new("modprobe").arg(fs_name).status();
            if !has() {
                return Some(format!("kernel has no {fs_name} filesystem"));
            }
        }
    }
    None
}
