//! Timeouts and limits of a server, with the defaults a deployment starts from.

use std::time::Duration;

use crate::keepalive::Keepalive;

/// Timeouts and limits of a server. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// How long a client has, after its handshake, to send a whole header. Default 10 s.
    pub header_timeout: Duration,
    /// How long resolving and connecting to a destination may take. Default 10 s.
    pub dial_timeout: Duration,
    /// How long a TLS or DTLS handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
    /// A UDP session with no datagram either way for this long is closed. Default 120 s.
    pub udp_idle_timeout: Duration,
    /// A UDP session whose client has sent nothing for this long is closed, even while the
    /// destination keeps sending (a client that vanished); zero turns it off. Long enough by
    /// default for one-way streams toward the client (a media feed whose client only listens
    /// sends nothing back): 10 minutes.
    pub udp_client_silence_timeout: Duration,
    /// How long live tunnels may go on after shutdown starts. Default 30 s.
    pub drain_period: Duration,
    /// Most TCP tunnels open at once; more are refused. Default 4096.
    pub max_tcp_tunnels: usize,
    /// Most UDP sessions open at once; more are refused. Default 4096.
    pub max_udp_sessions: usize,
    /// Most TLS and DTLS handshakes in flight at once; a connection beyond it closes a
    /// handshake in flight (one that has sent nothing yet first, else the oldest) and takes
    /// its place. Default 256.
    pub max_handshakes: usize,
    /// Most handshakes in flight from one source (an IPv4 address, or an IPv6 /64); a source
    /// at its share has its new connections closed at once, so one flooder cannot take the
    /// slots good clients need. Default 32.
    pub max_handshakes_per_source: usize,
    /// TCP keepalive on client connections and on destination connections, so a peer that
    /// vanishes without closing ends its tunnel; `None` turns it off. Default
    /// [`Keepalive::default`] (given up 90 s after its last packet).
    pub tcp_keepalive: Option<Keepalive>,
    /// Whether clients may resume TLS and DTLS sessions with tickets, skipping certificates
    /// and signatures (the tickets die with a certificate reload). Default on.
    pub resumption: bool,
    /// Receive and send buffers of the UDP listener socket (the DTLS port). Default 4 MiB
    /// each way ([`dtls::UdpBuffers::default`]); past the system caps when the process may.
    pub udp_buffers: dtls::UdpBuffers,
    /// Most destination name lookups in flight at once, for all clients. Default 256.
    pub max_lookups: usize,
    /// Most destination name lookups in flight for one client address; its further lookups
    /// wait (within the dial timeout) for its own to finish. Default 16.
    pub max_lookups_per_client: usize,
    /// How long one name lookup may take, within the dial timeout. Default 5 s.
    pub lookup_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_timeout: Duration::from_secs(10),
            dial_timeout: proto::DIAL_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(120),
            udp_client_silence_timeout: Duration::from_secs(600),
            drain_period: Duration::from_secs(30),
            max_tcp_tunnels: 4096,
            max_udp_sessions: 4096,
            max_handshakes: 256,
            max_handshakes_per_source: 32,
            tcp_keepalive: Some(Keepalive::default()),
            resumption: true,
            udp_buffers: dtls::UdpBuffers::default(),
            max_lookups: 256,
            max_lookups_per_client: 16,
            lookup_timeout: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// Sets the header timeout.
    pub fn header_timeout(mut self, d: Duration) -> Self {
        self.header_timeout = d;
        self
    }

    /// Sets the dial timeout.
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Sets the UDP idle timeout.
    pub fn udp_idle_timeout(mut self, d: Duration) -> Self {
        self.udp_idle_timeout = d;
        self
    }

    /// Sets the UDP client-silence timeout (zero: off).
    pub fn udp_client_silence_timeout(mut self, d: Duration) -> Self {
        self.udp_client_silence_timeout = d;
        self
    }

    /// Sets the drain period.
    pub fn drain_period(mut self, d: Duration) -> Self {
        self.drain_period = d;
        self
    }

    /// Sets the maximum of TCP tunnels.
    pub fn max_tcp_tunnels(mut self, n: usize) -> Self {
        self.max_tcp_tunnels = n;
        self
    }

    /// Sets the maximum of UDP sessions.
    pub fn max_udp_sessions(mut self, n: usize) -> Self {
        self.max_udp_sessions = n;
        self
    }

    /// Sets the maximum of handshakes in flight.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Sets the maximum of handshakes in flight from one source.
    pub fn max_handshakes_per_source(mut self, n: usize) -> Self {
        self.max_handshakes_per_source = n;
        self
    }

    /// Sets whether clients may resume sessions.
    pub fn resumption(mut self, enabled: bool) -> Self {
        self.resumption = enabled;
        self
    }

    /// Sets the UDP listener's buffers.
    pub fn udp_buffers(mut self, buffers: dtls::UdpBuffers) -> Self {
        self.udp_buffers = buffers;
        self
    }

    /// Sets the bounds on name lookups in flight: for all clients, and for one.
    pub fn max_lookups(mut self, global: usize, per_client: usize) -> Self {
        self.max_lookups = global;
        self.max_lookups_per_client = per_client;
        self
    }

    /// Sets the timeout of one name lookup.
    pub fn lookup_timeout(mut self, d: Duration) -> Self {
        self.lookup_timeout = d;
        self
    }

    /// Sets TCP keepalive (`None`: off).
    pub fn tcp_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.tcp_keepalive = keepalive;
        self
    }
}
