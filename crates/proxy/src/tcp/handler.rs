//! Serving one already-secured stream: header, policy, dial, relay.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::admission::{Admission, Asked, Refusal};
use crate::context::ServerContext;
use crate::dial::{DialError, dial_tcp};
use crate::metrics::{Metrics, Transport};
use crate::proxy_protocol::Transport as ProxyTransport;
use crate::relay::relay_reporting;
use crate::request::{Request, read_header};
use crate::settings::Settings;
use crate::tunnel::{Client, Tunnel};

/// Why a stream was closed without a tunnel, or how a tunnel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The client got no tunnel: no header in time, a bad header, or a refused destination.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The relay failed after the tunnel was up.
    #[error("relay failed")]
    Relay(#[source] io::Error),
}

/// What serving a stream did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// The client sent a health check; the stream was closed without dialing.
    HealthCheck,
    /// A tunnel ran to its end.
    Tunnel {
        /// The destination requested.
        request: Request,
        /// Bytes from the client to the destination.
        up: u64,
        /// Bytes from the destination to the client.
        down: u64,
    },
}

/// Serves streams that are already accepted and secured, such as connections an HTTPS server
/// routed here by their ALPN protocol. Cloning is cheap.
///
/// ```no_run
/// # async fn example(stream: tokio::net::TcpStream) {
/// use streamproxy_proxy::{ServerContext, policy::Policy, settings::Settings};
/// use streamproxy_proxy::tcp::StreamHandler;
/// use streamproxy_proxy::tunnel::Client;
///
/// let ctx = ServerContext::new(Policy::allow_all([]), Settings::default());
/// let handler = StreamHandler::new(ctx);
/// let client = Client::from_addr(stream.peer_addr().unwrap());
/// // `stream` would be a TLS stream in a real server.
/// let _ = handler.serve(stream, client).await;
/// # }
/// ```
#[derive(Clone)]
pub struct StreamHandler {
    inner: Arc<ServerContext>,
}

impl StreamHandler {
    /// A handler that dials what the context's policy allows, with its timeouts, counting
    /// into its metrics.
    pub fn new(ctx: ServerContext) -> StreamHandler {
        StreamHandler {
            inner: Arc::new(ctx),
        }
    }

    /// The context this handler serves with.
    pub fn context(&self) -> &ServerContext {
        &self.inner
    }

    /// The metrics this handler counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Serves one stream to its end: reads the header under the header timeout, answers a
    /// health check, checks the policy, dials and relays. Logs and counts every outcome
    /// once; the returned error is for callers that want it, not to be logged again.
    pub async fn serve<S>(&self, mut stream: S, client: Client) -> Result<Served, StreamError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let inner = &*self.inner;
        let admission = Admission::new(inner, Transport::Tcp, &client);
        let read = async { read_header(&mut stream).await.map_err(Refusal::from) };
        // A refusal drops the stream without close_notify: a refused health check does not
        // look healthy.
        let (request, destination, grant) = match admission.request(read).await? {
            Asked::Tunnel(request, destination, grant) => (request, destination, grant),
            Asked::HealthCheck => {
                let _ = stream.shutdown().await;
                return Ok(Served::HealthCheck);
            }
        };
        let dialer = admission.dialer(&grant);
        let dial = async {
            let mut outbound = dial_tcp(&destination, &dialer, Some(client.addr.ip())).await?;
            let local = outbound.local_addr().unwrap_or(client.addr);
            if let Some(header) = admission.proxy_header(&grant, ProxyTransport::Stream, local) {
                outbound
                    .write_all(&header)
                    .await
                    .map_err(|source| DialError::Connect {
                        destination: destination.clone(),
                        source,
                    })?;
            }
            Ok::<_, DialError>(outbound)
        };
        let mut outbound = match admission.dial(&destination, dial).await {
            Ok(outbound) => outbound,
            Err(refusal) => {
                let _ = stream.shutdown().await;
                return Err(refusal.into());
            }
        };
        let tunnel = Tunnel::open(
            &inner.metrics,
            Transport::Tcp,
            &client,
            destination,
            grant.rule(),
        );
        let (bytes_up, bytes_down) = inner.metrics.byte_counters(Transport::Tcp);
        let outcome = relay_reporting(&mut stream, &mut outbound, |up, down| {
            bytes_up.inc_by(up);
            bytes_down.inc_by(down);
        })
        .await;
        let (up, down) = (outcome.up, outcome.down);
        match outcome.result {
            Ok(()) => {
                tunnel.close(up, down, &"end of stream");
                Ok(Served::Tunnel { request, up, down })
            }
            Err(e) => {
                tunnel.close(up, down, &e);
                Err(StreamError::Relay(e))
            }
        }
    }
}
