//! The UDP forwarder: one local socket, one DTLS tunnel per source address.
//!
//! The receive loop owns the local socket's receiving side. It takes what the socket has
//! queued with one `recvmmsg`; per run of datagrams from one source it looks the source up in
//! the [`ConnectionManager`] (lock-free, no allocation) and seals them into records that go
//! out with one `sendmmsg`. A source without a tunnel gets one from an opening task (single
//! flight per source through the manager), so a slow handshake never stalls other sources;
//! its datagrams wait in order in [`Pending`] meanwhile. Each tunnel has one task reading the
//! server's records (in batches) and sending them back to its source in batches. A sweeper
//! frees idle tunnels with `evict_idle`.
//!
//! A tunnel that has carried replies and then gets none while its source keeps sending is
//! replaced at the source's next datagram once the reply timeout has passed: the server may
//! have restarted and forgotten the session (DTLS gives no way to say so), and a source that
//! never pauses would otherwise never reach the idle timeout.
//!
//! A local socket bound to an unspecified address (`0.0.0.0`, `::`) answers each source from
//! the address the source reached. Left to the kernel, a reply's source address would follow
//! the route back (`127.0.0.1` for an application that sent to `127.0.0.2`, the primary
//! address of a multi-homed host for one that sent to another), and an application whose
//! socket is connected drops a datagram from any address but the one it sent to. So the
//! receive loop reads each datagram's local destination (`IP_PKTINFO`, `IPV6_RECVPKTINFO`,
//! through `dtls::batch`), and a tunnel sends every reply from the destination of the datagram
//! that opened it, like the DTLS listener answers a client from the address of its first
//! ClientHello. A source's later datagrams to another of the host's addresses still go
//! through its tunnel but are answered from the first: a connected socket talks to one
//! address, and a source whose tunnel is replaced (closed, idle, unanswered) takes the
//! address of the datagram that opens the new one. A socket bound to one address asks for
//! nothing and sends no control message: its replies come from that address.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use connmgr::{Close, CloseReason, ConnectionManager};
use dtls::batch::{Datagram, RecvBatch, SendBatch};
use dtls::{RecvHalf, SendError, SendHalf};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pending::{Pending, Queued};
use super::reply_watch::ReplyWatch;
use super::{
    BindError, DisplayOpt, ForwardSettings, ForwardStats, LiveConfig, ServerAddr, ServerLookup,
};
use crate::client::ClientError;
use crate::destination::Destination;
use crate::dial::{Resolve, SystemResolver};
use crate::udp::session::{self, BATCH, End, FORWARDER, Path, Stop, is_transient};

/// Largest UDP payload over IPv4 or IPv6 without jumbograms.
const MAX_DATAGRAM: usize = 65_535;
/// Bytes a batch of replies holds at most before it is flushed.
const BATCH_BYTES: usize = 256 * 1024;
/// Datagrams one source may have waiting for its tunnel to open (within `max_pending` for all
/// sources together): room for a burst of 64 in flight, and more, without one source taking
/// all of it.
pub(crate) const PENDING_PER_SOURCE: usize = 256;

/// One source's tunnel: the sending half of its DTLS session and what stops its reader.
struct Tunnel {
    send: SendHalf,
    max_payload: usize,
    stop: Stop,
    up: AtomicU64,
    replies: ReplyWatch,
    /// The local address replies go from: the one the datagram that opened the tunnel was sent
    /// to, on a socket bound to an unspecified address; else `None` (the socket's own).
    local: Option<IpAddr>,
}

impl Close for Tunnel {
    async fn close(self: Arc<Self>, why: CloseReason) {
        self.stop.closed(why, "closed by the forwarder");
        // close_notify, so that the server frees its session at once.
        let _ = self.send.shutdown().await;
    }
}

type Tunnels = ConnectionManager<SocketAddr, Tunnel, ClientError>;

