//! `mkcomposefs`: composefs C's image builder, same flags and output.

use std::ffi::OsString;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::dumpfile;
use crate::fsverity::{Algorithm, FsVerityHasher};
use crate::repo::objects::{ObjectDir, ObjectSink};
use crate::tree::dir::{self, ScanOptions};

/// Create a composefs image from a directory or a composefs-dump(5) file.
///
/// Regular files larger than 64 bytes are referenced by their fs-verity
/// digest (`trusted.overlay.redirect=/XX/YYYY…`); smaller ones are stored in
/// the image. The image is byte-identical to composefs C 1.0.8 mkcomposefs for
/// the same input.
#[derive(Debug, Parser)]
#[command(
    name = "mkcomposefs",
    infer_long_args = true,
    after_help = "Examples:\n  mkcomposefs --digest-store=/srv/objects rootfs/ rootfs.cfs\n  \
                  composefs-info dump a.cfs | mkcomposefs --from-file - b.cfs\n  \
                  mkcomposefs --print-digest-only rootfs/"
)]
pub struct Args {
    /// Copy files larger than 64 bytes into this object directory (reflinked
    /// where possible), named by fs-verity digest; pass it as basedir= when mounting.
    #[arg(long, value_name = "PATH")]
    pub digest_store: Option<PathBuf>,
    /// Use the epoch (time 0) as every file's modification time.
    #[arg(long)]
    pub use_epoch: bool,
    /// Leave block and character devices out.
    #[arg(long)]
    pub skip_devices: bool,
    /// Leave all extended attributes out.
    #[arg(long, conflicts_with = "user_xattrs")]
    pub skip_xattrs: bool,
    /// Keep only extended attributes in the "user." namespace.
    #[arg(long)]
    pub user_xattrs: bool,
    /// Print the fs-verity digest of the image (its id) on stdout.
    #[arg(long)]
    pub print_digest: bool,
    /// Print the image's fs-verity digest without writing the image (no IMAGE argument).
    #[arg(long)]
    pub print_digest_only: bool,
    /// SOURCE is a composefs-dump(5) file ("-" for stdin), not a directory.
    #[arg(long)]
    pub from_file: bool,
    /// Lowest image format version to use (default 0 when neither version flag is given).
    #[arg(long, value_name = "N")]
    pub min_version: Option<u32>,
    /// Highest format version the image may be raised to when the tree needs it
    /// (version 1 is needed for whiteouts; default 1 when neither flag is given).
    #[arg(long, value_name = "N")]
    pub max_version: Option<u32>,
    /// Threads for hashing and copying files (default: number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Source directory, or dump file with --from-file.
    pub source: PathBuf,
    /// Image file to write ("-" for stdout).
    pub image: Option<PathBuf>,
}

/// Version selection exactly as composefs C: when either flag is given, the
/// other defaults to 0; max is raised to min.
pub fn versions(min: Option<u32>, max: Option<u32>) -> erofs::WriteOptions {
    let (min, max) = if min.is_none() && max.is_none() {
        (0, 1)
    } else {
        (min.unwrap_or(0), max.unwrap_or(0))
    };
    erofs::WriteOptions {
        min_version: min,
        max_version: max.max(min),
    }
}

