//! Boot Loader Specification Type 1 entries: the format in one place.
//!
//! An entry is a small text file `$BOOT/loader/entries/<name>.conf`, one
//! `key value` pair per line (`#` starts a comment line; the value is the
//! rest of the line after the first run of whitespace). The keys written
//! here: `title`, `version`, `sort-key`, `linux`, `initrd` (may repeat) and
//! `options` (may repeat; the kernel sees them joined by spaces). Paths are
//! absolute within the partition the entry lives on (`$BOOT`).
//!
//! Ordering, as the specification and systemd-boot define it (newest first,
//! the first entry is the default when no default is configured):
//!
//! 1. entries with a `sort-key` come before entries without one;
//! 2. between two entries with a sort key: `sort-key` ascending, then
//!    `machine-id` ascending, then `version` *descending* (version
//!    comparison), then the file name descending (version comparison);
//! 3. between two entries without one: the file name descending (version
//!    comparison).
//!
//! strata gives every entry it writes the same sort key (`strata`), no
//! machine-id, a `version` that is the entry's boot priority (a counter,
//! highest = default) and a file name `strata-<priority, 8 digits>-<id>.conf`,
//! so the file name order agrees with the version order for boot loaders
//! that look at names only.
//!
//! Version comparison ([`compare_versions`]) follows the UAPI version format
//! for what strata's values need: runs of digits compare numerically
//! (leading zeros ignored), runs of letters bytewise, `~` sorts before
//! anything (even the end of the string), other characters are separators.

use std::cmp::Ordering;

/// Largest entry file read (entries are a few hundred bytes).
pub const MAX_ENTRY_SIZE: u64 = 64 * 1024;
/// Directory of Type 1 entries, relative to `$BOOT`.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Prefix of the entries strata writes (it never touches others).
pub const ENTRY_PREFIX: &str = "strata-";
/// The sort key of every strata entry.
pub const SORT_KEY: &str = "strata";

/// One Type 1 entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// File name (`<name>.conf`), not part of the contents.
    pub file_name: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub sort_key: Option<String>,
    pub linux: Option<String>,
    pub initrd: Vec<String>,
    /// Each `options` line as written.
    pub options: Vec<String>,
    /// Other keys, kept in order (`devicetree`, `architecture`, …).
    pub other: Vec<(String, String)>,
}

/// Why an entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: not UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: key {key:?} has no value")]
    NoValue { line: usize, key: String },
    #[error("no `linux` line")]
    NoLinux,
}

impl Entry {
    /// Parses the contents of an entry file.
    pub fn parse(file_name: &str, bytes: &[u8]) -> Result<Entry, ParseError> {
        let mut e = Entry {
            file_name: file_name.to_string(),
            ..Default::default()
        };
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8 { line: i + 1 })?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            if value.is_empty() {
                return Err(ParseError::NoValue {
                    line: i + 1,
                    key: key.to_string(),
                });
            }
            let v = value.to_string();
            match key {
                "title" => e.title = Some(v),
                "version" => e.version = Some(v),
                "machine-id" => e.machine_id = Some(v),
                "sort-key" => e.sort_key = Some(v),
                "linux" => e.linux = Some(v),
                "initrd" => e.initrd.push(v),
                "options" => e.options.push(v),
                _ => e.other.push((key.to_string(), v)),
            }
        }
        if e.linux.is_none() {
            return Err(ParseError::NoLinux);
        }
        Ok(e)
    }

    /// The file's contents.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut put = |k: &str, v: &str| {
            s.push_str(k);
            s.push(' ');
            s.push_str(v);
            s.push('\n');
        };
        let opt = |o: &Option<String>| o.clone();
        for (k, v) in [
            ("title", opt(&self.title)),
            ("version", opt(&self.version)),
            ("machine-id", opt(&self.machine_id)),
            ("sort-key", opt(&self.sort_key)),
            ("linux", opt(&self.linux)),
        ] {
            if let Some(v) = v {
                put(k, &v);
            }
        }
        for i in &self.initrd {
            put("initrd", i);
        }
        for o in &self.options {
            put("options", o);
        }
        for (k, v) in &self.other {
            put(k, v);
        }
        s
    }

    /// The kernel command line this entry boots with.
    pub fn cmdline(&self) -> String {
        self.options.join(" ")
    }
}

/// strata's file name for an entry of priority `priority` for image `id`.
pub fn entry_file_name(priority: u64, id_hex: &str) -> String {
    format!("{ENTRY_PREFIX}{priority:08}-{id_hex}.conf")
}

/// The priority and image id (hex) in a strata entry's file name.
pub fn parse_entry_file_name(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix(ENTRY_PREFIX)?.strip_suffix(".conf")?;
    let (prio, id) = rest.split_once('-')?;
    if prio.is_empty() || !prio.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((prio.parse().ok()?, id))
}

