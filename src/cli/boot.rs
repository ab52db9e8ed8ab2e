//! `strata setup-root`: the initramfs step that mounts a repository image as
//! the root filesystem (see [`crate::boot`]).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::boot::{self, BootError, SetupOptions};

/// Arguments of `strata setup-root`.
#[derive(Debug, Args)]
pub struct SetupRootArgs {
    /// Kernel command line to read `composefs=<image id>` (or `composefs=?<image id>`) from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The image instead of the command line: `ID` (fs-verity required) or `?ID` (optional).
    #[arg(long, value_name = "[?]ID", conflicts_with = "cmdline")]
    image: Option<String>,
    /// Where the initramfs mounted the physical root; becomes the new root.
    #[arg(long, value_name = "DIR", default_value = "/sysroot")]
    sysroot: PathBuf,
    /// Per-deployment state directories [default: SYSROOT/state/deploy].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Where the new root is assembled first [default: SYSROOT.tmp].
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    /// Leave mount propagation alone (by default every mount is made private first, which
    /// moving mounts needs when `/` is shared, as systemd makes it).
    #[arg(long)]
    keep_propagation: bool,
}

fn read_cmdline(path: &Path) -> Result<String, BootError> {
    std::fs::read_to_string(path).map_err(|source| BootError::ReadCmdline {
        path: path.into(),
        source,
    })
}

/// Runs setup-root. `repo` is `--repo` if given (default SYSROOT/composefs).
pub fn setup_root(quiet: bool, repo: Option<PathBuf>, a: &SetupRootArgs) -> Result<()> {
    let arg = match &a.image {
        Some(v) => boot::cmdline::parse_value(v)?,
        None => boot::parse_cmdline(&read_cmdline(&a.cmdline)?)?,
    };
    let r = boot::setup_root(&SetupOptions {
        sysroot: a.sysroot.clone(),
        repo,
        state: a.state.clone(),
        staging: a.staging.clone(),
        arg: arg.clone(),
        make_private: !a.keep_propagation,
    })?;
    if !quiet {
        println!(
            "composefs root {} at {} (fs-verity {}), physical root at {}, state {}",
            arg.id.to_hex(),
            r.root.display(),
            if r.verity { "required" } else { "optional" },
            r.root.join("sysroot").display(),
            r.state.display()
        );
    }
    Ok(())
}
