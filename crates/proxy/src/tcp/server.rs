//! The TCP server: accepts TCP connections, runs the TLS handshake and routes each connection
//! by its ALPN protocol to the stream handler or the HTTPS API.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tls::AppProtocol;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiEnd, ApiSettings, serve_api};
use crate::metrics::Transport;
use crate::shutdown::Tasks;
use crate::tcp::StreamHandler;
use crate::tunnel::Client;

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
    /// A server accepting on `listener`, handshaking with `acceptor` (whose handshake timeout
    /// is set from the handler's settings) and serving tunnels with `handler`.
    pub fn new(
        listener: TcpListener,
        acceptor: tls::Acceptor,
        handler: StreamHandler,
    ) -> TcpServer {
        let acceptor = acceptor.with_handshake_timeout(handler.settings().handshake_timeout);
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
        let metrics = Arc::clone(handler.metrics());
        let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let tunnels = Arc::new(Semaphore::new(settings.max_tcp_tunnels));
        let api = api.map(|s| {
            let connections = Arc::new(Semaphore::new(s.max_connections));
            (Arc::new(s), connections)
        });
        let stopping = CancellationToken::new();
        let tasks = Tasks::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, addr) = tokio::select! {
                () = &mut shutdown => {
                    stopping.cancel();
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
            let handshake_permit = match Arc::clone(&handshakes).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let oldest = lock(&in_flight).queue.pop_front();
                    metrics.limit_refused(Transport::Tcp);
                    let Some((_, evict)) = oldest else {
                        tracing::warn!(transport = "tcp", peer = %addr, limit = settings.max_handshakes, "too many handshakes in flight; connection closed");
                        continue;
                    };
                    evict.cancel();
                    tracing::warn!(transport = "tcp", peer = %addr, limit = settings.max_handshakes, "too many handshakes in flight; closed the oldest");
                    // The evicted task frees its permit as soon as it runs.
                    let freed = tokio::time::timeout(
                        EVICTION_WAIT,
                        Arc::clone(&handshakes).acquire_owned(),
                    )
                    .await;
                    match freed {
                        Ok(Ok(permit)) => permit,
                        _ => continue,
                    }
                }
            };
            let slot = Slot::register(&in_flight);
            let _ = tcp.set_nodelay(true);
            if let Some(keepalive) = &settings.tcp_keepalive {
                keepalive.apply(&tcp, "client");
            }
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let metrics = Arc::clone(&metrics);
            let tunnels = Arc::clone(&tunnels);
            let api = api.clone();
            let stopping = stopping.clone();
            tasks.spawn(async move {
                let handshake = tokio::select! {
                    accepted = acceptor.accept(tcp, addr) => Some(accepted),
                    () = slot.evicted.cancelled() => None,
                };
                drop(slot);
                drop(handshake_permit);
                let accepted = match handshake {
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        metrics.handshake_failed(Transport::Tcp);
                        tracing::warn!(transport = "tcp", peer = %addr, error = %crate::explain::ErrorChain(&e), "handshake failed");
                        return;
                    }
                    None => return,
                };
                let client = Client {
                    addr,
                    subject: Some(accepted.peer.certificate.subject.clone()),
                };
                match (accepted.peer.alpn, api) {
                    (Some(AppProtocol::Stream), _) => {
                        let Ok(_permit) = tunnels.try_acquire_owned() else {
                            metrics.limit_refused(Transport::Tcp);
                            tracing::warn!(transport = "tcp", peer = %client, "too many tunnels; connection closed");
                            return;
                        };
                        let _ = handler.serve(accepted.stream, client).await;
                    }
                    (_, Some((settings, connections))) => {
                        let Ok(_permit) = connections.try_acquire_owned() else {
                            metrics.api_refused();
                            tracing::debug!(peer = %client, limit = settings.max_connections, "too many API connections; connection closed");
                            return;
                        };
                        let end = serve_api(accepted.stream, metrics, &settings, stopping).await;
                        if let ApiEnd::Error(e) = end {
                            tracing::debug!(peer = %client, error = %crate::explain::ErrorChain(&e), "API connection ended with an error");
                        }
                    }
                    (alpn, None) => {
                        let alpn = alpn.map_or("none", AppProtocol::name);
                        tracing::warn!(peer = %client, alpn, "no stream protocol negotiated and the API is disabled; connection closed");
                    }
                }
            });
        }
        drop(listener);
        let open = tasks.len();
        if open > 0 {
            tracing::info!(transport = "tcp", open, drain = ?settings.drain_period, "draining connections");
        }
        let cancelled = tasks.drain(settings.drain_period).await;
        if cancelled > 0 {
            tracing::warn!(
                transport = "tcp",
                cancelled,
                "closed connections still open after the drain period"
            );
        }
    }
}

/// How long the accept loop waits for an evicted handshake to free its slot.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Handshakes in flight, oldest first, each with the token that closes it.
#[derive(Default)]
struct InFlight {
    next: u64,
    queue: VecDeque<(u64, CancellationToken)>,
}

fn lock(in_flight: &Mutex<InFlight>) -> MutexGuard<'_, InFlight> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One handshake's place in [`InFlight`]; leaves it when dropped.
struct Slot {
    id: u64,
    evicted: CancellationToken,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Slot {
    fn register(in_flight: &Arc<Mutex<InFlight>>) -> Slot {
        let evicted = CancellationToken::new();
        let mut list = lock(in_flight);
        let id = list.next;
        list.next += 1;
        list.queue.push_back((id, evicted.clone()));
        Slot {
            id,
            evicted,
            in_flight: Arc::clone(in_flight),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut list = lock(&self.in_flight);
        // Usually at the front: handshakes mostly finish in the order they started.
        if let Some(i) = list.queue.iter().position(|(id, _)| *id == self.id) {
            list.queue.remove(i);
        }
    }
}
