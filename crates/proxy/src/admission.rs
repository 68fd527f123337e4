//! The way into a tunnel, the same on TCP and UDP: the header under the header timeout, the
//! health check, the dial, and what is counted and logged when one of them refuses.
//!
//! The transports keep only their own reads: TCP reads the header from a stream, UDP takes
//! it from the session's first record. Everything the server decides from there on is
//! written here once, with one set of log texts and metrics:
//!
//! | step | refused as | metric (`transport` label) | log line |
//! |---|---|---|---|
//! | header | [`Refusal::HeaderTimeout`] | `header_errors{kind="timeout"}` | `no header in time` |
//! | header | [`Refusal::Header`] | `header_errors{kind=...}` | `rejected header` |
//! | header | [`Refusal::NotAHeader`] | `header_errors{kind="first_record_not_header"}` | `rejected session` |
//! | identity | [`Refusal::Identity`] | `policy_refused` | `client refused by the identity rules` |
//! | dial | [`Refusal::Dial`] | `policy_refused` or `dial_failed` | `tunnel refused` |
//!
//! An admission takes one snapshot of the server's [`LivePolicy`] and keeps it: a reload
//! during the admission or the tunnel does not change what admitted it. The identity rules are
//! checked once the header is read, for tunnels and health checks alike, before any name
//! lookup or dial; the destination is then checked against the policy the identity grants.
//! A health check is counted (`health_checks`) and logged at debug level.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::HeaderError;

use crate::context::{LivePolicy, ServerContext};
use crate::destination::Destination;
use crate::dial::{DialError, Dialer};
use crate::explain::ErrorChain;
use crate::identity::{Grant, IdentityRefusal};
use crate::metrics::Transport;
use crate::proxy_protocol::{ProxyHeader, ProxyProtocol, Ssl};
use crate::request::{ReadHeaderError, Request};
use crate::tunnel::Client;

/// Why a client got no tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The client did not send a whole header within the header timeout.
    #[error("no complete header within {0:?}")]
    HeaderTimeout(Duration),
    /// The header could not be read or is invalid.
    #[error(transparent)]
    Header(#[from] ReadHeaderError),
    /// The session's first record does not even start with a header version: most often a
    /// data datagram whose session lost its header on the path (DTLS does not retransmit
    /// application data), else a client that does not speak the protocol.
    #[error("the first record ({bytes} bytes) is not a header")]
    NotAHeader {
        /// The record's length.
        bytes: usize,
        /// What decoding said.
        #[source]
        error: HeaderError,
    },
    /// Identity rules exist and none admits the client's certificate.
    #[error("client refused by the identity rules")]
    Identity(#[source] IdentityRefusal),
    /// The destination was refused by the policy or could not be reached.
    #[error("tunnel to {destination} refused")]
    Dial {
        /// The destination asked for.
        destination: Destination,
        /// Why (shared: one dial may answer several waiting sessions).
        #[source]
        error: Arc<DialError>,
    },
}

impl Refusal {
    /// The `kind` label of a header error, or `None` when the header was fine.
    pub fn header_kind(&self) -> Option<&'static str> {
        match self {
            Refusal::HeaderTimeout(_) => Some("timeout"),
            Refusal::Header(e) => Some(e.kind()),
            Refusal::NotAHeader { .. } => Some("first_record_not_header"),
            Refusal::Identity(_) | Refusal::Dial { .. } => None,
        }
    }
}

/// What a request asks for once its header is read.
#[derive(Debug)]
pub(crate) enum Asked {
    /// A health check: close without dialing.
    HealthCheck,
    /// A tunnel to this destination, with what the client's identity grants.
    Tunnel(Request, Destination, Grant),
}

/// One client's way in, on one transport. Every method that refuses has counted and logged
/// the refusal before it returns; callers only close their side.
pub(crate) struct Admission<'a> {
    ctx: &'a ServerContext,
    transport: Transport,
    client: &'a Client,
    live: Arc<LivePolicy>,
}

