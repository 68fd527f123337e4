//! Which TLS protocol versions a configuration allows.

use rustls::SupportedProtocolVersion;

/// The TLS versions a server or client allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 and TLS 1.2 (the default, as GoDoxy's Go peers).
    #[default]
    Tls12AndTls13,
    /// TLS 1.3 only.
    Tls13Only,
    /// TLS 1.2 only.
    Tls12Only,
}

impl TlsVersions {
    pub(crate) fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        const BOTH: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
        match self {
            Self::Tls12AndTls13 => BOTH,
            Self::Tls13Only => TLS13,
            Self::Tls12Only => TLS12,
        }
    }
}
