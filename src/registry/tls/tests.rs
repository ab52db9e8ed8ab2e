use std::process::Command;

use super::*;

/// ureq does not export its `KeyKind`; its `Debug` names it (and nothing of the key).
fn kind(c: &CertsDirContents) -> String {
    format!("{:?}", c.client.as_ref().unwrap().private_key())
}

/// Run openssl in `dir`; `None` (and a note on stderr) when it is not installed.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipping: openssl is not on PATH");
            None
        }
        Err(e) => panic!("openssl: {e}"),
    }
}

/// A self-signed EC certificate `NAME.pem` with its PKCS#8 key `NAME.p8`.
fn self_signed(dir: &Path, name: &str) -> Option<()> {
    let (cert, key, subj) = (
        format!("{name}.pem"),
        format!("{name}.p8"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &subj,
        ],
    )
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn collects_cas_and_the_first_client_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    std::fs::create_dir(&gen).unwrap();
    if self_signed(&gen, "ca1").is_none() {
        return;
    }
    self_signed(&gen, "ca2").unwrap();
    self_signed(&gen, "client").unwrap();
    // SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") forms.
    openssl(&gen, &["ec", "-in", "client.p8", "-out", "client.sec1"]).unwrap();
    openssl(&gen, &["genrsa", "-traditional", "-out", "rsa.p1", "2048"]).unwrap();
    assert!(read(&gen, "client.sec1").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(read(&gen, "rsa.p1").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(read(&gen, "client.p8").starts_with("-----BEGIN PRIVATE KEY-----"));

    let user = tmp.path().join("user/registry.example:5000");
    let etc = tmp.path().join("etc/registry.example:5000");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    // Two CAs in one file, one in another, junk ignored, pairs in two directories.
    let both = format!("{}\n{}", read(&gen, "ca1.pem"), read(&gen, "ca2.pem"));
    std::fs::write(user.join("ca.crt"), both).unwrap();
    std::fs::write(etc.join("z-ca.crt"), read(&gen, "ca1.pem")).unwrap();
    std::fs::write(etc.join("README"), "not a cert").unwrap();
    std::fs::create_dir(etc.join("sub.crt")).unwrap();
    std::fs::write(user.join("b.cert"), read(&gen, "client.pem")).unwrap();
    std::fs::write(user.join("b.key"), read(&gen, "client.p8")).unwrap();
    std::fs::write(
        user.join("a.cert"),
        format!("{}{}", read(&gen, "client.pem"), read(&gen, "ca1.pem")),
    )
    .unwrap();
    std::fs::write(user.join("a.key"), read(&gen, "client.sec1")).unwrap();
    std::fs::write(etc.join("0.cert"), read(&gen, "client.pem")).unwrap();
    std::fs::write(etc.join("0.key"), read(&gen, "rsa.p1")).unwrap();

    let dirs = [user.clone(), tmp.path().join("missing"), etc.clone()];
    let c = collect(&dirs).unwrap();
    assert_eq!(c.cas.len(), 3);
    assert_eq!(c.ca_files, [user.join("ca.crt"), etc.join("z-ca.crt")]);
    // The user directory comes first; within it `a` sorts before `b`.
    assert_eq!(
        c.client_files,
        Some((user.join("a.cert"), user.join("a.key")))
    );
    let client = c.client.as_ref().unwrap();
    assert_eq!(client.certs().len(), 2);
    assert_eq!(
        format!("{:?}", client.private_key()),
        "PrivateKey { kind: Sec1 }"
    );
    assert_eq!(client.certs()[1].der(), c.cas[0].der());

    // Each key form alone.
    let c = collect(std::slice::from_ref(&etc)).unwrap();
    assert_eq!(kind(&c), "PrivateKey { kind: Pkcs1 }");
    std::fs::remove_file(user.join("a.cert")).unwrap();
    std::fs::remove_file(user.join("a.key")).unwrap();
    let c = collect(std::slice::from_ref(&user)).unwrap();
    assert_eq!(kind(&c), "PrivateKey { kind: Pkcs8 }");

    // The configuration built from it.
    let cfg = config_for("registry.example:5000", Some(&user), false).unwrap();
    assert!(cfg.disable_verification());
    assert!(cfg.client_cert().is_some());
    match cfg.root_certs() {
        RootCerts::Specific(roots) => assert_eq!(roots.len(), system_roots().len() + 2),
        other => panic!("{other:?}"),
    }
    let cfg = build_config(&[], collect(std::slice::from_ref(&user)).unwrap(), true);
    assert!(!cfg.disable_verification());
    assert!(matches!(cfg.root_certs(), RootCerts::Specific(r) if r.len() == 2));

    // Unpaired files are errors naming the file.
    std::fs::remove_file(user.join("b.key")).unwrap();
    assert_eq!(
        collect(std::slice::from_ref(&user))
            .unwrap_err()
            .to_string(),
        format!(
            "{}: client certificate without its key b.key",
            user.join("b.cert").display()
        )
    );
    std::fs::remove_file(user.join("b.cert")).unwrap();
    std::fs::write(user.join("c.key"), read(&gen, "client.p8")).unwrap();
    assert_eq!(
        collect(std::slice::from_ref(&user))
            .unwrap_err()
            .to_string(),
        format!(
            "{}: client key without its certificate c.cert",
            user.join("c.key").display()
        )
    );
    // A key file holding only a certificate, and an encrypted key: no usable key, no key text.
    std::fs::write(user.join("c.cert"), read(&gen, "client.pem")).unwrap();
    std::fs::write(user.join("c.key"), read(&gen, "ca1.pem")).unwrap();
    assert_eq!(
        collect(std::slice::from_ref(&user))
            .unwrap_err()
            .to_string(),
        format!(
            "{}: no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            user.join("c.key").display()
        )
    );
    openssl(
        &gen,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "client.p8",
            "-out",
            "enc.p8",
            "-passout",
            "pass:pw",
        ],
    )
    .unwrap();
    std::fs::write(user.join("c.key"), read(&gen, "enc.p8")).unwrap();
    assert!(collect(std::slice::from_ref(&user))
        .unwrap_err()
        .to_string()
        .ends_with("no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) in it"));
}

#[test]
fn bad_crt_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("x.crt"), "hello\n").unwrap();
    assert_eq!(
        collect(&[d.to_path_buf()]).unwrap_err().to_string(),
        format!("{}: no PEM certificate in it", d.join("x.crt").display())
    );
    std::fs::write(
        d.join("x.crt"),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert_eq!(
        collect(&[d.to_path_buf()]).unwrap_err().to_string(),
        format!("{}: not valid PEM", d.join("x.crt").display())
    );
    std::fs::write(
        d.join("x.crt"),
        vec![b'\n'; MAX_CERT_FILE_SIZE as usize + 1],
    )
    .unwrap();
    assert_eq!(
        collect(&[d.to_path_buf()]).unwrap_err().to_string(),
        format!("{}: larger than 1 MiB", d.join("x.crt").display())
    );
    // Nothing anywhere: empty, and WebPKI roots when the system has none either.
    let c = collect(&[d.join("none")]).unwrap();
    assert!(c.cas.is_empty() && c.client.is_none());
    assert!(matches!(
        build_config(&[], c, true).root_certs(),
        RootCerts::WebPki
    ));
}

#[test]
fn directories_for_a_host() {
    let home = Path::new("/home/u");
    assert_eq!(
        cert_dirs("reg.example:5000", Some(home), false).unwrap(),
        [
            PathBuf::from("/home/u/.config/containers/certs.d/reg.example:5000"),
            PathBuf::from("/etc/containers/certs.d/reg.example:5000"),
            PathBuf::from("/etc/docker/certs.d/reg.example:5000"),
        ]
    );
    assert_eq!(cert_dirs("[::1]:5000", Some(home), true).unwrap().len(), 2);
    assert_eq!(
        cert_dirs("quay.io", None, false).unwrap()[0],
        PathBuf::from("/etc/containers/certs.d/quay.io")
    );
    for bad in ["", ".", "..", "a/b", "../../etc"] {
        let e = cert_dirs(bad, None, false).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "/etc/containers/certs.d: registry host {bad:?} cannot name a certs.d directory"
            )
        );
    }
}
