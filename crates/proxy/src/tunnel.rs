//! The life of one tunnel as logs and metrics see it: one line when it opens, one when it
//! closes, with who, where, how much and why it ended.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::destination::Destination;
use crate::identity::PeerCertificate;
use crate::metrics::{Metrics, Transport};

/// Who is on the client side of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub addr: SocketAddr,
    /// The subject of the client's certificate, when known.
    pub subject: Option<String>,
    /// What identity rules match on: the certificate's names and key pin. `None` when the
    /// certificate is unknown or unreadable; identity rules then refuse the client.
    pub certificate: Option<Arc<PeerCertificate>>,
    /// How the client is connected, for the PROXY protocol header.
    pub connection: Connection,
}

/// How a client is connected: what a PROXY protocol header tells the destination besides
/// the client's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// The server's address the client connected to.
    pub local: Option<SocketAddr>,
    /// The negotiated application protocol.
    pub alpn: Option<&'static str>,
    /// The TLS or DTLS version, as `TLSv1.3` or `DTLSv1.2`.
    pub version: Option<&'static str>,
}

impl Connection {
    /// A connection to `local` with this ALPN protocol and version.
    pub fn new(
        local: Option<SocketAddr>,
        alpn: Option<&'static str>,
        version: Option<&'static str>,
    ) -> Connection {
        Connection {
            local,
            alpn,
            version,
        }
    }
}

impl Client {
    /// A client known by its address only.
    pub fn from_addr(addr: SocketAddr) -> Client {
        Client {
            addr,
            subject: None,
            certificate: None,
            connection: Connection::default(),
        }
    }

    /// The client with the subject and identity of its certificate (DER); an unreadable
    /// certificate leaves the identity unknown.
    pub fn with_certificate(mut self, subject: Option<String>, der: Option<&[u8]>) -> Client {
        self.subject = subject;
        self.certificate = der
            .and_then(|der| PeerCertificate::from_der(der).ok())
            .map(Arc::new);
        self
    }

    /// The client with how it is connected.
    pub fn with_connection(mut self, connection: Connection) -> Client {
        self.connection = connection;
        self
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(s) => write!(f, "{} ({s})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An open tunnel: counts it as active until [`Tunnel::close`] logs its end.
pub(crate) struct Tunnel<'m> {
    metrics: &'m Metrics,
    transport: Transport,
    client: Client,
    destination: Destination,
    opened: Instant,
    closed: bool,
}

impl<'m> Tunnel<'m> {
    pub(crate) fn open(
        metrics: &'m Metrics,
        transport: Transport,
        client: &Client,
        destination: Destination,
        identity: Option<&str>,
    ) -> Tunnel<'m> {
        metrics.tunnel_opened(transport);
        tracing::info!(
            transport = %transport,
            peer = %client.addr,
            subject = client.subject.as_deref().unwrap_or("-"),
            identity = identity.unwrap_or("-"),
            destination = ?destination,
            "tunnel open"
        );
        Tunnel {
            metrics,
            transport,
            client: client.clone(),
            destination,
            opened: Instant::now(),
            closed: false,
        }
    }

    /// Logs the tunnel's end (its bytes were counted in the metrics as they moved).
    pub(crate) fn close(mut self, up: u64, down: u64, reason: &dyn fmt::Display) {
        self.finish(up, down, reason);
    }

    fn finish(&mut self, up: u64, down: u64, reason: &dyn fmt::Display) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.metrics
            .tunnel_closed(self.transport, self.opened.elapsed());
        tracing::info!(
            transport = %self.transport,
            peer = %self.client.addr,
            subject = self.client.subject.as_deref().unwrap_or("-"),
            destination = ?self.destination,
            bytes_up = up,
            bytes_down = down,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            reason = %reason,
            "tunnel closed"
        );
    }
}

impl Drop for Tunnel<'_> {
    fn drop(&mut self) {
        // A tunnel task that was cancelled still leaves the active count right.
        self.finish(0, 0, &"cancelled");
    }
}
