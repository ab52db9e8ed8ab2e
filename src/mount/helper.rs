//! Arguments of `mount.composefs`, the helper util-linux `mount(8)` runs for
//! `-t composefs`: `mount.composefs IMAGE MOUNTPOINT [-sfnv] [-N NS]
//! [-o OPTIONS] [-t composefs]`, with composefs C's options.

use std::ffi::OsString;
use std::path::PathBuf;

use rustix::mount::MountAttrFlags;

use super::{MountOptions, Verity};
use crate::fsverity::Digest;

/// What a `mount.composefs` command line asks for.
#[derive(Debug, Clone)]
pub struct HelperArgs {
    pub image: PathBuf,
    pub target: PathBuf,
    pub options: MountOptions,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
    /// `-v`: say what is mounted.
    pub verbose: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("{0}")]
    Usage(String),
    #[error("option {option}: {why}")]
    Option { option: String, why: String },
}

fn bad(option: &str, why: impl Into<String>) -> HelperError {
    HelperError::Option {
        option: option.into(),
        why: why.into(),
    }
}

/// Parses the arguments after the program name.
pub fn parse_helper_args(args: &[OsString]) -> Result<HelperArgs, HelperError> {
    let mut positional = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut fake = false;
    let mut verbose = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            positional.extend(it.by_ref().cloned());
            break;
        }
        if let Some(flags) = s.strip_prefix('-').filter(|f| !f.is_empty()) {
            let mut chars = flags.chars();
            while let Some(c) = chars.next() {
                match c {
                    's' | 'n' => {} // sloppy, no mtab: nothing to do
                    'f' => fake = true,
                    'v' => verbose = true,
                    'o' | 't' | 'N' => {
                        let rest: String = chars.by_ref().collect();
                        let value = if rest.is_empty() {
                            it.next()
                                .map(|v| v.to_string_lossy().into_owned())
                                .ok_or_else(|| HelperError::Usage(format!("-{c} needs a value")))?
                        } else {
                            rest
                        };
                        match c {
                            'o' => opts.push(value),
                            't' if value != "composefs" && !value.starts_with("composefs.") => {
                                return Err(HelperError::Usage(format!(
                                    "filesystem type {value:?} is not composefs"
                                )))
                            }
                            'N' => {
                                return Err(HelperError::Usage(
                                    "-N (mount in another namespace) is not supported".into(),
                                ))
                            }
                            _ => {}
                        }
                    }
                    'h' => return Err(HelperError::Usage(usage())),
                    _ => {
                        return Err(HelperError::Usage(format!(
                            "unknown flag -{c}\n{}",
                            usage()
                        )))
                    }
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    let [image, target]: [OsString; 2] = positional.try_into().map_err(|p: Vec<OsString>| {
        HelperError::Usage(format!(
            "expected IMAGE and MOUNTPOINT, got {} argument(s)\n{}",
            p.len(),
            usage()
        ))
    })?;
    let options = parse_options(&opts.join(","))?;
    Ok(HelperArgs {
        image: image.into(),
        target: target.into(),
        options,
        fake,
        verbose,
    })
}

/// The usage text (composefs C's options, plus what util-linux passes).
pub fn usage() -> String {
    "usage: mount.composefs [-o OPTIONS] IMAGE MOUNTPOINT\n\
     options (comma-separated):\n  \
     basedir=PATH[:PATH…]  object directories (data-only layers), searched in order\n  \
     digest=DIGEST         the image's fs-verity digest must be this (kernel-measured if\n                        \
     the image has fs-verity, then verity is required; hashed here otherwise)\n  \
     verity                require fs-verity on the image and on every object\n  \
     tryverity             require fs-verity when the image has it\n  \
     upperdir=DIR,workdir=DIR  writable overlay (read-write unless ro)\n  \
     idmap=PATH            show files with the id mapping of this user namespace\n  \
     ro, rw, nosuid, nodev, noexec, noatime\n\
     example: mount -t composefs -o basedir=/srv/objects image.cfs /mnt"
        .into()
}

/// Parses a `-o` string.
pub fn parse_options(s: &str) -> Result<MountOptions, HelperError> {
    let mut o = MountOptions {
        verity: Verity::Off,
        ..MountOptions::default()
    };
    let mut ro = None;
    let mut verity = false;
    let mut tryverity = false;
    for opt in s.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| -> Result<String, HelperError> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(bad(key, "needs a value")),
            }
        };
        match key {
            "basedir" => {
                let v = need(value)?;
                for d in v.split(':') {
                    if d.is_empty() {
                        return Err(bad(opt, "empty directory in the list"));
                    }
                    o.basedirs.push(d.into());
                }
            }
            "digest" => {
                let v = need(value)?;
                o.expected_digest = Some(
                    v.parse::<Digest>()
                        .map_err(|e| bad(opt, format!("not a digest: {e}")))?,
                );
            }
            "verity" => verity = true,
            "tryverity" => tryverity = true,
            "upperdir" => o.upperdir = Some(need(value)?.into()),
            "workdir" => o.workdir = Some(need(value)?.into()),
            "idmap" => o.idmap = Some(need(value)?.into()),
            "ro" => ro = Some(true),
            "rw" => ro = Some(false),
            "nosuid" => o.attrs |= MountAttrFlags::MOUNT_ATTR_NOSUID,
            "nodev" => o.attrs |= MountAttrFlags::MOUNT_ATTR_NODEV,
            "noexec" => o.attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC,
            "noatime" => o.attrs |= MountAttrFlags::MOUNT_ATTR_NOATIME,
            "nodiratime" => o.attrs |= MountAttrFlags::MOUNT_ATTR_NODIRATIME,
            // Defaults, and fstab/userspace options util-linux may pass on.
            "defaults" | "suid" | "dev" | "exec" | "atime" | "diratime" | "relatime" | "auto"
            | "noauto" | "nofail" | "user" | "nouser" | "users" | "owner" | "group" | "_netdev"
            | "async" | "loud" | "silent" => {}
            k if k.starts_with("x-") || k == "comment" => {}
            _ => return Err(bad(opt, "not a composefs mount option")),
        }
    }
    if o.upperdir.is_some() != o.workdir.is_some() {
        return Err(bad("upperdir/workdir", "give both or neither"));
    }
    o.verity = if verity {
        Verity::Require
    } else if tryverity || o.expected_digest.is_some() {
        Verity::Try
    } else {
        Verity::Off
    };
    o.readonly = ro.unwrap_or(o.upperdir.is_none());
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn util_linux_style() {
        let a = parse_helper_args(&args(&[
            "/img.cfs",
            "/mnt",
            "-s",
            "-o",
            "rw,basedir=/a:/b,noauto,x-systemd.requires=foo",
            "-t",
            "composefs",
        ]))
        .unwrap();
        assert_eq!(a.image, PathBuf::from("/img.cfs"));
        assert_eq!(a.target, PathBuf::from("/mnt"));
        assert_eq!(
            a.options.basedirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(a.options.verity, Verity::Off);
        assert!(!a.options.readonly);
    }

    #[test]
    fn composefs_c_style() {
        let d = "a".repeat(64);
        let a = parse_helper_args(&args(&[
            &format!("-obasedir=/o,digest={d},upperdir=/u,workdir=/w"),
            "img",
            "mnt",
        ]))
        .unwrap();
        assert_eq!(a.options.expected_digest.unwrap().to_hex(), d);
        assert_eq!(a.options.verity, Verity::Try);
        assert_eq!(a.options.upperdir, Some(PathBuf::from("/u")));
        assert!(!a.options.readonly, "an upper dir makes it writable");
        let a = parse_helper_args(&args(&["-o", "verity,ro,nodev", "img", "mnt"])).unwrap();
        assert_eq!(a.options.verity, Verity::Require);
        assert!(a.options.readonly);
        assert!(a.options.attrs.contains(MountAttrFlags::MOUNT_ATTR_NODEV));
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse_helper_args(&args(&["-o", "basedir=/o,bogus=1", "i", "m"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option bogus=1: not a composefs mount option"
        );
        let e = parse_helper_args(&args(&["-o", "digest=xyz", "i", "m"])).unwrap_err();
        assert!(
            e.to_string().starts_with("option digest=xyz: not a digest"),
            "{e}"
        );
        let e = parse_helper_args(&args(&["-o", "upperdir=/u", "i", "m"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option upperdir/workdir: give both or neither"
        );
        let e = parse_helper_args(&args(&["-o", "basedir=", "i", "m"])).unwrap_err();
        assert_eq!(e.to_string(), "option basedir: needs a value");
        let e = parse_helper_args(&args(&["only-one"])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("expected IMAGE and MOUNTPOINT, got 1"),
            "{e}"
        );
        let e = parse_helper_args(&args(&["-t", "ext4", "i", "m"])).unwrap_err();
        assert!(e.to_string().contains("not composefs"), "{e}");
    }
}
