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
//! | dial | [`Refusal::Dial`] | `policy_refused` or `dial_failed` | `tunnel refused` |
//!
//! A health check is counted (`health_checks`) and logged at debug level.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::HeaderError;

use crate::context::ServerContext;
use crate::destination::Destination;
use crate::dial::DialError;
use crate::explain::ErrorChain;
use crate::metrics::Transport;
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
            Refusal::Dial { .. } => None,
        }
    }
}

/// What a request asks for once its header is read.
#[derive(Debug)]
pub(crate) enum Asked {
    /// A health check: close without dialing.
    HealthCheck,
    /// A tunnel to this destination.
    Tunnel(Request, Destination),
}

/// One client's way in, on one transport. Every method that refuses has counted and logged
/// the refusal before it returns; callers only close their side.
pub(crate) struct Admission<'a> {
    ctx: &'a ServerContext,
    transport: Transport,
    client: &'a Client,
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
        }
    }

    /// Waits for the header under the header timeout and says what it asks for.
    pub(crate) async fn request(
        &self,
        read: impl Future<Output = Result<Request, Refusal>>,
    ) -> Result<Asked, Refusal> {
        let timeout = self.ctx.settings.header_timeout;
        let request = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(request)) => request,
            Ok(Err(refusal)) => return Err(self.refuse(refusal)),
            Err(_) => return Err(self.refuse(Refusal::HeaderTimeout(timeout))),
        };
        match request.destination.clone() {
            Some(destination) if !request.is_health_check() => {
                Ok(Asked::Tunnel(request, destination))
            }
            _ => {
                self.ctx.metrics.health_check(self.transport);
                tracing::debug!(transport = %self.transport, peer = %self.client, "health check");
                Ok(Asked::HealthCheck)
            }
        }
    }

    /// Runs `dial` for `destination`; a failure is counted as a policy refusal or a dial
    /// failure.
    pub(crate) async fn dial<T, E: Into<Arc<DialError>>>(
        &self,
        destination: &Destination,
        dial: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Refusal> {
        dial.await.map_err(|error| {
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