/// Reads one local UDP socket and forwards each source's datagrams through its own tunnel.
///
/// Bound to an unspecified address (`0.0.0.0:PORT`, `[::]:PORT`), it answers each source from
/// the local address the datagram that opened the source's tunnel was sent to, so that local
/// applications may use any of the host's addresses, connected sockets included; bound to one
/// address, from that address.
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
        prepare_socket(&socket, udp_buffers, &stats);
        let local = socket.local_addr().ok();
        let destination = Arc::new(destination);
        let tasks = TaskTracker::new();
        let stopping = CancellationToken::new();
        let tunnels: Arc<Tunnels> = Arc::new(ConnectionManager::new());
        let opener = Arc::new(Opener {
            lookup: ServerLookup::new(server, resolver),
            connector: std::sync::Mutex::new(None),
            config,
            destination: Arc::clone(&destination),
            version,
            socket: Arc::clone(&socket),
            tunnels: Arc::downgrade(&tunnels),
            tasks: tasks.clone(),
            stats: stats.clone(),
        });
        let sweep = session::sweep(Arc::clone(&tunnels), idle_timeout, stopping.clone());
        let sweeper = tokio::spawn(sweep);
        let dispatch = Dispatch {
            tunnels: Arc::clone(&tunnels),
            opener,
            pending: Arc::new(Pending::new(max_pending, PENDING_PER_SOURCE)),
            limits: Limits::new(reply_timeout, max_tunnels),
            destination,
            stats,
            stopping: stopping.clone(),
            tasks: tasks.clone(),
        };
        let mut batch = recv_batch(&socket, local);
        tokio::pin!(shutdown);
        loop {
            let n = tokio::select! {
                () = &mut shutdown => break,
                received = batch.recv(&socket) => match received {
                    Ok(n) => n,
                    // ICMP errors for earlier replies and the like: the socket lives on.
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => {
                        tracing::error!(transport = "udp", local = %DisplayOpt(local), error = %crate::explain::ErrorChain(&e), "local socket failed; stopping");
                        break;
                    }
                },
            };
            dispatch.batch(&batch, n).await;
        }
        stopping.cancel();
        close_all(&tunnels, &tasks, local).await;
        let _ = sweeper.await;
    }
}

/// Closes every tunnel with close_notify and waits for the tunnels' tasks.
async fn close_all(tunnels: &Tunnels, tasks: &TaskTracker, local: Option<SocketAddr>) {
    let closed = tunnels.close_all().await;
    if closed > 0 {
        tracing::info!(transport = "udp", local = %DisplayOpt(local), closed, "closed tunnels on shutdown");
    }
    tasks.close();
    tasks.wait().await;
    // Tunnels whose creation finished during the first `close_all`.
    tunnels.close_all().await;
}

