//! Lookup of an existing key, the per-datagram hot path: `ConnectionManager::get` against a
//! `Mutex<HashMap>` doing the same work (find the entry, mark it used, clone the handle).
//!
//! - `lookup/1-thread`: one thread, latency per lookup.
//! - `lookup/2-threads-own-key`: two threads, each looking up its own client (the realistic
//!   case: one task per session); aggregate throughput.
//! - `lookup/2-threads-same-key`: two threads hammering one client; aggregate throughput.
//!
//! `now` is read once per sample, as a driver reads the clock once per batch of datagrams.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use streamproxy_connmgr::{Close, CloseReason, ConnectionManager};

/// Entries in each map, so lookups probe a realistically populated table.
const ENTRIES: u16 = 1024;

struct Conn;

impl Close for Conn {
    async fn close(self: Arc<Self>, _: CloseReason) {}
}

fn client(n: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 20_000 + n))
}

trait Lookup: Sync {
    fn lookup(&self, key: &SocketAddr, now: Instant) -> Option<Arc<Conn>>;
}

impl Lookup for ConnectionManager<SocketAddr, Conn> {
    #[inline]
    fn lookup(&self, key: &SocketAddr, now: Instant) -> Option<Arc<Conn>> {
        self.get(key, now)
    }
}

/// The baseline: one lock around a std `HashMap`, same key type and hasher.
struct Baseline {
    map: Mutex<HashMap<SocketAddr, BaselineEntry>>,
    epoch: Instant,
}

struct BaselineEntry {
    conn: Arc<Conn>,
    last_used: u64,
}

impl Lookup for Baseline {
    #[inline]
    fn lookup(&self, key: &SocketAddr, now: Instant) -> Option<Arc<Conn>> {
        let stamp =
            u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(0);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.get_mut(key)?;
        entry.last_used = entry.last_used.max(stamp);
        Some(Arc::clone(&entry.conn))
    }
}

fn manager() -> ConnectionManager<SocketAddr, Conn> {
    let manager = ConnectionManager::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime for the setup");
    let now = Instant::now();
    runtime.block_on(async {
        for n in 0..ENTRIES {
            manager
                .get_or_create(client(n), now, || async { Ok(Arc::new(Conn)) })
                .await
                .expect("the bench's `make` never fails");
        }
    });
    manager
}

fn baseline() -> Baseline {
    let map = (0..ENTRIES)
        .map(|n| {
            let entry = BaselineEntry {
                conn: Arc::new(Conn),
                last_used: 0,
            };
            (client(n), entry)
        })
        .collect();
    Baseline {
        map: Mutex::new(map),
        epoch: Instant::now(),
    }
}

/// `iters` lookups on each of two threads; the time from the first thread's start to the last
/// one's end (thread start-up excluded).
fn two_threads(map: &dyn Lookup, keys: [SocketAddr; 2], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    let now = Instant::now();
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .iter()
            .map(|key| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(map.lookup(black_box(key), now));
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a lookup thread panicked"))
            .collect()
    });
    let start = spans.iter().map(|span| span.0).min();
    let end = spans.iter().map(|span| span.1).max();
    match (start, end) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    }
}

fn lookup(c: &mut Criterion) {
    let manager = manager();
    let baseline = baseline();
    let maps: [(&str, &dyn Lookup); 2] = [("connmgr", &manager), ("mutex-hashmap", &baseline)];
    let key = client(ENTRIES / 2);

    let mut group = c.benchmark_group("lookup/1-thread");
    group.throughput(Throughput::Elements(1));
    for (name, map) in maps {
        let now = Instant::now();
        group.bench_function(name, |b| b.iter(|| map.lookup(black_box(&key), now)));
    }
    group.finish();

    let cases = [
        ("lookup/2-threads-own-key", [client(1), client(2)]),
        ("lookup/2-threads-same-key", [key, key]),
    ];
    for (group_name, keys) in cases {
        let mut group = c.benchmark_group(group_name);
        // One iteration is one lookup on each thread.
        group.throughput(Throughput::Elements(2));
        for (name, map) in maps {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| two_threads(map, keys, iters))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
