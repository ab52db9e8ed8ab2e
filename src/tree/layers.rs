//! Building a tree by applying OCI layers in order.
//!
//! Follows the OCI image spec's layer rules the way container runtimes apply
//! them: paths are normalised to the image root (a leading `/` or `./` is
//! dropped; a `..` that would climb above the root is an error naming the
//! entry); `.wh.NAME` removes NAME from lower layers and `.wh..wh..opq` makes
//! its directory opaque (hides everything lower layers put there); a later
//! entry replaces an earlier one, except that a directory over a directory
//! only updates its attributes; hard links name an earlier path, possibly
//! from a lower layer. Whiteouts of a layer are applied before its other
//! entries, so their order inside the layer does not matter.

use std::collections::HashMap;

use erofs::format::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
use erofs::tree::{
    Content, File, FileData, Inode, InodeId, Stat, Timespec, Tree, TreeBuilder, Xattr,
};

use super::entry::{EntryData, EntryKind, LayerEntry};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a layer cannot be applied; names the entry (and layer, via the caller).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("{path}: path climbs above the image root")]
    Escapes { path: String },
    #[error("{path}: hard link to {target}, which escapes the image root")]
    LinkEscapes { path: String, target: String },
    #[error("{path}: hard link to missing {target}")]
    LinkMissing { path: String, target: String },
    #[error("{path}: hard link to directory {target}")]
    LinkToDirectory { path: String, target: String },
    #[error("{path}: parent {parent} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("{path}: invalid file name ({why})")]
    BadName { path: String, why: &'static str },
    #[error("{path}: a whiteout cannot be the image root")]
    RootWhiteout { path: String },
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Splits a tar path into normalised components relative to the image root.
/// `None` components mean the root itself.
pub fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, ApplyError> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(ApplyError::Escapes { path: show(path) });
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Kind {
    Dir(HashMap<Vec<u8>, usize>),
    File(File),
    Symlink(Vec<u8>),
    Special,
}

#[derive(Debug, Clone)]
struct Node {
    stat: Stat,
    xattrs: Vec<Xattr>,
    kind: Kind,
}

/// A tree under construction from layers.
#[derive(Debug)]
pub struct LayeredTree {
    nodes: Vec<Node>,
}

impl Default for LayeredTree {
    fn default() -> Self {
        Self::new()
    }
}

impl LayeredTree {
    /// An empty image: a root directory 0755 owned by root, mtime 0.
    pub fn new() -> Self {
        LayeredTree {
            nodes: vec![Node {
                stat: Stat {
                    mode: S_IFDIR | 0o755,
                    nlink: 2,
                    ..Default::default()
                },
                xattrs: Vec::new(),
                kind: Kind::Dir(HashMap::new()),
            }],
        }
    }

    fn children(&self, id: usize) -> Option<&HashMap<Vec<u8>, usize>> {
        match &self.nodes[id].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, id: usize) -> Option<&mut HashMap<Vec<u8>, usize>> {
        match &mut self.nodes[id].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Looks a normalised path up (no symlinks followed).
    fn lookup(&self, comps: &[&[u8]]) -> Option<usize> {
        let mut cur = 0;
        for c in comps {
            cur = *self.children(cur)?.get(*c)?;
        }
        Some(cur)
    }

    /// Finds (creating missing directories) the parent of `comps`.
    fn parent_dir(&mut self, comps: &[&[u8]], path: &[u8]) -> Result<usize, ApplyError> {
        let mut cur = 0;
        for (i, c) in comps[..comps.len() - 1].iter().enumerate() {
            let next = self.children(cur).and_then(|ch| ch.get(*c).copied());
            cur = match next {
                Some(n) if matches!(self.nodes[n].kind, Kind::Dir(_)) => n,
                Some(_) => {
                    return Err(ApplyError::ParentNotDirectory {
                        path: show(path),
                        parent: show(&comps[..=i].join(&b'/')),
                    })
                }
                None => {
                    // Runtimes create missing parents with default attributes.
                    let id = self.nodes.len();
                    self.nodes.push(Node {
                        stat: Stat {
                            mode: S_IFDIR | 0o755,
                            nlink: 2,
                            ..Default::default()
                        },
                        xattrs: Vec::new(),
                        kind: Kind::Dir(HashMap::new()),
                    });
                    self.children_mut(cur).expect("dir").insert(c.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// Applies one layer's entries.
    pub fn apply(&mut self, entries: &[LayerEntry]) -> Result<(), ApplyError> {
        // Whiteouts first: they act on what lower layers left.
        for e in entries {
            let comps = normalize(&e.path)?;
            let Some((name, dir)) = comps.split_last() else {
                continue;
            };
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let Some(d) = self.lookup(dir) else { continue };
                let Some(children) = self.children_mut(d) else {
                    continue;
                };
                if *name == OPAQUE_MARKER {
                    children.clear();
                } else {
                    check_name(hidden, &e.path)?;
                    children.remove(hidden);
                }
            }
        }
        for e in entries {
            let comps = normalize(&e.path)?;
            if let Some(name) = comps.last() {
                if name.starts_with(WHITEOUT_PREFIX) {
                    continue;
                }
                check_name(name, &e.path)?;
            }
            self.add(e, &comps)?;
        }
        Ok(())
    }

    fn add(&mut self, e: &LayerEntry, comps: &[&[u8]]) -> Result<(), ApplyError> {
        let stat = |ftype: u32| Stat {
            mode: ftype | (e.mode & 0o7777),
            uid: e.uid,
            gid: e.gid,
            nlink: 1,
            mtime: e.mtime,
            rdev: e.rdev,
        };
        if comps.is_empty() {
            // The root itself ("./"): only a directory may describe it.
            if e.kind == EntryKind::Directory {
                let root = &mut self.nodes[0];
                root.stat = stat(S_IFDIR);
                root.xattrs = e.xattrs.clone();
            }
            return Ok(());
        }
        let parent = self.parent_dir(comps, &e.path)?;
        let name = comps[comps.len() - 1];
        let existing = self.children(parent).and_then(|c| c.get(name).copied());
        let new_node = match &e.kind {
            EntryKind::Directory => {
                if let Some(id) = existing {
                    if matches!(self.nodes[id].kind, Kind::Dir(_)) {
                        let n = &mut self.nodes[id];
                        n.stat = stat(S_IFDIR);
                        n.xattrs = e.xattrs.clone();
                        return Ok(());
                    }
                }
                Node {
                    stat: stat(S_IFDIR),
                    xattrs: e.xattrs.clone(),
                    kind: Kind::Dir(HashMap::new()),
                }
            }
            EntryKind::Hardlink(target) => {
                let tcomps = normalize(target).map_err(|_| ApplyError::LinkEscapes {
                    path: show(&e.path),
                    target: show(target),
                })?;
                let Some(t) = self.lookup(&tcomps).filter(|_| !tcomps.is_empty()) else {
                    return Err(ApplyError::LinkMissing {
                        path: show(&e.path),
                        target: show(target),
                    });
                };
                if matches!(self.nodes[t].kind, Kind::Dir(_)) {
                    return Err(ApplyError::LinkToDirectory {
                        path: show(&e.path),
                        target: show(target),
                    });
                }
                if existing == Some(t) {
                    return Ok(());
                }
                self.children_mut(parent)
                    .expect("dir")
                    .insert(name.to_vec(), t);
                return Ok(());
            }
            EntryKind::Regular => {
                let data = match &e.data {
                    Some(EntryData::Object(d)) => FileData::External {
                        redirect: Some(d.object_path().into_bytes()),
                        verity: Some(d.as_bytes().to_vec()),
                    },
                    Some(EntryData::Inline(b)) => FileData::Inline(b.clone()),
                    None => FileData::Inline(Vec::new()),
                };
                Node {
                    stat: stat(S_IFREG),
                    xattrs: e.xattrs.clone(),
                    kind: Kind::File(File { size: e.size, data }),
                }
            }
            EntryKind::Symlink(t) => Node {
                stat: Stat {
                    mode: S_IFLNK | 0o777,
                    ..stat(S_IFLNK)
                },
                xattrs: e.xattrs.clone(),
                kind: Kind::Symlink(t.clone()),
            },
            EntryKind::CharDevice => Node {
                stat: stat(S_IFCHR),
                xattrs: e.xattrs.clone(),
                kind: Kind::Special,
            },
            EntryKind::BlockDevice => Node {
                stat: stat(S_IFBLK),
                xattrs: e.xattrs.clone(),
                kind: Kind::Special,
            },
            EntryKind::Fifo => Node {
                stat: stat(S_IFIFO),
                xattrs: e.xattrs.clone(),
                kind: Kind::Special,
            },
        };
        let id = self.nodes.len();
        self.nodes.push(new_node);
        self.children_mut(parent)
            .expect("dir")
            .insert(name.to_vec(), id);
        Ok(())
    }

    /// The finished tree: directories sorted, each inode's home its first
    /// link in sorted depth-first order, nlink counted within the tree,
    /// unreachable (whited-out) inodes dropped.
    pub fn into_tree(self) -> Tree {
        let root = &self.nodes[0];
        let mut b = TreeBuilder::new(root.stat.clone());
        b.tree_mut().inode_mut(InodeId::ROOT).xattrs = root.xattrs.clone();
        let mut placed: HashMap<usize, InodeId> = HashMap::new();
        let mut stack = vec![(0usize, InodeId::ROOT)];
        while let Some((node, dir)) = stack.pop() {
            let Kind::Dir(children) = &self.nodes[node].kind else {
                continue;
            };
            let mut names: Vec<(&Vec<u8>, usize)> = children.iter().map(|(k, v)| (k, *v)).collect();
            names.sort_unstable();
            let mut subdirs = Vec::new();
            for (name, child) in names {
                if let Some(&id) = placed.get(&child) {
                    b.link(dir, name.clone(), id);
                    continue;
                }
                let n = &self.nodes[child];
                let content = match &n.kind {
                    Kind::Dir(_) => Content::Directory(Vec::new()),
                    Kind::File(f) => Content::Regular(f.clone()),
                    Kind::Symlink(t) => Content::Symlink(t.clone()),
                    Kind::Special => Content::Special,
                };
                let id = b.add(
                    dir,
                    name.clone(),
                    Inode {
                        stat: n.stat.clone(),
                        xattrs: n.xattrs.clone(),
                        content,
                    },
                );
                placed.insert(child, id);
                if matches!(n.kind, Kind::Dir(_)) {
                    subdirs.push((child, id));
                }
            }
            // Depth-first, in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        let mut tree = b.finish_unchecked();
        let mut counts = vec![0u32; tree.inodes.len()];
        for i in &tree.inodes {
            for e in i.entries() {
                counts[e.inode.index()] += 1;
            }
        }
        for (i, c) in tree.inodes.iter_mut().zip(counts) {
            if !i.is_dir() {
                i.stat.nlink = c.max(1);
            }
        }
        tree
    }
}

fn check_name(name: &[u8], path: &[u8]) -> Result<(), ApplyError> {
    erofs::tree::check_name(name).map_err(|why| ApplyError::BadName {
        path: show(path),
        why,
    })
}

/// A directory entry's default timestamp when a layer never gave one.
pub const EPOCH: Timespec = Timespec { sec: 0, nsec: 0 };

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: EPOCH,
            rdev: 0,
            size: 0,
            xattrs: vec![],
            data: Some(EntryData::Inline(vec![])),
        }
    }

    fn paths(t: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(InodeId::ROOT, String::new())];
        while let Some((id, p)) = stack.pop() {
            for e in t.inode(id).entries() {
                let q = format!("{p}/{}", String::from_utf8_lossy(&e.name));
                out.push(q.clone());
                if t.inode(e.inode).is_dir() && !e.hardlink {
                    stack.push((e.inode, q));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let mut t = LayeredTree::new();
        t.apply(&[
            ent("./", EntryKind::Directory),
            ent("a/", EntryKind::Directory),
            ent("a/x", EntryKind::Regular),
            ent("a/y", EntryKind::Regular),
            ent("b/", EntryKind::Directory),
            ent("b/z", EntryKind::Regular),
            ent("c", EntryKind::Regular),
        ])
        .unwrap();
        t.apply(&[
            ent("a/new", EntryKind::Regular), // same layer as the opaque marker: kept
            ent("a/.wh..wh..opq", EntryKind::Regular),
            ent("b/.wh.z", EntryKind::Regular),
            ent(".wh.c", EntryKind::Regular),
            ent("/abs/./path/../file", EntryKind::Regular),
        ])
        .unwrap();
        let tree = t.into_tree();
        tree.validate().unwrap();
        assert_eq!(paths(&tree), ["/a", "/a/new", "/abs", "/abs/file", "/b"]);
    }

    #[test]
    fn hostile_paths_and_links() {
        let mut t = LayeredTree::new();
        assert_eq!(
            t.apply(&[ent("../etc/passwd", EntryKind::Regular)]),
            Err(ApplyError::Escapes {
                path: "../etc/passwd".into()
            })
        );
        assert!(matches!(
            t.apply(&[ent("l", EntryKind::Hardlink(b"missing".to_vec()))]),
            Err(ApplyError::LinkMissing { .. })
        ));
        assert!(matches!(
            t.apply(&[ent("l", EntryKind::Hardlink(b"../../x".to_vec()))]),
            Err(ApplyError::LinkEscapes { .. })
        ));
        t.apply(&[ent("d/", EntryKind::Directory)]).unwrap();
        assert!(matches!(
            t.apply(&[ent("l", EntryKind::Hardlink(b"d".to_vec()))]),
            Err(ApplyError::LinkToDirectory { .. })
        ));
        t.apply(&[ent("f", EntryKind::Regular)]).unwrap();
        assert!(matches!(
            t.apply(&[ent("f/under", EntryKind::Regular)]),
            Err(ApplyError::ParentNotDirectory { .. })
        ));
    }

    #[test]
    fn hardlinks_across_layers_count_links() {
        let mut t = LayeredTree::new();
        t.apply(&[ent("usr/bin/a", EntryKind::Regular)]).unwrap();
        t.apply(&[ent(
            "usr/bin/b",
            EntryKind::Hardlink(b"./usr/bin/a".to_vec()),
        )])
        .unwrap();
        let tree = t.into_tree();
        tree.validate().unwrap();
        let bin = tree
            .inodes
            .iter()
            .find(|i| i.entries().iter().any(|e| e.name == b"a"))
            .unwrap();
        let (a, b) = (&bin.entries()[0], &bin.entries()[1]);
        assert_eq!(a.inode, b.inode);
        assert!(!a.hardlink && b.hardlink);
        assert_eq!(tree.inode(a.inode).stat.nlink, 2);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let mut t = LayeredTree::new();
        t.apply(&[
            ent("x/", EntryKind::Directory),
            ent("x/inner", EntryKind::Regular),
        ])
        .unwrap();
        let mut d = ent("x/", EntryKind::Directory);
        d.mode = 0o700;
        t.apply(&[d]).unwrap(); // dir over dir: attributes only
        let tree = t.into_tree();
        assert_eq!(paths(&tree), ["/x", "/x/inner"]);
        let mut t = LayeredTree::new();
        t.apply(&[
            ent("x/", EntryKind::Directory),
            ent("x/inner", EntryKind::Regular),
        ])
        .unwrap();
        t.apply(&[ent("x", EntryKind::Symlink(b"elsewhere".to_vec()))])
            .unwrap();
        assert_eq!(paths(&t.into_tree()), ["/x"]);
    }
}
