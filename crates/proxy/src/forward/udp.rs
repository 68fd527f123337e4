//! The UDP forwarder: one local socket, one DTLS tunnel per source address.
//!
//! The receive loop owns the local socket's receiving side. Per datagram it looks the source
//! up in the [`ConnectionManager`] (lock-free, no allocation) and sends one record. A source
//! without a tunnel gets one from a creation task (single flight per source through the
//! manager), so a slow handshake never stalls other sources. Each tunnel has one task reading
//! the server's records and sending them back to its source. A sweeper frees idle tunnels
//! with `evict_idle`.
//!
//! A tunnel that has carried replies and then gets none while its source keeps sending is
//! replaced at the source's next datagram once the reply timeout has passed: the server may
//! have restarted and forgotten the session (DTLS gives no way to say so), and a source that
//! never pauses would otherwise never reach the idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use connmgr::{Close, ConnectionManager, CreateRequest};
use dtls::{RecvError, RecvHalf, SendError, SendHalf};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    BindError, DisplayOpt, ForwardSettings, ForwardStats, LiveConfig, ServerAddr, ServerLookup,
};
use crate::client::ClientError;
use crate::destination::Destination;
use crate::dial::{Resolve, SystemResolver};

/// Largest UDP payload over IPv4 or IPv6 without jumbograms.
const MAX_DATAGRAM: usize = 65_535;

/// One source's tunnel: the sending half of its DTLS session and what stops its reader.
struct Tunnel {
    send: SendHalf,
    max_payload: usize,
    stop: CancellationToken,
    /// Why the tunnel was stopped from outside, for the close log.
    reason: OnceLock<&'static str>,
    up: AtomicU64,
    /// The base of `unanswered_since`.
    opened: Instant,
    /// Whether the server has sent anything back yet.
    answered: AtomicBool,
    /// When the oldest datagram sent since the last reply went out: milliseconds since
    /// `opened`, plus one; zero when every datagram sent has been followed by a reply.
    unanswered_since: AtomicU64,
}

