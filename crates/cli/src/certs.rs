//! `streamproxy certs`: ECDSA P-256 certificates like GoDoxy's, as PEM files.
//!
//! - `certs --out DIR`: a new CA and one server and one client certificate, for a first try:
//!   the leaves and `ca.pem` in DIR, the CA's key apart in `DIR/ca/`.
//! - `certs ca --out CA_DIR`: a CA to keep (`ca.pem`, `ca-key.pem`), named uniquely.
//! - `certs server --ca-dir CA_DIR --out DIR`, `certs client --ca-dir CA_DIR --name alice
//!   --out DIR`: a leaf issued from that CA, with `ca.pem` beside it: what a host needs, never
//!   the CA's key.
//!
//! Files are written without following symbolic links: a new file is created (`O_EXCL`,
//! `O_NOFOLLOW`); with `--force` it is written to a temporary name and renamed over the old
//! one, which replaces a link itself, never its target. Keys get mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::cli::{CertsArgs, CertsCommand, IssueArgs};

/// The names every server certificate carries.
pub(crate) const DEFAULT_SERVER_NAMES: [&str; 4] =
    ["godoxy.agent", "localhost", "127.0.0.1", "::1"];

/// Default validity of a CA, in days.
pub(crate) const CA_DAYS: u32 = 3650;
/// Default validity of a server or client certificate, in days.
pub(crate) const LEAF_DAYS: u32 = 365;

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

/// One file to write: its name, contents, and whether it is a secret (mode 0600).
type File<'a> = (&'a str, &'a str, bool);

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    match &args.command {
        None => first_try(&args),
        Some(CertsCommand::Ca {
            out,
            name,
            days,
            force,
        }) => new_ca(out, name.as_deref(), days.unwrap_or(CA_DAYS), *force),
        Some(CertsCommand::Server(issue)) => issue_server(issue),
        Some(CertsCommand::Client(issue)) => issue_client(issue),
    }
}

/// `certs --out DIR`: a new CA and one server and one client certificate.
fn first_try(args: &CertsArgs) -> anyhow::Result<()> {
    let Some(out) = &args.out else {
        bail!(
            "give --out DIR (a CA, a server and a client certificate), or a subcommand: certs ca, certs server, certs client"
        );
    };
    for name in &args.server_names {
        check_name(name)?;
    }
    let days = args.days.unwrap_or(LEAF_DAYS);
    let bundle = generate(&args.server_names, days)?;
    write(out, &bundle, args.force)?;
    println!(
        "wrote ca.pem server.pem server-key.pem client.pem client-key.pem to {} and the CA's key to {} (server names: {}; valid {days} days)",
        out.display(),
        out.join("ca").display(),
        server_names(&args.server_names).join(", "),
    );
    Ok(())
}

/// `certs ca`: a CA to keep, `ca.pem` and `ca-key.pem` in `out`.
fn new_ca(out: &Path, name: Option<&str>, days: u32, force: bool) -> anyhow::Result<()> {
    let (params, key, name) = ca_params(name, days)?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    let key_pem = key.serialize_pem();
    write_files(
        out,
        &[
            ("ca.pem", &cert.pem(), false),
            ("ca-key.pem", &key_pem, true),
        ],
        force,
    )?;
    println!(
        "wrote ca.pem and ca-key.pem to {} (CA {name:?}); keep ca-key.pem here, copy only ca.pem to hosts",
        out.display(),
    );
    Ok(())
}

/// `certs server`: a server certificate for the default names and `--server-name`s.
fn issue_server(issue: &IssueArgs) -> anyhow::Result<()> {
    for name in &issue.server_names {
        check_name(name)?;
    }
    let names = server_names(&issue.server_names)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let cn = issue
        .name
        .clone()
        .unwrap_or_else(|| "godoxy.agent".to_owned());
    issue_from(
        issue,
        &cn,
        names,
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    )
}

/// `certs client`: a client certificate named by `--name`.
fn issue_client(issue: &IssueArgs) -> anyhow::Result<()> {
    let Some(cn) = issue.name.clone() else {
        bail!("give --name NAME for the client certificate (its common name, e.g. --name alice)");
    };
    let sans = vec![client_dns_name(&cn)];
    issue_from(
        issue,
        &cn,
        sans,
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    )
}

fn server_names(extra: &[String]) -> Vec<&str> {
    let mut names: Vec<&str> = DEFAULT_SERVER_NAMES.to_vec();
    for name in extra {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
}

/// A DNS-name form of a client's name for its SAN (verifiers want at least one SAN).
fn client_dns_name(cn: &str) -> String {
    let label: String = cn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "streamproxy-client".to_owned()
    } else {
        label.chars().take(63).collect()
    }
}

/// Issues a leaf from the CA in `issue.ca_dir` into `issue.out` (`KIND.pem`, `KIND-key.pem`,
/// and a copy of `ca.pem`).
fn issue_from(
    issue: &IssueArgs,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    kind: &str,
) -> anyhow::Result<()> {
    let issuer = load_ca(&issue.ca_dir)?;
    let ca_pem = fs::read_to_string(issue.ca_dir.join("ca.pem"))
        .with_context(|| format!("cannot read {}", issue.ca_dir.join("ca.pem").display()))?;
    let days = issue.days.unwrap_or(LEAF_DAYS);
    let (cert, key) = leaf(&issuer, cn, sans, usage, validity(days))
        .with_context(|| format!("issuing the {kind} certificate"))?;
    let (cert_name, key_name) = (format!("{kind}.pem"), format!("{kind}-key.pem"));
    write_files(
        &issue.out,
        &[
            (&cert_name, &cert, false),
            (&key_name, &key, true),
            ("ca.pem", &ca_pem, false),
        ],
        issue.force,
    )?;
    println!(
        "wrote {cert_name}, {key_name} and ca.pem to {} ({kind} certificate for {cn:?}, valid {days} days)",
        issue.out.display()
    );
    Ok(())
}

