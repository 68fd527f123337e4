//! The TCP forwarder: one TLS tunnel per accepted local connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls::ClientTlsStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    BindError, DisplayOpt, ForwardSettings, ForwardStats, LiveConfig, ServerAddr, ServerLookup,
};
use crate::client::ClientError;
use crate::destination::Destination;
use crate::dial::{Resolve, SystemResolver};
use crate::explain::ErrorChain;
use crate::keepalive::Keepalive;

/// Listens on a local TCP address and opens one tunnel to the server per accepted connection.
pub struct TcpForwarder {
    listener: TcpListener,
    server: ServerAddr,
    resolver: Arc<dyn Resolve>,
    config: LiveConfig<tls::ClientConfig>,
    destination: Destination,
    version: proto::Version,
    connect_timeout: Duration,
    drain_period: Duration,
    max_tunnels: usize,
    keepalive: Option<Keepalive>,
    stats: ForwardStats,
}

impl std::fmt::Debug for TcpForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpForwarder")
            .field("local", &self.listener.local_addr().ok())
            .field("server", &self.server)
            .field("destination", &self.destination)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl TcpForwarder {
    /// Binds `local` and forwards its connections through `server` to `destination`.
    pub async fn bind(
        local: SocketAddr,
        server: impl Into<ServerAddr>,
        config: tls::ClientConfig,
        destination: Destination,
    ) -> Result<TcpForwarder, BindError> {
        let listener = TcpListener::bind(local).await.map_err(|source| BindError {
            transport: "tcp",
            addr: local,
            source,
        })?;
        Ok(TcpForwarder::new(listener, server, config, destination))
    }

    /// Forwards the connections of an already-bound `listener`.
    pub fn new(
        listener: TcpListener,
        server: impl Into<ServerAddr>,
        config: tls::ClientConfig,
        destination: Destination,
    ) -> TcpForwarder {
        let defaults = ForwardSettings::default();
        TcpForwarder {
            listener,
            server: server.into(),
            resolver: Arc::new(SystemResolver),
            config: LiveConfig::new(config),
            destination,
            version: proto::Version::default(),
            connect_timeout: defaults.connect_timeout,
            drain_period: defaults.drain_period,
            max_tunnels: defaults.max_tunnels.get(),
            keepalive: defaults.keepalive,
            stats: ForwardStats::default(),
        }
    }

    /// Applies the settings that concern TCP: connect timeout, drain period, tunnel limit and
    /// keepalive.
    pub fn settings(mut self, s: &ForwardSettings) -> Self {
        self.connect_timeout = s.connect_timeout;
        self.drain_period = s.drain_period;
        self.max_tunnels = s.max_tunnels.get();
        self.keepalive = s.keepalive;
        self
    }

    /// What resolves the server's name for every tunnel (default the system's resolver; an
    /// address never reaches it).
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// TCP keepalive on the connection to the server, so a server that vanishes ends its
    /// tunnels (default [`Keepalive::default`]; `None` turns it off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// The header version to send (default `0.1.0`, what GoDoxy speaks).
    pub fn header_version(mut self, version: proto::Version) -> Self {
        self.version = version;
        self
    }

    /// How long resolving and connecting to the server, the handshake and the header may take
    /// together (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long live tunnels may go on after shutdown starts (default 30 s).
    pub fn drain_period(mut self, period: Duration) -> Self {
        self.drain_period = period;
        self
    }

    /// Most tunnels open at once; connections beyond it are closed at once (default 4096).
    pub fn max_tunnels(mut self, n: usize) -> Self {
        self.max_tunnels = n;
        self
    }

    /// The local address connections are accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The destination every tunnel asks for.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The forwarder's counters.
    pub fn stats(&self) -> ForwardStats {
        self.stats.clone()
    }

    /// The handle that replaces this forwarder's TLS configuration while it runs (certificate,
    /// key and CA reloads): new tunnels use the replacement, open ones continue.
    pub fn live_config(&self) -> LiveConfig<tls::ClientConfig> {
        self.config.clone()
    }

    /// Shares `live` with other forwarders (one reload reaches all of them); replaces the
    /// configuration given at construction.
    pub fn with_live_config(mut self, live: LiveConfig<tls::ClientConfig>) -> Self {
        self.config = live;
        self
    }

    /// Accepts connections until `shutdown` completes; then stops accepting, lets live tunnels
    /// go on for the drain period and closes the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let TcpForwarder {
            listener,
            server,
            resolver,
            config,
            destination,
            version,
            connect_timeout,
            drain_period,
            max_tunnels,
            keepalive,
            stats,
        } = self;
        let local = listener.local_addr().ok();
        let lookup = Arc::new(ServerLookup::new(server, resolver));
        let destination = Arc::new(destination);
        let limit = Arc::new(Semaphore::new(max_tunnels));
        let tasks = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            let (conn, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(transport = "tcp", local = %DisplayOpt(local), error = %crate::explain::ErrorChain(&e), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                ForwardStats::add(&stats.0.tunnels_refused, 1);
                tracing::warn!(transport = "tcp", peer = %peer, limit = max_tunnels, "too many tunnels; closing the new connection");
                drop(conn);
                continue;
            };
            let tunnel = Tunnel {
                lookup: Arc::clone(&lookup),
                keepalive,
                config: config.clone(),
                destination: Arc::clone(&destination),
                version,
                connect_timeout,
                stats: stats.clone(),
            };
            let stop = hard_stop.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = tunnel.serve(conn, peer) => {}
                    () = stop.cancelled() => {
                        tracing::info!(transport = "tcp", peer = %peer, destination = %tunnel.destination, "tunnel closed: still open after the drain period");
                    }
                }
                drop(permit);
            });
        }
        drop(listener);
        drain(&tasks, drain_period, &hard_stop, local).await;
    }
}

