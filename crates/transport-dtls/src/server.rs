//! The listener: one UDP socket, one driver task that owns its receiving side and
//! demultiplexes datagrams by source address into per-peer bounded queues, one task per
//! handshake, finished sessions handed out by [`DtlsListener::accept`].
//!
//! At most `max_half_open` handshakes are in progress. At the limit, a ClientHello with a valid
//! cookie evicts the oldest one still in progress (the driver keeps them in start order): its
//! task is aborted, its address forgotten, its slot given to the newcomer.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openssl::error::ErrorStack;
use openssl::memcmp;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder};
use openssl::x509::X509NameRef;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::{CaCerts, ConfigError, Identity, ServerConfig};
use crate::cookie::CookieJar;
use crate::demux::{Action, Context, Demux, DropReason, PeerState};
use crate::error::{AcceptError, HandshakeError, ListenError};
use crate::io::DatagramIo;
use crate::record::COOKIE_LEN;
use crate::session::{self, DtlsSession, PeerLink, Stream};

/// Datagrams read per wake-up before the driver looks at its timers again.
const BATCH: usize = 64;
/// How often closed sessions are swept from the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Receive buffer: the largest UDP payload.
const RECV_BUF: usize = 65536;
/// Datagram copies are carved out of chunks of this size (amortises allocation).
const POOL_CHUNK: usize = 256 * 1024;

/// Counters for metrics. A snapshot; all counts since the listener started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Handshakes that produced a session.
    pub handshakes_ok: u64,
    /// Handshakes that failed (bad certificate, alert, timeout, ...). Evicted handshakes are
    /// not failures: they are counted in `handshakes_evicted` only.
    pub handshakes_failed: u64,
    /// Of the failed handshakes, those that timed out.
    pub handshakes_timed_out: u64,
    /// Stateless HelloVerifyRequests sent.
    pub hello_verify_sent: u64,
    /// ClientHellos not answered and not started: the listener no longer accepts, the
    /// ClientHello is too short to answer, a cookie could not be computed, or the half-open
    /// limit is reached and no slot can be freed (every slot is held by a finished handshake
    /// waiting for [`accept`](DtlsListener::accept)). Not counted: the ClientHellos that evict
    /// a handshake, which are started.
    pub client_hellos_dropped: u64,
    /// Handshakes ended to make room for a newcomer: at the half-open limit, a ClientHello with
    /// a valid cookie evicts the oldest handshake still in progress (its task is cancelled, its
    /// address forgotten, its slot given to the newcomer). One per admitted newcomer at the
    /// limit.
    pub handshakes_evicted: u64,
    /// ClientHellos with a cookie this listener did not issue to the sender.
    pub bad_cookies: u64,
    /// Datagrams dropped because a peer's queue was full.
    pub queue_overflows: u64,
    /// Datagrams dropped as malformed or from unknown addresses.
    pub bad_datagrams: u64,
    /// Sessions replaced by a new handshake from the same address.
    pub sessions_replaced: u64,
    /// Late copies of the ClientHello that started an established session (duplicated or
    /// delayed on the path), dropped instead of replacing the session.
    pub stale_hellos: u64,
    /// Finished sessions dropped because nobody called `accept` in time.
    pub accept_overflows: u64,
    /// Handshakes in progress now (past the cookie check, at most `max_half_open`), including
    /// finished ones whose session waits for `accept`. An evicted handshake leaves it at once.
    pub half_open: usize,
    /// Addresses with a handshake or session now (sessions ended are swept each second).
    pub peers: usize,
}

#[derive(Debug, Default)]
struct Counters {
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_timed_out: AtomicU64,
    hello_verify_sent: AtomicU64,
    client_hellos_dropped: AtomicU64,
    handshakes_evicted: AtomicU64,
    bad_cookies: AtomicU64,
    queue_overflows: AtomicU64,
    bad_datagrams: AtomicU64,
    sessions_replaced: AtomicU64,
    stale_hellos: AtomicU64,
    accept_overflows: AtomicU64,
    half_open: AtomicUsize,
    peers: AtomicUsize,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct Shared {
    ctx: RwLock<SslContext>,
    config: Mutex<ServerConfig>,
    counters: Counters,
    failure_log: FailureLog,
}

/// Lets at most `FailureLog::PER_WINDOW` handshake-failure lines through per
/// `FailureLog::WINDOW`: a flood of failing handshakes must not flood the log. The first line
/// after a quieter spell says how many were held back.
#[derive(Debug, Default)]
struct FailureLog {
    window: Mutex<(Option<Instant>, u64, u64)>,
}

impl FailureLog {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u64 = 10;

