//! The UDP server: DTLS sessions from a [`dtls::DtlsListener`], each forwarded to a connected
//! UDP socket, registered in a [`ConnectionManager`] keyed by the client's address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use connmgr::{Close, CloseReason, ConnectionManager, GetError};
use dtls::batch::{Datagram, RecvBatch, SendBatch};
use dtls::{DtlsListener, DtlsSession, RecvHalf, SendError, SendHalf};

use prometheus_client::metrics::counter::Counter;
use proto::Header;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Asked, Refusal};
use crate::context::ServerContext;
use crate::destination::Destination;
use crate::dial::{DialError, Dialer, dial_udp};
use crate::identity::Grant;
use crate::metrics::{Metrics, Transport};
use crate::proxy_protocol::Transport as ProxyTransport;
use crate::request::{ReadHeaderError, Request};
use crate::shutdown::Tasks;
use crate::tunnel::{Client, Connection, Tunnel};
use crate::udp::session::{self, BATCH, End, Path, SERVER, Stop, is_transient};

/// The destination side of one UDP session: a connected socket, and the signal that ends the
/// session when the manager closes it (idle eviction, shutdown, a replacing session).
///
/// The session's task takes the socket out when it starts and owns it, so the socket is closed
/// when the session ends. The registry frees removed entries later, in batches (epoch-based
/// reclamation); a socket left in the entry would stay open until then.
pub(crate) struct Outbound {
    socket: std::sync::Mutex<Option<UdpSocket>>,
    stop: Stop,
}

impl Close for Outbound {
    async fn close(self: Arc<Self>, why: CloseReason) {
        self.stop.closed(why, "closed by the server");
    }
}

type Sessions = ConnectionManager<SocketAddr, Outbound, DialError>;

/// A UDP-over-DTLS server on an already-bound [`DtlsListener`].
pub struct UdpServer {
    listener: DtlsListener,
    ctx: ServerContext,
}

impl UdpServer {
    /// A server accepting sessions from `listener`.
    pub fn new(listener: DtlsListener, ctx: ServerContext) -> UdpServer {
        UdpServer { listener, ctx }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves sessions until `shutdown` completes; then stops accepting, lets sessions go on
    /// for the drain period, and closes the rest with close_notify.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let UdpServer { mut listener, ctx } = self;
        let settings = ctx.settings.clone();
        let sessions: Arc<Sessions> = Arc::new(ConnectionManager::new());
        // The listener's handshake counters are read at every scrape.
        ctx.metrics.watch_udp_listener(listener.handle());
        let limit = Arc::new(Semaphore::new(settings.max_udp_sessions));
        let tasks = Tasks::new();
        let sweep_stop = CancellationToken::new();
        let sweeper = tokio::spawn(session::sweep(
            Arc::clone(&sessions),
            settings.udp_idle_timeout,
            sweep_stop.clone(),
        ));
        tokio::pin!(shutdown);
        loop {
            let session = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(session) => session,
                    Err(e) => {
                        tracing::error!(transport = "udp", error = %e, "DTLS listener stopped");
                        break;
                    }
                },
            };
            if let Some(took) = session.handshake_duration() {
                ctx.metrics.handshake_took(Transport::Udp, took);
            }
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                ctx.metrics.limit_refused(Transport::Udp);
                tracing::warn!(transport = "udp", peer = %session.peer_addr(), limit = settings.max_udp_sessions, "too many sessions; closing the new one");
                let _ = session.shutdown().await;
                continue;
            };
            let ctx = ctx.clone();
            let sessions = Arc::clone(&sessions);
            tasks.spawn(async move {
                serve_session(session, &ctx, &sessions).await;
                drop(permit);
            });
        }
        drop(listener);
        let drain = settings.drain_period;
        if tasks.len() > 0 {
            tracing::info!(transport = "udp", open = tasks.len(), drain = ?drain, "draining sessions");
        }
        if !tasks.wait(drain).await {
            // Closing through the registry sends close_notify to every client.
            let closed = sessions.close_all().await;
            tracing::info!(
                transport = "udp",
                closed,
                "closed sessions still open after the drain period"
            );
        }
        tasks.drain(Duration::from_secs(2)).await;
        sessions.close_all().await;
        sweep_stop.cancel();
        let _ = sweeper.await;
    }
}

