//! The driver: the one task that reads the listener's UDP socket. It keeps the address table,
//! asks [`Demux::decide`] what to do with each datagram, answers cookieless ClientHellos,
//! feeds established peers' bounded queues with `try_send`, starts handshakes and, at the
//! half-open limit, evicts one.
//!
//! Only this module reads the listener's socket, through `batch::RecvBatch` (sessions and handshakes
//! only send on it).
//!
//! On a socket bound to an unspecified address (`0.0.0.0`, `::`) the batch reads each
//! datagram's local destination, and everything sent to a peer goes from the address it
//! reached: a HelloVerifyRequest from the address its ClientHello was sent to; a handshake,
//! and the session it makes, from the address of the ClientHello that started it (its
//! `DatagramIo` holds it, and the session reports it as its local address). Later datagrams of
//! that peer to another local address are still delivered (peers are keyed by their source
//! address) but answered from the first: a client's connected socket talks to one server
//! address, and a client that moves to another starts a new handshake, which takes the new
//! address.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::batch::{self, RecvBatch};
use crate::config::ServerConfig;
use crate::cookie::CookieJar;
use crate::demux::{Action, Context, Demux, DropReason, PeerState};
use crate::handshake::{Handshake, new_server_stream};
use crate::io::DatagramIo;
use crate::record::COOKIE_LEN;
use crate::session::{DtlsSession, PeerLink};
use crate::shared::{Shared, bump};

/// Datagrams one `recvmmsg` call receives at most.
const SLOTS: usize = 32;
/// Room for one datagram: the largest UDP payload, so nothing is ever truncated.
const SLOT_LEN: usize = 65536;
/// Datagrams read per wake-up before the driver looks at its timers again (two `recvmmsg`
/// calls at most).
const BATCH: usize = 2 * SLOTS;
/// How often closed sessions are swept from the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Datagram copies are carved out of chunks of this size (amortises allocation).
const POOL_CHUNK: usize = 256 * 1024;

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

/// A handshake task in the start-order queue.
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
pub(crate) struct Driver {
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
    /// The socket reports each datagram's local destination (it is bound to an unspecified
    /// address): answers go from there.
    destinations: bool,
}

impl Driver {
    /// A driver for `socket`, handing finished sessions to `accept_tx`. Asks the kernel for
    /// each datagram's destination when `socket` is bound to an unspecified address.
    pub(crate) fn new(
        socket: UdpSocket,
        shared: Arc<Shared>,
        accept_tx: mpsc::Sender<Result<DtlsSession, io::Error>>,
        cookies: CookieJar,
        config: ServerConfig,
    ) -> io::Result<Self> {
        let destinations = batch::report_destinations(&socket)?;
        Ok(Self {
            socket: Arc::new(socket),
            shared,
            accept_tx,
            demux: Demux::new(cookies, config.limits.max_half_open),
            peers: HashMap::new(),
            handshakes: VecDeque::new(),
            pool: BytesMut::new(),
            config,
            destinations,
        })
    }

    /// Reads the socket until the listener is dropped and the last peer has gone, or the
    /// socket fails (the error goes to `accept`).
    pub(crate) async fn run(mut self) {
        let mut batch = RecvBatch::new(SLOTS, SLOT_LEN);
        if self.destinations {
            batch = batch.with_destinations();
        }
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
                    if let Err(e) = r.and_then(|()| self.drain(&mut batch, accepting)) {
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

    /// Reads what the socket has queued, up to [`BATCH`] datagrams, with as few system calls
    /// as the batch allows.
    fn drain(&mut self, batch: &mut RecvBatch, accepting: bool) -> io::Result<()> {
        for _ in 0..BATCH / SLOTS {
            match batch.try_recv(&self.socket) {
                Ok(n) => {
                    for i in 0..n {
                        if let Some(d) = batch.get(i) {
                            // A cut datagram (none is, with slots of the largest UDP payload)
                            // and one from a non-IP source are not records for anyone.
                            match d.source {
                                Some(source) if !d.truncated => {
                                    let local = d.destination;
                                    self.on_datagram(source, local, d.bytes, accepting);
                                }
                                _ => bump(&self.shared.counters.bad_datagrams),
                            }
                        }
                    }
                }
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

    /// Acts on one datagram from `source`, sent to the local address `local` (known on a socket
    /// bound to an unspecified address, where answers go from it).
    fn on_datagram(
        &mut self,
        source: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        accepting: bool,
    ) {
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
                if batch::try_send_from(&self.socket, source, local, hvr).is_ok() {
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
                let hellos = [Bytes::from(first_hello), second];
                self.start(source, local, random, cookie, hellos);
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

    /// Starts the handshake of `source`, answered from `local`, replaying `hellos` (the
    /// cookieless ClientHello the cookie was computed for, then the one that carried it).
    fn start(
        &mut self,
        source: SocketAddr,
        local: Option<IpAddr>,
        random: [u8; 32],
        cookie: [u8; COOKIE_LEN],
        hellos: [Bytes; 2],
    ) {
        let ctx = self.shared.context();
        let (tx, rx) = mpsc::channel(self.config.limits.peer_queue);
        let io = DatagramIo::demultiplexed(
            self.socket.clone(),
            source,
            local,
            self.config.common.mtu.get() as usize,
            VecDeque::from(hellos),
            rx,
        );
        let stream = match new_server_stream(&ctx, &self.config, cookie, io) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "cannot create DTLS server state");
                bump(&self.shared.counters.handshakes_failed);
                return;
            }
        };
        let link = Arc::new(PeerLink::default());
        let handshake = Handshake::new(
            stream,
            source,
            link.clone(),
            self.shared.clone(),
            self.accept_tx.clone(),
            &self.config,
        );
        self.peers.insert(
            source,
            Peer {
                tx,
                link: link.clone(),
                random,
            },
        );
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
