//! `composefs-info`: inspect composefs images, same commands and output as composefs C.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use erofs::tree::{Content, FileData, InodeId, Tree};

use crate::dumpfile;
use crate::fsverity::{self, Algorithm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Command {
    /// List files and directories with their backing file or symlink target.
    Ls,
    /// List every backing object the images reference, sorted.
    Objects,
    /// List the referenced objects missing from --basedir, sorted.
    MissingObjects,
    /// Print the images in composefs-dump(5) format (input for mkcomposefs --from-file).
    Dump,
    /// Print the fs-verity digest of the given files (any files, not images).
    MeasureFile,
}

/// Print information about composefs images.
#[derive(Debug, Parser)]
#[command(
    name = "composefs-info",
    infer_long_args = true,
    after_help = "Examples:\n  composefs-info dump image.cfs\n  \
                  composefs-info --basedir=/srv/objects missing-objects image.cfs\n  \
                  composefs-info measure-file image.cfs"
)]
pub struct Args {
    /// Object directory the missing-objects command checks against.
    #[arg(long, value_name = "PATH")]
    pub basedir: Option<PathBuf>,
    /// Only show top-level entries with this name (repeatable; a single name, no '/').
    #[arg(long, value_name = "NAME")]
    pub filter: Vec<String>,
    #[arg(value_enum)]
    pub command: Command,
    /// Images (or, for measure-file, any files).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(f) = args.filter.iter().find(|f| f.contains('/')) {
        bail!("filter must be a single name: {f}");
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.command == Command::MeasureFile {
        for p in &args.paths {
            let f = fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let d = measure_or_compute(&f)
                .with_context(|| format!("cannot measure {}", p.display()))?;
            writeln!(out, "{}", d.to_hex())?;
        }
        return Ok(out.flush()?);
    }
    let basedir = match (&args.basedir, args.command) {
        (Some(b), _) => Some(
            fs::File::open(b).with_context(|| format!("cannot open basedir {}", b.display()))?,
        ),
        (None, Command::MissingObjects) => bail!("missing-objects needs --basedir"),
        (None, _) => None,
    };
    let mut objects = BTreeSet::new();
    for p in &args.paths {
        let bytes = fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut image =
            erofs::read_image(&bytes).with_context(|| format!("cannot load {}", p.display()))?;
        if !args.filter.is_empty() {
            filter_root(&mut image.tree, &args.filter);
        }
        match args.command {
            Command::Ls => ls(&image.tree, InodeId::ROOT, &mut Vec::new(), &mut out)?,
            Command::Dump => dumpfile::print_image(&image, &mut out)?,
            Command::Objects | Command::MissingObjects => {
                for inode in &image.tree.inodes {
                    if let Content::Regular(erofs::File {
                        data:
                            FileData::External {
                                redirect: Some(r), ..
                            },
                        ..
                    }) = &inode.content
                    {
                        objects.insert(r.clone());
                    }
                }
            }
            Command::MeasureFile => unreachable!(),
        }
    }
    if let Some(base) = &basedir {
        objects.retain(|o| {
            let rel = o.strip_prefix(b"/").unwrap_or(o);
            let rel = std::ffi::OsStr::from_bytes(rel);
            rustix::fs::statat(base, rel, rustix::fs::AtFlags::empty()).is_err()
        });
    }
    for o in &objects {
        out.write_all(o)?;
        out.write_all(b"\n")?;
    }
    Ok(out.flush()?)
}

use std::os::unix::ffi::OsStrExt;

/// fs-verity digest of a file: the kernel's measurement when verity is on,
/// computed here otherwise (as composefs C's measure-file does).
pub fn measure_or_compute(f: &fs::File) -> io::Result<fsverity::Digest> {
    match fsverity::measure(f) {
        Ok(Some(d)) => Ok(d),
        Ok(None) | Err(fsverity::VerityError::NotSupported(_)) => {
            fsverity::digest_file(Algorithm::Sha256, f)
        }
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

fn filter_root(tree: &mut Tree, names: &[String]) {
    if let Content::Directory(entries) = &mut tree.inodes[0].content {
        entries.retain(|e| names.iter().any(|n| n.as_bytes() == e.name.as_slice()));
    }
}

/// `ls` output: path, then `/` for directories, `-> target` for symlinks,
/// `@ object` for files with a backing object.
fn ls(tree: &Tree, dir: InodeId, path: &mut Vec<u8>, out: &mut impl Write) -> io::Result<()> {
    for e in tree.inode(dir).entries() {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(&e.name);
        let inode = tree.inode(e.inode);
        out.write_all(&dumpfile::escape_ls(path, true))?;
        match &inode.content {
            Content::Directory(_) => out.write_all(b"/\t")?,
            Content::Symlink(t) => {
                out.write_all(b"\t-> ")?;
                out.write_all(&dumpfile::escape_ls(t, false))?;
            }
            Content::Regular(erofs::File {
                data:
                    FileData::External {
                        redirect: Some(r), ..
                    },
                ..
            }) => {
                out.write_all(b"\t@ ")?;
                out.write_all(&dumpfile::escape_ls(r, false))?;
            }
            _ => {}
        }
        out.write_all(b"\n")?;
        if inode.is_dir() && !e.hardlink {
            ls(tree, e.inode, path, out)?;
        }
        path.truncate(len);
    }
    Ok(())
}