/// Who is on the other side of `session`.
fn client_of(session: &DtlsSession) -> Client {
    Client::from_addr(session.peer_addr())
        .with_certificate(
            session.peer_subject().map(str::to_owned),
            session.peer_certificate(),
        )
        .with_connection(Connection::new(
            Some(session.local_addr()),
            None,
            Some("DTLSv1.2"),
        ))
}

/// The destination and grant of a session that asked for a tunnel; `None` (the session
/// closed as it should be) for a health check or a refusal.
async fn admit(
    admission: &Admission<'_>,
    send: &SendHalf,
    recv: &mut RecvHalf,
    buf: &mut [u8],
) -> Option<(Destination, Grant)> {
    match admission.request(first_record(recv, buf)).await {
        Ok(Asked::Tunnel(_, destination, grant)) => return Some((destination, grant)),
        // No close_notify for a client the identity rules refuse: its health check must not
        // look healthy.
        Err(Refusal::Identity(_)) => return None,
        Ok(Asked::HealthCheck) | Err(_) => {}
    }
    let _ = send.shutdown().await;
    None
}

async fn serve_session(session: DtlsSession, ctx: &ServerContext, sessions: &Sessions) {
    let client = client_of(&session);
    let max_payload = session.max_payload();
    let (send, mut recv) = session.into_split();
    let mut buf = vec![0u8; max_payload.max(proto::MAX_HEADER_LEN)];
    let admission = Admission::new(ctx, Transport::Udp, &client);
    let Some((destination, grant)) = admit(&admission, &send, &mut recv, &mut buf).await else {
        return;
    };
    // A session from an address that still has one (a restarted client) replaces it.
    if sessions.contains(&client.addr) {
        sessions.remove(&client.addr).await;
    }
    let dialer = admission.dialer(&grant);
    let Some((outbound, socket)) = open(&admission, sessions, &client, &destination, dialer).await
    else {
        let _ = send.shutdown().await;
        return;
    };
    // The PROXY protocol header goes in front of every datagram: written once at the start
    // of the buffer that datagrams are received into, after it.
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let prefix = admission
        .proxy_header(&grant, ProxyTransport::Dgram, local)
        .unwrap_or_default();
    let mut buf = [prefix.as_slice(), &vec![0u8; max_payload]].concat();
    let tunnel = Tunnel::open(
        &ctx.metrics,
        Transport::Udp,
        &client,
        destination,
        grant.rule(),
    );
    let counters = Counters::new(&ctx.metrics);
    let silence = ctx.settings.udp_client_silence_timeout;
    let end = tokio::select! {
        end = relay_up(&mut recv, &mut buf, prefix.len(), &socket, sessions, &client.addr, &counters) => end,
        end = relay_down(&send, max_payload, &socket, sessions, &client.addr, &ctx.metrics, &counters) => end,
        () = outbound.stop.stopped() => End::Stopped(outbound.stop.reason("closed by the server")),
        () = client_silence(&counters, silence) => End::Stopped("the client sent nothing for udp_client_silence_timeout"),
    };
    if !end.session_is_over() {
        let _ = send.shutdown().await;
    }
    drop(socket);
    // Remove our own entry only: a replacing session may already have its own.
    sessions.remove_if_same(&client.addr, &outbound).await;
    tunnel.close(
        counters.up.load(Ordering::Relaxed),
        counters.down.load(Ordering::Relaxed),
        &end.describe(SERVER),
    );
}

