//! The initramfs side: mount the deployment's image as the new root.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, mount_bind, mount_move, move_mount,
    unmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

use super::{io_err, BootError, ComposefsArg, VerityPolicy};
use crate::mount::Verity;
use crate::repo::{LockMode, RepoError, Repository};

/// Where things are. Only `sysroot` and `arg` have no default.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The physical root, already mounted (by the initramfs): `/sysroot`.
    pub sysroot: PathBuf,
    /// The repository [default: SYSROOT/composefs].
    pub repo: Option<PathBuf>,
    /// Per-deployment state directories [default: SYSROOT/state/deploy].
    pub state: Option<PathBuf>,
    /// Where the new root is assembled before it replaces SYSROOT
    /// [default: SYSROOT with `.tmp` appended].
    pub staging: Option<PathBuf>,
    /// The image to boot and the fs-verity policy.
    pub arg: ComposefsArg,
    /// Make every mount private first (`mount --make-rprivate /`), as an
    /// initramfs needs when `/` is shared (systemd).
    pub make_private: bool,
}

/// What was set up.
#[derive(Debug, Clone)]
pub struct SetupReport {
    /// The new root (SYSROOT), with the physical root at `root/sysroot`.
    pub root: PathBuf,
    /// The deployment's state directory.
    pub state: PathBuf,
    /// Whether fs-verity was required on the image and every object
    /// (overlayfs `verity=require`); else it is used where present.
    pub verity: bool,
}

/// Mounts undone, newest first, unless the setup completes.
struct Undo {
    mounts: Vec<PathBuf>,
    /// The physical root after it was moved: move it back first.
    moved_sysroot: Option<(PathBuf, PathBuf)>,
    /// The staging directory, removed (if empty) at the end.
    staging: Option<PathBuf>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some((now, was)) = self.moved_sysroot.take() {
            let _ = mount_move(&now, &was);
        }
        for m in self.mounts.iter().rev() {
            let _ = unmount(m, UnmountFlags::DETACH);
        }
        if let Some(staging) = &self.staging {
            let _ = fs::remove_dir(staging);
        }
    }
}

fn is_mount_point(p: &Path) -> Result<bool, BootError> {
    let st = statx(CWD, p, AtFlags::empty(), StatxFlags::BASIC_STATS)
        .map_err(|e| io_err("stat", p)(e.into()))?;
    if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    // Kernels before 5.8: a different device than the parent's.
    use std::os::unix::fs::MetadataExt;
    let dev = |q: &Path| fs::metadata(q).map(|m| m.dev()).map_err(io_err("stat", q));
    Ok(p == Path::new("/") || dev(p)? != dev(&p.join(".."))?)
}

fn require_dir(root: &Path, dir: &'static str, id: &str) -> Result<PathBuf, BootError> {
    let p = root.join(dir);
    match fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        _ => Err(BootError::MissingDir { id: id.into(), dir }),
    }
}

/// `/etc`: the image's /etc below, the deployment's writable upper above.
fn mount_etc(lower: &Path, upper: &Path, work: &Path) -> Result<(), BootError> {
    let step = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: rustix::io::Errno| io_err(what, p)(e.into())
    };
    let fsfd =
        fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(step("overlayfs for", lower))?;
    fsconfig_set_string(&fsfd, "source", "strata-etc")
        .map_err(step("overlay source for", lower))?;
    fsconfig_set_string(&fsfd, "lowerdir+", lower).map_err(step("overlay lowerdir", lower))?;
    fsconfig_set_string(&fsfd, "upperdir", upper).map_err(step("overlay upperdir", upper))?;
    fsconfig_set_string(&fsfd, "workdir", work).map_err(step("overlay workdir", work))?;
    fsconfig_create(&fsfd).map_err(step("create /etc overlay over", lower))?;
    let mnt = fsmount(
        &fsfd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(step("mount /etc overlay over", lower))?;
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        lower,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(step("attach /etc overlay at", lower))
}

