//! Load: 10,000 sequential tunnels, then 2,000 concurrent ones, on each transport, every byte
//! and datagram verified; afterwards the server holds no tunnel, and the process's file
//! descriptors and memory are back to their baseline.
//!
//! Counts scale with `STREAMPROXY_SCALE` (default 1: the counts above).

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamproxy::proxy::metrics::Transport;
use streamproxy::proxy::settings::Settings;
use streamproxy_e2e::check::{self, Totals};
use streamproxy_e2e::fixture::{self, Pki, Running, allow_all};
use streamproxy_e2e::process::{self, scaled};
use tokio::sync::{Barrier, Semaphore};

const SEQUENTIAL: usize = 10_000;
const CONCURRENT: usize = 2_000;
/// Handshakes the clients run at once while opening the concurrent tunnels.
const CLIENT_HANDSHAKES: usize = 64;
/// Datagrams in flight at once across all concurrent UDP sessions (at most 77 KB of
/// 1,200-byte datagrams: within the default socket buffers on every hop).
const UDP_WINDOW: usize = 64;

fn settings() -> Settings {
    Settings::default()
        .max_tcp_tunnels(CONCURRENT.max(scaled(CONCURRENT)) + 16)
        .max_udp_sessions(CONCURRENT.max(scaled(CONCURRENT)) + 16)
        .udp_idle_timeout(Duration::from_secs(30))
}

struct Baseline {
    fds: usize,
    targets: Vec<String>,
    rss: u64,
}

impl Baseline {
    fn take() -> Baseline {
        process::trim_heap();
        Baseline {
            fds: process::open_sockets(),
            targets: process::fd_targets(),
            rss: process::rss_kib(),
        }
    }

