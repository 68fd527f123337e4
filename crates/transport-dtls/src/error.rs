//! One error type per operation.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::x509::X509VerifyResult;

/// Loading PEM material (a CA file, a certificate chain and its private key) failed.
///
/// Every variant names the file it is about, as `streamproxy-tls`'s `LoadError` does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is missing or cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read (`NotFound` for a missing file).
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM of the expected kind.
    #[error("{} is not a valid PEM {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected: "certificate" or "private key".
        what: &'static str,
        /// OpenSSL's error.
        #[source]
        source: ErrorStack,
    },
    /// The file holds no certificate.
    #[error("{} contains no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The public key of the end-entity certificate cannot be read.
    #[error("the certificate in {} is not usable", path.display())]
    UnusableCertificate {
        /// The certificate file.
        path: PathBuf,
        /// OpenSSL's error.
        #[source]
        source: ErrorStack,
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
}

/// A configuration value or certificate set that OpenSSL refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A PEM file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// An identity or CA set without any certificate.
    #[error("no certificate given")]
    NoCertificate,
    /// The identity or CA certificates were refused by OpenSSL.
    #[error("OpenSSL refused the certificates")]
    Certificates(#[source] ErrorStack),
    /// The cipher list names no usable cipher.
    #[error("OpenSSL refused the cipher list {list:?}")]
    CipherList {
        /// The list given.
        list: String,
        /// OpenSSL's error.
        #[source]
        source: ErrorStack,
    },
    /// The server name is not usable for SNI or hostname verification.
    #[error("invalid server name {name:?}")]
    ServerName {
        /// The name given.
        name: String,
        /// OpenSSL's error.
        #[source]
        source: ErrorStack,
    },
    /// A value is outside its allowed range.
    #[error("{what} must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Lower bound.
        min: usize,
        /// Upper bound.
        max: usize,
        /// The value given.
        got: usize,
    },
    /// The server key is not an ECDSA key, and DTLS offers ECDSA cipher suites only.
    #[error(
        "the server key is {found}; DTLS offers ECDSA cipher suites only: use an ECDSA (P-256) certificate, or disable UDP"
    )]
    ServerKeyType {
        /// The key type found.
        found: &'static str,
    },
    /// Setting up the OpenSSL context failed.
    #[error("OpenSSL context setup failed")]
    Context(#[source] ErrorStack),
}

/// A DTLS handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handshake did not finish in time.
    #[error("DTLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's certificate failed verification (unknown CA, wrong name, expired, ...).
    #[error("peer certificate rejected")]
    PeerCertificate(#[source] X509VerifyResult),
    /// The TLS protocol failed: an alert from the peer, no shared cipher suite, no client
    /// certificate, ...
    #[error("DTLS handshake failed")]
    Tls(#[source] openssl::ssl::Error),
    /// The peer's certificate is not valid now: a session resumed after the certificate of
    /// the handshake that created it expired (or before it became valid).
    #[error("the peer certificate is outside its validity period")]
    CertificateNotValidNow,
    /// The peer did not negotiate the extended master secret (RFC 7627), which is required.
    #[error("peer did not negotiate the extended master secret")]
    NoExtendedMasterSecret,
    /// The socket failed.
    #[error("socket error during the DTLS handshake")]
    Io(#[source] io::Error),
    /// The listener stopped routing datagrams to this handshake (it was replaced by a newer one
    /// from the same address, or the listener closed).
    #[error("the listener abandoned this handshake")]
    Detached,
}

/// [`connect`](crate::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or connecting the UDP socket failed.
    #[error("cannot set up the UDP socket")]
    Socket(#[source] io::Error),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// [`send`](crate::DtlsSession::send) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The payload exceeds the configured maximum; nothing was sent.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An empty payload cannot be sent as a DTLS record.
    #[error("empty payload")]
    Empty,
    /// The session was shut down (by this side or the peer).
    #[error("the DTLS session is closed")]
    Closed,
    /// OpenSSL failed to encrypt or send.
    #[error("DTLS write failed")]
    Tls(#[source] openssl::ssl::Error),
    /// The socket failed.
    #[error("socket error while sending")]
    Io(#[source] io::Error),
}

/// [`recv`](crate::DtlsSession::recv) failed. A clean close (close_notify) is not an error:
/// `recv` returns `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The record was longer than the buffer; the rest of it was discarded.
    #[error("record of {len} bytes truncated to the {capacity}-byte buffer")]
    Truncated {
        /// Record length.
        len: usize,
        /// Buffer length.
        capacity: usize,
    },
    /// `recv` was given an empty buffer.
    #[error("empty receive buffer")]
    EmptyBuffer,
    /// OpenSSL reported a fatal error (for example a fatal alert from the peer).
    #[error("DTLS read failed")]
    Tls(#[source] openssl::ssl::Error),
    /// The socket failed.
    #[error("socket error while receiving")]
    Io(#[source] io::Error),
    /// A new handshake from the same address replaced this session (the peer restarted).
    #[error("replaced by a new session from the same address")]
    Replaced,
    /// The listener that fed this session is gone.
    #[error("the listener closed")]
    ListenerClosed,
}

/// [`DtlsListener::bind`](crate::DtlsListener::bind) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding the UDP socket failed.
    #[error("cannot bind the UDP socket")]
    Io(#[source] io::Error),
    /// Generating the cookie secret failed.
    #[error("cannot generate the cookie secret")]
    Random(#[source] openssl::error::ErrorStack),
    /// The socket is bound to an unspecified address and refused to report the local address
    /// of each datagram (`IP_PKTINFO`, `IPV6_RECVPKTINFO`), without which its answers could
    /// come from an address the client did not send to.
    #[error("cannot ask the UDP socket for each datagram's local address (IP_PKTINFO)")]
    Destinations(#[source] io::Error),
}

/// [`DtlsListener::accept`](crate::DtlsListener::accept) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// Receiving on the listener's socket failed; the listener has stopped.
    #[error("the listener's socket failed")]
    Socket(#[source] io::Error),
    /// The listener has stopped.
    #[error("the listener has stopped")]
    Closed,
}

impl SendError {
    pub(crate) fn from_ssl(e: openssl::ssl::Error) -> Self {
        match e.into_io_error() {
            Ok(io) => Self::Io(io),
            Err(e) => Self::Tls(e),
        }
    }
}

impl RecvError {
    pub(crate) fn from_ssl(e: openssl::ssl::Error) -> Self {
        match e.into_io_error() {
            Ok(io) => Self::Io(io),
            Err(e) => Self::Tls(e),
        }
    }
}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> Self {
        let kind = match &e {
            SendError::TooLarge { .. } | SendError::Empty => io::ErrorKind::InvalidInput,
            SendError::Closed => io::ErrorKind::BrokenPipe,
            SendError::Io(io) => io.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

impl From<RecvError> for io::Error {
    fn from(e: RecvError) -> Self {
        let kind = match &e {
            RecvError::Truncated { .. } | RecvError::EmptyBuffer => io::ErrorKind::InvalidInput,
            RecvError::Replaced | RecvError::ListenerClosed => io::ErrorKind::ConnectionAborted,
            RecvError::Io(io) => io.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
