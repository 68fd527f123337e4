//! The parts both ends of a UDP tunnel share: the server's sessions and the forwarder's
//! tunnels are each a DTLS session paired with a plain UDP socket, kept in a
//! [`ConnectionManager`](connmgr::ConnectionManager), stopped from outside with a reason, and
//! logged with why they ended.
//!
//! Nothing here does I/O or reads the clock: decisions take `now`, so they are tested with
//! made-up instants.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use connmgr::CloseReason;
use dtls::batch::SendBatch;
use dtls::{RecvError, RecvHalf, SendError};
use tokio_util::sync::CancellationToken;

/// Errors a UDP socket reports for an earlier datagram (ICMP port unreachable and the like);
/// they end neither a session nor a socket.
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::Interrupted
    )
}

/// Stops a session's tasks from outside, keeping the first reason given for the close log.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    reason: OnceLock<&'static str>,
}

impl Stop {
    /// Stops the session; the first reason given is the one logged.
    pub(crate) fn stop(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Stops the session for the registry's reason.
    pub(crate) fn closed(&self, why: CloseReason, by: &'static str) {
        self.stop(match why {
            CloseReason::Idle => "idle",
            CloseReason::Shutdown => "shut down",
            _ => by,
        });
    }

    /// Whether the session was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the session is stopped.
    pub(crate) async fn stopped(&self) {
        self.token.cancelled().await;
    }

    /// Why the session was stopped (`default` if no reason was given).
    pub(crate) fn reason(&self, default: &'static str) -> &'static str {
        self.reason.get().copied().unwrap_or(default)
    }
}

/// Which side is which, for the words of a close log: the DTLS peer and the plain socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sides {
    /// The DTLS peer: `"client"` on the server, `"server"` on the forwarder.
    pub(crate) dtls: &'static str,
    /// The plain socket: `"destination"` on the server, `"local socket"` on the forwarder.
    pub(crate) socket: &'static str,
}

/// The server's sides.
pub(crate) const SERVER: Sides = Sides {
    dtls: "client",
    socket: "destination",
};

/// The forwarder's sides.
pub(crate) const FORWARDER: Sides = Sides {
    dtls: "server",
    socket: "local socket",
};

/// Why a UDP tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The DTLS peer sent close_notify.
    PeerClosed,
    /// Stopped from outside (idle, shutdown, a reply timeout...).
    Stopped(&'static str),
    /// A new session from the same address took its place.
    Replaced,
    /// Receiving from the DTLS peer failed.
    Recv(RecvError),
    /// Sending to the DTLS peer failed.
    Send(SendError),
    /// The plain socket failed.
    Socket(std::io::Error),
}

impl End {
    /// Whether the DTLS session is already over, so that no close_notify is owed.
    pub(crate) fn session_is_over(&self) -> bool {
        matches!(self, End::PeerClosed | End::Replaced)
    }

    /// The end in words, naming the sides.
    pub(crate) fn describe(&self, sides: Sides) -> impl fmt::Display + '_ {
        struct Words<'a>(&'a End, Sides);
        impl fmt::Display for Words<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Words(end, sides) = self;
                match end {
                    End::PeerClosed => write!(f, "{} sent close_notify", sides.dtls),
                    End::Stopped(reason) => f.write_str(reason),
                    End::Replaced => f.write_str("replaced by a new session from the same address"),
                    End::Recv(e) => write!(f, "{}: {}", sides.dtls, crate::explain::ErrorChain(e)),
                    End::Send(e) => {
                        write!(
                            f,
                            "sending to the {}: {}",
                            sides.dtls,
                            crate::explain::ErrorChain(e)
                        )
                    }
                    End::Socket(e) => {
                        write!(f, "{}: {}", sides.socket, crate::explain::ErrorChain(e))
                    }
                }
            }
        }
        Words(self, sides)
    }
}

/// How often a sweeper looks for idle sessions: a quarter of the idle timeout, within bounds.
pub(crate) fn sweep_every(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Frees what has been idle for `idle` until `stop`: the registry closes each with
/// [`CloseReason::Idle`].
pub(crate) async fn sweep<K, C, E>(
    sessions: std::sync::Arc<connmgr::ConnectionManager<K, C, E>>,
    idle: Duration,
    stop: CancellationToken,
) where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    C: connmgr::Close,
    E: Send + Sync + 'static,
{
    let mut tick = tokio::time::interval(sweep_every(idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        sessions.evict_idle(Instant::now(), idle).await;
    }
}

/// Datagrams one batch carries at most, each way.
pub(crate) const BATCH: usize = 32;

/// Where the datagrams of a [`take_ready`] go on the plain socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path {
    /// The peer (`None`: the socket's connected peer).
    pub(crate) to: Option<SocketAddr>,
    /// The local address they go from (`None`: the one the kernel picks), for a socket bound
    /// to an unspecified address (see [`SendBatch::push_from`]).
    pub(crate) from: Option<IpAddr>,
}

impl Path {
    /// A connected socket's peer, from the socket's address.
    pub(crate) const CONNECTED: Path = Path {
        to: None,
        from: None,
    };
}

/// Queues `first` and the records ready behind it in `out`, along `path`, each behind the
/// `prefix` bytes already at the start of `buf`; a full batch ends the take. A record cut by
/// `buf` is left out and reported to `truncated`. Returns the session's end if one of the
/// records ends it.
pub(crate) fn take_ready(
    first: Result<Option<usize>, RecvError>,
    recv: &mut RecvHalf,
    buf: &mut [u8],
    prefix: usize,
    path: Path,
    out: &mut SendBatch,
    mut truncated: impl FnMut(),
) -> Option<End> {
    let mut received = Some(first);
    while let Some(r) = received.take() {
        match r {
            Ok(Some(n)) => {
                out.push_from(path.to, path.from, &buf[..prefix + n]);
            }
            Ok(None) => return Some(End::PeerClosed),
            Err(RecvError::Replaced) => return Some(End::Replaced),
            Err(RecvError::Truncated { .. }) => truncated(),
            Err(e) => return Some(End::Recv(e)),
        }
        if out.len() < BATCH && !out.is_full(buf.len()) {
            received = recv.try_recv(&mut buf[prefix..]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept() {
        let stop = Stop::default();
        assert!(!stop.is_stopped());
        assert_eq!(stop.reason("none"), "none");
        stop.closed(CloseReason::Idle, "closed by the server");
        stop.stop("later");
        assert!(stop.is_stopped());
        assert_eq!(stop.reason("none"), "idle");
    }

    #[test]
    fn ends_are_told_in_each_sides_words() {
        let e = End::Socket(std::io::Error::other("boom"));
        assert_eq!(e.describe(SERVER).to_string(), "destination: boom");
        assert_eq!(e.describe(FORWARDER).to_string(), "local socket: boom");
        assert_eq!(
            End::PeerClosed.describe(FORWARDER).to_string(),
            "server sent close_notify"
        );
        assert!(End::Replaced.session_is_over() && !End::Stopped("idle").session_is_over());
    }

    #[test]
    fn transient_errors_are_icmp_answers() {
        let kind = |k| std::io::Error::from(k);
        assert!(is_transient(&kind(std::io::ErrorKind::ConnectionRefused)));
        assert!(!is_transient(&kind(std::io::ErrorKind::PermissionDenied)));
    }

    #[test]
    fn the_sweep_period_is_bounded() {
        assert_eq!(
            sweep_every(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            sweep_every(Duration::from_millis(10)),
            Duration::from_millis(50)
        );
        assert_eq!(
            sweep_every(Duration::from_secs(600)),
            Duration::from_secs(5)
        );
    }
}
