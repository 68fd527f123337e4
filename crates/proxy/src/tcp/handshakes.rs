//! Handshake slots: how many TLS handshakes may be in flight, from whom, and which one gives
//! way when they are all taken.
//!
//! A stranger can open TCP connections much faster than a client with a real round-trip time
//! completes a handshake. Three rules keep good clients served during such a flood:
//!
//! - **A cap per source** (an IPv4 address, or an IPv6 /64): a source at its cap has its new
//!   connection closed at once, so one flooder holds a small share of the slots.
//! - **Silent connections give way first.** When every slot is taken, the oldest connection
//!   that has not sent a byte yet is closed for the newcomer; only when every one has spoken
//!   does the oldest give way. A good client's ClientHello is in after one round trip, so it
//!   is not the first to go.
//! - **One summary line, not one line per connection.** Refusals and evictions are counted
//!   in the metrics and logged at most once per [`SUMMARY_EVERY`].
//!
//! The decision is a pure function ([`decide`]) over the slots' state; [`HandshakeSlots`]
//! applies it under a lock.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often, at most, a summary of refused and evicted handshakes is logged.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Where a connection comes from, for the per-source cap: an IPv4 address, or the /64 of an
/// IPv6 address (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection did not get (or lost) a handshake slot; the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Its source already had its share of slots: the newcomer was closed.
    PerSource,
    /// Every slot was taken: a connection that had sent nothing yet was closed.
    Silent,
    /// Every slot was taken by connections that had all spoken: the oldest was closed.
    Oldest,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::PerSource => "per_source",
            Reason::Silent => "silent",
            Reason::Oldest => "oldest",
        }
    }
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// There is room.
    Admit,
    /// Close the connection at this position in the in-flight list (oldest first), then admit.
    Evict(usize, Reason),
    /// Close the new connection.
    Refuse(Reason),
}

/// One in-flight handshake as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// Where it comes from.
    pub(crate) source: Source,
    /// Whether it has sent its first bytes.
    pub(crate) spoke: bool,
}

/// The decision for a new connection from `source`, given the handshakes in flight (oldest
/// first). With room, everyone is admitted. When full, someone gives way:
///
/// - a source that already holds `per_source` slots competes with itself: its own oldest
///   silent connection gives way, or, when all of its connections have spoken, the newcomer
///   is refused (a flooder never displaces anyone else);
/// - otherwise the source holding the most slots gives way: its oldest silent connection,
///   else the oldest silent connection of anyone, else its oldest.
pub(crate) fn decide(
    in_flight: &[Entry],
    source: Source,
    capacity: usize,
    per_source: usize,
) -> Decision {
    if in_flight.len() < capacity {
        return Decision::Admit;
    }
    let held = |s: Source| in_flight.iter().filter(|e| e.source == s).count();
    let oldest_silent_of = |s: Source| in_flight.iter().position(|e| e.source == s && !e.spoke);
    if held(source) >= per_source {
        return match oldest_silent_of(source) {
            Some(i) => Decision::Evict(i, Reason::PerSource),
            None => Decision::Refuse(Reason::PerSource),
        };
    }
    // The source holding the most slots (the first such, oldest first, on a tie).
    let Some(largest) = in_flight.iter().map(|e| e.source).max_by_key(|&s| held(s)) else {
        return Decision::Refuse(Reason::Oldest);
    };
    if let Some(i) = oldest_silent_of(largest) {
        return Decision::Evict(i, Reason::Silent);
    }
    if let Some(i) = in_flight.iter().position(|e| !e.spoke) {
        return Decision::Evict(i, Reason::Silent);
    }
    match in_flight.iter().position(|e| e.source == largest) {
        Some(i) => Decision::Evict(i, Reason::Oldest),
        None => Decision::Refuse(Reason::Oldest),
    }
}

struct InFlight {
    id: u64,
    source: Source,
    spoke: Arc<AtomicBool>,
    evict: CancellationToken,
}

#[derive(Default)]
struct State {
    next: u64,
    queue: VecDeque<InFlight>,
}

impl State {
    fn forget(&mut self, index: usize) -> Option<InFlight> {
        self.queue.remove(index)
    }
}

/// The handshake slots of one listener.
pub(crate) struct HandshakeSlots {
    capacity: usize,
    per_source: usize,
    state: Mutex<State>,
}

/// A connection's slot: released when dropped.
pub(crate) struct Slot {
    id: u64,
    spoke: Arc<AtomicBool>,
    evict: CancellationToken,
    slots: Arc<HandshakeSlots>,
}

impl Slot {
    /// The connection sent its first bytes (a ClientHello, usually): it no longer gives way
    /// before silent connections.
    pub(crate) fn spoke(&self) {
        self.spoke.store(true, Ordering::Relaxed);
    }

    /// Completes when this connection is evicted for a newcomer.
    pub(crate) async fn evicted(&self) {
        self.evict.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        // Usually at the front: handshakes mostly finish in the order they started.
        if let Some(i) = state.queue.iter().position(|e| e.id == self.id) {
            state.forget(i);
        }
    }
}

