//! The listener: one UDP socket, one driver task that owns its receiving side and
//! demultiplexes datagrams by source address into per-peer bounded queues (see `driver`), one
//! task per handshake (see `handshake`), finished sessions handed out by
//! [`DtlsListener::accept`]. [`ListenerHandle`] reads the counters and reloads the certificate
//! material while the listener runs.
//!
//! A listener bound to an unspecified address (`0.0.0.0`, `::`) answers each client from the
//! address the client reached: it asks the kernel for every datagram's local destination
//! (`IP_PKTINFO`, `IPV6_RECVPKTINFO`) and sends each of a peer's datagrams (HelloVerifyRequest,
//! handshake flights, alerts, records) from the address of its first ClientHello (see
//! `driver`); [`DtlsSession::local_addr`] is that address with the listener's port. Left to
//! the kernel, the source would be the address of the route back to the client, which on a
//! host with several addresses (`127.0.0.2`, a second address on an interface, a Docker
//! bridge, IPv6) need not be the one the client sent to, and a client's connected socket
//! drops datagrams from any other. A listener bound to one address needs none of this.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use openssl::ssl::SslContext;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::{CaCerts, Identity, ServerConfig};
use crate::cookie::CookieJar;
use crate::driver::Driver;
use crate::error::{AcceptError, ConfigError, ListenError};
use crate::session::DtlsSession;
use crate::shared::Shared;

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
///
/// Bound to an unspecified address (`0.0.0.0:PORT`, `[::]:PORT`), it answers each client
/// from the address the client reached, which its session reports as
/// [`local_addr`](DtlsSession::local_addr) (see the module documentation).
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
        let shared = Arc::new(Shared::new(ctx, config.clone()));
        let driver = Driver::new(socket, shared.clone(), accept_tx, cookies, config)
            .map_err(ListenError::Destinations)?;
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
