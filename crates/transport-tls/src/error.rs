//! Errors: one enum per operation, each variant with typed detail.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rustls::AlertDescription;
use rustls::server::VerifierBuilderError;
use x509_parser::error::X509Error;

/// Loading PEM material (a CA bundle, a certificate chain and its private key) failed.
///
/// Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The session-ticket keys could not be made (the system's random source failed).
    #[error("cannot make session-ticket keys")]
    Tickets(#[source] rustls::Error),
    /// The file is missing or cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read (`NotFound` for a missing file).
        #[source]
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{} holds no certificate (expected a PEM `CERTIFICATE` block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A `CERTIFICATE` block does not hold a parsable X.509 certificate.
    #[error("certificate #{index} in {} cannot be parsed", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, counting from 0.
        index: usize,
        /// What the parser found.
        #[source]
        source: X509Error,
    },
    /// The file holds no private key block (PKCS#8, SEC1 or PKCS#1).
    #[error(
        "{} holds no private key (expected a PEM `PRIVATE KEY`, `EC PRIVATE KEY` or \
         `RSA PRIVATE KEY` block)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind the crypto provider cannot sign with.
    #[error("the private key in {} is not usable", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// The provider's reason.
        #[source]
        source: rustls::Error,
    },
    /// webpki cannot use the end-entity certificate.
    #[error("the certificate in {} is not usable", path.display())]
    UnusableCertificate {
        /// The certificate file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A CA file holds certificates, but none of them is a CA certificate
    /// (`basicConstraints` with `CA:TRUE`).
    #[error("{} holds no CA certificate (none has basicConstraints CA:TRUE)", path.display())]
    NoCaCertificate {
        /// The CA file.
        path: PathBuf,
    },
    /// A CA certificate cannot be used as a trust anchor.
    #[error("a CA certificate in {} cannot be used as a trust anchor", path.display())]
    BadTrustAnchor {
        /// The CA file.
        path: PathBuf,
        /// Why webpki refused it.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier cannot be built from the CA.
    #[error("cannot verify client certificates against {}", path.display())]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: VerifierBuilderError,
    },
}

/// Building a server or client configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The crypto provider offers no cipher suite for the requested protocol versions.
    #[error("unsupported TLS protocol versions")]
    ProtocolVersions(#[source] rustls::Error),
}

/// The server side of a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The handshake did not finish in time.
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The transport failed or closed during the handshake.
    #[error("I/O error during the TLS handshake")]
    Io(#[source] io::Error),
    /// The client aborted the handshake with a TLS alert.
    #[error("the client aborted the TLS handshake with alert {0:?}")]
    AlertReceived(AlertDescription),
    /// We aborted the handshake (bad or missing client certificate, no common ALPN protocol,
    /// no common version or cipher suite, malformed message...). The client was sent an alert.
    #[error("TLS handshake failed")]
    Tls(#[source] rustls::Error),
    /// The verified client certificate could not be parsed for its subject and names.
    #[error("the client certificate cannot be parsed")]
    PeerCertificate(#[source] X509Error),
    /// The client certificate is not valid now: a session resumed after the certificate of the
    /// handshake that issued its ticket expired (or before it became valid).
    #[error("the client certificate is outside its validity period")]
    CertificateNotValidNow,
}

/// The client side of a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection could not be established.
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    /// Connecting and the handshake did not finish in time.
    #[error("TLS connection not established within {0:?}")]
    Timeout(Duration),
    /// The transport failed or closed during the handshake.
    #[error("I/O error during the TLS handshake")]
    Io(#[source] io::Error),
    /// The server aborted the handshake with a TLS alert.
    #[error("the server aborted the TLS handshake with alert {0:?}")]
    AlertReceived(AlertDescription),
    /// We aborted the handshake (server certificate not trusted or not valid for the server
    /// name, no common version or cipher suite...). The server was sent an alert.
    #[error("TLS handshake failed")]
    Tls(#[source] rustls::Error),
}

/// How a handshake ended when tokio-rustls reported an `io::Error`.
pub(crate) enum Failure {
    Io(io::Error),
    AlertReceived(AlertDescription),
    Tls(rustls::Error),
}

impl Failure {
    /// Separates the TLS errors tokio-rustls wraps in `io::Error` from transport errors.
    pub(crate) fn classify(error: io::Error) -> Self {
        if !error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return Self::Io(error);
        }
        let kind = error.kind();
        match error
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => match *tls {
                rustls::Error::AlertReceived(alert) => Self::AlertReceived(alert),
                other => Self::Tls(other),
            },
            // Unreachable after the check above; keep whatever there is.
            Some(Err(inner)) => Self::Io(io::Error::new(kind, inner)),
            None => Self::Io(io::Error::from(kind)),
        }
    }
}

impl From<Failure> for AcceptError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Io(e) => Self::Io(e),
            Failure::AlertReceived(a) => Self::AlertReceived(a),
            Failure::Tls(e) => Self::Tls(e),
        }
    }
}

impl From<Failure> for ConnectError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Io(e) => Self::Io(e),
            Failure::AlertReceived(a) => Self::AlertReceived(a),
            Failure::Tls(e) => Self::Tls(e),
        }
    }
}

impl From<AcceptError> for io::Error {
    fn from(error: AcceptError) -> Self {
        match error {
            AcceptError::Io(e) => e,
            AcceptError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, error),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

impl From<ConnectError> for io::Error {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Io(e) | ConnectError::Connect(e) => e,
            ConnectError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, error),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
