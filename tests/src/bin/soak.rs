//! The soak run: mixed TCP and UDP tunnels through an in-process server for a given time, every
//! byte and datagram verified, with faults injected at random from a seed; ends with a summary
//! and fails if a good tunnel failed or anything stayed open.
//!
//! `soak [--minutes N] [--seed S] [--workers W]`; `cargo xtask soak --minutes N` runs it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streamproxy::proxy::metrics::Transport;
use streamproxy::proxy::settings::Settings;
use streamproxy_e2e::check::{self, Totals};
use streamproxy_e2e::fixture::{self, Pki, Rng, allow_all, craft_header, payload};
use streamproxy_e2e::process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Args {
    minutes: f64,
    seed: u64,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 1.0,
        seed: 1,
        workers: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        let bad = || format!("{a}: `{value}` is not a number");
        match a.as_str() {
            "--minutes" => args.minutes = value.parse().map_err(|_| bad())?,
            "--seed" => args.seed = value.parse().map_err(|_| bad())?,
            "--workers" => args.workers = value.parse().map_err(|_| bad())?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

/// Faults injected, by kind.
#[derive(Default)]
struct Faults {
    vanished_tcp: AtomicU64,
    vanished_udp: AtomicU64,
    bad_headers: AtomicU64,
    garbage: AtomicU64,
    destination_resets: AtomicU64,
    rotations: AtomicU64,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak [--minutes N] [--seed S] [--workers W]");
            return ExitCode::from(2);
        }
    };
    process::raise_nofile(65_536);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if runtime.block_on(soak(args)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn soak(args: Args) -> bool {
    let pki = Arc::new(Pki::new());
    let settings = Settings::default()
        .header_timeout(Duration::from_secs(1))
        .udp_idle_timeout(Duration::from_secs(2));
    let server = fixture::start(pki.builder(allow_all(), settings)).await;
    let tcp_echo = fixture::tcp_echo().await;
    let udp_echo = fixture::udp_echo().await;
    let reset_dest = resetting_destination().await;
    let sockets_before = process::open_sockets();
    let totals = Arc::new(Totals::default());
    let faults = Arc::new(Faults::default());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let (tcp, udp) = (server.tcp, server.udp);
    let mut tasks = Vec::new();
    for w in 0..args.workers as u64 {
        let (pki, totals, faults, stop, failures) = (
            Arc::clone(&pki),
            Arc::clone(&totals),
            Arc::clone(&faults),
            Arc::clone(&stop),
            Arc::clone(&failures),
        );
        let reloader = server.reloader.clone();
        tasks.push(tokio::spawn(async move {
            let tls = pki.tls_client();
            let dtls = pki.dtls_client();
            let mut rng = Rng::new(args.seed.wrapping_mul(1000).wrapping_add(w));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let seed = (w << 40) | i;
                let roll = rng.below(1000);
                let outcome = match roll {
                    // Faults: about 4 % of the iterations.
                    0..=7 => {
                        faults.vanished_tcp.fetch_add(1, Ordering::Relaxed);
                        vanish_tcp(tcp, &tls, tcp_echo, seed).await;
                        continue;
                    }
                    8..=13 => {
                        faults.vanished_udp.fetch_add(1, Ordering::Relaxed);
                        vanish_udp(udp, &dtls, udp_echo).await;
                        continue;
                    }
                    14..=21 => {
                        faults.bad_headers.fetch_add(1, Ordering::Relaxed);
                        bad_header(tcp, &tls, &mut rng).await;
                        continue;
                    }
                    22..=29 => {
                        faults.garbage.fetch_add(1, Ordering::Relaxed);
                        garbage(tcp, udp, &mut rng).await;
                        continue;
                    }
                    30..=37 => {
                        faults.destination_resets.fetch_add(1, Ordering::Relaxed);
                        if let Ok(s) = check::tcp_open(tcp, &tls, reset_dest).await {
                            let _ = check::tcp_exchange(s, 200_000, seed).await;
                        }
                        continue;
                    }
                    38 => {
                        faults.rotations.fetch_add(1, Ordering::Relaxed);
                        let _ = pki.rotate_server();
                        if let Err(e) = reloader.reload() {
                            failures.lock().expect("lock").push(format!("reload: {e}"));
                        }
                        continue;
                    }
                    // Good tunnels, checked.
                    39..=599 => {
                        let len = 1 + rng.below(256 * 1024) as usize;
                        check::tcp_roundtrip(tcp, &tls, tcp_echo, len, seed).await
                    }
                    _ => {
                        let count = 1 + rng.below(64);
                        let r = check::udp_roundtrip(
                            udp,
                            &dtls,
                            udp_echo,
                            count,
                            1200,
                            seed,
                            Duration::from_secs(2),
                        )
                        .await;
                        if r.is_ok() {
                            totals.datagrams.fetch_add(count, Ordering::Relaxed);
                        }
                        r
                    }
                };
                if let Some(e) = totals.record(outcome) {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("worker {w} iteration {i}: {e}"));
                }
            }
        }));
    }
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let mut peak_sockets = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut next_report = Duration::from_secs(10);
    while started.elapsed() < run_for {
        tick.tick().await;
        peak_sockets = peak_sockets.max(process::open_sockets());
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(10);
            let (t, b, d, e) = totals.snapshot();
            eprintln!(
                "soak: {:>5.0} s  tunnels {t}  bytes {b}  datagrams {d}  errors {e}  rss {} KiB",
                started.elapsed().as_secs_f64(),
                process::rss_kib()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Sessions of vanished UDP clients end at the idle timeout.
    let settle = Instant::now();
    while (server.metrics.active_tunnels(Transport::Tcp) != 0
        || server.metrics.active_tunnels(Transport::Udp) != 0
        || process::open_sockets() > sockets_before)
        && settle.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sockets_after = process::open_sockets();
    let (tunnels, bytes, datagrams, errors) = totals.snapshot();
    let f = &*faults;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak summary (seed {}, {:.1} min, {} workers)",
        args.seed,
        started.elapsed().as_secs_f64() / 60.0,
        args.workers
    );
    println!("  checked tunnels   {tunnels}");
    println!("  bytes verified    {bytes}");
    println!("  datagrams         {datagrams}");
    println!("  errors            {errors}");
    println!(
        "  faults injected   vanished tcp {}, vanished udp {}, bad headers {}, garbage {}, destination resets {}, rotations {}",
        ld(&f.vanished_tcp),
        ld(&f.vanished_udp),
        ld(&f.bad_headers),
        ld(&f.garbage),
        ld(&f.destination_resets),
        ld(&f.rotations)
    );
    println!(
        "  peak rss          {} KiB (client, server and destinations in one process)",
        process::peak_rss_kib()
    );
    println!(
        "  sockets           {sockets_before} before, peak {peak_sockets}, {sockets_after} after"
    );
    println!(
        "  server            {} tcp and {} udp tunnels still active",
        server.metrics.active_tunnels(Transport::Tcp),
        server.metrics.active_tunnels(Transport::Udp)
    );
    let failures = failures.lock().expect("lock");
    for f in failures.iter().take(20) {
        println!("  failure: {f}");
    }
    let ok = errors == 0 && failures.is_empty() && sockets_after <= sockets_before && tunnels > 0;
    println!("soak: {}", if ok { "passed" } else { "FAILED" });
    ok
}

/// A destination that reads a little, then resets the connection.
async fn resetting_destination() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 10_000];
                let _ = conn.read_exact(&mut buf).await;
                let _ = fixture::reset_on_close(&conn);
            });
        }
    });
    addr
}

