//! Whether a UDP tunnel's server still answers.
//!
//! A tunnel that has carried replies and then gets none while its source keeps sending is
//! replaced once the reply timeout has passed: the server may have restarted and forgotten the
//! session (DTLS gives no way to say so), and a source that never pauses would otherwise never
//! reach the idle timeout. Flows that never get a reply are left to the idle timeout.
//!
//! Lock-free (two atomics, updated from the sending and the receiving task) and clock-free:
//! every call takes `now`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tracks the oldest datagram sent since the last reply.
#[derive(Debug)]
pub(crate) struct ReplyWatch {
    /// The base of `unanswered_since`.
    opened: Instant,
    /// Whether the server has sent anything back yet.
    answered: AtomicBool,
    /// When the oldest datagram sent since the last reply went out: milliseconds since
    /// `opened`, plus one; zero when every datagram sent has been followed by a reply.
    unanswered_since: AtomicU64,
}

impl ReplyWatch {
    /// A watch for a tunnel opened at `now`.
    pub(crate) fn new(now: Instant) -> ReplyWatch {
        ReplyWatch {
            opened: now,
            answered: AtomicBool::new(false),
            unanswered_since: AtomicU64::new(0),
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.opened).as_millis()).unwrap_or(u64::MAX)
    }

    /// A datagram went to the server at `now`.
    pub(crate) fn sent(&self, now: Instant) {
        if self.unanswered_since.load(Ordering::Relaxed) == 0 {
            let since = self.millis(now).saturating_add(1);
            let _ = self.unanswered_since.compare_exchange(
                0,
                since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A datagram came back from the server.
    pub(crate) fn answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
        if self.unanswered_since.load(Ordering::Relaxed) != 0 {
            self.unanswered_since.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the tunnel has had replies, but none for `timeout` since a datagram went out
    /// (never when `timeout` is zero).
    pub(crate) fn is_unanswered(&self, now: Instant, timeout: Duration) -> bool {
        if timeout.is_zero() || !self.answered.load(Ordering::Relaxed) {
            return false;
        }
        let since = self.unanswered_since.load(Ordering::Relaxed);
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        since != 0 && self.millis(now) >= (since - 1).saturating_add(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_flow_that_never_got_a_reply_is_left_to_the_idle_timeout() {
        let t0 = Instant::now();
        let watch = ReplyWatch::new(t0);
        watch.sent(at(t0, 1));
        assert!(!watch.is_unanswered(at(t0, 1000), TIMEOUT));
    }

    #[test]
    fn a_server_that_stops_answering_is_noticed_after_the_timeout_from_the_oldest_datagram() {
        let t0 = Instant::now();
        let watch = ReplyWatch::new(t0);
        watch.sent(at(t0, 1));
        watch.answered();
        watch.sent(at(t0, 10));
        // Later datagrams do not move the start.
        watch.sent(at(t0, 20));
        assert!(!watch.is_unanswered(at(t0, 39), TIMEOUT));
        assert!(watch.is_unanswered(at(t0, 40), TIMEOUT));
    }

    #[test]
    fn a_reply_resets_the_watch() {
        let t0 = Instant::now();
        let watch = ReplyWatch::new(t0);
        watch.answered();
        watch.sent(at(t0, 1));
        watch.answered();
        assert!(!watch.is_unanswered(at(t0, 100), TIMEOUT));
        watch.sent(at(t0, 100));
        assert!(!watch.is_unanswered(at(t0, 129), TIMEOUT));
        assert!(watch.is_unanswered(at(t0, 130), TIMEOUT));
    }

    #[test]
    fn a_zero_timeout_never_replaces() {
        let t0 = Instant::now();
        let watch = ReplyWatch::new(t0);
        watch.answered();
        watch.sent(t0);
        assert!(!watch.is_unanswered(at(t0, 10_000), Duration::ZERO));
    }
}
