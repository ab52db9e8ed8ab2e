//! Command-line entry points. One binary: `strata`, which also answers as
//! `mkcomposefs` and `composefs-info` when invoked under those names.

pub mod boot;
pub mod info;
pub mod mkcomposefs;
pub mod mount;
pub mod oci;
pub mod registry;
pub mod repo;

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
#[command(
    name = "strata",
    version,
    after_help = "Examples:\n  strata create-image ./rootfs myroot     # image + objects in the repository\n  \
                  strata images\n  strata dump myroot | less\n  strata rm myroot && strata gc\n  \
                  strata mkcomposefs --digest-store=objs ./rootfs root.cfs   # composefs C compatible"
)]
struct Cli {
    /// Repository directory [default: $STRATA_REPO, /var/lib/strata as root, else ~/.local/share/strata]
    #[arg(long, global = true, value_name = "DIR")]
    repo: Option<std::path::PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Print only results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more about what is done.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a repository (done automatically on first use with the defaults).
    Init {
        /// fs-verity hash for object names.
        #[arg(long, default_value = "sha256", value_parser = ["sha256", "sha512"])]
        hash: String,
        /// Fail unless the filesystem supports fs-verity (then every object is verity-protected).
        #[arg(long)]
        require_verity: bool,
    },
    /// Turn a directory tree into an image in the repository; prints the image id.
    CreateImage {
        /// Directory to import.
        dir: std::path::PathBuf,
        /// Name to tag the image with (a GC root).
        name: Option<String>,
        /// Threads for hashing and copying [default: number of CPUs].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
        /// Keep hard links inside DIR as hard links. By default each link is
        /// stored as a file of its own (nlink 1), as composefs C's mkcomposefs
        /// does, so the image is byte-identical to `mkcomposefs DIR`'s.
        #[arg(long)]
        hardlinks: bool,
    },
    /// Import an OCI image: every file over 64 bytes becomes an object, the tree an image.
    ///
    /// SOURCE is docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST] (a registry; no host means
    /// docker.io, a one-word REPO means library/REPO, no tag means latest),
    /// oci:PATH[:TAG|@DIGEST] (an OCI image layout) or oci-archive:FILE[:TAG] (a tar of
    /// one). Layers already in the repository are not fetched again; every blob is checked
    /// against its digest and size, every layer against its diff_id; nothing is tagged
    /// unless everything verifies. An image already present costs one manifest request
    /// (none when named by digest).
    ///
    /// zstd:chunked layers on a registry are pulled partially: their table of contents is
    /// fetched, files the repository already holds (found by the sha256 of their contents)
    /// are reused, and only the missing files' byte ranges are fetched; the rebuilt layer
    /// must still match its diff_id. `--json` reports what each layer fetched and reused.
    /// Pulls running at the same time (other processes included) fetch each blob and file
    /// once: one waits for the other ("waiting for another pull (pid N)").
    #[command(
        after_help = "Examples:\n  strata pull docker://quay.io/fedora/fedora:41 fedora\n  \
                            strata pull docker://127.0.0.1:5000/app@sha256:… --tls-verify=false\n  \
                            strata pull --platform linux/arm64 docker://debian:12 debian-arm\n  \
                            strata pull oci:/srv/layouts/debian:12 debian\n  \
                            strata pull docker://registry.example/app:v1 docker://registry.example/app:v2\n\n\
                            Credentials come from --creds, --authfile or the containers-auth.json(5) files\n\
                            (strata login writes them); TLS CAs and client certificates from\n\
                            /etc/containers/certs.d/HOST[:PORT]/; mirrors, insecure and blocked registries\n\
                            from registries.conf(5)."
    )]
    Pull {
        /// Images to pull, at once (layers they share are fetched once). `pull SOURCE
        /// NAME` (a second argument without a transport prefix) still names one image.
        /// With several sources each image is named after its reference: the last path
        /// component and the tag (`docker://h/ns/app:v1` → `app:v1`).
        #[arg(required = true, value_name = "SOURCE")]
        sources: Vec<String>,
        /// Name to tag the image with (one source only).
        #[arg(long = "name", value_name = "NAME", id = "name_opt")]
        name_opt: Option<String>,
        /// Platform to pick from a multi-platform index: os/arch[/variant] [default: this host].
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Fetch every layer blob whole: no partial pulls of zstd:chunked layers.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// Log in to a registry: check the credentials, then store them in auth.json (mode 0600).
    #[command(after_help = "Examples:\n  strata login quay.io\n  \
                            echo \"$TOKEN\" | strata login -u robot --password-stdin 127.0.0.1:5000")]
    Login {
        /// Registry HOST[:PORT] (optionally /NAMESPACE, to store credentials for it alone).
        host: String,
        /// User name (asked for on a terminal when not given).
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// Remove a registry's stored credentials from auth.json.
    Logout {
        /// Registry HOST[:PORT][/NAMESPACE].
        host: String,
        /// Credentials file [default: as for login].
        #[arg(long, value_name = "FILE")]
        authfile: Option<std::path::PathBuf>,
    },
    /// Show an imported image: manifest, config, layers (with media types and sizes), image id.
    Inspect {
        /// Image name or id.
        name: String,
    },
    /// Layer operations.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Write an imported image as an OCI layout, or push it to a registry, with the same
    /// config and diff_ids.
    ///
    /// Layers are rebuilt from their splitstreams and compressed; on a registry, blobs it
    /// already has are not uploaded again (and are mounted from another repository of the
    /// same registry when the image came from there).
    #[command(after_help = "Examples:\n  strata export debian oci:/tmp/out:12\n  \
                            strata export debian docker://127.0.0.1:5000/debian:12 --compress gzip")]
    Export {
        /// Image name or id.
        name: String,
        /// Destination: oci:PATH:TAG or docker://HOST[:PORT]/REPO[:TAG].
        dest: String,
        /// Layer compression.
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "gzip", "none"])]
        compress: String,
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// List named images: name, image id, image size, objects and their size.
    Images,
    /// Print an image (by name or id) in composefs-dump(5) format.
    Dump {
        /// Image name or id.
        name: String,
    },
    /// Remove image names; `gc` then frees what nothing else uses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete images and objects no name reaches; with deployments, first the deployments
    /// beyond the booted, default and rollback ones (entries, kernels, state, records).
    Gc {
        /// Only report what would be freed.
        #[arg(long)]
        dry_run: bool,
        /// Deployments to keep, in boot order (the booted one is kept besides) [min 2].
        #[arg(long, value_name = "N", default_value_t = 2)]
        keep: usize,
        /// The physical root whose repository (SYSROOT/composefs) and deployments to collect.
        #[arg(long, value_name = "DIR")]
        sysroot: Option<std::path::PathBuf>,
        /// The boot partition holding the deployments' entries [default: /boot].
        #[arg(long, value_name = "DIR", default_value = "/boot")]
        boot: std::path::PathBuf,
        /// Kernel command line naming the booted deployment.
        #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
        cmdline: std::path::PathBuf,
    },
    /// Verify every object's digest, every image's objects and every ref.
    Fsck {
        /// Remove corrupt objects and list the images left incomplete.
        #[arg(long)]
        repair: bool,
    },
    /// Mount an image (by name or id) read-only, or writable with --upperdir/--workdir.
    ///
    /// The image's EROFS is the overlay's lower layer and the repository's
    /// objects its data-only layer: identical files in different images
    /// are one file, cached once. Unmount with `strata umount` or umount(8).
    #[command(after_help = "Examples:\n  strata mount myroot /mnt\n  \
                            strata mount --upperdir /srv/c1/upper --workdir /srv/c1/work myroot /srv/c1/root\n  \
                            strata umount /mnt")]
    Mount {
        /// Image name or id.
        name: String,
        /// Directory to mount on.
        mountpoint: std::path::PathBuf,
        /// fs-verity: require (refuse unless every object is verity-checked), try (require
        /// when the repository is verity-enforced), off.
        #[arg(long, default_value = "try", value_name = "POLICY")]
        verity: crate::mount::Verity,
        /// The image file's fs-verity digest must be this (hashed here when the file has no
        /// fs-verity). Without it, the image id is checked whenever the kernel can measure it.
        #[arg(long, value_name = "ID")]
        digest: Option<String>,
        /// Writable overlay: directory that receives changes (needs --workdir, same filesystem).
        #[arg(long, value_name = "DIR", requires = "workdir")]
        upperdir: Option<std::path::PathBuf>,
        /// Empty work directory for overlayfs, on the upper dir's filesystem.
        #[arg(long, value_name = "DIR", requires = "upperdir")]
        workdir: Option<std::path::PathBuf>,
        /// Read the image through a loop device even when EROFS can read the file.
        #[arg(long, hide = true)]
        force_loop: bool,
        /// Attach the EROFS to a private directory (as on Linux < 6.15).
        #[arg(long, hide = true)]
        private_lower: bool,
    },
    /// Unmount what `strata mount` mounted.
    Umount {
        /// Mount point.
        mountpoint: std::path::PathBuf,
    },
    /// Mount like composefs C's mount.composefs: IMAGE MOUNTPOINT -o basedir=DIR[:DIR…],….
    ///
    /// Options: basedir=, digest=, verity, tryverity, upperdir=, workdir=, idmap=, ro, rw.
    /// Installed as /sbin/mount.composefs, it serves `mount -t composefs` and fstab.
    #[command(name = "mount-helper", disable_help_flag = true)]
    MountHelper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
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
    /// In an initramfs: mount the image named by composefs=<image id> as the new root at SYSROOT.
    SetupRoot(boot::SetupRootArgs),
    /// Install an image as the default boot entry (kernel, initramfs, BLS entry, /etc carried).
    ///
    /// The image ships its kernel as /usr/lib/modules/VERSION/{vmlinuz,initramfs.img} and its
    /// kernel arguments in /usr/lib/bootc/kargs.d/*.toml. The entry boots composefs=<image id>;
    /// the previous default stays as the rollback. The repository is SYSROOT/composefs unless
    /// --repo is given.
    #[command(
        after_help = "Examples:\n  strata deploy docker://quay.io/example/os:42\n  \
                            strata deploy --sysroot /mnt --boot /mnt/boot --karg root=LABEL=root myos"
    )]
    Deploy(boot::DeployArgs),
    /// Show the booted, default and rollback deployments.
    Status(boot::StatusArgs),
    /// Make the rollback deployment the default (the next boot starts it).
    Rollback(boot::StatusArgs),
}

