//! TCP keepalive: how a tunnel notices a peer that vanished without a FIN or a reset (a host
//! powered off, a cable pulled, a NAT entry dropped).

use std::time::Duration;

use tokio::net::TcpStream;

/// Keepalive probes on a TCP connection: after `idle` without traffic, a probe every
/// `interval`; `retries` unanswered probes end the connection (its reads and writes fail,
/// and the tunnel closes).
///
/// ```
/// use std::time::Duration;
/// use streamproxy_proxy::keepalive::Keepalive;
///
/// // A dead peer is noticed within 60 s + 3 × 10 s of its last packet.
/// let keepalive = Keepalive::default();
/// assert_eq!(keepalive.idle, Duration::from_secs(60));
/// assert_eq!(keepalive.dead_after(), Duration::from_secs(90));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time without traffic before the first probe. Default 60 s.
    pub idle: Duration,
    /// Time between probes. Default 10 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped. Default 3.
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 3,
        }
    }
}

impl Keepalive {
    /// How long after its last packet a vanished peer is given up at the latest.
    pub fn dead_after(&self) -> Duration {
        self.idle + self.interval * self.retries
    }

    /// Turns keepalive on for `stream`. A failure is logged and otherwise ignored: the
    /// connection works without it.
    pub fn apply(&self, stream: &TcpStream, side: &'static str) {
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.retries);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&params) {
            tracing::warn!(side, error = %e, "cannot set TCP keepalive");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn apply_sets_the_socket_options() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let keepalive = Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            retries: 4,
        };
        keepalive.apply(&stream, "test");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    }
}