impl<'a> Admission<'a> {
    pub(crate) fn new(
        ctx: &'a ServerContext,
        transport: Transport,
        client: &'a Client,
    ) -> Admission<'a> {
        Admission {
            ctx,
            transport,
            client,
            live: ctx.live.load_full(),
        }
    }

    /// Waits for the header under the header timeout, checks the client's identity and says
    /// what it asks for.
    pub(crate) async fn request(
        &self,
        read: impl Future<Output = Result<Request, Refusal>>,
    ) -> Result<Asked, Refusal> {
        let timeout = self.live.header_timeout;
        let started = std::time::Instant::now();
        let request = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(request)) => {
                self.ctx
                    .metrics
                    .header_took(self.transport, started.elapsed());
                request
            }
            Ok(Err(refusal)) => return Err(self.refuse(refusal)),
            Err(_) => return Err(self.refuse(Refusal::HeaderTimeout(timeout))),
        };
        let grant = self
            .live
            .access
            .admit(self.client.certificate.as_deref())
            .map_err(|e| self.refuse(Refusal::Identity(e)))?;
        match request.destination.clone() {
            Some(destination) if !request.is_health_check() => {
                Ok(Asked::Tunnel(request, destination, grant))
            }
            _ => {
                self.ctx.metrics.health_check(self.transport);
                tracing::debug!(transport = %self.transport, peer = %self.client, "health check");
                Ok(Asked::HealthCheck)
            }
        }
    }

    /// The server's dialer with the policy `grant` gives and the dial timeout in force.
    pub(crate) fn dialer(&self, grant: &Grant) -> Dialer {
        Dialer {
            policy: Arc::clone(grant.policy()),
            timeout: self.live.dial_timeout,
            ..self.ctx.dialer.clone()
        }
    }

    /// The PROXY protocol header this client's tunnels send first (TCP) or in front of every
    /// datagram (UDP), if its grant asks for one.
    pub(crate) fn proxy_header(
        &self,
        grant: &Grant,
        transport: crate::proxy_protocol::Transport,
        fallback_local: std::net::SocketAddr,
    ) -> Option<Vec<u8>> {
        if grant.proxy_protocol() != ProxyProtocol::V2 {
            return None;
        }
        let connection = &self.client.connection;
        let ssl = Ssl {
            version: connection.version,
            common_name: self
                .client
                .certificate
                .as_deref()
                .and_then(|c| c.common_name()),
        };
        let header = ProxyHeader {
            transport,
            source: self.client.addr,
            destination: connection.local.unwrap_or(fallback_local),
            alpn: connection.alpn.map(str::as_bytes),
            ssl: Some(ssl),
        };
        // Only a common name longer than a TLV can carry fails; the header goes without it.
        let without_name = ProxyHeader {
            ssl: Some(Ssl {
                common_name: None,
                ..ssl
            }),
            ..header
        };
        header.to_vec().or_else(|_| without_name.to_vec()).ok()
    }

    /// Runs `dial` for `destination`; a failure is counted as a policy refusal or a dial
    /// failure.
    pub(crate) async fn dial<T, E: Into<Arc<DialError>>>(
        &self,
        destination: &Destination,
        dial: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Refusal> {
        let started = std::time::Instant::now();
        let dialed = dial.await;
        if dialed.is_ok() {
            self.ctx
                .metrics
                .dial_took(self.transport, started.elapsed());
        }
        dialed.map_err(|error| {
            self.refuse(Refusal::Dial {
                destination: destination.clone(),
                error: error.into(),
            })
        })
    }

    /// Counts and logs `refusal` once, and gives it back.
    pub(crate) fn refuse(&self, refusal: Refusal) -> Refusal {
        let metrics = &self.ctx.metrics;
        let (transport, peer) = (self.transport, self.client);
        if let Some(kind) = refusal.header_kind() {
            metrics.header_error(transport, kind);
        }
        match &refusal {
            Refusal::HeaderTimeout(timeout) => {
                tracing::warn!(transport = %transport, peer = %peer, timeout = ?timeout, "no header in time");
            }
            Refusal::Header(e) => {
                tracing::warn!(transport = %transport, peer = %peer, error = %ErrorChain(e), "rejected header");
            }
            Refusal::NotAHeader { bytes, error } => {
                tracing::warn!(transport = %transport, peer = %peer, reason = "first record is not a header", bytes, error = %error, "rejected session (its header was lost, or the client is not speaking the protocol)");
            }
            Refusal::Identity(error) => {
                metrics.policy_refused(transport);
                let identity = match error {
                    IdentityRefusal::NoRule { identity } => identity.to_string(),
                    _ => "(unreadable certificate)".to_owned(),
                };
                tracing::warn!(transport = %transport, peer = %peer.addr, subject = peer.subject.as_deref().unwrap_or("-"), identity = %identity, "client refused by the identity rules: none matches its certificate");
            }
            Refusal::Dial { destination, error } => {
                if error.is_refusal() {
                    metrics.policy_refused(transport);
                } else {
                    metrics.dial_failed(transport);
                }
                tracing::warn!(transport = %transport, peer = %peer, destination = ?destination, error = %ErrorChain(&**error), "tunnel refused");
            }
        }
        refusal
    }
}
