//! Errors of the clients (TCP and UDP), shared by both transports.

use std::io;
use std::time::Duration;

/// Why a client could not open a tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server's name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The destination cannot be put in a header.
    #[error(transparent)]
    Header(#[from] proto::EncodeError),
    /// Connecting to the server or the TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] tls::ConnectError),
    /// The DTLS handshake failed.
    #[error(transparent)]
    Dtls(#[from] dtls::ConnectError),
    /// Sending the header over DTLS failed.
    #[error("sending the header")]
    DtlsSend(#[source] dtls::SendError),
    /// Sending the header over TLS failed.
    #[error("sending the header")]
    Io(#[source] io::Error),
}

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The connection, handshake or header failed.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The server sent data instead of closing.
    #[error("the server answered with data instead of closing")]
    NotClosed,
    /// The server did not close within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Reading the server's answer over TLS failed (a reset instead of a clean close).
    #[error("reading the answer")]
    Io(#[source] io::Error),
    /// Reading the server's answer over DTLS failed.
    #[error("reading the answer")]
    Dtls(#[source] dtls::RecvError),
}

/// Why a server name could not be turned into addresses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolver failed.
    #[error("cannot resolve the server {server}")]
    Failed {
        /// The server, `host:port`.
        server: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The name has no address.
    #[error("the server name {server} resolves to no address")]
    NoAddress {
        /// The server, `host:port`.
        server: String,
    },
}