impl HandshakeSlots {
    /// `capacity` slots in all, at most `per_source` for one source (both at least 1).
    pub(crate) fn new(capacity: usize, per_source: usize) -> Arc<HandshakeSlots> {
        Arc::new(HandshakeSlots {
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, and the reason another connection was evicted for
    /// it, if one was; or why it is refused.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, Option<Reason>), Reason> {
        let source = Source::of(ip);
        let mut state = self.lock();
        let entries: Vec<Entry> = state
            .queue
            .iter()
            .map(|e| Entry {
                source: e.source,
                spoke: e.spoke.load(Ordering::Relaxed),
            })
            .collect();
        let evicted = match decide(&entries, source, self.capacity, self.per_source) {
            Decision::Admit => None,
            Decision::Evict(i, reason) => {
                if let Some(entry) = state.forget(i) {
                    entry.evict.cancel();
                }
                Some(reason)
            }
            Decision::Refuse(reason) => return Err(reason),
        };
        let id = state.next;
        state.next += 1;
        let spoke = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        state.queue.push_back(InFlight {
            id,
            source,
            spoke: Arc::clone(&spoke),
            evict: evict.clone(),
        });
        Ok((
            Slot {
                id,
                spoke,
                evict,
                slots: Arc::clone(self),
            },
            evicted,
        ))
    }

    /// Handshakes in flight now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().queue.len()
    }
}

/// Counts events and says when to log a summary: at the first event, then at most once per
/// `every`, with the count since the last summary.
pub(crate) struct Summary {
    every: Duration,
    last: Mutex<Option<Instant>>,
    pending: AtomicU64,
}

impl Summary {
    pub(crate) fn new(every: Duration) -> Summary {
        Summary {
            every,
            last: Mutex::new(None),
            pending: AtomicU64::new(0),
        }
    }

    /// Records one event at `now`; returns the count to log when a summary is due.
    pub(crate) fn event(&self, now: Instant) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if !due {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// Lets through at most `per_period` log lines per `period`; the first line after a quieter
/// spell reports how many were held back.
pub(crate) struct LogBudget {
    period: Duration,
    per_period: u64,
    window: Mutex<(Option<Instant>, u64, u64)>,
}

impl LogBudget {
    pub(crate) fn new(period: Duration, per_period: u64) -> LogBudget {
        LogBudget {
            period,
            per_period,
            window: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(held back so far)` when this line may be written at `now`, `None` to hold it.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, written, held) = &mut *w;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= self.period) {
            *start = Some(now);
            *written = 0;
        }
        if *written < self.per_period {
            *written += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Source = Source::V4(1);
    const B: Source = Source::V4(2);
    const C: Source = Source::V4(3);

    fn entries(list: &[(Source, bool)]) -> Vec<Entry> {
        list.iter()
            .map(|&(source, spoke)| Entry { source, spoke })
            .collect()
    }

    #[test]
    fn with_room_everyone_is_admitted_even_past_the_per_source_share() {
        let busy = entries(&[(A, true), (A, false), (A, false)]);
        assert_eq!(decide(&busy, A, 4, 2), Decision::Admit);
    }

    #[test]
    fn when_full_the_largest_sources_oldest_silent_connection_gives_way() {
        let full = entries(&[(B, false), (A, true), (A, false), (A, false)]);
        // A holds the most: its oldest silent one (index 2) goes, not B's older one.
        assert_eq!(decide(&full, C, 4, 8), Decision::Evict(2, Reason::Silent));
        let all_spoke = entries(&[(A, true), (B, true), (A, true)]);
        assert_eq!(
            decide(&all_spoke, C, 3, 8),
            Decision::Evict(0, Reason::Oldest)
        );
    }

    #[test]
    fn a_source_at_its_share_competes_with_itself() {
        let full = entries(&[(B, false), (A, true), (A, false)]);
        assert_eq!(
            decide(&full, A, 3, 2),
            Decision::Evict(2, Reason::PerSource)
        );
        let spoken = entries(&[(B, false), (A, true), (A, true)]);
        assert_eq!(
            decide(&spoken, A, 3, 2),
            Decision::Refuse(Reason::PerSource)
        );
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(Source::of(mapped), Source::of(v4));
    }

    #[test]
    fn a_flood_from_one_source_cannot_displace_a_client_that_spoke() {
        let slots = HandshakeSlots::new(3, 2);
        let flood: IpAddr = "127.0.0.2".parse().expect("ip");
        let good: IpAddr = "127.0.0.3".parse().expect("ip");
        let (junk1, _) = slots.admit(flood).expect("room");
        let (_junk2, _) = slots.admit(flood).expect("room");
        let (_junk3, _) = slots.admit(flood).expect("room");
        // Full of junk: the client displaces the flood's oldest silent connection.
        let (client, evicted) = slots.admit(good).expect("slot");
        assert_eq!(evicted, Some(Reason::Silent));
        assert!(junk1.evict.is_cancelled());
        client.spoke();
        // The flood goes on: it only ever displaces its own connections.
        let mut held = Vec::new();
        for _ in 0..10 {
            let (junk, evicted) = slots.admit(flood).expect("its own slot");
            assert_eq!(evicted, Some(Reason::PerSource));
            assert!(!client.evict.is_cancelled());
            held.push(junk);
        }
        drop(junk1);
        assert_eq!(slots.in_flight(), 3);
        drop(client);
        assert_eq!(slots.in_flight(), 2);
        drop(held);
        assert_eq!(slots.in_flight(), 0);
    }

    #[test]
    fn a_log_budget_holds_lines_back_and_counts_them() {
        let budget = LogBudget::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(budget.admit(t0), Some(0));
        assert_eq!(budget.admit(t0), Some(0));
        assert_eq!(budget.admit(t0), None);
        assert_eq!(budget.admit(t0), None);
        assert_eq!(budget.admit(t0 + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn summaries_come_at_most_once_per_period_with_the_count() {
        let summary = Summary::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(summary.event(t0), Some(1));
        for i in 1..100 {
            assert_eq!(summary.event(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(summary.event(t0 + Duration::from_secs(10)), Some(100));
    }
}
