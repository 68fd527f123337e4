//! The TCP server: accepts TCP connections, runs the TLS handshake and routes each connection
//! by its ALPN protocol to the stream handler or the HTTPS API.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tls::AppProtocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiEnd, ApiSettings, serve_api};
use crate::metrics::{Metrics, Transport};
use crate::settings::Settings;
use crate::shutdown::Tasks;
use crate::tcp::StreamHandler;
use crate::tcp::handshakes::{HandshakeSlots, LogBudget, Reason, SUMMARY_EVERY, Slot, Summary};
use crate::tunnel::{Client, Connection};

/// A TLS server on an already-bound TCP listener.
///
/// Limits: at most `max_handshakes` handshakes in flight and `max_tcp_tunnels` tunnels open
/// (from the handler's [`Settings`](crate::settings::Settings)). A connection beyond the tunnel
/// limit is closed at once and counted. When every handshake slot is taken, the oldest
/// handshake in flight is closed (and counted) to make room: connections that never finish
/// their handshake cannot lock out clients that do.
///
/// Connections are routed by their ALPN protocol as the GoDoxy agent routes them:
/// `godoxy-agent-stream/1` is a stream tunnel; `http/1.1` or no protocol at all gets the HTTPS
/// API when it is enabled and is closed otherwise (a header sent without the stream protocol is
/// never relayed). The TLS layer refuses any other protocol during the handshake.
pub struct TcpServer {
    listener: TcpListener,
    acceptor: tls::Acceptor,
    handler: StreamHandler,
    api: Option<ApiSettings>,
}

impl TcpServer {
    /// A server accepting on `listener`, handshaking with `acceptor` (under the handshake
    /// timeout of its TLS configuration) and serving tunnels with `handler`.
    pub fn new(
        listener: TcpListener,
        acceptor: tls::Acceptor,
        handler: StreamHandler,
    ) -> TcpServer {
        TcpServer {
            listener,
            acceptor,
            handler,
            api: None,
        }
    }

    /// Serves the HTTPS API ([`crate::api`]) with its default settings to connections that
    /// negotiate `http/1.1` or no protocol.
    pub fn with_api(self, enabled: bool) -> TcpServer {
        self.with_api_settings(enabled.then(ApiSettings::default))
    }

    /// Serves the HTTPS API with `settings` (`None`: no API).
    pub fn with_api_settings(mut self, settings: Option<ApiSettings>) -> TcpServer {
        self.api = settings;
        self
    }