/// Asks for the local socket's buffers (warning when the kernel grants less) and notes its
/// inode, to read the kernel's drops.
fn prepare_socket(socket: &UdpSocket, buffers: Option<dtls::UdpBuffers>, stats: &ForwardStats) {
    if let Some(wanted) = buffers {
        let granted = wanted.apply(socket);
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
    if let Ok(inode) = dtls::socket_inode(socket) {
        stats.0.socket_inode.store(inode, Ordering::Relaxed);
    }
}

/// The receive loop's batch: on a socket bound to an unspecified address, one that reads each
/// datagram's local destination (which the kernel is asked to report), so that replies go
/// from the address their source sent to. Should the kernel refuse, replies go from the
/// address it picks, as on a socket without the option, and a warning says so.
fn recv_batch(socket: &UdpSocket, local: Option<SocketAddr>) -> RecvBatch {
    let batch = RecvBatch::new(BATCH, MAX_DATAGRAM);
    match dtls::batch::report_destinations(socket) {
        Ok(true) => batch.with_destinations(),
        Ok(false) => batch,
        Err(e) => {
            tracing::warn!(transport = "udp", local = %DisplayOpt(local), error = %crate::explain::ErrorChain(&e), "the local socket cannot report the address each datagram was sent to; replies go from the address the kernel picks, which an application that sent to another address of this host drops if its socket is connected");
            batch
        }
    }
}

/// Opens `source`'s tunnel (or joins the opening in flight), answering from `local`, then
/// sends the datagrams that waited for it, in order, until none waits; drops and counts them
/// when the tunnel cannot be opened (logged once, where it was opened) or the forwarder stops.
async fn open_then_forward(
    tunnels: &Tunnels,
    opener: &Opener,
    pending: &Pending,
    source: SocketAddr,
    local: Option<IpAddr>,
    stats: &ForwardStats,
    stopping: &CancellationToken,
) {
    let make = || async { opener.open(source, local).await };
    let created = tokio::select! {
        created = tunnels.get_or_create(source, Instant::now(), make) => created.ok(),
        () = stopping.cancelled() => None,
    };
    let Some(tunnel) = created else {
        ForwardStats::add(&stats.0.dropped_other, pending.drop_all(&source) as u64);
        return;
    };
    loop {
        let waiting = pending.take(&source);
        if waiting.is_empty() {
            return;
        }
        forward(&tunnel, waiting.iter().map(bytes::Bytes::as_ref), stats).await;
    }
}

/// What the receive loop hands each datagram to.
struct Dispatch {
    tunnels: Arc<Tunnels>,
    opener: Arc<Opener>,
    /// The datagrams waiting for their tunnel, per source.
    pending: Arc<Pending>,
    limits: Limits,
    destination: Arc<Destination>,
    stats: ForwardStats,
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Dispatch {
    /// Hands the `n` datagrams of `batch` on, one run of datagrams from the same source at a
    /// time, in order.
    async fn batch(&self, batch: &RecvBatch, n: usize) {
        let source_of = |i: usize| batch.get(i).and_then(|d| d.source);
        let mut i = 0;
        while i < n {
            let source = source_of(i);
            let run = i + (i..n).take_while(|&j| source_of(j) == source).count();
            match source {
                Some(source) => self.datagrams(source, batch, i..run).await,
                None => ForwardStats::add(&self.stats.0.dropped_other, (run - i) as u64),
            }
            i = run;
        }
    }

    /// Sends datagrams `range` of `batch`, all from `source`, through its tunnel, or queues
    /// them for the task that opens it; drops and counts what cannot go.
    async fn datagrams(
        &self,
        source: SocketAddr,
        batch: &RecvBatch,
        range: std::ops::Range<usize>,
    ) {
        let counters = &self.stats.0;
        let whole = || range.clone().filter_map(|i| batch.get(i)).filter(is_whole);
        let cut = range.len() - whole().count();
        ForwardStats::add(&counters.dropped_other, cut as u64);
        if self.pending.is_waiting(&source) {
            return self.queue(source, whole());
        }
        match route(&self.tunnels, source, Instant::now(), self.limits) {
            Route::Forward(tunnel) => {
                return forward(&tunnel, whole().map(bytes_of), &self.stats).await;
            }
            Route::Replace { tunnel, unanswered } => {
                if unanswered {
                    tunnel
                        .stop
                        .stop("no reply from the server within the reply timeout");
                    ForwardStats::add(&counters.tunnels_unanswered, 1);
                    tracing::info!(transport = "udp", peer = %source, destination = %self.destination, reply_timeout = ?self.limits.reply_timeout, "no reply from the server since earlier datagrams; replacing the tunnel");
                }
                self.tunnels.remove_if_same(&source, &tunnel).await;
            }
            Route::Open => {}
            Route::Drop(reason) => {
                let n = whole().count() as u64;
                ForwardStats::add(&counters.tunnels_refused, 1);
                ForwardStats::add(&counters.dropped_other, n);
                tracing::warn!(transport = "udp", peer = %source, limit = self.limits.max_tunnels, "{reason}; dropping the datagram");
                return;
            }
        }
        self.queue(source, whole());
    }

    /// Queues datagrams from `source` for its tunnel; the first of a queue starts the task that
    /// opens the tunnel, which answers from the address that datagram reached, and sends them.
    fn queue<'a>(&self, source: SocketAddr, datagrams: impl Iterator<Item = Datagram<'a>>) {
        for datagram in datagrams {
            match self.pending.push(source, datagram.bytes) {
                Queued::Behind => {}
                Queued::Dropped => ForwardStats::add(&self.stats.0.dropped_other, 1),
                Queued::First => {
                    let (tunnels, opener) = (Arc::clone(&self.tunnels), Arc::clone(&self.opener));
                    let (stats, stopping) = (self.stats.clone(), self.stopping.clone());
                    let pending = Arc::clone(&self.pending);
                    let local = datagram.destination;
                    self.tasks.spawn(async move {
                        open_then_forward(
                            &tunnels, &opener, &pending, source, local, &stats, &stopping,
                        )
                        .await;
                    });
                }
            }
        }
    }
}

/// Whether a datagram can go through a tunnel: whole (never cut) and not empty.
fn is_whole(d: &Datagram<'_>) -> bool {
    !d.truncated && !d.bytes.is_empty()
}

/// A datagram's bytes (a function, not a closure: the receive loop's future must be `Send`
/// for every lifetime, which a closure's inferred signature is not).
fn bytes_of(d: Datagram<'_>) -> &[u8] {
    d.bytes
}

/// The limits the receive loop decides with.
#[derive(Debug, Clone, Copy)]
struct Limits {
    reply_timeout: Duration,
    max_tunnels: usize,
}

impl Limits {
    fn new(reply_timeout: Duration, max_tunnels: usize) -> Limits {
        Limits {
            reply_timeout,
            max_tunnels,
        }
    }
}

/// What to do with a datagram from a source.
enum Route {
    /// Its tunnel is up: send it.
    Forward(Arc<Tunnel>),
    /// Its tunnel has ended, or its server stopped answering (`unanswered`): remove the
    /// tunnel, then open a new one.
    Replace {
        /// The tunnel to remove.
        tunnel: Arc<Tunnel>,
        /// Whether it is replaced for want of replies (still running until then).
        unanswered: bool,
    },
    /// No usable tunnel: open one (or wait for the one being opened).
    Open,
    /// Dropped, for this reason.
    Drop(&'static str),
}

/// Where a datagram from `source` goes at `now`.
fn route(tunnels: &Tunnels, source: SocketAddr, now: Instant, limits: Limits) -> Route {
    match tunnels.get(&source, now) {
        Some(tunnel) if tunnel.stop.is_stopped() => Route::Replace {
            tunnel,
            unanswered: false,
        },
        Some(tunnel) if tunnel.replies.is_unanswered(now, limits.reply_timeout) => Route::Replace {
            tunnel,
            unanswered: true,
        },
        Some(t) => Route::Forward(t),
        None if !tunnels.contains(&source) && tunnels.len() >= limits.max_tunnels => {
            Route::Drop("too many tunnels")
        }
        None => Route::Open,
    }
}

/// Sends datagrams through a tunnel, in order, in batches: those too large for a record are
/// dropped and counted, never cut.
async fn forward<'a>(
    tunnel: &Tunnel,
    datagrams: impl Iterator<Item = &'a [u8]>,
    stats: &ForwardStats,
) {
    let counters = &stats.0;
    match tunnel.send.send_many(datagrams).await {
        Ok(sent) => {
            if sent.datagrams > 0 {
                tunnel.replies.sent(Instant::now());
            }
            ForwardStats::add(&counters.datagrams_up, sent.datagrams);
            ForwardStats::add(&counters.bytes_up, sent.bytes);
            ForwardStats::add(&counters.dropped_too_large, sent.refused);
            tunnel.up.fetch_add(sent.bytes, Ordering::Relaxed);
        }
        Err(SendError::Closed) => {
            // The server ended the session; the next datagram from this source opens a new one.
            tunnel.stop.stop("closed by the server");
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

    /// Opens `source`'s tunnel, whose replies go from the local address `local` (see
    /// [`Tunnel::local`]), and starts its reader.
    async fn open(
        &self,
        source: SocketAddr,
        local: Option<IpAddr>,
    ) -> Result<Arc<Tunnel>, ClientError> {
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
            stop: Stop::default(),
            up: AtomicU64::new(0),
            replies: ReplyWatch::new(Instant::now()),
            local,
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

/// The tunnel's reader: the server's records, back to the source as datagrams. Logs the
/// tunnel's end and removes its entry.
///
/// Waits for one record, takes the records already received behind it (no waiting, at most
/// [`BATCH`]) and sends them to the source with one `sendmmsg`, in order, from the tunnel's
/// local address.
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
    let mut down = 0u64;
    let mut buf = vec![0u8; tunnel.max_payload];
    let mut out = SendBatch::new(BATCH, BATCH_BYTES);
    let path = Path {
        to: Some(source),
        from: tunnel.local,
    };
    let end = loop {
        let received = tokio::select! {
            () = tunnel.stop.stopped() => break End::Stopped(tunnel.stop.reason("stopped")),
            received = recv.recv(&mut buf) => received,
        };
        let end = session::take_ready(received, &mut recv, &mut buf, 0, path, &mut out, || {
            ForwardStats::add(&stats.0.dropped_too_large, 1)
        });
        if !out.is_empty() {
            tunnel.replies.answered();
            if let Some(tunnels) = tunnels.upgrade() {
                tunnels.touch(&source, Instant::now());
            }
            let flushed = flush_replies(&mut out, &socket, &stats).await;
            down += flushed.0;
            if let Err(e) = flushed.1 {
                break End::Socket(e);
            }
        }
        if let Some(end) = end {
            break end;
        }
    };
    tunnel.stop.stop("stopped");
    if !end.session_is_over() && !matches!(end, End::Stopped(_)) {
        let _ = tunnel.send.shutdown().await;
    }
    if let Some(tunnels) = tunnels.upgrade() {
        tunnels.remove_if_same(&source, &tunnel).await;
    }
    ForwardStats::add(&stats.0.tunnels_closed, 1);
    let up = tunnel.up.load(Ordering::Relaxed);
    log_close(source, &destination, (up, down), started.elapsed(), &end);
}

/// Sends the batch to its source, waiting for room; counts what went. A datagram the socket
/// refuses (an ICMP answer to an earlier one) is dropped, counted, and the rest go on.
/// Returns the bytes sent and the socket's failure, if it failed.
async fn flush_replies(
    out: &mut SendBatch,
    socket: &UdpSocket,
    stats: &ForwardStats,
) -> (u64, std::io::Result<()>) {
    let r = loop {
        match out.flush(socket).await {
            Err(e) if is_transient(&e) => continue,
            r => break r,
        }
    };
    let sent = out.take_sent();
    let counters = &stats.0;
    ForwardStats::add(&counters.datagrams_down, sent.datagrams);
    ForwardStats::add(&counters.bytes_down, sent.bytes);
    ForwardStats::add(&counters.dropped_other, sent.failed);
    (sent.bytes, r)
}

/// The tunnel's close line. A server that ends a session it never answered on refused it (or
/// lost the destination): that is said in words rather than as a protocol event.
fn log_close(
    source: SocketAddr,
    destination: &Destination,
    (up, down): (u64, u64),
    lifetime: Duration,
    end: &End,
) {
    let duration_ms = lifetime.as_millis() as u64;
    let unanswered = match (end, down) {
        (End::PeerClosed, 0) => Some(crate::explain::Diagnosis::ClosedBeforeAnswering),
        (End::Recv(e), 0) => crate::explain::explain(e),
        _ => None,
    };
    match unanswered {
        Some(diagnosis) => {
            tracing::warn!(transport = "udp", peer = %source, destination = %destination, bytes_up = up, bytes_down = down, duration_ms, reason = %diagnosis, end = %end.describe(FORWARDER), "tunnel closed before any answer")
        }
        None => {
            tracing::info!(transport = "udp", peer = %source, destination = %destination, bytes_up = up, bytes_down = down, duration_ms, reason = %end.describe(FORWARDER), "tunnel closed")
        }
    }
}
