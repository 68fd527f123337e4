//! Test certificates: a throwaway CA and the certificates it issues, written as PEM files.
//!
//! Every key is generated when the test runs (ECDSA P-256 like GoDoxy's, or RSA 2048 for
//! PKCS#1 files); nothing is committed. The files live in a temporary directory removed when the
//! [`TestCa`] is dropped.
//!
//! ```
//! use streamproxy_test_support::{Pki, TestCa};
//!
//! let pki = Pki::new();
//! assert!(pki.ca.ca_path().exists() && pki.server.key.exists());
//! let other = TestCa::new("other");
//! let intruder = other.client("intruder", "agent-1");
//! assert_ne!(intruder.der, pki.client.der);
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

/// The name GoDoxy's agents verify (`proto::DEFAULT_SERVER_NAME`, written out here because this
/// crate depends on no crate of the workspace): server certificates carry it.
pub const SERVER_NAME: &str = "godoxy.agent";

/// A CA with a server certificate (`server.crt`, for [`SERVER_NAME`], `localhost` and
/// `127.0.0.1`) and a client certificate (`client.crt`, common name `agent-1`).
#[derive(Debug)]
pub struct Pki {
    /// The CA, which can issue more certificates (and reissue the server's for a rotation).
    pub ca: TestCa,
    /// The server's certificate files.
    pub server: CertFiles,
    /// The client's certificate files.
    pub client: CertFiles,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A fresh CA named `test`, with its server and client.
    pub fn new() -> Pki {
        Pki::named("test")
    }

    /// A fresh CA named `name` (CAs with different names have different subjects), with its
    /// server and client.
    pub fn named(name: &str) -> Pki {
        let ca = TestCa::new(name);
        let server = ca.server("server");
        let client = ca.client("client", "agent-1");
        Pki { ca, server, client }
    }
}

/// A certificate authority with its own temporary directory.
pub struct TestCa {
    dir: TempDir,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    ca_path: PathBuf,
}

/// The files of an issued certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, in the requested format).
    pub key: PathBuf,
    /// The certificate (DER), to compare with what a peer presented.
    pub der: CertificateDer<'static>,
}

/// What a certificate is for: sets its extended key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// `serverAuth`.
    Server,
    /// `clientAuth`.
    Client,
}

/// How a private key file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `PRIVATE KEY` (PKCS#8), ECDSA P-256.
    Pkcs8,
    /// `EC PRIVATE KEY` (SEC1, with the curve named), ECDSA P-256.
    Sec1,
    /// `RSA PRIVATE KEY` (PKCS#1), RSA 2048.
    Pkcs1,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for 30 days.
    Current,
    /// Expired yesterday.
    Expired,
    /// Valid from tomorrow.
    NotYetValid,
    /// From yesterday until this instant (a certificate that expires during a test).
    Until(OffsetDateTime),
}

/// A certificate to issue.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// File stem: the files are `<stem>.crt` and `<stem>.key` in the CA's directory; issuing
    /// the same stem again overwrites them.
    pub stem: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names: IP addresses where they parse as one, DNS names otherwise.
    pub sans: Vec<String>,
    /// Extended key usage.
    pub usage: Usage,
    /// Key encoding (and so key type).
    pub key_format: KeyFormat,
    /// Validity period.
    pub validity: Validity,
}

impl LeafSpec {
    /// A current ECDSA P-256 PKCS#8 certificate for `usage`, named `stem`, with the given
    /// common name and no SAN.
    pub fn new(stem: &str, common_name: &str, usage: Usage) -> Self {
        Self {
            stem: stem.to_owned(),
            common_name: common_name.to_owned(),
            sans: Vec::new(),
            usage,
            key_format: KeyFormat::Pkcs8,
            validity: Validity::Current,
        }
    }

    /// Sets the subject alternative names.
    pub fn sans(mut self, sans: &[&str]) -> Self {
        self.sans = sans.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the key format.
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.key_format = format;
        self
    }

    /// Sets the validity period.
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }
}