    /// The address the server accepts on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until `shutdown` completes; then stops accepting, lets
    /// live connections finish for the drain period, and closes what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let TcpServer {
            listener,
            acceptor,
            handler,
            api,
        } = self;
        let settings = handler.settings().clone();
        let slots =
            HandshakeSlots::new(settings.max_handshakes, settings.max_handshakes_per_source);
        let shared = Arc::new(Shared::new(acceptor, handler, api));
        let tasks = Tasks::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, addr) = tokio::select! {
                () = &mut shutdown => {
                    shared.stopping.cancel();
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving what is open.
                        tracing::warn!(transport = "tcp", error = %crate::explain::ErrorChain(&e), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match slots.admit(addr.ip()) {
                Ok((slot, evicted)) => {
                    if let Some(reason) = evicted {
                        shared.refused(reason);
                    }
                    slot
                }
                Err(reason) => {
                    shared.refused(reason);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if let Some(keepalive) = &settings.tcp_keepalive {
                keepalive.apply(&tcp, "client");
            }
            tasks.spawn(Arc::clone(&shared).serve(tcp, addr, slot));
        }
        drop(listener);
        drain(&tasks, settings.drain_period).await;
    }
}

/// Lets open connections finish for `period`, then closes the rest.
async fn drain(tasks: &Tasks, period: Duration) {
    let open = tasks.len();
    if open > 0 {
        tracing::info!(transport = "tcp", open, drain = ?period, "draining connections");
    }
    let cancelled = tasks.drain(period).await;
    if cancelled > 0 {
        tracing::warn!(
            transport = "tcp",
            cancelled,
            "closed connections still open after the drain period"
        );
    }
}

/// What every connection's task shares.
struct Shared {
    acceptor: tls::Acceptor,
    handler: StreamHandler,
    metrics: Arc<Metrics>,
    settings: Settings,
    tunnels: Arc<Semaphore>,
    api: Option<(ApiSettings, Arc<Semaphore>)>,
    /// Cancelled on shutdown: API connections end their keep-alive.
    stopping: CancellationToken,
    /// Summarises refusals for a handshake slot in the log.
    summary: Summary,
    /// At most 10 handshake-failure lines per 10 s; the next one says how many were held.
    failures: LogBudget,
}

impl Shared {
    fn new(acceptor: tls::Acceptor, handler: StreamHandler, api: Option<ApiSettings>) -> Shared {
        let settings = handler.settings().clone();
        Shared {
            acceptor,
            metrics: Arc::clone(handler.metrics()),
            tunnels: Arc::new(Semaphore::new(settings.max_tcp_tunnels)),
            api: api.map(|s| {
                let connections = Arc::new(Semaphore::new(s.max_connections));
                (s, connections)
            }),
            handler,
            settings,
            stopping: CancellationToken::new(),
            summary: Summary::new(SUMMARY_EVERY),
            failures: LogBudget::new(SUMMARY_EVERY, 10),
        }
    }

    /// One connection: the TLS handshake in its slot, then the stream handler or the API.
    async fn serve(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr, slot: Slot) {
        // The handshake and an API connection are boxed: their state (the handshake's about
        // 1.8 KiB, the API's about 4.6 KiB) would otherwise be reserved in every tunnel's task
        // for the tunnel's whole life.
        let Some(accepted) = Box::pin(self.handshake(tcp, addr, slot)).await else {
            return;
        };
        let client = peer_client(&accepted);
        // Taken apart so that the stream, moved into the handler below, is not also kept in
        // this task's state as part of `accepted`.
        let tls::Accepted { stream, peer, .. } = accepted;
        match (peer.alpn, &self.api) {
            (Some(AppProtocol::Stream), _) => {
                let Ok(_permit) = Arc::clone(&self.tunnels).try_acquire_owned() else {
                    self.metrics.limit_refused(Transport::Tcp);
                    tracing::warn!(transport = "tcp", peer = %client, "too many tunnels; connection closed");
                    return;
                };
                let _ = self.handler.serve(stream, client).await;
            }
            (_, Some((settings, connections))) => {
                let Ok(_permit) = Arc::clone(connections).try_acquire_owned() else {
                    self.metrics.api_refused();
                    tracing::debug!(peer = %client, limit = settings.max_connections, "too many API connections; connection closed");
                    return;
                };
                let metrics = Arc::clone(&self.metrics);
                let end =
                    Box::pin(serve_api(stream, metrics, settings, self.stopping.clone())).await;
                if let ApiEnd::Error(e) = end {
                    tracing::debug!(peer = %client, error = %crate::explain::ErrorChain(&e), "API connection ended with an error");
                }
            }
            (alpn, None) => {
                let alpn = alpn.map_or("none", AppProtocol::name);
                tracing::warn!(peer = %client, alpn, "no stream protocol negotiated and the API is disabled; connection closed");
            }
        }
    }

    /// The TLS handshake, holding `slot` until it ends; `None` when it failed (counted and
    /// logged within the budget), the peer left without a byte, or the slot was evicted.
    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        slot: Slot,
    ) -> Option<tls::Accepted<TcpStream>> {
        let handshake = tokio::select! {
            accepted = async {
                // Its first bytes (a ClientHello) make it a connection that spoke.
                // `peek` waits for a byte (readiness alone can be a false positive).
                match tcp.peek(&mut [0u8; 1]).await {
                    Ok(n) if n > 0 => slot.spoke(),
                    // Closed without a byte: a port scan or a balancer's check.
                    _ => return None,
                }
                let started = std::time::Instant::now();
                let accepted = self.acceptor.accept(tcp, addr).await;
                if accepted.is_ok() {
                    self.metrics.handshake_took(Transport::Tcp, started.elapsed());
                }
                Some(accepted)
            } => accepted,
            () = slot.evicted() => None,
        };
        drop(slot);
        match handshake? {
            Ok(accepted) => Some(accepted),
            Err(e) => {
                self.metrics
                    .handshake_failed(Transport::Tcp, failure_reason(&e));
                // A flood of failing handshakes must not flood the log.
                if let Some(held_back) = self.failures.admit(std::time::Instant::now()) {
                    tracing::warn!(transport = "tcp", peer = %addr, held_back, error = %crate::explain::ErrorChain(&e), "handshake failed");
                }
                None
            }
        }
    }

    /// Counts a connection refused or evicted for a handshake slot, and logs a summary at
    /// most once per [`SUMMARY_EVERY`] (a flood would otherwise write a line per connection).
    fn refused(&self, reason: Reason) {
        let (metrics, settings) = (&self.metrics, &self.settings);
        metrics.limit_refused(Transport::Tcp);
        metrics.handshake_refused(Transport::Tcp, reason.as_str());
        if let Some(count) = self.summary.event(std::time::Instant::now()) {
            tracing::warn!(
                transport = "tcp",
                count,
                last_reason = reason.as_str(),
                max_handshakes = settings.max_handshakes,
                max_handshakes_per_source = settings.max_handshakes_per_source,
                "handshake slots full: connections closed (counted in streamproxy_handshake_refusals_total; at most one such line per 10 s)"
            );
        }
    }
}

/// The client of a finished handshake: its address and certificate, and what a PROXY
/// protocol header reports about the connection.
fn peer_client(accepted: &tls::Accepted) -> Client {
    let (io, conn) = accepted.stream.get_ref();
    let tcp = io.get_ref();
    let version = match accepted.peer.version {
        Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
        Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
        _ => None,
    };
    let leaf = conn.peer_certificates().and_then(<[_]>::first);
    Client::from_addr(accepted.peer.addr)
        .with_certificate(
            Some(accepted.peer.certificate.subject.clone()),
            leaf.map(|der| der.as_ref()),
        )
        .with_connection(Connection::new(
            tcp.local_addr().ok(),
            accepted.peer.alpn.map(AppProtocol::name),
            version,
        ))
}

/// The `reason` label of a failed TLS handshake: one of a few fixed words.
fn failure_reason(e: &tls::AcceptError) -> &'static str {
    match e {
        tls::AcceptError::Timeout(_) => "timeout",
        tls::AcceptError::Io(_) => "io",
        tls::AcceptError::AlertReceived(_) => "alert",
        tls::AcceptError::PeerCertificate(_) => "certificate",
        tls::AcceptError::Tls(
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented,
        ) => "certificate",
        _ => "tls",
    }
}
