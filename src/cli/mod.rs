//! Command-line entry points. One binary: `strata`, which also answers as
//! `mkcomposefs` and `composefs-info` when invoked under those names.

pub mod info;
pub mod mkcomposefs;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata: build, inspect and mount composefs images.
///
/// A composefs image is an EROFS filesystem holding a tree's metadata; the
/// contents of its files live in an object directory, each file named by its
/// fs-verity digest, so identical files are stored (and cached) once.
#[derive(Debug, Parser)]
#[command(name = "strata", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image like composefs C's mkcomposefs (same flags, same bytes).
    #[command(disable_help_flag = true)]
    Mkcomposefs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Inspect images like composefs C's composefs-info (ls, objects, missing-objects, dump, measure-file).
    #[command(name = "composefs-info", disable_help_flag = true)]
    ComposefsInfo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Prints an error as one line: `prog: outer: inner: cause`.
fn report(prog: &str, err: &anyhow::Error) {
    let mut line = String::new();
    for (i, cause) in err.chain().enumerate() {
        let s = cause.to_string();
        // Skip causes already spelled out by their parent's message.
        if i > 0 && line.ends_with(&s) {
            continue;
        }
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(&s);
    }
    eprintln!("{prog}: {line}");
}

fn finish(prog: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(prog, &e);
            ExitCode::FAILURE
        }
    }
}

/// Entry point: dispatches on the name the binary was invoked as.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "mkcomposefs" => return finish("mkcomposefs", mkcomposefs::run(argv)),
        "composefs-info" => return finish("composefs-info", info::run(argv)),
        _ => {}
    }
    let cli = Cli::parse_from(&argv);
    match cli.command {
        Command::Mkcomposefs { args } => finish(
            "strata mkcomposefs",
            mkcomposefs::run(with_name("mkcomposefs", args)),
        ),
        Command::ComposefsInfo { args } => finish(
            "strata composefs-info",
            info::run(with_name("composefs-info", args)),
        ),
    }
}

fn with_name(name: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(name)).chain(args).collect()
}