/// The session's first record, which must be exactly one header.
async fn first_record(recv: &mut RecvHalf, buf: &mut [u8]) -> Result<Request, Refusal> {
    let n = match recv.recv(buf).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(ReadHeaderError::Truncated {
                received: 0,
                expected: proto::VERSION_LEN,
            }
            .into());
        }
        Err(e) => return Err(ReadHeaderError::Io(std::io::Error::other(e)).into()),
    };
    let record = &buf[..n];
    match Header::decode(record) {
        Ok(header) => Ok(Request::from_header(&header)),
        // Data whose session lost its header on the path is told apart from a bad header.
        Err(error) if proto::Version::detect(record).is_err() => {
            Err(Refusal::NotAHeader { bytes: n, error })
        }
        Err(error) => Err(ReadHeaderError::Invalid(error).into()),
    }
}

/// The destination socket for this session, dialed through the registry, owned by the
/// session's task from here on (closed when the session ends, whenever the registry frees
/// its entry).
async fn open(
    admission: &Admission<'_>,
    sessions: &Sessions,
    client: &Client,
    destination: &Destination,
    dialer: Dialer,
) -> Option<(Arc<Outbound>, UdpSocket)> {
    let ip = client.addr.ip();
    let created = sessions.get_or_create(client.addr, Instant::now(), || async move {
        let socket = dial_udp(destination, &dialer, Some(ip)).await?;
        Ok(Arc::new(Outbound {
            socket: std::sync::Mutex::new(Some(socket)),
            stop: Stop::default(),
        }))
    });
    let dial = async {
        created.await.map_err(|e| match e {
            GetError::Create(dial) => dial,
            GetError::Removed => Arc::new(DialError::Connect {
                destination: destination.clone(),
                source: std::io::Error::other(
                    "the session was replaced while its destination was being dialed",
                ),
            }),
            other => Arc::new(DialError::Connect {
                destination: destination.clone(),
                source: std::io::Error::other(other.to_string()),
            }),
        })
    };
    let outbound = admission.dial(destination, dial).await.ok()?;
    let taken = outbound
        .socket
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match taken {
        Some(socket) => Some((outbound, socket)),
        None => {
            // Another session from the same address holds it (a race of two restarts).
            tracing::warn!(transport = "udp", peer = %client, destination = ?destination, "destination socket already in use; session closed");
            None
        }
    }
}

struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    /// The server's byte counters, added to per datagram.
    metrics: (Counter, Counter),
    /// When the client last sent a datagram, in milliseconds since `epoch`.
    last_from_client: AtomicU64,
    epoch: Instant,
}