    /// Waits for the server to hold no tunnel and the descriptors to return to the baseline;
    /// checks that memory returned within `slack_kib`.
    async fn back(&self, server: &Running, transport: Transport, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.metrics.active_tunnels(transport) != 0 || process::open_sockets() > self.fds {
            assert!(
                Instant::now() < deadline,
                "{what}: after 20 s, {} tunnels active and {} fds open (baseline {}): {:?}, baseline {:?}",
                server.metrics.active_tunnels(transport),
                process::open_sockets(),
                self.fds,
                process::fd_targets(),
                self.targets,
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        process::trim_heap();
        let rss = process::rss_kib();
        eprintln!(
            "figures {what}: sockets {} -> {}, rss {} KiB -> {} KiB, peak {} KiB",
            self.fds,
            process::open_sockets(),
            self.rss,
            rss,
            process::peak_rss_kib()
        );
        let slack_kib = 48 * 1024;
        assert!(
            rss <= self.rss + slack_kib,
            "{what}: RSS {rss} KiB did not return near the baseline {} KiB",
            self.rss
        );
    }
}

fn report(what: &str, totals: &Totals, started: Instant) {
    let (tunnels, bytes, datagrams, errors) = totals.snapshot();
    eprintln!(
        "figures {what}: tunnels {tunnels}, bytes {bytes}, datagrams {datagrams}, errors {errors}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sequential_then_concurrent_tunnels_relay_every_byte_and_leak_nothing() {
    let _serial = fixture::serial().await;
    process::raise_nofile(65_536);
    let pki = Pki::new();
    let config = pki.tls_client();
    let echo = fixture::tcp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    // One tunnel first, so that lazily created state counts in the baseline.
    check::tcp_roundtrip(server.tcp, &config, echo, 1, 0)
        .await
        .expect("warm-up");
    let base = Baseline::take();

    let totals = Totals::default();
    let started = Instant::now();
    let n = scaled(SEQUENTIAL);
    for i in 0..n as u64 {
        let len = 1 + (i as usize * 7919) % 8192;
        if let Some(e) =
            totals.record(check::tcp_roundtrip(server.tcp, &config, echo, len, i).await)
        {
            panic!("sequential tunnel {i}: {e}");
        }
    }
    report("tcp sequential", &totals, started);
    assert_eq!(totals.snapshot().0, n as u64);
    base.back(&server, Transport::Tcp, "tcp sequential").await;

    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let n = scaled(CONCURRENT);
    let gate = Arc::new(Semaphore::new(CLIENT_HANDSHAKES));
    let all_open = Arc::new(Barrier::new(n + 1));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut go = go.clone();
        let (gate, all_open, totals, config) = (
            Arc::clone(&gate),
            Arc::clone(&all_open),
            Arc::clone(&totals),
            config.clone(),
        );
        let tcp = server.tcp;
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = gate.acquire().await.expect("gate");
                check::tcp_open(tcp, &config, echo).await
            };
            all_open.wait().await;
            let _ = go.wait_for(|go| *go).await;
            let outcome = match opened {
                Ok(stream) => check::tcp_exchange(stream, 32 * 1024, 1_000_000 + i).await,
                Err(e) => Err(e),
            };
            totals.record(outcome).map(|e| format!("tunnel {i}: {e}"))
        }));
    }
    all_open.wait().await;
    // Every client has its stream; the server counts a tunnel once it has dialed.
    fixture::wait_until(
        "all concurrent tunnels open",
        Duration::from_secs(30),
        || server.metrics.active_tunnels(Transport::Tcp) as usize == n,
    )
    .await;
    let peak = process::rss_kib();
    let _ = go_tx.send(true);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("task"));
    }
    report("tcp concurrent", &totals, started);
    eprintln!("figures tcp concurrent: rss with all tunnels open {peak} KiB");
    assert!(failures.is_empty(), "failed tunnels: {failures:?}");
    assert_eq!(totals.snapshot().0, n as u64);
    base.back(&server, Transport::Tcp, "tcp concurrent").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sequential_then_concurrent_sessions_relay_every_datagram_and_leak_nothing() {
    let _serial = fixture::serial().await;
    process::raise_nofile(65_536);
    let pki = Pki::new();
    let config = pki.dtls_client();
    let echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let wait = Duration::from_secs(2);
    check::udp_roundtrip(server.udp, &config, echo, 1, 64, 0, wait)
        .await
        .expect("warm-up");
    fixture::wait_until("warm-up session closed", Duration::from_secs(5), || {
        server.metrics.active_tunnels(Transport::Udp) == 0
    })
    .await;
    let base = Baseline::take();

    let totals = Totals::default();
    let started = Instant::now();
    let n = scaled(SEQUENTIAL);
    let per_session = 4;
    for i in 0..n as u64 {
        let outcome =
            check::udp_roundtrip(server.udp, &config, echo, per_session, 1200, i, wait).await;
        if let Some(e) = totals.record(outcome) {
            panic!("sequential session {i}: {e}");
        }
        totals
            .datagrams
            .fetch_add(per_session, std::sync::atomic::Ordering::Relaxed);
    }
    report("udp sequential", &totals, started);
    assert_eq!(totals.snapshot().0, n as u64);
    base.back(&server, Transport::Udp, "udp sequential").await;

    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let n = scaled(CONCURRENT);
    let per_session = 16;
    let gate = Arc::new(Semaphore::new(CLIENT_HANDSHAKES));
    // Datagrams in flight across all sessions: the paced rate of the run.
    let window = Arc::new(Semaphore::new(UDP_WINDOW));
    let all_open = Arc::new(Barrier::new(n + 1));
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut go = go.clone();
        let (gate, all_open, totals, config, window) = (
            Arc::clone(&gate),
            Arc::clone(&all_open),
            Arc::clone(&totals),
            config.clone(),
            Arc::clone(&window),
        );
        let udp = server.udp;
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = gate.acquire().await.expect("gate");
                check::udp_open(udp, &config, echo).await
            };
            all_open.wait().await;
            let _ = go.wait_for(|go| *go).await;
            let outcome = match opened {
                Ok(session) => {
                    check::udp_exchange(
                        session,
                        per_session,
                        1200,
                        1_000_000 + i,
                        wait,
                        Some(&window),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if outcome.is_ok() {
                totals
                    .datagrams
                    .fetch_add(per_session, std::sync::atomic::Ordering::Relaxed);
            }
            totals.record(outcome).map(|e| format!("session {i}: {e}"))
        }));
    }
    all_open.wait().await;
    fixture::wait_until(
        "all concurrent sessions open",
        Duration::from_secs(30),
        || server.metrics.active_tunnels(Transport::Udp) as usize == n,
    )
    .await;
    let peak = process::rss_kib();
    let _ = go_tx.send(true);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("task"));
    }
    report("udp concurrent", &totals, started);
    eprintln!("figures udp concurrent: rss with all sessions open {peak} KiB");
    assert!(failures.is_empty(), "failed sessions: {failures:?}");
    assert_eq!(totals.snapshot().0, n as u64);
    base.back(&server, Transport::Udp, "udp concurrent").await;
    server.stop().await;
}
