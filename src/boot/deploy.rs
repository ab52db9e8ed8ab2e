//! Deployments: an image installed as a boot entry, with its kernel on the
//! boot partition, its state on the physical root and a record in the
//! repository (`doc/deployments.md` has the whole picture).
//!
//! What a caller may rely on:
//!
//! * **The boot order is the boot entries' order.** The default deployment
//!   is the first strata entry in Boot Loader Specification order (`bls`),
//!   the rollback deployment the second. Records carry what an entry cannot
//!   (source, time, kargs), never the order.
//! * **A crash leaves the old default bootable.** `deploy` never rewrites
//!   or removes a file an existing entry references: the kernel goes to a
//!   new directory (written under a temporary name, flushed, renamed), the
//!   state directory likewise, the record is written before the entry, and
//!   the entry appears by one rename. Killed at any point, the previous
//!   entries and everything they name are untouched; leftovers (a kernel
//!   directory, state or record without an entry) are removed by gc.
//!   `rollback` writes the new top entry before it removes the old one.
//! * **Failure changes nothing.** A missing kernel, a corrupt image or a
//!   full boot partition fail before or while writing new files only, and
//!   what was written is removed again before the error is returned.
//! * **One at a time.** deploy, rollback and deployment gc hold the
//!   deployments lock (`REPO/deployments/lock`) and then the repository
//!   lock; gc can never run between a pull and the record that roots it.
//! * **gc never removes what boots.** It keeps the booted deployment
//!   (`composefs=` on the kernel command line), the default and the
//!   rollback (the first `keep`, at least 2, in boot order), and does
//!   nothing at all when the boot directory holds no strata entry (a wrong
//!   or unmounted `--boot` must not look like "no deployments").

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::bls::{self, Entry};
use super::image::ImageFiles;
use super::kargs;
use super::state::{self, EtcReport};
use super::DeployError;
use crate::fsverity::Digest;
use crate::repo::deployments::{self, DeployLock, DeploymentRecord};
use crate::repo::{LockMode, RepoError, Repository};

/// Where the modules (and the kernel) live in an image.
pub const MODULES_DIR: &str = "/usr/lib/modules";
/// Kernel images and initramfs files are at most this big.
pub const MAX_KERNEL_FILE: u64 = 1 << 30;
/// Directory of kernels on the boot partition.
pub const KERNELS_DIR: &str = "strata";

/// The places a deployment touches.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The physical root (state lives in SYSROOT/state).
    pub sysroot: PathBuf,
    /// The boot partition (`loader/entries`, kernels).
    pub boot: PathBuf,
    /// The repository (default SYSROOT/composefs).
    pub repo: PathBuf,
}

impl Paths {
    pub fn entries(&self) -> PathBuf {
        self.boot.join(bls::ENTRIES_DIR)
    }
    pub fn kernels(&self) -> PathBuf {
        self.boot.join(KERNELS_DIR)
    }
    pub fn state_of(&self, id: &str) -> PathBuf {
        state::deploy_dir(&self.sysroot).join(id)
    }
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub paths: Paths,
    /// An image name or id in the repository, or a pull source.
    pub source: String,
    /// `--karg` arguments.
    pub kargs: Vec<String>,
    /// The booted deployment's image (from the kernel command line).
    pub booted: Option<Digest>,
    pub pull: crate::oci::import::PullOptions,
}

/// What `deploy` did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub image: String,
    pub name: Option<String>,
    pub source: String,
    pub kernel_version: String,
    /// The entry's file name under BOOT/loader/entries.
    pub entry: String,
    pub options: String,
    /// The deployment whose /etc was carried, and what was carried.
    pub etc_from: Option<String>,
    pub etc: EtcReport,
    /// False when the image was deployed before (its state is kept).
    pub new_state: bool,
    pub pulled: bool,
}

/// One deployment as the boot entries and records show it.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub image: String,
    pub entry: String,
    pub priority: u64,
    pub title: Option<String>,
    pub options: String,
    pub booted: bool,
    #[serde(flatten)]
    pub record: Option<DeploymentRecord>,
}

/// `strata status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The booted image, if the kernel command line names one.
    pub booted: Option<String>,
    pub default: Option<Deployment>,
    pub rollback: Option<Deployment>,
    /// Every deployment in boot order.
    pub deployments: Vec<Deployment>,
}