#[derive(Debug, Subcommand)]
enum LayerCommand {
    /// Write a layer's original tar (byte for byte, sha256 = its diff_id) to stdout.
    Cat {
        /// sha256:HEX or HEX.
        diff_id: String,
    },
}

/// Drops the " (os error N)" that `io::Error` appends to its message: the
/// message already says it, and the number means nothing to a reader.
fn without_os_error(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" (os error ") {
        let tail = &rest[i + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Prints an error as one line: `prog: outer: inner: cause`.
pub(crate) fn report(prog: &str, err: &anyhow::Error) {
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
    eprintln!("{prog}: {}", without_os_error(&line));
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
        "mount.composefs" => return finish("mount.composefs", mount::helper(&argv[1..])),
        _ => {}
    }
    let cli = Cli::parse_from(&argv);
    let g = repo::Global {
        repo: cli.repo.clone().unwrap_or_else(crate::repo::default_path),
        json: cli.json,
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    let r = match &cli.command {
        Command::Init {
            hash,
            require_verity,
        } => repo::init(&g, hash, *require_verity),
        Command::CreateImage {
            dir,
            name,
            threads,
            hardlinks,
        } => repo::create_image(
            &g,
            dir,
            name.as_deref(),
            threads.map(|t| t as usize),
            *hardlinks,
        ),
        Command::Pull {
            sources,
            name_opt,
            platform,
            full,
            registry,
        } => oci::pull(
            &g,
            sources,
            name_opt.as_deref(),
            platform.as_deref(),
            *full,
            registry,
        ),
        Command::Login {
            host,
            username,
            password_stdin,
            registry,
        } => registry::login(&g, host, username.as_deref(), *password_stdin, registry),
        Command::Logout { host, authfile } => registry::logout(&g, host, authfile.as_deref()),
        Command::Inspect { name } => oci::inspect(&g, name),
        Command::Layer(LayerCommand::Cat { diff_id }) => oci::layer_cat(&g, diff_id),
        Command::Export {
            name,
            dest,
            compress,
            registry,
        } => oci::export(&g, name, dest, compress, registry),
        Command::Images => repo::images(&g),
        Command::Dump { name } => repo::dump(&g, name),
        Command::Rm { names } => repo::rm(&g, names),
        Command::Gc {
            dry_run,
            keep,
            sysroot,
            boot,
            cmdline,
        } => {
            let mut g = g.clone();
            if let (None, Some(s)) = (&cli.repo, sysroot) {
                g.repo = s.join("composefs");
            }
            repo::gc(
                &g,
                *dry_run,
                &repo::GcPlaces {
                    keep: *keep,
                    sysroot: sysroot.clone().unwrap_or_else(|| "/sysroot".into()),
                    boot: boot.clone(),
                    cmdline: cmdline.clone(),
                },
            )
        }
        Command::Fsck { repair } => repo::fsck(&g, *repair),
        Command::SetupRoot(a) => boot::setup_root(g.quiet, cli.repo.clone(), a),
        Command::Deploy(a) => boot::deploy(&g, cli.repo.clone(), a),
        Command::Status(a) => boot::status(&g, cli.repo.clone(), a),
        Command::Rollback(a) => boot::rollback(&g, cli.repo.clone(), a),
        Command::Mount {
            name,
            mountpoint,
            verity,
            digest,
            upperdir,
            workdir,
            force_loop,
            private_lower,
        } => mount::mount(
            &g,
            &mount::MountArgs {
                name,
                target: mountpoint,
                verity: *verity,
                digest: digest.as_deref(),
                upperdir: upperdir.as_deref(),
                workdir: workdir.as_deref(),
                force_loop: *force_loop,
                private_lower: *private_lower,
            },
        ),
        Command::Umount { mountpoint } => mount::umount(&g, mountpoint),
        Command::MountHelper { args } => {
            return finish("strata mount-helper", mount::helper(args));
        }
        Command::Mkcomposefs { args } => {
            return finish(
                "strata mkcomposefs",
                mkcomposefs::run(with_name("mkcomposefs", args.clone())),
            )
        }
        Command::ComposefsInfo { args } => {
            return finish(
                "strata composefs-info",
                info::run(with_name("composefs-info", args.clone())),
            )
        }
    };
    finish("strata", r)
}

fn with_name(name: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(name)).chain(args).collect()
}

#[cfg(test)]
mod tests {
    use super::without_os_error;

    #[test]
    fn os_error_numbers_are_dropped() {
        assert_eq!(
            without_os_error("a: No such file or directory (os error 2): b (os error 30)"),
            "a: No such file or directory: b"
        );
        assert_eq!(
            without_os_error("keep (os error x) and (os error )"),
            "keep (os error x) and (os error )"
        );
        assert_eq!(without_os_error("plain"), "plain");
    }
}