    /// `Some(held back so far)` when a line may be written now.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, written, held) = &mut *w;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Self::WINDOW) {
            *start = Some(now);
            *written = 0;
        }
        if *written < Self::PER_WINDOW {
            *written += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

/// An error and its causes on one line (this crate's errors keep their cause in `source()`).
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A cloneable handle for metrics and certificate reloads, usable while the listener accepts.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    shared: Arc<Shared>,
}

impl ListenerHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> ListenerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStats {
            handshakes_ok: get(&c.handshakes_ok),
            handshakes_failed: get(&c.handshakes_failed),
            handshakes_timed_out: get(&c.handshakes_timed_out),
            hello_verify_sent: get(&c.hello_verify_sent),
            client_hellos_dropped: get(&c.client_hellos_dropped),
            handshakes_evicted: get(&c.handshakes_evicted),
            bad_cookies: get(&c.bad_cookies),
            queue_overflows: get(&c.queue_overflows),
            bad_datagrams: get(&c.bad_datagrams),
            sessions_replaced: get(&c.sessions_replaced),
            stale_hellos: get(&c.stale_hellos),
            accept_overflows: get(&c.accept_overflows),
            half_open: c.half_open.load(Ordering::Relaxed),
            peers: c.peers.load(Ordering::Relaxed),
        }
    }

    /// Uses new certificate material for handshakes that start from now on. On error nothing
    /// changes: the old material stays in use. Established sessions are not affected.
    pub fn reload(&self, identity: Identity, client_ca: CaCerts) -> Result<(), ConfigError> {
        let prepared = self.prepare(identity, client_ca)?;
        self.commit(prepared);
        Ok(())
    }

    /// Builds the OpenSSL context of new material (where OpenSSL refuses what it refuses)
    /// without using it yet: [`commit`](Self::commit) does. Lets a server check the material
    /// of every transport before any of them changes.
    pub fn prepare(
        &self,
        identity: Identity,
        client_ca: CaCerts,
    ) -> Result<PreparedReload, ConfigError> {
        let config = self
            .shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .with_material(identity, client_ca);
        let ctx = config.context()?;
        Ok(PreparedReload { config, ctx })
    }

    /// Uses material checked by [`prepare`](Self::prepare) for handshakes from now on.
    pub fn commit(&self, prepared: PreparedReload) {
        let mut config = self
            .shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self
            .shared
            .ctx
            .write()
            .unwrap_or_else(PoisonError::into_inner) = prepared.ctx;
        *config = prepared.config;
    }

    /// [`reload`](Self::reload) from PEM files: the certificate chain, its key, the client CA.
    pub fn reload_from_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: impl AsRef<Path>,
    ) -> Result<(), ConfigError> {
        let identity = Identity::from_pem_files(cert, key)?;
        let ca = CaCerts::from_pem_file(client_ca)?;
        self.reload(identity, ca)
    }
}

/// New certificate material whose OpenSSL context was built by [`ListenerHandle::prepare`],
/// not yet in force.
pub struct PreparedReload {
    config: ServerConfig,
    ctx: SslContext,
}

impl std::fmt::Debug for PreparedReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedReload").finish_non_exhaustive()
    }
}

/// A DTLS server on one UDP socket. Dropping it stops new handshakes; sessions already
/// accepted keep working (the driver task runs until the last one ends).
#[derive(Debug)]
pub struct DtlsListener {
    accepted: mpsc::Receiver<Result<DtlsSession, io::Error>>,
    handle: ListenerHandle,
    local_addr: SocketAddr,
}

impl DtlsListener {
    /// Binds a UDP socket to `addr` and starts listening (call within a tokio runtime).
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, ListenError> {
        let socket = UdpSocket::bind(addr).await.map_err(ListenError::Io)?;
        Self::from_socket(socket, config)
    }