fn io_err(step: &'static str, p: &Path) -> impl FnOnce(io::Error) -> DeployError {
    let path = p.to_path_buf();
    move |err| DeployError::Io { step, path, err }
}

fn repo_err(path: &Path) -> impl FnOnce(RepoError) -> DeployError + '_ {
    move |source| DeployError::Repo {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file under a temporary name in its directory, flushes it and
/// renames it into place; the directory is flushed by the caller.
fn write_new(path: &Path, data: &[u8]) -> Result<(), DeployError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("write", path)(e)
    })
}

fn sync_dir(dir: &Path) -> Result<(), DeployError> {
    let f = fs::File::open(dir).map_err(io_err("open", dir))?;
    f.sync_all().map_err(io_err("sync", dir))
}

/// Every strata entry in BOOT/loader/entries, in boot order, with the
/// image its `composefs=` names. Unreadable strata entries are an error
/// (naming the file): guessing around them could remove what boots.
fn read_entries(paths: &Paths) -> Result<Vec<(Entry, Digest)>, DeployError> {
    let dir = paths.entries();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(bls::ENTRY_PREFIX) || !name.ends_with(".conf") {
            continue;
        }
        let p = e.path();
        let bad = |why: String| DeployError::BadEntry {
            path: p.clone(),
            why,
        };
        let len = e.metadata().map_err(io_err("stat", &p))?.len();
        if len > bls::MAX_ENTRY_SIZE {
            return Err(bad(format!("{len} bytes, more than an entry can be")));
        }
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        let entry = Entry::parse(&name, &bytes).map_err(|e| bad(e.to_string()))?;
        let arg = super::parse_cmdline(&entry.cmdline()).map_err(|e| bad(e.to_string()))?;
        out.push((entry, arg.id));
    }
    out.sort_by(|a, b| bls::boot_order(&a.0, &b.0));
    Ok(out)
}

fn priority(e: &Entry) -> u64 {
    e.version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .or_else(|| bls::parse_entry_file_name(&e.file_name).map(|(p, _)| p))
        .unwrap_or(0)
}

/// The deployments in boot order (one per image: its first entry).
pub fn list_deployments(
    paths: &Paths,
    repo: Option<&Repository>,
    booted: Option<&Digest>,
) -> Result<Vec<Deployment>, DeployError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (e, id) in read_entries(paths)? {
        if !seen.insert(id) {
            continue;
        }
        let hex = id.to_hex();
        out.push(Deployment {
            record: repo.and_then(|r| r.deployment(&hex)),
            booted: booted == Some(&id),
            image: hex,
            priority: priority(&e),
            title: e.title.clone(),
            options: e.cmdline(),
            entry: e.file_name,
        });
    }
    Ok(out)
}