/// Compares two version strings (see the module documentation).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !(c.is_ascii_alphanumeric() || c == b'~');
    loop {
        while a.first().is_some_and(|&c| sep(c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|&c| sep(c)) {
            b = &b[1..];
        }
        // `~` is less than anything, the end included.
        match (a.first() == Some(&b'~'), b.first() == Some(&b'~')) {
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (true, true) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            _ => {}
        }
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (ad, bd) = (a[0].is_ascii_digit(), b[0].is_ascii_digit());
        if ad != bd {
            // a number is newer than a word in the same place
            return if ad {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let run = |s: &[u8], digit: bool| {
            s.iter()
                .take_while(|c| {
                    if digit {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (na, nb) = (run(a, ad), run(b, ad));
        let (ra, rb) = (&a[..na], &b[..nb]);
        let o = if ad {
            let trim = |r: &[u8]| -> usize { r.iter().take_while(|&&c| c == b'0').count() };
            let (ta, tb) = (&ra[trim(ra)..], &rb[trim(rb)..]);
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ra.cmp(rb)
        };
        if o != Ordering::Equal {
            return o;
        }
        a = &a[na..];
        b = &b[nb..];
    }
}

/// The boot order of two entries: `Less` means `a` is shown (and chosen
/// as the default) before `b`.
pub fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    let name = |e: &Entry| {
        e.file_name
            .strip_suffix(".conf")
            .unwrap_or(&e.file_name)
            .to_string()
    };
    match (&a.sort_key, &b.sort_key) {
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(ka), Some(kb)) => ka
            .cmp(kb)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| {
                compare_versions(
                    b.version.as_deref().unwrap_or(""),
                    a.version.as_deref().unwrap_or(""),
                )
            })
            .then_with(|| compare_versions(&name(b), &name(a))),
        (None, None) => compare_versions(&name(b), &name(a)),
    }
}

/// Sorts entries into boot order (the default first).
pub fn sort_boot_order(entries: &mut [Entry]) {
    entries.sort_by(boot_order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, sort_key: Option<&str>, mid: Option<&str>, version: Option<&str>) -> Entry {
        Entry {
            file_name: name.into(),
            sort_key: sort_key.map(Into::into),
            machine_id: mid.map(Into::into),
            version: version.map(Into::into),
            linux: Some("/k".into()),
            ..Default::default()
        }
    }

    #[test]
    fn versions() {
        use Ordering::*;
        for (a, b, o) in [
            ("10", "9", Greater),
            ("00010", "9", Greater),
            ("010", "10", Equal),
            ("1.2.10", "1.2.9", Greater),
            (
                "6.12.117+deb13-cloud-amd64",
                "6.12.9+deb13-cloud-amd64",
                Greater,
            ),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0.1", Less),
            ("1a", "1b", Less),
            ("2", "1z", Greater),
            ("", "", Equal),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn order_as_the_specification_says() {
        let mut v = vec![
            e("plain-1.conf", None, None, Some("1")),
            e("plain-10.conf", None, None, Some("1")),
            e("b.conf", Some("zzz"), None, Some("100")),
            e("strata-00000002-aa.conf", Some("strata"), None, Some("2")),
            e("strata-00000010-bb.conf", Some("strata"), None, Some("10")),
            e("m.conf", Some("strata"), Some("0000"), Some("1")),
            e("a.conf", Some("fedora"), None, Some("5")),
        ];
        sort_boot_order(&mut v);
        let names: Vec<_> = v.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.conf",
                // same sort key: no machine-id sorts before one, then version descending
                "strata-00000010-bb.conf",
                "strata-00000002-aa.conf",
                "m.conf",
                "b.conf",
                // no sort key: file names, newest first
                "plain-10.conf",
                "plain-1.conf",
            ]
        );
    }

    #[test]
    fn parse_and_print_round_trip() {
        let text = "# written by hand\ntitle  Test OS  (6.12)\nversion 7\nsort-key strata\n\
                    linux /strata/k/vmlinuz\ninitrd /strata/k/initramfs.img\n\
                    options composefs=ab rw\noptions quiet\ndevicetree /dtb\n";
        let e = Entry::parse("strata-00000007-ab.conf", text.as_bytes()).unwrap();
        assert_eq!(e.title.as_deref(), Some("Test OS  (6.12)"));
        assert_eq!(e.cmdline(), "composefs=ab rw quiet");
        assert_eq!(e.other, [("devicetree".to_string(), "/dtb".to_string())]);
        let again = Entry::parse(&e.file_name, e.to_text().as_bytes()).unwrap();
        assert_eq!(again, e);
        assert_eq!(
            Entry::parse("x.conf", b"title x\n")
                .unwrap_err()
                .to_string(),
            "no `linux` line"
        );
        assert_eq!(
            Entry::parse("x.conf", b"linux /k\ninitrd\n")
                .unwrap_err()
                .to_string(),
            "line 2: key \"initrd\" has no value"
        );
    }

    #[test]
    fn file_names() {
        let n = entry_file_name(12, "abcd");
        assert_eq!(n, "strata-00000012-abcd.conf");
        assert_eq!(parse_entry_file_name(&n), Some((12, "abcd")));
        assert_eq!(parse_entry_file_name("strata-x-abcd.conf"), None);
        assert_eq!(parse_entry_file_name("other-00000001-ab.conf"), None);
        assert_eq!(parse_entry_file_name(".strata-00000001-ab.conf.tmp"), None);
    }
}