/// The CA in `dir` (`ca.pem`, `ca-key.pem`), ready to issue.
fn load_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (make a CA with `streamproxy certs ca --out {}`)",
                path.display(),
                dir.display()
            )
        })
    };
    let key = KeyPair::from_pem(&read("ca-key.pem")?)
        .with_context(|| format!("{} is not a private key", dir.join("ca-key.pem").display()))?;
    Issuer::from_ca_cert_pem(&read("ca.pem")?, key).with_context(|| {
        format!(
            "{} is not a CA certificate matching ca-key.pem",
            dir.join("ca.pem").display()
        )
    })
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

/// From one hour ago (clocks drift) to `days` days from now.
fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days)),
    )
}

/// A CA's parameters and key. Without a name, the CA is named `streamproxy CA` and a random
/// suffix: two CAs never share a name, so a certificate from the other one is reported as
/// issued by an unknown CA rather than as a bad signature.
fn ca_params(
    name: Option<&str>,
    days: u32,
) -> anyhow::Result<(CertificateParams, KeyPair, String)> {
    let name = match name {
        Some(name) if !name.trim().is_empty() => name.to_owned(),
        Some(_) => bail!("--name is empty"),
        None => {
            let mut suffix = [0u8; 4];
            streamproxy::tls::crypto_provider()
                .secure_random
                .fill(&mut suffix)
                .map_err(|_| anyhow::anyhow!("no randomness for the CA's name"))?;
            let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            format!("streamproxy CA {hex}")
        }
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(days);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    Ok((params, key, name))
}

/// A leaf certificate and its key, as PEM.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
) -> Result<(String, String), rcgen::Error> {
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
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates a CA, a server certificate (the default names plus `extra_names`) and a client
/// certificate, valid for `days` days from one hour ago.
pub(crate) fn generate(extra_names: &[String], days: u32) -> anyhow::Result<Bundle> {
    let (ca_params, ca_key, _) = ca_params(None, days)?;
    let ca_cert = ca_params.self_signed(&ca_key).context("signing the CA")?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let names = server_names(extra_names)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (server, server_key) = leaf(
        &issuer,
        "godoxy.agent",
        names,
        ExtendedKeyUsagePurpose::ServerAuth,
        validity(days),
    )
    .context("issuing the server certificate")?;
    let (client, client_key) = leaf(
        &issuer,
        "streamproxy client",
        vec!["streamproxy-client".to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
        validity(days),
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

/// Writes the bundle: the leaves and `ca.pem` into `dir`, the CA (`ca.pem`, `ca-key.pem`) into
/// `dir/ca`, from where `certs server` and `certs client --ca-dir DIR/ca` issue more.
pub(crate) fn write(dir: &Path, bundle: &Bundle, force: bool) -> anyhow::Result<Paths> {
    let ca_dir = dir.join("ca");
    let ca: [File<'_>; 2] = [
        ("ca.pem", &bundle.ca, false),
        ("ca-key.pem", &bundle.ca_key, true),
    ];
    let leaves: [File<'_>; 5] = [
        ("ca.pem", &bundle.ca, false),
        ("server.pem", &bundle.server, false),
        ("server-key.pem", &bundle.server_key, true),
        ("client.pem", &bundle.client, false),
        ("client-key.pem", &bundle.client_key, true),
    ];
    // Both directories are checked before either is written: a refusal writes nothing.
    if !force {
        refuse_existing(&ca_dir, &ca)?;
        refuse_existing(dir, &leaves)?;
    }
    write_files(&ca_dir, &ca, force)?;
    write_files(dir, &leaves, force)?;
    Ok(Paths::in_dir(dir))
}

/// Fails naming the files of `files` that already exist in `dir` (links too, even dangling).
fn refuse_existing(dir: &Path, files: &[File<'_>]) -> anyhow::Result<()> {
    let existing: Vec<&str> = files
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| fs::symlink_metadata(dir.join(name)).is_ok())
        .collect();
    if !existing.is_empty() {
        bail!(
            "{} already holds {}; pass --force to replace them",
            dir.display(),
            existing.join(", ")
        );
    }
    Ok(())
}

/// Writes `files` into `dir` (created if missing, mode 0700 when new). Refuses to replace an
/// existing file, or anything else at a file's name (a link, even a dangling one), unless
/// `force`; never writes through a symbolic link. Keys get mode 0600, certificates 0644.
fn write_files(dir: &Path, files: &[File<'_>], force: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !force {
        refuse_existing(dir, files)?;
    }
    for (name, contents, secret) in files {
        let path = dir.join(name);
        let mode = if *secret { 0o600 } else { 0o644 };
        // A new file under a temporary name, never a link's target; renamed over the old
        // name, which replaces a link itself.
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        // The umask may have narrowed the mode: set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