/// The status: booted, default, rollback and every deployment.
pub fn status(paths: &Paths, booted: Option<&Digest>) -> Result<Status, DeployError> {
    let repo = Repository::open(&paths.repo, LockMode::Shared).ok();
    let all = list_deployments(paths, repo.as_ref(), booted)?;
    Ok(Status {
        booted: booted.map(|d| d.to_hex()),
        default: all.first().cloned(),
        rollback: all.get(1).cloned(),
        deployments: all,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The kernel the image ships: `MODULES_DIR/<version>/{vmlinuz,initramfs.img}`.
struct Kernel {
    version: String,
    vmlinuz: Vec<u8>,
    initrd: Vec<u8>,
}

fn find_kernel(img: &ImageFiles<'_>) -> Result<Kernel, DeployError> {
    let image = img.id.to_hex();
    let none = |why: String| DeployError::NoKernel {
        image: image.clone(),
        why,
    };
    let dirs = img
        .read_dir(MODULES_DIR)
        .ok_or_else(|| none(format!("no {MODULES_DIR} directory")))?;
    let with_kernel: Vec<String> = dirs
        .into_iter()
        .filter(|(n, _)| {
            img.lookup(&format!("{MODULES_DIR}/{n}/vmlinuz"))
                .is_some_and(|i| img.is_file(i))
        })
        .map(|(n, _)| n)
        .collect();
    let version = match with_kernel.as_slice() {
        [] => return Err(none(format!("no {MODULES_DIR}/*/vmlinuz"))),
        [v] => v.clone(),
        more => {
            return Err(none(format!(
                "{} kernels ({}), expected one",
                more.len(),
                more.join(", ")
            )))
        }
    };
    let vpath = format!("{MODULES_DIR}/{version}/vmlinuz");
    let ipath = format!("{MODULES_DIR}/{version}/initramfs.img");
    let vmlinuz = img
        .read_path(&vpath, MAX_KERNEL_FILE)?
        .ok_or_else(|| none(format!("{vpath} is not a file")))?;
    let initrd = img
        .read_path(&ipath, MAX_KERNEL_FILE)?
        .ok_or_else(|| none(format!("no {ipath}")))?;
    Ok(Kernel {
        version,
        vmlinuz,
        initrd,
    })
}

fn image_kargs(img: &ImageFiles<'_>) -> Result<Vec<String>, DeployError> {
    let mut out = Vec::new();
    let Some(mut files) = img.read_dir(kargs::KARGS_DIR) else {
        return Ok(out);
    };
    files.sort();
    for (name, id) in files {
        if !name.ends_with(".toml") || !img.is_file(id) {
            continue;
        }
        let path = format!("{}/{name}", kargs::KARGS_DIR);
        let bad = |why: String| DeployError::Kargs {
            image: img.id.to_hex(),
            file: path.clone(),
            why,
        };
        let bytes = img.read(&path, id, kargs::MAX_KARGS_FILE)?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        out.extend(kargs::parse(&text, std::env::consts::ARCH).map_err(bad)?);
    }
    Ok(out)
}

/// `PRETTY_NAME` from the image's os-release, if any.
fn pretty_name(img: &ImageFiles<'_>) -> Option<String> {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        let Ok(Some(b)) = img.read_path(p, 64 * 1024) else {
            continue;
        };
        for line in String::from_utf8_lossy(&b).lines() {
            if let Some(v) = line.strip_prefix("PRETTY_NAME=") {
                let v = v.trim().trim_matches('"').trim_matches('\'');
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// `<kernel version>-<16 hex digits of sha256 over both files>`: the same
/// kernel and initramfs share one directory across deployments.
fn kernel_dir_name(k: &Kernel) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update((k.vmlinuz.len() as u64).to_le_bytes());
    h.update(&k.vmlinuz);
    h.update(&k.initrd);
    let d = h.finalize();
    format!("{}-{}", k.version, &hex::encode(d)[..16])
}

/// Writes the kernel directory unless it exists; returns whether it did.
fn install_kernel(paths: &Paths, name: &str, k: &Kernel) -> Result<bool, DeployError> {
    let base = paths.kernels();
    let dir = base.join(name);
    if dir.join("vmlinuz").is_file() && dir.join("initramfs.img").is_file() {
        return Ok(false);
    }
    fs::create_dir_all(&base).map_err(io_err("create", &base))?;
    let tmp = base.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let r = (|| {
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        for (f, data) in [("vmlinuz", &k.vmlinuz), ("initramfs.img", &k.initrd)] {
            let p = tmp.join(f);
            let mut file = fs::File::create(&p).map_err(io_err("write", &p))?;
            file.write_all(data).map_err(io_err("write", &p))?;
            file.sync_all().map_err(io_err("write", &p))?;
        }
        sync_dir(&tmp)?;
        // a half-made directory of this name (never referenced) goes first
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(io_err("rename into place", &dir))?;
        sync_dir(&base)
    })();
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r.map(|()| true)
}

/// Resolves the image: a name or id in the repository, else a pull source.
fn resolve_or_pull(
    repo: &Repository,
    opts: &DeployOptions,
) -> Result<(Digest, Option<String>, bool), DeployError> {
    if let Ok(id) = repo.resolve(&opts.source) {
        let name = crate::repo::check_name(&opts.source)
            .is_ok()
            .then(|| opts.source.clone())
            .filter(|n| Digest::from_hex(repo.algorithm(), n).is_err());
        return Ok((id, name, false));
    }
    if !opts.source.contains(':') {
        return Err(DeployError::NoSuchImage(opts.source.clone()));
    }
    let r = crate::oci::import::pull(repo, &opts.source, None, &opts.pull).map_err(|e| {
        DeployError::Pull {
            source_ref: opts.source.clone(),
            err: Box::new(e),
        }
    })?;
    let id = Digest::from_hex(repo.algorithm(), &r.image_id).map_err(|e| {
        DeployError::NoSuchImage(format!("{} (pull gave {}: {e})", opts.source, r.image_id))
    })?;
    Ok((id, None, true))
}

/// Takes the deployments lock of `repo_root`, creating the repository on
/// first use.
fn lock_and_open(repo_root: &Path) -> Result<(DeployLock, Repository), DeployError> {
    drop(Repository::open_or_create(repo_root, LockMode::Shared).map_err(repo_err(repo_root))?);
    let lock = deployments::lock(repo_root).map_err(repo_err(repo_root))?;
    let repo = Repository::open(repo_root, LockMode::Shared).map_err(repo_err(repo_root))?;
    Ok((lock, repo))
}

/// Things a failed deploy made, removed again on the way out.
#[derive(Default)]
struct Undo {
    kernel_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    record: Option<String>,
}

/// Deploys an image: see the [module documentation](self).
pub fn deploy(opts: &DeployOptions) -> Result<DeployReport, DeployError> {
    let paths = &opts.paths;
    let (_lock, repo) = lock_and_open(&paths.repo)?;
    let (id, name, pulled) = resolve_or_pull(&repo, opts)?;
    let hex = id.to_hex();

    // Everything read and checked before anything is written.
    let img = ImageFiles::open(&repo, &id)?;
    let kernel = find_kernel(&img)?;
    let image_kargs = image_kargs(&img)?;
    let entries = read_entries(paths)?;
    let current: Vec<Digest> = {
        let mut seen = std::collections::HashSet::new();
        entries
            .iter()
            .filter(|(_, d)| seen.insert(*d))
            .map(|(_, d)| *d)
            .collect()
    };
    let previous = current.first().and_then(|d| repo.deployment(&d.to_hex()));
    let local_kargs = kargs::merge(
        previous
            .as_ref()
            .map(|r| r.local_kargs.as_slice())
            .unwrap_or(&[]),
        &opts.kargs,
    );
    let q = if repo.meta().verity_enforced { "" } else { "?" };
    let mut options = vec![format!("composefs={q}{hex}")];
    options.extend(kargs::merge(&image_kargs, &local_kargs));
    // /etc comes from the booted deployment when it is one, else the default.
    let etc_from = opts
        .booted
        .filter(|b| current.contains(b) && *b != id)
        .or_else(|| current.first().copied().filter(|d| *d != id));
    let old_img = match &etc_from {
        Some(d) => Some(ImageFiles::open(&repo, d)?),
        None => None,
    };
    let kdir = kernel_dir_name(&kernel);
    let prio = entries.iter().map(|(e, _)| priority(e)).max().unwrap_or(0) + 1;
    let entry = Entry {
        file_name: bls::entry_file_name(prio, &hex),
        title: Some(format!(
            "{} ({})",
            pretty_name(&img).unwrap_or_else(|| "strata".into()),
            name.clone().unwrap_or_else(|| hex[..12].to_string())
        )),
        version: Some(prio.to_string()),
        sort_key: Some(bls::SORT_KEY.into()),
        linux: Some(format!("/{KERNELS_DIR}/{kdir}/vmlinuz")),
        initrd: vec![format!("/{KERNELS_DIR}/{kdir}/initramfs.img")],
        options: vec![options.join(" ")],
        ..Default::default()
    };

    let mut undo = Undo::default();
    let mut etc = EtcReport::default();
    let r = (|| {
        if install_kernel(paths, &kdir, &kernel)? {
            undo.kernel_dir = Some(paths.kernels().join(&kdir));
        }
        let sdir = paths.state_of(&hex);
        let from = match (&etc_from, &old_img) {
            (Some(d), Some(i)) => Some((paths.state_of(&d.to_hex()).join("etc-upper"), i)),
            _ => None,
        };
        let created = state::create_state(
            &paths.sysroot,
            &sdir,
            from.as_ref().map(|(p, i)| (p.as_path(), *i)),
            &img,
            &mut etc,
        )?;
        if created {
            undo.state_dir = Some(sdir);
        }
        if repo.deployment(&hex).is_none() {
            undo.record = Some(hex.clone());
        }
        repo.put_deployment(&DeploymentRecord {
            image: hex.clone(),
            name: name.clone(),
            source: opts.source.clone(),
            deployed: now(),
            kernel_version: kernel.version.clone(),
            linux: entry.linux.clone().unwrap_or_default(),
            initrd: entry.initrd[0].clone(),
            image_kargs: image_kargs.clone(),
            local_kargs: local_kargs.clone(),
            etc_from: etc_from.map(|d| d.to_hex()),
        })
        .map_err(repo_err(&paths.repo))?;
        let edir = paths.entries();
        fs::create_dir_all(&edir).map_err(io_err("create", &edir))?;
        write_new(&edir.join(&entry.file_name), entry.to_text().as_bytes())?;
        sync_dir(&edir)
    })();
    if let Err(e) = r {
        if let Some(k) = undo.kernel_dir {
            let _ = fs::remove_dir_all(k);
        }
        if let Some(s) = undo.state_dir {
            let _ = fs::remove_dir_all(s);
        }
        if let Some(h) = undo.record {
            let _ = repo.remove_deployment(&h);
        }
        return Err(e);
    }
    // A redeployed image's older entries go (the new one is on top).
    for (e, d) in &entries {
        if *d == id {
            let p = paths.entries().join(&e.file_name);
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
    }
    sync_dir(&paths.entries())?;
    Ok(DeployReport {
        image: hex,
        name,
        source: opts.source.clone(),
        kernel_version: kernel.version,
        entry: entry.file_name,
        options: options.join(" "),
        etc_from: etc_from.map(|d| d.to_hex()),
        etc,
        new_state: undo.state_dir.is_some(),
        pulled,
    })
}

/// Makes the rollback deployment (the second in boot order) the default;
/// returns the new order.
pub fn rollback(paths: &Paths, booted: Option<&Digest>) -> Result<Vec<Deployment>, DeployError> {
    let (_lock, repo) = lock_and_open(&paths.repo)?;
    let entries = read_entries(paths)?;
    let mut ids: Vec<Digest> = Vec::new();
    for (_, d) in &entries {
        if !ids.contains(d) {
            ids.push(*d);
        }
    }
    let Some(target) = ids.get(1).copied() else {
        return Err(DeployError::NoRollback(format!(
            "{} holds {} strata deployment(s)",
            paths.entries().display(),
            ids.len()
        )));
    };
    let prio = entries.iter().map(|(e, _)| priority(e)).max().unwrap_or(0) + 1;
    let (old, _) = entries
        .iter()
        .find(|(_, d)| *d == target)
        .expect("target has an entry");
    let mut e = old.clone();
    e.version = Some(prio.to_string());
    e.file_name = bls::entry_file_name(prio, &target.to_hex());
    let edir = paths.entries();
    write_new(&edir.join(&e.file_name), e.to_text().as_bytes())?;
    sync_dir(&edir)?;
    for (old, d) in &entries {
        if *d == target {
            let p = edir.join(&old.file_name);
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
    }
    sync_dir(&edir)?;
    list_deployments(paths, Some(&repo), booted)
}

/// What deployment gc removed (or would remove).
#[derive(Debug, Default, Clone, Serialize)]
pub struct DeployGcReport {
    pub dry_run: bool,
    /// Deployments kept, in boot order.
    pub kept: Vec<String>,
    /// Deployments removed (entries, state, records).
    pub removed: Vec<String>,
    /// Entry files removed (duplicates included).
    pub entries_removed: Vec<String>,
    /// Kernel directories removed from the boot partition.
    pub kernels_removed: Vec<String>,
    pub bytes_freed_boot: u64,
    /// Why nothing was done, when nothing was.
    pub skipped: Option<String>,
}

fn du(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

/// Paths under BOOT/strata/ that any entry in BOOT/loader/entries names
/// (strata's or not), but the files in `except`: their first component.
fn referenced_kernel_dirs(
    paths: &Paths,
    except: &[String],
) -> Result<std::collections::HashSet<String>, DeployError> {
    let mut out = std::collections::HashSet::new();
    let dir = paths.entries();
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd {
        let e = e.map_err(io_err("read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") || except.contains(&name) {
            continue;
        }
        let text = fs::read(e.path()).map_err(io_err("read", &e.path()))?;
        for line in String::from_utf8_lossy(&text).lines() {
            for word in line.split_whitespace() {
                if let Some(rest) = word.strip_prefix(&format!("/{KERNELS_DIR}/")) {
                    if let Some((d, _)) = rest.split_once('/') {
                        out.insert(d.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Removes deployments nothing keeps; the caller holds the deployments
/// lock (see [`lock_for_gc`]) and runs the repository gc afterwards.
pub fn gc_deployments(
    paths: &Paths,
    repo: &Repository,
    booted: Option<&Digest>,
    keep: usize,
    dry_run: bool,
) -> Result<DeployGcReport, DeployError> {
    let mut report = DeployGcReport {
        dry_run,
        ..Default::default()
    };
    let entries = read_entries(paths)?;
    if entries.is_empty() {
        if !repo.deployed_images().is_empty() {
            report.skipped = Some(format!(
                "no strata entries in {}: deployments left alone (is --boot right?)",
                paths.entries().display()
            ));
        }
        return Ok(report);
    }
    let mut order: Vec<Digest> = Vec::new();
    for (_, d) in &entries {
        if !order.contains(d) {
            order.push(*d);
        }
    }
    let keep_n = keep.max(2);
    let kept: Vec<Digest> = order
        .iter()
        .enumerate()
        .filter(|(i, d)| *i < keep_n || Some(*d) == booted)
        .map(|(_, d)| *d)
        .collect();
    report.kept = kept.iter().map(|d| d.to_hex()).collect();
    let edir = paths.entries();
    // Entries: of removed deployments, and lower duplicates of kept ones.
    let mut first_seen = std::collections::HashSet::new();
    for (e, d) in &entries {
        let dup = !first_seen.insert(*d);
        if dup || !kept.contains(d) {
            if !dry_run {
                let p = edir.join(&e.file_name);
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
            report.entries_removed.push(e.file_name.clone());
        }
    }
    if !dry_run {
        sync_dir(&edir)?;
    }
    // Deployments gone: in order, plus records no entry names (a deploy
    // killed before its entry appeared).
    let mut gone: Vec<String> = order
        .iter()
        .filter(|d| !kept.contains(d))
        .map(|d| d.to_hex())
        .collect();
    for hex in repo.deployed_images() {
        let named = order.iter().any(|d| d.to_hex() == hex);
        if !named && booted.map(|b| b.to_hex()) != Some(hex.clone()) {
            gone.push(hex);
        }
    }
    for hex in &gone {
        if !dry_run {
            let s = paths.state_of(hex);
            match fs::remove_dir_all(&s) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &s)(e))
                }
                _ => {}
            }
            repo.remove_deployment(hex).map_err(repo_err(&paths.repo))?;
        }
    }
    report.removed = gone;
    // Kernels no remaining entry names, and leftovers of killed deploys.
    let referenced = referenced_kernel_dirs(paths, &report.entries_removed)?;
    let kdir = paths.kernels();
    if let Ok(rd) = fs::read_dir(&kdir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if referenced.contains(&name) {
                continue;
            }
            report.bytes_freed_boot += du(&e.path());
            if !dry_run {
                fs::remove_dir_all(e.path()).map_err(io_err("remove", &e.path()))?;
            }
            report.kernels_removed.push(name);
        }
        if !dry_run {
            sync_dir(&kdir)?;
        }
    }
    // Half-made state directories.
    if !dry_run {
        if let Ok(rd) = fs::read_dir(state::deploy_dir(&paths.sysroot)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    report.kernels_removed.sort();
    Ok(report)
}

/// The deployments lock of the repository at `repo_root`, if it has
/// deployments (gc takes it before the repository's exclusive lock).
pub fn lock_for_gc(repo_root: &Path) -> Result<Option<DeployLock>, DeployError> {
    if !deployments::dir_of(repo_root).is_dir() {
        return Ok(None);
    }
    deployments::lock(repo_root)
        .map(Some)
        .map_err(repo_err(repo_root))
}