pub fn run(argv: Vec<OsString>) -> Result<()> {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.source.as_os_str().is_empty() {
        bail!("empty source path");
    }
    let out = match (&args.image, args.print_digest_only) {
        (Some(_), true) => bail!("cannot give an IMAGE path with --print-digest-only"),
        (None, false) => {
            bail!("no IMAGE path given (use --print-digest-only to only print the digest)")
        }
        (Some(p), false) => Some(p.clone()),
        (None, true) => None,
    };
    let opts = versions(args.min_version, args.max_version);
    if opts.max_version > 1 {
        bail!(
            "unsupported format version {} (strata writes versions 0 and 1)",
            opts.max_version
        );
    }
    if out.as_deref() == Some(Path::new("-")) && io::stdout().is_terminal() {
        bail!("stdout is a terminal; refusing to write an image to it");
    }

    let tree = if args.from_file {
        read_dump(&args.source)?
    } else {
        let threads = args
            .threads
            .map(|t| t as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        build_from_dir(&args, threads)?
    };
    // Every error about the tree surfaces here, before any output exists;
    // the image is then streamed (never held in memory) to the output and,
    // for the digest flags, through an fs-verity hasher.
    let plan = erofs::ImagePlan::new(&tree, &opts).context("cannot write image")?;
    let mut hasher = (args.print_digest || args.print_digest_only)
        .then(|| FsVerityHasher::new(Algorithm::Sha256));
    match &out {
        Some(out) => write_output_with(out, |w| {
            let mut tee = Tee {
                out: w,
                hasher: hasher.as_mut(),
            };
            plan.write_to(&mut tee).map(drop)
        })
        .with_context(|| format!("cannot write {}", out.display()))?,
        None => {
            if let Some(h) = hasher.as_mut() {
                plan.write_to(h).context("cannot write image")?;
            }
        }
    }
    if let Some(h) = hasher {
        println!("{}", h.finish().to_hex());
    }
    Ok(())
}

/// Writes everything to `out` and feeds it to `hasher` too.
struct Tee<'a, W: Write + ?Sized> {
    out: &'a mut W,
    hasher: Option<&'a mut FsVerityHasher>,
}

impl<W: Write + ?Sized> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn read_dump(source: &Path) -> Result<erofs::Tree> {
    let mut input = Vec::new();
    if source == Path::new("-") {
        io::stdin()
            .read_to_end(&mut input)
            .context("cannot read stdin")?;
    } else {
        input = fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
    }
    let mode = dumpfile::ParseMode::from_env();
    let name = if source == Path::new("-") {
        "<stdin>".to_string()
    } else {
        source.display().to_string()
    };
    dumpfile::parse(&input, mode).with_context(|| name)
}

fn build_from_dir(args: &Args, threads: usize) -> Result<erofs::Tree> {
    let opts = ScanOptions {
        skip_xattrs: args.skip_xattrs,
        user_xattrs: args.user_xattrs,
        skip_devices: args.skip_devices,
        use_epoch: args.use_epoch,
        // As composefs C: each link a file of its own.
        keep_hardlinks: false,
    };
    let store = match &args.digest_store {
        Some(p) => Some(ObjectDir::open(p, Algorithm::Sha256)?),
        None => None,
    };
    let sink = ObjectSink {
        alg: Algorithm::Sha256,
        store: store.as_ref(),
        progress: None,
    };
    let tree = dir::scan_and_resolve(&args.source, &opts, &sink, threads)?;
    if let Some(store) = &store {
        // Objects are durable before the image that references them exists.
        store.sync()?;
    }
    Ok(tree)
}

/// Writes `data` to `path` so that a failure leaves nothing behind: a
/// temporary file in the same directory renamed over the target. Paths that
/// are not regular files (`/dev/stdout`, `/proc/self/fd/3`) and `-` are
/// written directly.
pub fn write_output(path: &Path, data: &[u8]) -> io::Result<()> {
    write_output_with(path, |w| w.write_all(data))
}

/// Output buffer for streamed images.
const OUT_BUF: usize = 256 * 1024;

/// Like [`write_output`], with the bytes produced by `fill` writing to a
/// buffered writer (flushed here). If `fill` fails, a temporary file is
/// removed and the target is left as it was.
pub fn write_output_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    if path == Path::new("-") {
        let mut out = io::BufWriter::with_capacity(OUT_BUF, io::stdout().lock());
        fill(&mut out)?;
        return out.flush();
    }
    if let Ok(md) = fs::metadata(path) {
        if !md.file_type().is_file() {
            let f = fs::OpenOptions::new().write(true).open(path)?;
            let mut out = io::BufWriter::with_capacity(OUT_BUF, f);
            fill(&mut out)?;
            return out.flush();
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp, file) = tempfile_in(dir, path)?;
    let res = (|| {
        let mut out = io::BufWriter::with_capacity(OUT_BUF, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn tempfile_in(dir: &Path, target: &Path) -> io::Result<(PathBuf, fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in 0..1000u32 {
        let p = dir.join(format!(".{base}.{}.{i}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a temporary file"))
}