/// A TCP client that goes away mid-transfer without close_notify.
async fn vanish_tcp(server: SocketAddr, config: &tls::ClientConfig, echo: SocketAddr, seed: u64) {
    if let Ok(mut s) = check::tcp_open(server, config, echo).await {
        let _ = s.write_all(&payload(50_000, seed)).await;
        let (tcp, _) = s.into_inner();
        if seed % 2 == 0 {
            let _ = fixture::reset_on_close(tcp.get_ref());
        }
    }
}

/// A UDP client that goes away without close_notify: its session must end at the idle timeout.
async fn vanish_udp(
    server: SocketAddr,
    config: &streamproxy::dtls::ClientConfig,
    echo: SocketAddr,
) {
    let relay =
        streamproxy_e2e::lossy::start(server, streamproxy_e2e::lossy::Faults::none(7)).await;
    if let Ok(s) = check::udp_open(relay.addr, config, echo).await {
        let _ = s.send(b"then silence").await;
        relay.cut();
        drop(s);
    }
}

/// A header of a random malformed kind after a valid handshake.
async fn bad_header(server: SocketAddr, config: &tls::ClientConfig, rng: &mut Rng) {
    let mut h = craft_header(b"127.0.0.1", b"80", None, None);
    match rng.below(4) {
        0 => h[0] = b'9',
        1 => *h.last_mut().expect("bytes") ^= 0xff,
        2 => h = craft_header(b"a\x00b", b"80", None, None),
        _ => h.truncate(rng.below(h.len() as u64) as usize),
    }
    if let Ok(mut s) = tls::connect_to(server, config).await {
        let _ = s.write_all(&h).await;
        let _ = s.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    }
}

/// Random bytes where a TLS or DTLS handshake should start.
async fn garbage(tcp: SocketAddr, udp: SocketAddr, rng: &mut Rng) {
    let mut junk = vec![0u8; 1 + rng.below(1500) as usize];
    rng.fill(&mut junk);
    if rng.below(2) == 0 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(tcp).await {
            let _ = s.write_all(&junk).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        }
    } else if let Ok(s) = tokio::net::UdpSocket::bind("127.0.0.1:0").await {
        let _ = s.send_to(&junk, udp).await;
    }
}