impl TestCa {
    /// A new CA named `name` (its common name is `streamproxy test CA <name>`), written to
    /// `ca.crt` in a new temporary directory.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("streamproxy-test-")
            .tempdir()
            .expect("create a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("streamproxy test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate().expect("generate the CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let ca_path = dir.path().join("ca.crt");
        fs::write(&ca_path, cert.pem()).expect("write ca.crt");
        Self {
            dir,
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            ca_path,
        }
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA certificate.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The directory holding every file of this CA.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA's name, as given to [`TestCa::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A server certificate for `godoxy.agent`, `localhost` and `127.0.0.1`, named `stem`.
    pub fn server(&self, stem: &str) -> CertFiles {
        self.issue(&LeafSpec::new(stem, SERVER_NAME, Usage::Server).sans(&[
            SERVER_NAME,
            "localhost",
            "127.0.0.1",
        ]))
    }

    /// A client certificate with common name `common_name` and a DNS SAN of the same name,
    /// named `stem`.
    pub fn client(&self, stem: &str, common_name: &str) -> CertFiles {
        self.issue(&LeafSpec::new(stem, common_name, Usage::Client).sans(&[common_name]))
    }

    /// Issues a certificate and writes `<stem>.crt` and `<stem>.key`.
    pub fn issue(&self, spec: &LeafSpec) -> CertFiles {
        let mut params = CertificateParams::new(spec.sans.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.key_format == KeyFormat::Pkcs1 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![match spec.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, spec.validity);
        let key = match spec.key_format {
            KeyFormat::Pkcs8 | KeyFormat::Sec1 => KeyPair::generate(),
            KeyFormat::Pkcs1 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        }
        .expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        let cert_path = self.dir.path().join(format!("{}.crt", spec.stem));
        let key_path = self.dir.path().join(format!("{}.key", spec.stem));
        fs::write(&cert_path, cert.pem()).expect("write the certificate");
        fs::write(&key_path, key_pem(&key, spec.key_format)).expect("write the key");
        CertFiles {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// Writes `contents` to `name` in the CA's directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = OffsetDateTime::now_utc();
    let day = Duration::days(1);
    (params.not_before, params.not_after) = match validity {
        Validity::Current => (now - day, now + 30 * day),
        Validity::Expired => (now - 30 * day, now - day),
        Validity::NotYetValid => (now + day, now + 30 * day),
        Validity::Until(end) => (now - day, end),
    };
}

/// The key as PEM: PKCS#8 as generated, or the key inside it (SEC1, PKCS#1).
fn key_pem(key: &KeyPair, format: KeyFormat) -> String {
    let pkcs8 = key.serialize_der();
    let (tag, der) = match format {
        KeyFormat::Pkcs8 => ("PRIVATE KEY", pkcs8),
        KeyFormat::Pkcs1 => ("RSA PRIVATE KEY", pkcs8_inner_key(&pkcs8).to_vec()),
        KeyFormat::Sec1 => ("EC PRIVATE KEY", sec1_with_curve(pkcs8_inner_key(&pkcs8))),
    };
    pem::encode(&pem::Pem::new(tag, der))
}

/// One DER element: (tag, header length, content length).
fn tlv(der: &[u8]) -> (u8, usize, usize) {
    let tag = der[0];
    let first = der[1];
    if first < 0x80 {
        return (tag, 2, usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    let len = der[2..2 + n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    (tag, 2 + n, len)
}

fn encode_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![u8::try_from(len).expect("short form")];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | u8::try_from(bytes.len()).expect("length of length")];
    out.extend(bytes);
    out
}

/// The `privateKey` OCTET STRING contents of a PKCS#8 `PrivateKeyInfo`.
fn pkcs8_inner_key(pkcs8: &[u8]) -> &[u8] {
    let (_, header, _) = tlv(pkcs8);
    let mut rest = &pkcs8[header..];
    for _ in 0..2 {
        // version, algorithm
        let (_, h, l) = tlv(rest);
        rest = &rest[h + l..];
    }
    let (tag, h, l) = tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    &rest[h..h + l]
}

/// A SEC1 `ECPrivateKey` with `parameters [0] namedCurve prime256v1` present, as OpenSSL writes.
fn sec1_with_curve(sec1: &[u8]) -> Vec<u8> {
    const P256: [u8; 12] = [
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let (_, header, _) = tlv(sec1);
    let body = &sec1[header..];
    let mut fields = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (tag, h, l) = tlv(rest);
        fields.push((tag, &rest[..h + l]));
        rest = &rest[h + l..];
    }
    let mut content = Vec::new();
    for (i, (tag, bytes)) in fields.iter().enumerate() {
        content.extend_from_slice(bytes);
        let next_is_params = fields.get(i + 1).is_some_and(|(t, _)| *t == 0xa0);
        if i == 1 && !next_is_params && *tag == 0x04 {
            content.extend_from_slice(&P256);
        }
    }
    let mut out = vec![0x30];
    out.extend(encode_len(content.len()));
    out.extend(content);
    out
}
