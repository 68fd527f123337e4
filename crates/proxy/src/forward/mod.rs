//! Client-side forwarders: local TCP and UDP ports whose traffic goes through tunnels to a
//! streamproxy server.
//!
//! A [`TcpForwarder`] listens on a local TCP address; every accepted connection gets its own
//! TLS tunnel to a fixed [`Destination`](crate::Destination), and bytes are relayed with [`relay`](crate::relay::relay).
//! A [`UdpForwarder`] reads one local UDP socket; every source address gets its own DTLS
//! tunnel, kept in a [`ConnectionManager`](connmgr::ConnectionManager) (created once even when
//! datagrams race, freed after an idle timeout), and the destination's replies go back to
//! that source; bound to an unspecified address (`0.0.0.0`, `::`), it sends them from the
//! local address the source reached, which a source's connected socket requires.
//!
//! Both follow the server's shape: an already-bound socket and a shutdown future go in, one
//! task per tunnel, limits by count (refuse, never queue), one log line when a tunnel ends.
//! Nothing is retried silently: a tunnel that cannot be opened is logged and its local
//! connection closed (TCP) or its datagram dropped and counted (UDP).
//!
//! The server is a [`ServerAddr`]: a socket address, or a `host:port` name that every new
//! tunnel resolves again, so a server that moves (dynamic DNS, a new host) is followed
//! without a restart; while the resolver fails, tunnels use the addresses of the last lookup
//! that worked.
//!
//! What this module does not do: check a destination policy (the server does), or split, pad
//! or truncate datagrams.
//!
//! ```no_run
//! # async fn example(tls: tls::ClientConfig, dtls: dtls::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use streamproxy_proxy::forward::{ServerAddr, TcpForwarder, UdpForwarder};
//!
//! let server: ServerAddr = "agent.example:8890".parse()?;
//! let ssh = TcpForwarder::bind("127.0.0.1:2222".parse()?, server.clone(), tls, "10.0.0.7:22".parse()?).await?;
//! let dns = UdpForwarder::bind("127.0.0.1:5353".parse()?, server, dtls, "10.0.0.53:53".parse()?).await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::join!(ssh.run(stop.clone().cancelled_owned()), dns.run(stop.cancelled_owned()));
//! # Ok(()) }
//! ```

mod live;
mod metrics;
mod pending;
mod reply_watch;
mod server_addr;
mod settings;
mod tcp;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::client::ResolveError;
pub use live::LiveConfig;
pub use metrics::ForwardMetrics;
use server_addr::ServerLookup;
pub use server_addr::{ServerAddr, ServerAddrError};
pub use settings::ForwardSettings;
pub use tcp::TcpForwarder;
pub use udp::UdpForwarder;

/// A local socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {transport} {addr}")]
pub struct BindError {
    /// `"tcp"` or `"udp"`.
    pub transport: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// What a forwarder has done so far. Read it with [`ForwardStats::snapshot`]; cloning is
/// cheap and every clone sees the same counters.
#[derive(Debug, Clone, Default)]
pub struct ForwardStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    tunnels_opened: AtomicU64,
    tunnels_closed: AtomicU64,
    tunnels_failed: AtomicU64,
    tunnels_refused: AtomicU64,
    tunnels_unanswered: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    datagrams_up: AtomicU64,
    datagrams_down: AtomicU64,
    dropped_too_large: AtomicU64,
    dropped_other: AtomicU64,
    /// The inode of the UDP forwarder's local socket (0: none), to read the kernel's drops.
    socket_inode: AtomicU64,
}

/// A copy of a forwarder's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ForwardCounts {
    /// Tunnels opened to the server.
    pub tunnels_opened: u64,
    /// Tunnels that have ended (closed by either side, idle, or on shutdown).
    pub tunnels_closed: u64,
    /// Tunnels that could not be opened (connection, handshake or header failed).
    pub tunnels_failed: u64,
    /// Local connections or sources refused because the tunnel limit was reached.
    pub tunnels_refused: u64,
    /// Tunnels replaced because the server stopped answering (UDP; see
    /// [`UdpForwarder::reply_timeout`]).
    pub tunnels_unanswered: u64,
    /// Bytes sent from local clients to the destination.
    pub bytes_up: u64,
    /// Bytes sent from the destination to local clients.
    pub bytes_down: u64,
    /// Datagrams forwarded to the destination (UDP).
    pub datagrams_up: u64,
    /// Datagrams forwarded back to local clients (UDP).
    pub datagrams_down: u64,
    /// Datagrams dropped because they were larger than a DTLS record can carry (UDP).
    pub dropped_too_large: u64,
    /// Datagrams dropped for another reason: empty, no tunnel, a closed tunnel (UDP).
    pub dropped_other: u64,
    /// Datagrams the kernel dropped because the local socket's receive buffer was full (UDP,
    /// while the forwarder runs).
    pub dropped_by_kernel: u64,
}

impl ForwardStats {
    /// The counters now.
    pub fn snapshot(&self) -> ForwardCounts {
        let c = &*self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ForwardCounts {
            tunnels_opened: get(&c.tunnels_opened),
            tunnels_closed: get(&c.tunnels_closed),
            tunnels_failed: get(&c.tunnels_failed),
            tunnels_refused: get(&c.tunnels_refused),
            tunnels_unanswered: get(&c.tunnels_unanswered),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            datagrams_up: get(&c.datagrams_up),
            datagrams_down: get(&c.datagrams_down),
            dropped_too_large: get(&c.dropped_too_large),
            dropped_other: get(&c.dropped_other),
            dropped_by_kernel: match get(&c.socket_inode) {
                0 => 0,
                inode => dtls::kernel_drops_by_inode(inode).unwrap_or(0),
            },
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An optional value in a log line: the value, or `-`.
pub(crate) struct DisplayOpt<T>(pub(crate) Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for DisplayOpt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
