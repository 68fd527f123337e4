//! A userspace UDP relay that drops, duplicates and reorders datagrams with seeded randomness:
//! clients talk to the relay, and the relay talks to the server from one socket per client.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use crate::fixture::Rng;

/// How the relay mistreats datagrams, in each direction independently.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub drop: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent after the next one.
    pub reorder: f64,
    /// Seed of the randomness.
    pub seed: u64,
    /// If set, only this many datagrams from the server reach each client; the rest are
    /// dropped (a handshake that stalls half-way).
    pub backward_pass_first: Option<u64>,
    /// Drop the first DTLS application-data record toward the server, once for the whole
    /// relay: the header of the first session, lost on the path.
    pub drop_first_record: bool,
}

impl Faults {
    /// A relay that passes everything (until it is cut).
    pub fn none(seed: u64) -> Faults {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            seed,
            backward_pass_first: None,
            drop_first_record: false,
        }
    }
}

/// What the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams received from either side.
    pub seen: AtomicU64,
    /// Datagrams dropped.
    pub dropped: AtomicU64,
    /// Datagrams sent twice.
    pub duplicated: AtomicU64,
    /// Datagrams held back behind a later one.
    pub reordered: AtomicU64,
    /// Whether the one record `drop_first_record` drops has gone.
    first_record_dropped: AtomicBool,
}

impl std::fmt::Display for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        write!(
            f,
            "relay saw {} dropped {} duplicated {} reordered {}",
            get(&self.seen),
            get(&self.dropped),
            get(&self.duplicated),
            get(&self.reordered)
        )
    }
}

/// A running relay; its sockets close when it is dropped.
pub struct Relay {
    /// The address clients should use.
    pub addr: SocketAddr,
    /// What it did so far.
    pub stats: Arc<RelayStats>,
    cut: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    /// Drops every datagram from now on, both ways: the clients vanish for the server.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Starts a relay in front of `server`.
pub async fn start(server: SocketAddr, faults: Faults) -> Relay {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let addr = front.local_addr().expect("addr");
    let stats = Arc::new(RelayStats::default());
    let st = Arc::clone(&stats);
    let cut = Arc::new(AtomicBool::new(false));
    let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let (cut2, tasks2) = (Arc::clone(&cut), Arc::clone(&tasks));
    let main = tokio::spawn(async move {
        let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, Mangler)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        let mut next_seed = faults.seed;
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            if let Entry::Vacant(slot) = clients.entry(from) {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(server).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                next_seed = next_seed.wrapping_add(0x5851_F42D_4C95_7F2D);
                let back = tokio::spawn(backward(
                    Arc::clone(&up),
                    Arc::clone(&front),
                    from,
                    Mangler::new(faults, next_seed ^ 1, Arc::clone(&st)),
                    Arc::clone(&cut2),
                ));
                tasks2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(back.abort_handle());
                slot.insert((up, Mangler::new(faults, next_seed, Arc::clone(&st))));
            }
            if cut2.load(Ordering::SeqCst) {
                continue;
            }
            if let Some((up, mangler)) = clients.get_mut(&from) {
                for d in mangler.pass(&buf[..n]) {
                    let _ = up.send(&d).await;
                }
            }
        }
    });
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(main.abort_handle());
    Relay {
        addr,
        stats,
        cut,
        tasks,
    }
}

async fn backward(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    mut m: Mangler,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65536];
    let mut passed = 0;
    while let Ok(n) = up.recv(&mut buf).await {
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        if m.faults
            .backward_pass_first
            .is_some_and(|max| passed >= max)
        {
            m.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        passed += 1;
        for d in m.pass(&buf[..n]) {
            let _ = front.send_to(&d, client).await;
        }
    }
}

struct Mangler {
    faults: Faults,
    rng: Rng,
    held: Option<Vec<u8>>,
    stats: Arc<RelayStats>,
}

impl Mangler {
    fn new(faults: Faults, seed: u64, stats: Arc<RelayStats>) -> Mangler {
        Mangler {
            faults,
            rng: Rng::new(seed),
            held: None,
            stats,
        }
    }

    /// The datagrams to send now for one received datagram.
    fn pass(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        self.stats.seen.fetch_add(1, Ordering::Relaxed);
        // Content type 23: application data, after the handshake.
        if self.faults.drop_first_record
            && datagram.first() == Some(&23)
            && !self
                .stats
                .first_record_dropped
                .swap(true, Ordering::Relaxed)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if self.rng.chance(self.faults.drop) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if self.held.is_none() && self.rng.chance(self.faults.reorder) {
            self.stats.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(datagram.to_vec());
            return Vec::new();
        }
        let mut out = vec![datagram.to_vec()];
        if self.rng.chance(self.faults.duplicate) {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            out.push(datagram.to_vec());
        }
        out.extend(self.held.take());
        out
    }
}
