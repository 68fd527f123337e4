//! Datagrams waiting for their UDP tunnel to open: one queue per source, in arrival order,
//! bounded per source, in total and in bytes.
//!
//! The receive loop queues a source's datagrams while its tunnel is being opened; the first
//! datagram of a queue starts the source's one opening task, which, once the tunnel is up,
//! takes the queue's datagrams in order and sends them, until it finds the queue empty and
//! removes it. Until then the receive loop queues behind it even if the tunnel is up, so a
//! source's datagrams are never reordered.
//!
//! The bounds keep a flood of new sources from pinning memory: at most `total` datagrams and
//! [`MAX_BYTES`] bytes wait for all sources together, at most `per_source` for one source.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// Bytes waiting for all sources together at most.
pub(crate) const MAX_BYTES: usize = 16 << 20;

/// What became of a datagram offered to [`Pending::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// The first of its source: the caller starts the source's opening task.
    First,
    /// Queued behind earlier ones, which an opening task will send.
    Behind,
    /// Over a bound: dropped.
    Dropped,
}

#[derive(Debug, Default)]
struct Queues {
    by_source: HashMap<SocketAddr, VecDeque<Bytes>>,
    datagrams: usize,
    bytes: usize,
}

/// The waiting datagrams of every source whose tunnel is being opened.
#[derive(Debug)]
pub(crate) struct Pending {
    queues: Mutex<Queues>,
    /// How many sources have a queue: read without the lock for every datagram.
    sources: AtomicUsize,
    total: usize,
    per_source: usize,
}

impl Pending {
    /// At most `total` datagrams for all sources together and `per_source` for one.
    pub(crate) fn new(total: usize, per_source: usize) -> Pending {
        Pending {
            queues: Mutex::new(Queues::default()),
            sources: AtomicUsize::new(0),
            total,
            per_source: per_source.min(total),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every update leaves the counts consistent before it can panic (it cannot).
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `source` has datagrams waiting (or its opening task is still sending them):
    /// its next datagram must queue behind them.
    pub(crate) fn is_waiting(&self, source: &SocketAddr) -> bool {
        self.sources.load(Ordering::Acquire) > 0 && self.lock().by_source.contains_key(source)
    }

    /// Queues a copy of `datagram` from `source`, within the bounds.
    pub(crate) fn push(&self, source: SocketAddr, datagram: &[u8]) -> Queued {
        let mut q = self.lock();
        if q.datagrams >= self.total || q.bytes + datagram.len() > MAX_BYTES {
            return Queued::Dropped;
        }
        let queued = match q.by_source.get_mut(&source) {
            Some(queue) if queue.len() >= self.per_source => return Queued::Dropped,
            Some(queue) => {
                queue.push_back(Bytes::copy_from_slice(datagram));
                Queued::Behind
            }
            None => {
                let queue = VecDeque::from([Bytes::copy_from_slice(datagram)]);
                q.by_source.insert(source, queue);
                self.sources.store(q.by_source.len(), Ordering::Release);
                Queued::First
            }
        };
        q.datagrams += 1;
        q.bytes += datagram.len();
        queued
    }

    /// Takes `source`'s waiting datagrams, oldest first. When there are none, forgets the
    /// source (its next datagram goes straight to its tunnel) and returns none.
    pub(crate) fn take(&self, source: &SocketAddr) -> VecDeque<Bytes> {
        let mut q = self.lock();
        let taken = match q.by_source.get_mut(source) {
            Some(queue) if !queue.is_empty() => std::mem::take(queue),
            _ => {
                q.by_source.remove(source);
                self.sources.store(q.by_source.len(), Ordering::Release);
                return VecDeque::new();
            }
        };
        q.datagrams -= taken.len();
        q.bytes -= taken.iter().map(Bytes::len).sum::<usize>();
        taken
    }

    /// Drops `source`'s waiting datagrams and forgets it; returns how many were dropped.
    pub(crate) fn drop_all(&self, source: &SocketAddr) -> usize {
        let mut q = self.lock();
        let Some(queue) = q.by_source.remove(source) else {
            return 0;
        };
        self.sources.store(q.by_source.len(), Ordering::Release);
        q.datagrams -= queue.len();
        q.bytes -= queue.iter().map(Bytes::len).sum::<usize>();
        queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_source_queues_in_order_and_is_forgotten_once_drained() {
        let pending = Pending::new(8, 4);
        let a = addr(1);
        assert!(!pending.is_waiting(&a));
        assert_eq!(pending.push(a, b"1"), Queued::First);
        assert_eq!(pending.push(a, b"2"), Queued::Behind);
        assert!(pending.is_waiting(&a));
        assert_eq!(pending.take(&a), [&b"1"[..], b"2"]);
        assert!(pending.is_waiting(&a), "still sending what it took");
        assert_eq!(pending.push(a, b"3"), Queued::Behind);
        assert_eq!(pending.take(&a), [&b"3"[..]]);
        assert!(pending.take(&a).is_empty());
        assert!(!pending.is_waiting(&a));
        assert_eq!(pending.push(a, b"4"), Queued::First);
    }

    #[test]
    fn the_per_source_and_total_bounds_drop_the_excess_and_free_room_when_taken() {
        let pending = Pending::new(5, 3);
        let (a, b) = (addr(1), addr(2));
        for _ in 0..3 {
            assert_ne!(pending.push(a, b"x"), Queued::Dropped);
        }
        assert_eq!(pending.push(a, b"x"), Queued::Dropped, "per source");
        assert_eq!(pending.push(b, b"y"), Queued::First);
        assert_eq!(pending.push(b, b"y"), Queued::Behind);
        assert_eq!(pending.push(b, b"y"), Queued::Dropped, "in total");
        assert_eq!(pending.take(&a).len(), 3);
        assert_eq!(pending.push(b, b"y"), Queued::Behind);
        assert_eq!(pending.drop_all(&b), 3);
        assert!(!pending.is_waiting(&b));
    }

    #[test]
    fn the_byte_bound_holds_whatever_the_count() {
        let pending = Pending::new(usize::MAX, usize::MAX);
        let big = vec![0u8; 65_535];
        let fit = MAX_BYTES / big.len();
        for i in 0..fit {
            assert_ne!(pending.push(addr(i as u16), &big), Queued::Dropped);
        }
        assert_eq!(pending.push(addr(0), &big), Queued::Dropped);
    }

    #[test]
    fn a_storm_of_50_sources_with_64_each_fits_the_defaults() {
        let defaults = crate::forward::ForwardSettings::default();
        let pending = Pending::new(
            defaults.max_pending.get(),
            super::super::udp::PENDING_PER_SOURCE,
        );
        for source in 0..50 {
            for i in 0..64u8 {
                assert_ne!(pending.push(addr(source), &[i; 512]), Queued::Dropped);
            }
        }
    }
}
