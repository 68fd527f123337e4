//! TCP keepalive: how a tunnel notices a peer that vanished without a FIN or a reset (a host
//! powered off, a cable pulled, a NAT entry dropped).

use std::time::Duration;

use tokio::net::TcpStream;

/// Keepalive probes on a TCP connection: after `idle` without traffic, a probe every
/// `interval`; `retries` unanswered probes end the connection (its reads and writes fail,
/// and the tunnel closes).
///
/// Linux counts whole seconds: [`apply`](Keepalive::apply) rounds `idle` and `interval` up to
/// whole seconds from 1 s to [`MAX_SECS`](Keepalive::MAX_SECS), and brings `retries` into 1 to
/// [`MAX_RETRIES`](Keepalive::MAX_RETRIES), so that no value leaves a probe setting at the
/// kernel's default (a first probe after two hours).
///
/// Probes go out only while nothing is waiting to be acknowledged: a peer that vanishes while
/// data to it is in flight is given up by the kernel's retransmission limit instead
/// (`net.ipv4.tcp_retries2`, about 15 minutes by default).
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

/// A keepalive value the kernel would not take as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeepaliveError {
    /// `idle` or `interval` is not whole seconds from 1 s to [`Keepalive::MAX_SECS`].
    #[error("{what} of {value:?} is not whole seconds from 1s to {max}s", max = Keepalive::MAX_SECS)]
    Time {
        /// `"idle time"` or `"interval"`.
        what: &'static str,
        /// The value given.
        value: Duration,
    },
    /// `retries` is not from 1 to [`Keepalive::MAX_RETRIES`].
    #[error("{value} retries is not from 1 to {max}", max = Keepalive::MAX_RETRIES)]
    Retries {
        /// The value given.
        value: u32,
    },
}

impl Keepalive {
    /// Longest `idle` and `interval` Linux takes, in seconds (`MAX_TCP_KEEPIDLE`,
    /// `MAX_TCP_KEEPINTVL`).
    pub const MAX_SECS: u64 = 32_767;
    /// Most `retries` Linux takes (`MAX_TCP_KEEPCNT`).
    pub const MAX_RETRIES: u32 = 127;

    /// Keepalive with exactly these values, or an error naming the one the kernel would not
    /// take as given (where [`effective`](Keepalive::effective) would round it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use streamproxy_proxy::keepalive::Keepalive;
    ///
    /// assert!(Keepalive::new(Duration::from_secs(30), Duration::from_secs(5), 4).is_ok());
    /// assert!(Keepalive::new(Duration::from_millis(1500), Duration::from_secs(5), 4).is_err());
    /// ```
    pub fn new(idle: Duration, interval: Duration, retries: u32) -> Result<Self, KeepaliveError> {
        let whole = |what, value: Duration| {
            if value.subsec_nanos() != 0 || value.as_secs() == 0 || value.as_secs() > Self::MAX_SECS
            {
                Err(KeepaliveError::Time { what, value })
            } else {
                Ok(value)
            }
        };
        if !(1..=Self::MAX_RETRIES).contains(&retries) {
            return Err(KeepaliveError::Retries { value: retries });
        }
        Ok(Keepalive {
            idle: whole("idle time", idle)?,
            interval: whole("interval", interval)?,
            retries,
        })
    }

    /// The values [`apply`](Keepalive::apply) sets: whole seconds within the kernel's range.
    pub fn effective(&self) -> Keepalive {
        let secs = |d: Duration| {
            let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            Duration::from_secs(whole.clamp(1, Self::MAX_SECS))
        };
        Keepalive {
            idle: secs(self.idle),
            interval: secs(self.interval),
            retries: self.retries.clamp(1, Self::MAX_RETRIES),
        }
    }

    /// How long after its last packet a vanished peer is given up at the latest (with the
    /// [`effective`](Keepalive::effective) values).
    pub fn dead_after(&self) -> Duration {
        let k = self.effective();
        k.idle + k.interval * k.retries
    }

    /// Turns keepalive on for `stream`. A failure is logged and otherwise ignored: the
    /// connection works without it.
    pub fn apply(&self, stream: &TcpStream, side: &'static str) {
        let k = self.effective();
        let params = socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.retries);
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

    #[tokio::test]
    async fn values_outside_the_kernels_range_are_brought_into_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // Without rounding, 500 ms would be 0 s, which the kernel refuses, leaving the
        // interval and the count at its defaults.
        let keepalive = Keepalive {
            idle: Duration::from_millis(1500),
            interval: Duration::from_millis(500),
            retries: 0,
        };
        keepalive.apply(&stream, "test");
        let sock = socket2::SockRef::from(&stream);
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(2));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 1);
        assert_eq!(keepalive.dead_after(), Duration::from_secs(3));

        let huge = Keepalive {
            idle: Duration::from_secs(1 << 40),
            interval: Duration::from_secs(40_000),
            retries: 1000,
        };
        huge.apply(&stream, "test");
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            Duration::from_secs(Keepalive::MAX_SECS)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(Keepalive::MAX_SECS)
        );
        assert_eq!(
            sock.tcp_keepalive_retries().unwrap(),
            Keepalive::MAX_RETRIES
        );
    }
}