impl Counters {
    fn new(metrics: &Metrics) -> Self {
        Counters {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            metrics: metrics.byte_counters(Transport::Udp),
            last_from_client: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Counters {
    fn heard_from_client(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        self.last_from_client
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last_from_client(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_from_client.load(Ordering::Relaxed))
    }
}

/// When a session whose client last sent at `last` is silent for too long, or `None` when the
/// timeout is off (zero).
fn silent_after(last: Instant, timeout: Duration) -> Option<Instant> {
    (!timeout.is_zero()).then(|| last + timeout)
}

/// Completes when the client has sent nothing for `timeout` (never when it is zero), whatever
/// the destination does.
async fn client_silence(counters: &Counters, timeout: Duration) {
    loop {
        let Some(deadline) = silent_after(counters.last_from_client(), timeout) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Bytes a batch of datagrams to the destination holds at most before it is flushed.
const BATCH_BYTES: usize = 256 * 1024;

/// Forwards the client's records to the destination. `buf` starts with `prefix` bytes (a
/// PROXY protocol header, or none) that go in front of every datagram.
///
/// Waits for one record, takes the records already queued behind it (no waiting, at most
/// [`BATCH`]), and sends them to the destination in one `sendmmsg`, in order.
async fn relay_up(
    recv: &mut RecvHalf,
    buf: &mut [u8],
    prefix: usize,
    destination: &UdpSocket,
    sessions: &Sessions,
    client: &SocketAddr,
    counters: &Counters,
) -> End {
    let mut out = SendBatch::new(BATCH, BATCH_BYTES);
    loop {
        let first = recv.recv(&mut buf[prefix..]).await;
        let end = session::take_ready(first, recv, buf, prefix, Path::CONNECTED, &mut out, || {});
        if !out.is_empty() {
            let now = Instant::now();
            sessions.touch(client, now);
            counters.heard_from_client(now);
            if let Err(e) = flush_up(&mut out, destination, prefix, counters).await {
                return End::Socket(e);
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Sends the batch to the destination, waiting for room; counts what went (without the
/// prefix). A datagram the destination refuses (ICMP answers to earlier ones) is dropped and
/// the rest go on.
async fn flush_up(
    out: &mut SendBatch,
    destination: &UdpSocket,
    prefix: usize,
    counters: &Counters,
) -> std::io::Result<()> {
    let r = loop {
        match out.flush(destination).await {
            Err(e) if is_transient(&e) => continue,
            r => break r,
        }
    };
    let sent = out.take_sent();
    let bytes = sent.bytes - sent.datagrams * prefix as u64;
    counters.up.fetch_add(bytes, Ordering::Relaxed);
    counters.metrics.0.inc_by(bytes);
    r
}

/// The bytes of a whole, non-empty datagram (what a record can carry).
fn forwardable(d: Datagram<'_>) -> Option<&[u8]> {
    (!d.truncated && !d.bytes.is_empty()).then_some(d.bytes)
}

/// Forwards the destination's datagrams to the client: what the socket has queued is taken
/// with one `recvmmsg` and sealed into records that go out with one `sendmmsg`, in order.
async fn relay_down(
    send: &SendHalf,
    max_payload: usize,
    destination: &UdpSocket,
    sessions: &Sessions,
    client: &SocketAddr,
    metrics: &Metrics,
    counters: &Counters,
) -> End {
    // A slot of a record's payload: a longer datagram is received cut, seen as such, and
    // dropped rather than forwarded cut. Few slots until the destination bursts.
    let mut batch = RecvBatch::growing(4, BATCH, max_payload);
    loop {
        match batch.recv(destination).await {
            Ok(_) => {}
            Err(e) if is_transient(&e) => continue,
            Err(e) => return End::Socket(e),
        }
        for d in batch.iter() {
            if d.bytes.is_empty() {
                // DTLS records cannot be empty: nothing to forward.
                metrics.datagram_dropped(Transport::Udp, "empty");
            } else if d.truncated {
                metrics.datagram_dropped(Transport::Udp, "too_large");
            }
        }
        sessions.touch(client, Instant::now());
        match send.send_many(batch.iter().filter_map(forwardable)).await {
            Ok(sent) => {
                counters.down.fetch_add(sent.bytes, Ordering::Relaxed);
                counters.metrics.1.inc_by(sent.bytes);
                for _ in 0..sent.refused {
                    metrics.datagram_dropped(Transport::Udp, "too_large");
                }
            }
            Err(SendError::Closed) => return End::PeerClosed,
            Err(e) => return End::Send(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_client_is_given_up_after_the_timeout_and_never_when_it_is_off() {
        let last = Instant::now();
        let timeout = Duration::from_secs(600);
        assert_eq!(silent_after(last, timeout), Some(last + timeout));
        assert_eq!(silent_after(last, Duration::ZERO), None);
    }

    #[test]
    fn hearing_from_the_client_moves_the_deadline() {
        let counters = Counters::new(&Metrics::new());
        let later = counters.epoch + Duration::from_secs(42);
        counters.heard_from_client(later);
        assert_eq!(counters.last_from_client(), later);
        let timeout = Duration::from_secs(10);
        assert_eq!(
            silent_after(counters.last_from_client(), timeout),
            Some(later + timeout)
        );
    }
}
