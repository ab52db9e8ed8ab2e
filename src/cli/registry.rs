//! Registry options shared by `pull`, `export` and `login`, and the `login` / `logout`
//! commands.

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::repo::Global;
use crate::registry::authfile::{self, AuthOptions, Credential};
use crate::registry::{Client, ClientOptions, Event};

/// How to reach registries (docker:// sources and destinations).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Credentials file [default: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json, ~/.dockercfg].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Credentials for this run, overriding every file: USER[:PASSWORD].
    #[arg(long, value_name = "USER[:PASS]")]
    pub creds: Option<String>,
    /// Use only this directory's certificates (*.crt CAs, *.cert/*.key client pair)
    /// instead of /etc/containers/certs.d/HOST/ and /etc/docker/certs.d/HOST/.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Check TLS certificates (false also allows plain HTTP) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// registries.conf to use instead of /etc/containers/registries.conf (+ .d).
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
    /// Blobs transferred at once [default: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
}

impl RegistryArgs {
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            auth: AuthOptions {
                authfile: self.authfile.clone(),
                creds: self.creds.as_deref().map(authfile::parse_creds),
            },
            cert_dir: self.cert_dir.clone(),
            tls_verify: self.tls_verify.unwrap_or(true),
            registries_conf: self.registries_conf.clone(),
            ..ClientOptions::default()
        }
    }

    /// A client whose retries and resumes are shown on `progress` (a terminal) or, with
    /// -v, as lines on stderr.
    pub fn client(
        &self,
        g: &Global,
        progress: Option<&indicatif::MultiProgress>,
    ) -> Result<Client> {
        let mut opts = self.options();
        if !g.quiet && !g.json && (progress.is_some() || g.verbose) {
            let mp = progress.cloned();
            opts.events = Some(Arc::new(move |e: &Event| {
                let line = event_line(e);
                match &mp {
                    Some(mp) => {
                        let _ = mp.println(line);
                    }
                    None => eprintln!("{line}"),
                }
            }));
        }
        Ok(Client::new(opts)?)
    }
}

fn event_line(e: &Event) -> String {
    match e {
        Event::Retry {
            registry,
            what,
            attempt,
            delay,
            cause,
        } => format!(
            "strata: {registry}: {what}: {cause}; retry {attempt} in {:.1} s",
            delay.as_secs_f64()
        ),
        Event::Resume {
            registry,
            digest,
            offset,
        } => {
            format!("strata: {registry}: blob {digest}: connection lost; resuming at byte {offset}")
        }
    }
}

/// `strata login HOST`: check the credentials against the registry, then store them.
pub fn login(
    g: &Global,
    host: &str,
    username: Option<&str>,
    password_stdin: bool,
    reg: &RegistryArgs,
) -> Result<()> {
    let key = normalise_key(host);
    let registry = key.split('/').next().unwrap_or(&key).to_string();
    let cred = match (&reg.creds, username) {
        (Some(c), _) => authfile::parse_creds(c),
        (None, Some(u)) => Credential::Basic {
            username: u.to_string(),
            password: read_password(password_stdin)?,
        },
        (None, None) => {
            if password_stdin {
                bail!("--password-stdin needs --username");
            }
            let u = prompt("Username: ")?;
            Credential::Basic {
                username: u,
                password: read_password(false)?,
            }
        }
    };
    let mut opts = reg.options();
    opts.auth = AuthOptions {
        authfile: None,
        creds: Some(cred.clone()),
    };
    let client = Client::new(opts)?;
    client
        .check_login(&registry)
        .with_context(|| format!("login {registry}"))?;
    let path = authfile::login(reg.authfile.as_deref(), &key, &cred)
        .with_context(|| format!("login {registry}"))?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"registry": key, "authfile": path.display().to_string()})
        );
    } else if !g.quiet {
        eprintln!(
            "strata: login succeeded for {key} (saved in {})",
            path.display()
        );
    }
    Ok(())
}

/// `strata logout HOST`.
pub fn logout(g: &Global, host: &str, authfile_path: Option<&std::path::Path>) -> Result<()> {
    let key = normalise_key(host);
    let removed = authfile::logout(authfile_path, &key).with_context(|| format!("logout {key}"))?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({"registry": key, "removed": removed})
        );
    } else if !removed {
        bail!("logout {key}: not logged in");
    } else if !g.quiet {
        eprintln!("strata: removed login credentials for {key}");
    }
    Ok(())
}

/// `docker://host/ns` or `https://host/` → `host/ns`; `index.docker.io` → `docker.io`.
fn normalise_key(s: &str) -> String {
    let s = s
        .strip_prefix("docker://")
        .or_else(|| s.strip_prefix("https://"))
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let s = s.trim_end_matches('/');
    match s.split_once('/') {
        Some(("index.docker.io", rest)) => format!("docker.io/{rest}"),
        _ if s == "index.docker.io" => "docker.io".into(),
        _ => s.to_string(),
    }
}

fn prompt(what: &str) -> Result<String> {
    if !io::stdin().is_terminal() {
        bail!("no credentials given: use --username with --password-stdin, or --creds");
    }
    eprint!("{what}");
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin || !io::stdin().is_terminal() {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    // Interactive: turn echo off while the password is typed.
    let fd = rustix::stdio::stdin();
    let old = rustix::termios::tcgetattr(fd).context("reading terminal settings")?;
    let mut quiet = old.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet)?;
    eprint!("Password: ");
    let mut line = String::new();
    let r = io::stdin().lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &old);
    eprintln!();
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::normalise_key;

    #[test]
    fn login_keys() {
        assert_eq!(normalise_key("docker://quay.io/ns/"), "quay.io/ns");
        assert_eq!(normalise_key("https://index.docker.io"), "docker.io");
        assert_eq!(normalise_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