impl Tunnel {
    fn is_dead(&self) -> bool {
        self.stop.is_cancelled()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.opened).as_millis()).unwrap_or(u64::MAX)
    }

    /// A datagram went to the server.
    fn sent(&self) {
        if self.unanswered_since.load(Ordering::Relaxed) == 0 {
            let since = self.millis(Instant::now()).saturating_add(1);
            let _ = self.unanswered_since.compare_exchange(
                0,
                since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A datagram came back from the server.
    fn answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
        if self.unanswered_since.load(Ordering::Relaxed) != 0 {
            self.unanswered_since.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the tunnel has had replies, but none for `timeout` since a datagram went out.
    fn is_unanswered(&self, now: Instant, timeout: Duration) -> bool {
        if timeout.is_zero() || !self.answered.load(Ordering::Relaxed) {
            return false;
        }
        let since = self.unanswered_since.load(Ordering::Relaxed);
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        since != 0 && self.millis(now) >= (since - 1).saturating_add(timeout)
    }
}

impl Close for Tunnel {
    async fn close(self: Arc<Self>) {
        let _ = self.reason.set("closed by the forwarder");
        self.stop.cancel();
        // close_notify, so that the server frees its session at once.
        let _ = self.send.shutdown().await;
    }
}

type Tunnels = ConnectionManager<Tunnel, ClientError>;

/// Reads one local UDP socket and forwards each source's datagrams through its own tunnel.
pub struct UdpForwarder {
    socket: Arc<UdpSocket>,
    server: ServerAddr,
    resolver: Arc<dyn Resolve>,
    config: LiveConfig<dtls::ClientConfig>,
    destination: Destination,
    version: proto::Version,
    idle_timeout: Duration,
    reply_timeout: Duration,
    max_tunnels: usize,
    max_pending: usize,
    udp_buffers: Option<dtls::UdpBuffers>,
    stats: ForwardStats,
}

impl std::fmt::Debug for UdpForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpForwarder")
            .field("local", &self.socket.local_addr().ok())
            .field("server", &self.server)
            .field("destination", &self.destination)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl UdpForwarder {
    /// Binds `local` and forwards its datagrams through `server` to `destination`.
    pub async fn bind(
        local: SocketAddr,
        server: impl Into<ServerAddr>,
        config: dtls::ClientConfig,
        destination: Destination,
    ) -> Result<UdpForwarder, BindError> {
        let socket = UdpSocket::bind(local).await.map_err(|source| BindError {
            transport: "udp",
            addr: local,
            source,
        })?;
        Ok(UdpForwarder::new(socket, server, config, destination))
    }

    /// Forwards the datagrams of an already-bound `socket`.
    pub fn new(
        socket: UdpSocket,
        server: impl Into<ServerAddr>,
        config: dtls::ClientConfig,
        destination: Destination,
    ) -> UdpForwarder {
        let defaults = ForwardSettings::default();
        UdpForwarder {
            socket: Arc::new(socket),
            server: server.into(),
            resolver: Arc::new(SystemResolver),
            config: LiveConfig::new(config),
            destination,
            version: proto::Version::default(),
            idle_timeout: defaults.udp_idle_timeout,
            reply_timeout: defaults.udp_reply_timeout,
            max_tunnels: defaults.max_tunnels.get(),
            max_pending: defaults.max_pending.get(),
            udp_buffers: defaults.udp_buffers,
            stats: ForwardStats::default(),
        }
    }

    /// Applies the settings that concern UDP: idle and reply timeouts, tunnel limit and
    /// pending datagrams.
    pub fn settings(self, s: &ForwardSettings) -> Self {
        UdpForwarder {
            idle_timeout: s.udp_idle_timeout,
            reply_timeout: s.udp_reply_timeout,
            max_tunnels: s.max_tunnels.get(),
            max_pending: s.max_pending.get(),
            udp_buffers: s.udp_buffers,
            ..self
        }
    }

    /// What resolves the server's name for every tunnel (default the system's resolver; an
    /// address never reaches it).
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// The header version to send (default `0.1.0`, what GoDoxy speaks).
    pub fn header_version(mut self, version: proto::Version) -> Self {
        self.version = version;
        self
    }

    /// A tunnel with no datagram either way for this long is closed (default 120 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// A tunnel that has carried replies, then gets none for this long after its source sent a
    /// datagram, is replaced by a new one at the source's next datagram (default 30 s; zero
    /// never replaces). This is what brings a source back after the server restarted and
    /// forgot its session: the server cannot tell the client so, and a source that keeps
    /// sending never reaches the idle timeout. Flows that never get a reply are left to the
    /// idle timeout.
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Most tunnels open at once; datagrams from further sources are dropped and counted
    /// (default 4096).
    pub fn max_tunnels(mut self, n: usize) -> Self {
        self.max_tunnels = n;
        self
    }

    /// The local address datagrams are read from.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound socket always has an address.
        self.socket
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

    /// The handle that replaces this forwarder's DTLS configuration while it runs (certificate,
    /// key and CA reloads): new tunnels use the replacement, open ones continue.
    pub fn live_config(&self) -> LiveConfig<dtls::ClientConfig> {
        self.config.clone()
    }

    /// Shares `live` with other forwarders (one reload reaches all of them); replaces the
    /// configuration given at construction.
    pub fn with_live_config(mut self, live: LiveConfig<dtls::ClientConfig>) -> Self {
        self.config = live;
        self
    }

    /// Forwards until `shutdown` completes; then stops reading and closes every tunnel with
    /// close_notify.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let UdpForwarder {
            socket,
            server,
            resolver,
            config,
            destination,
            version,
            idle_timeout,
            reply_timeout,
            max_tunnels,
            max_pending,
            udp_buffers,
            stats,
        } = self;
        if let Some(wanted) = udp_buffers {
            let granted = wanted.apply(&*socket);
            if granted.short_of(wanted) {
                tracing::warn!(
                    transport = "udp",
                    requested = wanted.recv,
                    granted_recv = granted.recv,
                    granted_send = granted.send,
                    "the local UDP socket got smaller buffers than asked (raise net.core.rmem_max and wmem_max, or give the process CAP_NET_ADMIN); bursts may be dropped"
                );
            }
        }
        if let Ok(inode) = dtls::socket_inode(&*socket) {
            stats.0.socket_inode.store(inode, Ordering::Relaxed);
        }
        let local = socket.local_addr().ok();
        let destination = Arc::new(destination);
        let tasks = TaskTracker::new();
        let stopping = CancellationToken::new();
        let tunnels: Arc<Tunnels> = Arc::new_cyclic(|weak: &Weak<Tunnels>| {
            let opener = Opener {
                lookup: ServerLookup::new(server, resolver),
                connector: std::sync::Mutex::new(None),
                config,
                destination: Arc::clone(&destination),
                version,
                socket: Arc::clone(&socket),
                tunnels: weak.clone(),
                tasks: tasks.clone(),
                stats: stats.clone(),
            };
            let opener = Arc::new(opener);
            ConnectionManager::new(move |request: CreateRequest| {
                let opener = Arc::clone(&opener);
                async move { opener.open(request.client).await }
            })
        });
        let sweeper = tokio::spawn(sweep(Arc::clone(&tunnels), idle_timeout, stopping.clone()));
        let pending = Arc::new(Semaphore::new(max_pending));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        tokio::pin!(shutdown);
        loop {
            let (n, source) = tokio::select! {
                () = &mut shutdown => break,
                received = socket.recv_from(&mut buf) => match received {
                    Ok(received) => received,
                    // ICMP errors for earlier replies and the like: the socket lives on.
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => {
                        tracing::error!(transport = "udp", local = %DisplayOpt(local), error = %crate::explain::ErrorChain(&e), "local socket failed; stopping");
                        break;
                    }
                },
            };
            let counters = &stats.0;
            if n == 0 {
                ForwardStats::add(&counters.dropped_other, 1);
                continue;
            }
            let now = Instant::now();
            match tunnels.get(&source, now) {
                Some(tunnel) if !tunnel.is_dead() && !tunnel.is_unanswered(now, reply_timeout) => {
                    forward(&tunnel, &buf[..n], &stats).await;
                }
                found => {
                    if let Some(dead) = found {
                        if !dead.is_dead() {
                            let _ = dead
                                .reason
                                .set("no reply from the server within the reply timeout");
                            ForwardStats::add(&counters.tunnels_unanswered, 1);
                            tracing::info!(transport = "udp", peer = %source, destination = %destination, reply_timeout = ?reply_timeout, "no reply from the server since earlier datagrams; replacing the tunnel");
                        }
                        tunnels.remove_if_same(&source, &dead).await;
                    }
                    if !tunnels.contains(&source) && tunnels.len() >= max_tunnels {
                        ForwardStats::add(&counters.tunnels_refused, 1);
                        ForwardStats::add(&counters.dropped_other, 1);
                        tracing::warn!(transport = "udp", peer = %source, limit = max_tunnels, "too many tunnels; dropping the datagram");
                        continue;
                    }
                    // The datagram waits for its tunnel in a task of its own, within a bound.
                    let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                        ForwardStats::add(&counters.dropped_other, 1);
                        continue;
                    };
                    let datagram = buf[..n].to_vec();
                    let tunnels = Arc::clone(&tunnels);
                    let destination = Arc::clone(&destination);
                    let stats = stats.clone();
                    let stopping = stopping.clone();
                    tasks.spawn(async move {
                        let created = tokio::select! {
                            created = tunnels.get_or_create(source, destination.host(), destination.port(), Instant::now()) => created,
                            () = stopping.cancelled() => return,
                        };
                        match created {
                            Ok(tunnel) => forward(&tunnel, &datagram, &stats).await,
                            // The failure was logged once, where the tunnel was opened.
                            Err(_) => {
                                ForwardStats::add(&stats.0.dropped_other, 1);
                            }
                        }
                        drop(permit);
                    });
                }
            }
        }
        stopping.cancel();
        let closed = tunnels.close_all().await;
        if closed > 0 {
            tracing::info!(transport = "udp", local = %DisplayOpt(local), closed, "closed tunnels on shutdown");
        }
        tasks.close();
        tasks.wait().await;
        let _ = sweeper.await;
        // Tunnels whose creation finished during `close_all`.
        tunnels.close_all().await;
    }
}