/// Lets live tunnels go on for `period`, then stops the rest through `hard_stop`.
async fn drain(
    tasks: &TaskTracker,
    period: Duration,
    hard_stop: &CancellationToken,
    local: Option<SocketAddr>,
) {
    tasks.close();
    if !tasks.is_empty() {
        tracing::info!(transport = "tcp", local = %DisplayOpt(local), open = tasks.len(), drain = ?period, "draining tunnels");
    }
    if tokio::time::timeout(period, tasks.wait()).await.is_err() {
        hard_stop.cancel();
        tasks.wait().await;
    }
}

/// What one connection's task needs.
struct Tunnel {
    lookup: Arc<ServerLookup>,
    keepalive: Option<Keepalive>,
    config: LiveConfig<tls::ClientConfig>,
    destination: Arc<Destination>,
    version: proto::Version,
    connect_timeout: Duration,
    stats: ForwardStats,
}

impl Tunnel {
    async fn serve(&self, mut conn: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let _ = conn.set_nodelay(true);
        // Boxed: opening (connect, TLS handshake, header) runs once, and its state (about
        // 3.3 KiB) would otherwise be reserved in the task for the tunnel's whole life.
        let Some(mut stream) = Box::pin(self.open(peer)).await else {
            ForwardStats::add(&self.stats.0.tunnels_failed, 1);
            return;
        };
        if let Some(keepalive) = &self.keepalive {
            keepalive.apply(stream.get_ref().0.get_ref(), "server");
        }
        ForwardStats::add(&self.stats.0.tunnels_opened, 1);
        tracing::debug!(transport = "tcp", peer = %peer, destination = %self.destination, "tunnel open");
        let outcome = crate::relay::relay(&mut conn, &mut stream).await;
        let (up, down) = (outcome.up, outcome.down);
        ForwardStats::add(&self.stats.0.bytes_up, up);
        ForwardStats::add(&self.stats.0.bytes_down, down);
        ForwardStats::add(&self.stats.0.tunnels_closed, 1);
        let duration_ms = started.elapsed().as_millis() as u64;
        let log = |reason: &dyn std::fmt::Display, error: Option<&io::Error>, message: &str| {
            let error = DisplayOpt(error.map(|e| ErrorChain(e)));
            tracing::info!(transport = "tcp", peer = %peer, destination = %self.destination, bytes_up = up, bytes_down = down, duration_ms, reason = %reason, error = %error, "{message}");
        };
        match outcome.result {
            // The local side sent something and the server ended the tunnel without a byte
            // back: most often a refusal (policy, limits, an unreachable destination).
            Ok(()) if down == 0 && up > 0 => log(
                &crate::explain::Diagnosis::ClosedBeforeAnswering,
                None,
                "tunnel closed without any answer",
            ),
            Ok(()) => log(&"end of stream", None, "tunnel closed"),
            // Nothing came back before the connection broke: say why, in words.
            Err(e) if down == 0 => {
                let reason = failure_reason(&e, &mut stream).await;
                tracing::warn!(transport = "tcp", peer = %peer, destination = %self.destination, bytes_up = up, bytes_down = 0, duration_ms, reason = %reason, error = %ErrorChain(&e), "tunnel closed with an error before any answer");
            }
            Err(e) => log(&"error", Some(&e), "tunnel closed with an error"),
        }
    }

