//! The server handshake, under a timeout, reporting who connected.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{AcceptError, Failure};
use crate::{AppProtocol, CertificateSummary, PeerInfo, ReadAhead, ServerConfig, ServerTlsStream};

/// Performs server handshakes with a [`ServerConfig`]. Cloning is cheap.
#[derive(Clone)]
pub struct Acceptor {
    inner: TlsAcceptor,
    timeout: Duration,
}

/// A connection whose handshake succeeded.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted<IO = TcpStream> {
    /// The TLS stream, ready for application data; it reads the transport through a
    /// [`ReadAhead`].
    pub stream: ServerTlsStream<IO>,
    /// Who connected and what was negotiated.
    pub peer: PeerInfo,
}

impl Acceptor {
    /// An acceptor with the configuration's
    /// [handshake timeout](crate::ServerConfigBuilder::handshake_timeout).
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            inner: TlsAcceptor::from(config.rustls()),
            timeout: config.handshake_timeout(),
        }
    }

    /// How long a handshake may take: the configuration's
    /// [handshake timeout](crate::ServerConfigBuilder::handshake_timeout).
    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs the server handshake on an accepted transport (`peer_addr` is the client's
    /// address, as `TcpListener::accept` returns it).
    ///
    /// The transport is read through a [`ReadAhead`], from the first handshake byte on.
    ///
    /// Succeeds only with a client certificate that chains to the CA in force. The transport is
    /// dropped on error; when we aborted the handshake the client was sent an alert first.
    pub async fn accept<IO>(
        &self,
        io: IO,
        peer_addr: SocketAddr,
    ) -> Result<Accepted<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.timeout, self.inner.accept(ReadAhead::new(io)))
            .await
            .map_err(|_| AcceptError::Timeout(self.timeout))?
            .map_err(|e| AcceptError::from(Failure::classify(e)))?;
        let (_, conn) = stream.get_ref();
        // The verifier makes the client certificate mandatory: a finished handshake has one.
        let leaf = conn
            .peer_certificates()
            .and_then(<[_]>::first)
            .ok_or(AcceptError::Tls(rustls::Error::NoCertificatesPresented))?;
        // A resumed session carries the chain of the handshake that issued its ticket, which
        // nothing re-verifies: resumption must not outlive the certificate.
        let valid_now = crate::load::parse_der(leaf)
            .map_err(AcceptError::PeerCertificate)?
            .validity()
            .is_valid();
        if !valid_now {
            return Err(AcceptError::CertificateNotValidNow);
        }
        let certificate =
            CertificateSummary::from_der(leaf).map_err(AcceptError::PeerCertificate)?;
        let peer = PeerInfo {
            addr: peer_addr,
            alpn: conn.alpn_protocol().and_then(AppProtocol::from_name),
            version: conn.protocol_version(),
            certificate,
        };
        Ok(Accepted { stream, peer })
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
