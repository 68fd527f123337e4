//! Timeouts and limits of the client-side forwarders, with the defaults a client starts from.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::keepalive::Keepalive;

/// Timeouts and limits of [`TcpForwarder`](super::TcpForwarder) and
/// [`UdpForwarder`](super::UdpForwarder). `Default` gives the documented defaults; it is the
/// only place they are written. Each forwarder reads the fields that concern it.
///
/// ```
/// use std::time::Duration;
/// use streamproxy_proxy::forward::ForwardSettings;
///
/// let settings = ForwardSettings::default().udp_reply_timeout(Duration::ZERO);
/// assert_eq!(settings.connect_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardSettings {
    /// How long resolving and connecting to the server, the handshake and the header may take
    /// together. Default 10 s.
    pub connect_timeout: Duration,
    /// How long live TCP tunnels may go on after shutdown starts. Default 30 s.
    pub drain_period: Duration,
    /// Most tunnels open at once per forwarder; more are refused (TCP) or their datagrams
    /// dropped (UDP). Default 4096.
    pub max_tunnels: NonZeroUsize,
    /// TCP keepalive on the connection to the server, so a server that vanishes ends its
    /// tunnels; `None` turns it off. Default [`Keepalive::default`].
    pub keepalive: Option<Keepalive>,
    /// A UDP tunnel with no datagram either way for this long is closed. Default 120 s.
    pub udp_idle_timeout: Duration,
    /// A UDP tunnel that has carried replies, then gets none for this long after its source
    /// sent a datagram, is replaced at the source's next datagram (a restarted server forgot
    /// the session); zero never replaces. Default 30 s.
    pub udp_reply_timeout: Duration,
    /// UDP datagrams waiting for their tunnel to open, across all sources; more are dropped.
    /// One source may have at most 256 of them waiting, and all sources together at most
    /// 16 MiB. Default 4096: a storm of 50 new sources with 64 datagrams in flight each
    /// (3,200) waits whole.
    pub max_pending: NonZeroUsize,
    /// Buffers of the UDP forwarder's local socket, which takes the bursts of every local
    /// source; `None` keeps the system's default. Default 4 MiB each way.
    pub udp_buffers: Option<dtls::UdpBuffers>,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            connect_timeout: proto::DIAL_TIMEOUT,
            drain_period: Duration::from_secs(30),
            max_tunnels: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            keepalive: Some(Keepalive::default()),
            udp_idle_timeout: Duration::from_secs(120),
            udp_reply_timeout: Duration::from_secs(30),
            max_pending: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            udp_buffers: Some(dtls::UdpBuffers::default()),
        }
    }
}

impl ForwardSettings {
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the drain period.
    pub fn drain_period(mut self, d: Duration) -> Self {
        self.drain_period = d;
        self
    }

    /// Sets the maximum of tunnels.
    pub fn max_tunnels(mut self, n: NonZeroUsize) -> Self {
        self.max_tunnels = n;
        self
    }

    /// Sets TCP keepalive (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Sets the UDP idle timeout.
    pub fn udp_idle_timeout(mut self, d: Duration) -> Self {
        self.udp_idle_timeout = d;
        self
    }

    /// Sets the UDP reply timeout (zero: never replace).
    pub fn udp_reply_timeout(mut self, d: Duration) -> Self {
        self.udp_reply_timeout = d;
        self
    }

    /// Sets the UDP local socket's buffers (`None`: the system's default).
    pub fn udp_buffers(mut self, buffers: Option<dtls::UdpBuffers>) -> Self {
        self.udp_buffers = buffers;
        self
    }

    /// Sets the maximum of pending datagrams.
    pub fn max_pending(mut self, n: NonZeroUsize) -> Self {
        self.max_pending = n;
        self
    }
}