    /// Listens on an already bound socket (call within a tokio runtime).
    pub fn from_socket(socket: UdpSocket, config: ServerConfig) -> Result<Self, ListenError> {
        let ctx = config.context()?;
        let local_addr = socket.local_addr().map_err(ListenError::Io)?;
        let cookies = CookieJar::new(Instant::now(), config.limits.cookie_rotation)
            .map_err(ListenError::Random)?;
        let (accept_tx, accepted) = mpsc::channel(config.limits.accept_backlog);
        let shared = Arc::new(Shared {
            ctx: RwLock::new(ctx),
            config: Mutex::new(config.clone()),
            counters: Counters::default(),
            failure_log: FailureLog::default(),
        });
        let driver = Driver {
            socket: Arc::new(socket),
            shared: shared.clone(),
            accept_tx,
            demux: Demux::new(cookies, config.limits.max_half_open),
            peers: HashMap::new(),
            handshakes: VecDeque::new(),
            pool: BytesMut::new(),
            config,
        };
        tokio::spawn(driver.run());
        Ok(Self {
            accepted,
            handle: ListenerHandle { shared },
            local_addr,
        })
    }

    /// Waits for the next finished, mutually authenticated session.
    pub async fn accept(&mut self) -> Result<DtlsSession, AcceptError> {
        match self.accepted.recv().await {
            Some(Ok(session)) => Ok(session),
            Some(Err(e)) => Err(AcceptError::Socket(e)),
            None => Err(AcceptError::Closed),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for metrics and reloads.
    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ListenerStats {
        self.handle.stats()
    }

    /// See [`ListenerHandle::reload`].
    pub fn reload(&self, identity: Identity, client_ca: CaCerts) -> Result<(), ConfigError> {
        self.handle.reload(identity, client_ca)
    }
}

/// A handshake task in the start-order queue.
/// Where a handshake comes from, for the per-source share: an IPv4 address, or the /64 of an
/// IPv6 address; IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl SourceKey {
    fn of(addr: SocketAddr) -> SourceKey {
        match addr.ip() {
            std::net::IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Which source gives way when every half-open slot is taken (`in_progress`: the sources of
/// the handshakes in progress, oldest first): the newcomer's own when it already holds
/// `per_source`, else the one holding the most. `None` when there is none.
fn giving_way(
    in_progress: &[SourceKey],
    newcomer: SourceKey,
    per_source: usize,
) -> Option<SourceKey> {
    let held = |s: SourceKey| in_progress.iter().filter(|k| **k == s).count();
    if held(newcomer) >= per_source {
        return Some(newcomer);
    }
    in_progress.iter().copied().max_by_key(|s| held(*s))
}

struct InFlight {
    source: SocketAddr,
    link: Weak<PeerLink>,
    task: AbortHandle,
}

impl InFlight {
    fn in_progress(&self) -> bool {
        self.link.upgrade().is_some_and(|l| l.is_handshaking())
    }
}

struct Peer {
    tx: mpsc::Sender<Bytes>,
    link: Arc<PeerLink>,
    /// The client random of the ClientHello that started this peer's handshake.
    random: [u8; 32],
}

/// Owns the socket's receiving side and the address table. The only task that reads the socket.
struct Driver {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    accept_tx: mpsc::Sender<Result<DtlsSession, io::Error>>,
    demux: Demux,
    peers: HashMap<SocketAddr, Peer>,
    /// Handshakes in the order they started (some may have ended since): who is evicted
    /// first at the half-open limit. Ended entries are skipped when met at the front and pruned
    /// by the sweep, so eviction is amortised O(1).
    handshakes: VecDeque<InFlight>,
    pool: BytesMut,
    config: ServerConfig,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepting = !self.accept_tx.is_closed();
            if !accepting
                && self.peers.is_empty()
                && self.shared.counters.half_open.load(Ordering::Relaxed) == 0
            {
                break;
            }
            tokio::select! {
                biased;
                r = self.socket.readable() => {
                    if let Err(e) = r.and_then(|()| self.drain(&mut buf, accepting)) {
                        tracing::warn!(error = %e, "DTLS listener socket failed; listener stops");
                        let _ = self.accept_tx.try_send(Err(e));
                        break;
                    }
                }
                _ = sweep.tick() => self.sweep(),
                () = self.accept_tx.closed(), if accepting => {}
            }
        }
    }

    fn drain(&mut self, buf: &mut [u8], accepting: bool) -> io::Result<()> {
        for _ in 0..BATCH {
            match self.socket.try_recv_from(buf) {
                Ok((n, source)) => self.on_datagram(source, &buf[..n], accepting),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors reported on the socket concern one peer, not the listener.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn sweep(&mut self) {
        self.peers.retain(|_, p| !p.tx.is_closed());
        self.handshakes.retain(InFlight::in_progress);
        self.publish_peers();
    }

    /// Makes room for a verified ClientHello from `newcomer` at the half-open limit: evicts the
    /// oldest handshake in progress of the source that gives way ([`giving_way`]), or the
    /// oldest of anyone when that finds none. False when nothing can be evicted.
    fn evict_for(&mut self, newcomer: SocketAddr) -> bool {
        self.handshakes.retain(InFlight::in_progress);
        let sources: Vec<SourceKey> = self
            .handshakes
            .iter()
            .map(|h| SourceKey::of(h.source))
            .collect();
        let per_source = self.config.limits.max_half_open_per_source;
        if let Some(victim) = giving_way(&sources, SourceKey::of(newcomer), per_source) {
            if let Some(position) = sources.iter().position(|s| *s == victim) {
                if let Some(entry) = self.handshakes.remove(position) {
                    self.handshakes.push_front(entry);
                }
            }
        }
        self.evict_oldest()
    }

    /// Ends the oldest handshake still in progress and frees its half-open slot at once: its
    /// task is cancelled (dropping its OpenSSL state and queue), its address forgotten. False
    /// when there is none (every slot is held by a finished handshake waiting for `accept`).
    fn evict_oldest(&mut self) -> bool {
        while let Some(oldest) = self.handshakes.pop_front() {
            let Some(link) = oldest.link.upgrade() else {
                continue;
            };
            // Decided against the task's own transition out of handshaking: a handshake that
            // finished a moment ago keeps its session and is skipped.
            if !link.evict() {
                continue;
            }
            oldest.task.abort();
            if self
                .peers
                .get(&oldest.source)
                .is_some_and(|p| Arc::ptr_eq(&p.link, &link))
            {
                self.peers.remove(&oldest.source);
            }
            // The slot is released here, not when the cancelled task is dropped: the count
            // stays exact for the datagrams that follow in this batch. (The guard sees the
            // evicted state and does not release it again.)
            self.shared
                .counters
                .half_open
                .fetch_sub(1, Ordering::Relaxed);
            bump(&self.shared.counters.handshakes_evicted);
            tracing::debug!(peer = %oldest.source, "DTLS handshake evicted at the half-open limit");
            return true;
        }
        false
    }

    fn publish_peers(&self) {
        self.shared
            .counters
            .peers
            .store(self.peers.len(), Ordering::Relaxed);
    }

    fn on_datagram(&mut self, source: SocketAddr, datagram: &[u8], accepting: bool) {
        let counters = &self.shared.counters;
        let peer = match self.peers.get(&source) {
            None => PeerState::Unknown,
            Some(p) if p.tx.is_closed() => {
                self.peers.remove(&source);
                PeerState::Unknown
            }
            Some(p) if p.link.is_established() => PeerState::Established,
            Some(_) => PeerState::Handshaking,
        };
        let cx = Context {
            now: Instant::now(),
            source,
            peer,
            peer_random: self.peers.get(&source).map(|p| p.random),
            half_open: counters.half_open.load(Ordering::Relaxed),
            accepting,
        };
        match self.demux.decide(cx, datagram) {
            Action::Deliver => self.deliver(source, datagram),
            Action::HelloVerify => {
                let hvr = self.demux.hello_verify_request();
                // Best effort, like any datagram: the client retransmits its ClientHello.
                if self.socket.try_send_to(hvr, source).is_ok() {
                    bump(&counters.hello_verify_sent);
                }
            }
            Action::Start {
                replace,
                evict_oldest,
                random,
                cookie,
                first_hello,
            } => {
                if evict_oldest && !self.evict_for(source) {
                    bump(&self.shared.counters.client_hellos_dropped);
                    return;
                }
                if replace {
                    if let Some(old) = self.peers.remove(&source) {
                        old.link.set_replaced();
                        bump(&self.shared.counters.sessions_replaced);
                    }
                }
                let second = self.copy(datagram);
                self.start(source, random, cookie, Bytes::from(first_hello), second);
            }
            Action::Drop(reason) => {
                let counter = match reason {
                    DropReason::Malformed(_) | DropReason::UnknownPeer => &counters.bad_datagrams,
                    DropReason::BadCookie => &counters.bad_cookies,
                    DropReason::StaleHello => &counters.stale_hellos,
                    DropReason::TooShortToAnswer
                    | DropReason::NotAccepting
                    | DropReason::CookieFailure => &counters.client_hellos_dropped,
                };
                bump(counter);
            }
        }
    }

    fn deliver(&mut self, source: SocketAddr, datagram: &[u8]) {
        let bytes = self.copy(datagram);
        let Some(peer) = self.peers.get(&source) else {
            return;
        };
        match peer.tx.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => bump(&self.shared.counters.queue_overflows),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.peers.remove(&source);
                self.publish_peers();
            }
        }
    }

    fn copy(&mut self, datagram: &[u8]) -> Bytes {
        if self.pool.capacity() - self.pool.len() < datagram.len() {
            self.pool.reserve(POOL_CHUNK.max(datagram.len()));
        }
        self.pool.extend_from_slice(datagram);
        self.pool.split().freeze()
    }

    fn start(
        &mut self,
        source: SocketAddr,
        random: [u8; 32],
        cookie: [u8; COOKIE_LEN],
        first: Bytes,
        second: Bytes,
    ) {
        let counters = &self.shared.counters;
        let ctx = self
            .shared
            .ctx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (tx, rx) = mpsc::channel(self.config.limits.peer_queue);
        let io = DatagramIo::demultiplexed(
            self.socket.clone(),
            source,
            self.config.common.mtu.get() as usize,
            VecDeque::from([first, second]),
            rx,
        );
        let stream = match new_server_stream(&ctx, &self.config, cookie, io) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "cannot create DTLS server state");
                bump(&counters.handshakes_failed);
                return;
            }
        };
        let link = Arc::new(PeerLink::default());
        counters.half_open.fetch_add(1, Ordering::Relaxed);
        // Created before the task so that the slot is released even if the task is cancelled
        // before it first runs.
        let half_open = HalfOpen {
            shared: self.shared.clone(),
            link: link.clone(),
        };
        self.peers.insert(
            source,
            Peer {
                tx,
                link: link.clone(),
                random,
            },
        );
        let handshake = Handshake {
            stream,
            source,
            link: link.clone(),
            shared: self.shared.clone(),
            accept_tx: self.accept_tx.clone(),
            timeout: self.config.common.handshake_timeout,
            max_payload: self.config.common.max_payload.get(),
            _half_open: half_open,
        };
        let task = tokio::spawn(handshake.run()).abort_handle();
        self.handshakes.push_back(InFlight {
            source,
            link: Arc::downgrade(&link),
            task,
        });
        if self.handshakes.len() > 2 * self.config.limits.max_half_open.max(64) {
            // Entries of finished handshakes pile up between sweeps under a flood.
            self.handshakes.retain(InFlight::in_progress);
        }
        self.publish_peers();
    }
}

fn new_server_stream(
    ctx: &SslContext,
    config: &ServerConfig,
    cookie: [u8; COOKIE_LEN],
    io: DatagramIo,
) -> Result<Stream, ErrorStack> {
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_mtu(config.common.mtu.get())?;
    ssl.set_ex_data(cookie_index()?, cookie);
    crate::ffi::set_retransmit_schedule(&mut ssl);
    ssl.set_accept_state();
    Stream::new(ssl, io)
}

/// One handshake in its own task; its half-open slot is released when it ends, however
/// (finished, failed, timed out, cancelled by eviction).
struct Handshake {
    stream: Stream,
    source: SocketAddr,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    accept_tx: mpsc::Sender<Result<DtlsSession, io::Error>>,
    timeout: Duration,
    max_payload: usize,
    _half_open: HalfOpen,
}

/// A handshake's half-open slot. Dropping it releases the slot, unless the driver evicted the
/// handshake (the driver released it then). A handshake still marked in progress is marked
/// failed first, so that it can no longer be evicted: exactly one of the two releases it.
struct HalfOpen {
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        let _ = self.link.set_failed();
        if !self.link.is_evicted() {
            self.shared
                .counters
                .half_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Handshake {
    async fn run(mut self) {
        let counters = &self.shared.counters;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = tokio::time::timeout_at(deadline, session::handshake(&mut self.stream))
            .await
            .unwrap_or(Err(HandshakeError::TimedOut(self.timeout)));
        if let Err(e) = result {
            if !self.link.set_failed() {
                // Evicted meanwhile: counted as that, not as a failure.
                return;
            }
            bump(&counters.handshakes_failed);
            if matches!(e, HandshakeError::TimedOut(_)) {
                bump(&counters.handshakes_timed_out);
            }
            // As on TCP: a warning, within a budget. A timeout is a peer that went away (or a
            // flood's silent handshake), not worth a warning each.
            if matches!(e, HandshakeError::TimedOut(_)) {
                tracing::debug!(peer = %self.source, error = %Chain(&e), "DTLS handshake failed");
            } else if let Some(held_back) = self.shared.failure_log.admit() {
                tracing::warn!(transport = "udp", peer = %self.source, held_back, error = %Chain(&e), "DTLS handshake failed");
            }
            return;
        }
        if !self.link.set_established() {
            // Evicted while its last flight was processed: the slot went to a newcomer.
            return;
        }
        bump(&counters.handshakes_ok);
        let session = DtlsSession::new(self.stream, self.source, self.max_payload, Some(self.link));
        let handed = tokio::time::timeout_at(deadline, self.accept_tx.send(Ok(session))).await;
        if !matches!(handed, Ok(Ok(()))) {
            bump(&counters.accept_overflows);
        }
    }
}

fn cookie_index() -> Result<openssl::ex_data::Index<Ssl, [u8; COOKIE_LEN]>, ErrorStack> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, [u8; COOKIE_LEN]>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

/// OpenSSL's cookie callbacks. The listener has already checked the client's cookie before it
/// created this connection's state; it stores that cookie in the connection, and OpenSSL, which
/// replays the exchange (see `demux`), issues and checks exactly that one.
pub(crate) fn install_cookie_callbacks(b: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    let index = cookie_index()?;
    b.set_cookie_generate_cb(move |ssl, out| {
        let cookie = ssl.ex_data(index).ok_or_else(ErrorStack::get)?;
        let dst = out.get_mut(..COOKIE_LEN).ok_or_else(ErrorStack::get)?;
        dst.copy_from_slice(cookie);
        Ok(COOKIE_LEN)
    });
    b.set_cookie_verify_cb(move |ssl, presented| {
        ssl.ex_data(index)
            .is_some_and(|c| presented.len() == COOKIE_LEN && memcmp::eq(c, presented))
    });
    Ok(())
}

/// `CN=client, O=org` from a certificate name.
pub(crate) fn format_name(name: &X509NameRef) -> String {
    let mut out = String::new();
    for entry in name.entries() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(entry.object().nid().short_name().unwrap_or("?"));
        out.push('=');
        match entry.data().to_string() {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> SourceKey {
        SourceKey::of(SocketAddr::new(ip.parse().expect("ip"), 4000))
    }

    #[test]
    fn the_largest_source_gives_way_and_a_source_at_its_share_gives_way_to_itself() {
        let (flood, a, b) = (key("127.0.0.2"), key("127.0.0.3"), key("127.0.0.4"));
        let slots = [a, flood, flood, flood];
        assert_eq!(giving_way(&slots, b, 8), Some(flood));
        assert_eq!(giving_way(&slots, flood, 3), Some(flood));
        assert_eq!(giving_way(&[a, b], a, 1), Some(a));
        assert_eq!(giving_way(&[], a, 1), None);
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    }
}