/// Sends one datagram through a tunnel: dropped and counted, never cut, when it is too large.
async fn forward(tunnel: &Tunnel, datagram: &[u8], stats: &ForwardStats) {
    let counters = &stats.0;
    if datagram.len() > tunnel.max_payload {
        ForwardStats::add(&counters.dropped_too_large, 1);
        return;
    }
    match tunnel.send.send(datagram).await {
        Ok(()) => {
            tunnel.sent();
            ForwardStats::add(&counters.datagrams_up, 1);
            ForwardStats::add(&counters.bytes_up, datagram.len() as u64);
            tunnel
                .up
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        }
        Err(SendError::TooLarge { .. }) => ForwardStats::add(&counters.dropped_too_large, 1),
        Err(SendError::Closed) => {
            // The server ended the session; the next datagram from this source opens a new one.
            let _ = tunnel.reason.set("closed by the server");
            tunnel.stop.cancel();
            ForwardStats::add(&counters.dropped_other, 1);
        }
        Err(e) => {
            tracing::debug!(transport = "udp", error = %crate::explain::ErrorChain(&e), "sending a datagram failed");
            ForwardStats::add(&counters.dropped_other, 1);
        }
    }
}

/// Opens tunnels: the manager's factory.
struct Opener {
    lookup: ServerLookup,
    /// One OpenSSL context for every tunnel, built from the configuration it names and built
    /// again when the configuration is replaced.
    connector: std::sync::Mutex<Option<(Arc<dtls::ClientConfig>, Arc<dtls::DtlsConnector>)>>,
    config: LiveConfig<dtls::ClientConfig>,
    destination: Arc<Destination>,
    version: proto::Version,
    socket: Arc<UdpSocket>,
    tunnels: Weak<Tunnels>,
    tasks: TaskTracker,
    stats: ForwardStats,
}