/// Sets up the new root; see the [module documentation](super).
pub fn setup_root(opts: &SetupOptions) -> Result<SetupReport, BootError> {
    let sysroot = &opts.sysroot;
    let id = opts.arg.id.to_hex();
    let repo_path = opts
        .repo
        .clone()
        .unwrap_or_else(|| sysroot.join("composefs"));
    let state_base = opts
        .state
        .clone()
        .unwrap_or_else(|| sysroot.join("state/deploy"));
    let staging = opts.staging.clone().unwrap_or_else(|| {
        let mut s = sysroot.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    });
    if !is_mount_point(sysroot)? {
        return Err(BootError::SysrootNotMounted(sysroot.clone()));
    }
    // A systemd initramfs makes `/` shared, and mounts under a shared
    // parent cannot be moved (EINVAL). Like ostree-prepare-root, make the
    // initramfs's mounts private first; after switch_root the new PID 1
    // sets the propagation it wants.
    if opts.make_private {
        rustix::mount::mount_change(
            "/",
            rustix::mount::MountPropagationFlags::PRIVATE
                | rustix::mount::MountPropagationFlags::REC,
        )
        .map_err(|e| io_err("make mounts private under", "/")(e.into()))?;
    }

    // The image: in the repository, its digest its id, verity as asked.
    let repo = Repository::open(&repo_path, LockMode::Shared).map_err(|e| BootError::Repo {
        path: repo_path.clone(),
        source: e,
    })?;
    let image_id = repo.resolve(&id).map_err(|e| match e {
        RepoError::NoSuchImage(_) => BootError::NoSuchImage {
            id: id.clone(),
            repo: repo_path.clone(),
        },
        e => BootError::Repo {
            path: repo_path.clone(),
            source: e,
        },
    })?;
    let require = opts.arg.verity == VerityPolicy::Required;
    if require && !repo.meta().verity_enforced {
        return Err(BootError::RepoNotVerity {
            id,
            repo: repo_path,
        });
    }
    let image = repo.image_path(&image_id);
    let objects = repo_path.join("objects");
    drop(repo);

    // The deployment's state.
    let state = state_base.join(&id);
    let (etc_upper, etc_work) = (state.join("etc-upper"), state.join("etc-work"));
    // `var` is a directory of this deployment's own (older setups), or a
    // symlink `../../var` that `deploy` makes: /var shared by deployments.
    let var = match fs::read_link(state.join("var")) {
        Ok(target) if target.is_relative() => state.join(target),
        Ok(target) => {
            return Err(io_err("use /var of", state.join("var"))(
                std::io::Error::other(format!(
                    "symlink to {} leaves the state directory",
                    target.display()
                )),
            ))
        }
        Err(_) => state.join("var"),
    };
    for d in [&etc_upper, &etc_work, &var] {
        fs::create_dir_all(d).map_err(io_err("create state directory", d))?;
    }

    // The image, read-only, at the staging point.
    fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
    let mut undo = Undo {
        mounts: Vec::new(),
        moved_sysroot: None,
        staging: Some(staging.clone()),
        armed: true,
    };
    // The image's digest is checked against its id whatever the policy
    // (measured by the kernel, or computed where the file has no fs-verity).
    let mopts = crate::mount::MountOptions {
        basedirs: vec![objects],
        readonly: true,
        verity: if require {
            Verity::Require
        } else {
            Verity::Try
        },
        expected_digest: Some(opts.arg.id),
        ..Default::default()
    };
    crate::mount::mount_composefs(&image, &staging, &mopts).map_err(|e| BootError::Mount {
        id: id.clone(),
        source: Box::new(e),
    })?;
    undo.mounts.push(staging.clone());
    let new_etc = require_dir(&staging, "etc", &id)?;
    let new_var = require_dir(&staging, "var", &id)?;
    let new_sysroot = require_dir(&staging, "sysroot", &id)?;

    mount_etc(&new_etc, &etc_upper, &etc_work)?;
    undo.mounts.push(new_etc);
    mount_bind(&var, &new_var).map_err(|e| io_err("bind-mount /var from", &var)(e.into()))?;
    undo.mounts.push(new_var);

    // The physical root into the new root, the new root in its place.
    mount_move(sysroot, &new_sysroot)
        .map_err(|e| io_err("move the physical root to", &new_sysroot)(e.into()))?;
    undo.moved_sysroot = Some((new_sysroot, sysroot.clone()));
    mount_move(&staging, sysroot).map_err(|e| io_err("move the new root to", sysroot)(e.into()))?;
    undo.armed = false;
    let _ = fs::remove_dir(&staging);
    Ok(SetupReport {
        root: sysroot.clone(),
        state,
        verity: require,
    })
}
