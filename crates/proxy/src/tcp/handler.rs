//! Serving one already-secured stream: header, policy, dial, relay.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::{Admission, Asked, Refusal};
use crate::context::ServerContext;
use crate::destination::Destination;
use crate::dial::{DialError, Dialer, dial_tcp};
use crate::identity::Grant;
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
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would store the stream twice in the tunnel's state"
    )]
    pub fn serve<S>(
        &self,
        mut stream: S,
        client: Client,
    ) -> impl Future<Output = Result<Served, StreamError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // An `async` block rather than an `async fn`: it uses the stream where it was captured,
        // where an `async fn` would keep a second copy of it (about 1.2 KiB for a TLS stream)
        // in every idle tunnel's state. The header read and the dial, which run once, are
        // boxed so that their state is not reserved for the tunnel's whole life.
        async move {
            let inner = &*self.inner;
            let admission = Admission::new(inner, Transport::Tcp, &client);
            let read = async { read_header(&mut stream).await.map_err(Refusal::from) };
            // A refusal drops the stream without close_notify: a refused health check does
            // not look healthy.
            let (request, destination, grant) = match Box::pin(admission.request(read)).await? {
                Asked::Tunnel(request, destination, grant) => (request, destination, grant),
                Asked::HealthCheck => {
                    let _ = stream.shutdown().await;
                    return Ok(Served::HealthCheck);
                }
            };
            let dialer = admission.dialer(&grant);
            let dial = dial_outbound(&admission, &grant, &destination, &dialer, &client);
            let mut outbound = match Box::pin(admission.dial(&destination, dial)).await {
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
}

/// Dials the destination and writes the PROXY protocol header first when the grant asks for
/// one.
async fn dial_outbound(
    admission: &Admission<'_>,
    grant: &Grant,
    destination: &Destination,
    dialer: &Dialer,
    client: &Client,
) -> Result<TcpStream, DialError> {
    let mut outbound = dial_tcp(destination, dialer, Some(client.addr.ip())).await?;
    let local = outbound.local_addr().unwrap_or(client.addr);
    if let Some(header) = admission.proxy_header(grant, ProxyTransport::Stream, local) {
        outbound
            .write_all(&header)
            .await
            .map_err(|source| DialError::Connect {
                destination: destination.clone(),
                source,
            })?;
    }
    Ok(outbound)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    use super::*;
    use crate::policy::Policy;

    /// A stream as large as a TLS stream is and more: storing it twice would show.
    struct Padded {
        io: DuplexStream,
        _pad: [u8; 4096],
    }

    impl AsyncRead for Padded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Padded {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[test]
    fn a_tunnel_stores_its_stream_once() {
        let handler = StreamHandler::new(ServerContext::new(
            Policy::allow_all([]),
            Settings::default(),
        ));
        let (io, _peer) = tokio::io::duplex(64);
        let stream = Padded {
            io,
            _pad: [0; 4096],
        };
        let client = Client::from_addr(([127, 0, 0, 1], 1).into());
        let serve = handler.serve(stream, client);
        let size = std::mem::size_of_val(&serve);
        // The stream, plus the relay's and the tunnel's state (about 1.2 KiB today); a second
        // copy of the stream, or the header read's or the dial's state kept for the tunnel's
        // life, would exceed it.
        assert!(
            size < std::mem::size_of::<Padded>() + 2048,
            "the serve future is {size} bytes"
        );
    }
}
