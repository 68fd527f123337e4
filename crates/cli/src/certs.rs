//! `streamproxy certs`: a CA, a server certificate and a client certificate, ECDSA P-256 like
//! GoDoxy's, written as PEM files (private keys with mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::cli::CertsArgs;

/// The names every server certificate carries.
pub(crate) const DEFAULT_SERVER_NAMES: [&str; 4] =
    ["godoxy.agent", "localhost", "127.0.0.1", "::1"];

/// The files `certs` writes, in order.
pub(crate) const FILES: [&str; 6] = [
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
    "client.pem",
    "client-key.pem",
];

/// A generated set of certificates, as PEM text.
pub(crate) struct Bundle {
    pub(crate) ca: String,
    pub(crate) ca_key: String,
    pub(crate) server: String,
    pub(crate) server_key: String,
    pub(crate) client: String,
    pub(crate) client_key: String,
}

/// The paths of a written bundle.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) ca: PathBuf,
    pub(crate) server: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client: PathBuf,
    pub(crate) client_key: PathBuf,
}

impl Paths {
    pub(crate) fn in_dir(dir: &Path) -> Paths {
        Paths {
            ca: dir.join("ca.pem"),
            server: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    for name in &args.server_names {
        check_name(name)?;
    }
    let bundle = generate(&args.server_names, args.days)?;
    write(&args.out, &bundle, args.force)?;
    let mut names: Vec<&str> = DEFAULT_SERVER_NAMES.to_vec();
    names.extend(args.server_names.iter().map(String::as_str));
    println!(
        "wrote {} to {} (server names: {}; valid {} days)",
        FILES.join(" "),
        args.out.display(),
        names.join(", "),
        args.days
    );
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.parse::<std::net::IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
            }));
    if !ok {
        bail!("--server-name `{name}` is neither a DNS name nor an IP address");
    }
    Ok(())
}

/// Generates a CA, a server certificate (the default names plus `extra_names`) and a client
/// certificate, valid for `days` days from one hour ago.
pub(crate) fn generate(extra_names: &[String], days: u32) -> anyhow::Result<Bundle> {
    let not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    let not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "streamproxy CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("signing the CA")?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = DEFAULT_SERVER_NAMES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let leaf = |common_name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf("godoxy.agent", names, ExtendedKeyUsagePurpose::ServerAuth)
        .context("issuing the server certificate")?;
    let (client, client_key) = leaf(
        "streamproxy client",
        vec!["streamproxy-client".to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
    .context("issuing the client certificate")?;
    Ok(Bundle {
        ca: ca_pem,
        ca_key: ca_key_pem,
        server,
        server_key,
        client,
        client_key,
    })
}

/// Writes the bundle into `dir` (created if missing). Refuses to replace any existing file
/// unless `force`; keys get mode 0600.
pub(crate) fn write(dir: &Path, bundle: &Bundle, force: bool) -> anyhow::Result<Paths> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files: [(&str, &str, bool); 6] = [
        ("ca.pem", &bundle.ca, false),
        ("ca-key.pem", &bundle.ca_key, true),
        ("server.pem", &bundle.server, false),
        ("server-key.pem", &bundle.server_key, true),
        ("client.pem", &bundle.client, false),
        ("client-key.pem", &bundle.client_key, true),
    ];
    if !force {
        // `symlink_metadata`: a link, even a dangling one, is an existing file.
        let existing: Vec<&str> = files
            .iter()
            .map(|(name, _, _)| *name)
            .filter(|name| fs::symlink_metadata(dir.join(name)).is_ok())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already holds {}; pass --force to overwrite",
                dir.display(),
                existing.join(", ")
            );
        }
    }
    for (name, contents, secret) in files {
        let path = dir.join(name);
        // A new file (created exclusively, mode 0600, never through a link), renamed over the
        // name: with --force a link there is replaced itself, its target never written.
        let mut file = tempfile::Builder::new()
            .prefix(".streamproxy-certs-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mode = if secret { 0o600 } else { 0o644 };
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        let persisted = if force {
            file.persist(&path).map(drop)
        } else {
            file.persist_noclobber(&path).map(drop)
        };
        persisted.with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(Paths::in_dir(dir))
}