impl Opener {
    /// The context for `config`: the cached one, or a new one when the configuration was
    /// replaced since.
    fn connector_for(&self, config: &Arc<dtls::ClientConfig>) -> Option<Arc<dtls::DtlsConnector>> {
        let mut cached = self
            .connector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_from, connector)) = cached.as_ref() {
            if Arc::ptr_eq(built_from, config) {
                return Some(Arc::clone(connector));
            }
        }
        let connector = Arc::new(dtls::DtlsConnector::new(config).ok()?);
        *cached = Some((Arc::clone(config), Arc::clone(&connector)));
        Some(connector)
    }

    /// A session with the first of the server's addresses that completes a handshake; the
    /// error of the last one when none does.
    async fn connect_any(
        &self,
        addrs: &[SocketAddr],
        header: &proto::Header<'_>,
    ) -> Result<dtls::DtlsSession, ClientError> {
        let config = self.config.current();
        let connector = self.connector_for(&config);
        let mut last = None;
        for &server in addrs {
            let attempt = match &connector {
                Some(connector) => crate::udp::connect_with(connector, server, header).await,
                // The context could not be built: each tunnel reports why.
                None => crate::udp::connect(server, &config, header).await,
            };
            match attempt {
                Ok(session) => return Ok(session),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Resolve(super::ResolveError::NoAddress {
                server: self.lookup.server().to_string(),
            })
        }))
    }

    async fn open(&self, source: SocketAddr) -> Result<Arc<Tunnel>, ClientError> {
        let connected = match (self.destination.header(), self.lookup.addrs().await) {
            (Ok(header), Ok(addrs)) => {
                self.connect_any(&addrs, &header.with_version(self.version))
                    .await
            }
            (Err(e), _) => Err(ClientError::from(e)),
            (_, Err(e)) => Err(ClientError::from(e)),
        };
        let session = match connected {
            Ok(session) => session,
            Err(e) => {
                ForwardStats::add(&self.stats.0.tunnels_failed, 1);
                tracing::warn!(transport = "udp", peer = %source, server = %self.lookup.server(), destination = %self.destination, reason = %crate::explain::reason(&e), error = %crate::explain::ErrorChain(&e), "tunnel failed; dropping the datagram");
                return Err(e);
            }
        };
        ForwardStats::add(&self.stats.0.tunnels_opened, 1);
        let max_payload = session.max_payload();
        let (send, recv) = session.into_split();
        let tunnel = Arc::new(Tunnel {
            send,
            max_payload,
            stop: CancellationToken::new(),
            reason: OnceLock::new(),
            up: AtomicU64::new(0),
            opened: Instant::now(),
            answered: AtomicBool::new(false),
            unanswered_since: AtomicU64::new(0),
        });
        tracing::debug!(transport = "udp", peer = %source, destination = %self.destination, "tunnel open");
        self.tasks.spawn(replies(
            recv,
            Arc::clone(&tunnel),
            source,
            Arc::clone(&self.socket),
            self.tunnels.clone(),
            Arc::clone(&self.destination),
            self.stats.clone(),
        ));
        Ok(tunnel)
    }
}

