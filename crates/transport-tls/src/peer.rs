//! What upper layers learn about the client of a connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustls::ProtocolVersion;
use rustls_pki_types::CertificateDer;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::AppProtocol;
use crate::load::parse_der;

/// The peer of an accepted connection, for routing, logs, policy and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// The negotiated application protocol; `None` when the client offered no ALPN.
    pub alpn: Option<AppProtocol>,
    /// The negotiated TLS version.
    pub version: Option<ProtocolVersion>,
    /// The verified client certificate.
    pub certificate: CertificateSummary,
}

/// The identifying parts of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateSummary {
    /// The subject, as an RFC 4514 style string (`CN=agent-1, O=GoDoxy`).
    pub subject: String,
    /// The first common name of the subject, if any.
    pub common_name: Option<String>,
    /// The subject alternative names, in certificate order.
    pub sans: Vec<SubjectAltName>,
    /// The DER encoding of the subject public key info (what a key pin hashes).
    pub public_key_info: Vec<u8>,
}

/// One subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubjectAltName {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A URI.
    Uri(String),
    /// An email address (rfc822Name).
    Email(String),
}

impl std::fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Uri(uri) => write!(f, "URI:{uri}"),
            Self::Email(email) => write!(f, "email:{email}"),
        }
    }
}

impl CertificateSummary {
    /// Reads the subject and names of a DER certificate. Name kinds other than DNS, IP, URI
    /// and email are left out.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, X509Error> {
        let cert = parse_der(der)?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let sans = match cert.subject_alternative_name()? {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(n) => Some(SubjectAltName::Dns((*n).to_owned())),
                    GeneralName::URI(u) => Some(SubjectAltName::Uri((*u).to_owned())),
                    GeneralName::RFC822Name(e) => Some(SubjectAltName::Email((*e).to_owned())),
                    GeneralName::IPAddress(bytes) => ip(bytes).map(SubjectAltName::Ip),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(Self {
            subject: cert.subject().to_string(),
            common_name,
            sans,
            public_key_info: cert.public_key().raw.to_vec(),
        })
    }
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}