    /// A tunnel with the first of the server's addresses that completes a handshake; the
    /// error of the last one when none does (as the UDP forwarder tries them).
    async fn connect_any(
        &self,
        addrs: &[SocketAddr],
        config: &tls::ClientConfig,
        header: &proto::Header<'_>,
    ) -> Result<ClientTlsStream<TcpStream>, ClientError> {
        let mut last = None;
        for &server in addrs {
            match crate::tcp::connect(server, config, header).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Resolve(super::ResolveError::NoAddress {
                server: self.lookup.server().to_string(),
            })
        }))
    }

    /// A tunnel to the server for `peer`'s connection: handshake and header within the
    /// connect timeout. `None` when it failed (logged).
    async fn open(&self, peer: SocketAddr) -> Option<ClientTlsStream<TcpStream>> {
        let config = self.config.current();
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let header = self.destination.header()?.with_version(self.version);
            let addrs = self.lookup.addrs().await.map_err(ClientError::from)?;
            self.connect_any(&addrs, &config, &header).await
        })
        .await;
        let server = self.lookup.server();
        match connected {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                let reason = crate::explain::reason(&e);
                tracing::warn!(transport = "tcp", peer = %peer, server = %server, destination = %self.destination, reason = %reason, error = %ErrorChain(&e), "tunnel failed; closing the local connection");
                None
            }
            Err(_) => {
                tracing::warn!(transport = "tcp", peer = %peer, server = %server, destination = %self.destination, timeout = ?self.connect_timeout, "tunnel failed: no connection in time; closing the local connection");
                None
            }
        }
    }
}

/// Why a tunnel broke before any answer, in words: the error's own diagnosis if it is
/// specific, else what the server said last.
async fn failure_reason<S>(e: &io::Error, stream: &mut S) -> String
where
    S: tokio::io::AsyncRead + Unpin,
{
    use crate::explain::{Diagnosis, explain};
    let specific = |d: &Option<Diagnosis>| {
        d.as_ref()
            .is_some_and(|d| *d != Diagnosis::ClosedBeforeAnswering)
    };
    let mut diagnosis = explain(e);
    if !specific(&diagnosis) {
        let last = last_word(stream).await;
        if specific(&last) || diagnosis.is_none() {
            diagnosis = last;
        }
    }
    match diagnosis {
        Some(d) => d.to_string(),
        None => ErrorChain(e).to_string(),
    }
}

/// What the server said last on a tunnel that failed before any answer. A write can fail
/// (broken pipe) before the read that would have shown the server's alert (for example that it
/// rejected our certificate, which TLS 1.3 reports after the handshake): read it now.
async fn last_word<S>(stream: &mut S) -> Option<crate::explain::Diagnosis>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await {
        Ok(Err(e)) => crate::explain::explain(&e),
        _ => None,
    }
}