/// Why a tunnel ended, for the close log.
enum End {
    ServerClosed,
    Stopped(&'static str),
    Server(RecvError),
    Local(std::io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ServerClosed => f.write_str("server sent close_notify"),
            End::Stopped(reason) => f.write_str(reason),
            End::Server(e) => write!(f, "server: {}", crate::explain::ErrorChain(e)),
            End::Local(e) => write!(f, "local socket: {}", crate::explain::ErrorChain(e)),
        }
    }
}

/// The tunnel's reader: the server's records, back to the source as datagrams. Logs the
/// tunnel's end and removes its entry.
async fn replies(
    mut recv: RecvHalf,
    tunnel: Arc<Tunnel>,
    source: SocketAddr,
    socket: Arc<UdpSocket>,
    tunnels: Weak<Tunnels>,
    destination: Arc<Destination>,
    stats: ForwardStats,
) {
    let started = Instant::now();
    let counters = &stats.0;
    let mut down = 0u64;
    let mut buf = vec![0u8; tunnel.max_payload];
    let end = loop {
        let received = tokio::select! {
            () = tunnel.stop.cancelled() => break End::Stopped(tunnel.reason.get().copied().unwrap_or("stopped")),
            received = recv.recv(&mut buf) => received,
        };
        let n = match received {
            Ok(Some(n)) => n,
            Ok(None) => break End::ServerClosed,
            Err(RecvError::Truncated { .. }) => {
                ForwardStats::add(&counters.dropped_too_large, 1);
                continue;
            }
            Err(e) => break End::Server(e),
        };
        tunnel.answered();
        if let Some(tunnels) = tunnels.upgrade() {
            tunnels.touch(&source, Instant::now());
        }
        match socket.send_to(&buf[..n], source).await {
            Ok(_) => {
                down += n as u64;
                ForwardStats::add(&counters.datagrams_down, 1);
                ForwardStats::add(&counters.bytes_down, n as u64);
            }
            Err(e) if is_transient(&e) => ForwardStats::add(&counters.dropped_other, 1),
            Err(e) => break End::Local(e),
        }
    };
    tunnel.stop.cancel();
    if !matches!(end, End::ServerClosed | End::Stopped(_)) {
        let _ = tunnel.send.shutdown().await;
    }
    if let Some(tunnels) = tunnels.upgrade() {
        tunnels.remove_if_same(&source, &tunnel).await;
    }
    ForwardStats::add(&counters.tunnels_closed, 1);
    // A server that ends a session it never answered on refused it (or lost the destination):
    // say so in words rather than as a protocol event.
    let unanswered = match (&end, down) {
        (End::ServerClosed, 0) => Some(crate::explain::Diagnosis::ClosedBeforeAnswering),
        (End::Server(e), 0) => crate::explain::explain(e),
        _ => None,
    };
    match unanswered {
        Some(diagnosis) => tracing::warn!(
            transport = "udp",
            peer = %source,
            destination = %destination,
            bytes_up = tunnel.up.load(Ordering::Relaxed),
            bytes_down = down,
            duration_ms = started.elapsed().as_millis() as u64,
            reason = %diagnosis,
            end = %end,
            "tunnel closed before any answer"
        ),
        None => tracing::info!(
            transport = "udp",
            peer = %source,
            destination = %destination,
            bytes_up = tunnel.up.load(Ordering::Relaxed),
            bytes_down = down,
            duration_ms = started.elapsed().as_millis() as u64,
            reason = %end,
            "tunnel closed"
        ),
    }
}

/// Frees tunnels idle for `idle`.
async fn sweep(tunnels: Arc<Tunnels>, idle: Duration, stop: CancellationToken) {
    let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for info in tunnels.snapshot() {
            if now.saturating_duration_since(info.last_used) >= idle {
                let _ = info.connection.reason.set("idle");
            }
        }
        tunnels.evict_idle(now, idle).await;
    }
}

/// Errors a UDP socket reports for an earlier datagram (ICMP port unreachable and the like);
/// they do not end anything.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::Interrupted
    )
}
