//! A handshake flood against the real binary while good clients have a real round-trip time.
//!
//! A stranger on 127.0.0.2 opens about 3,000 TCP connections a second that never send a
//! byte; ten good clients on 127.0.0.3 reach the server through a relay that delays every
//! byte by 50 ms each way (100 ms round trip). Every good client must be served (a health
//! check answered) within 2 s, and the server must not write a log line per refused
//! connection. Before the per-source share and silent-first eviction, 0 of 10 got through.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::{Server, certs, client_args, server, streamproxy, tmp};

const DELAY: Duration = Duration::from_millis(50);
const FLOOD_PER_SECOND: usize = 3000;

/// A TCP connection from `from` to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Copies `from` to `to`, each chunk delivered `DELAY` after it was read.
fn delayed_pump(mut from: TcpStream, mut to: TcpStream) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0
            || tx
                .send((Instant::now() + DELAY, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// A relay on 127.0.0.1 that connects to `server` from 127.0.0.3 and delays both ways.
fn delaying_relay(server: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            thread::spawn(move || {
                let Ok(upstream) = connect_from(Ipv4Addr::new(127, 0, 0, 3), server) else {
                    return;
                };
                let (c2, u2) = (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                );
                let up = thread::spawn(move || delayed_pump(client, upstream));
                delayed_pump(u2, c2);
                let _ = up.join();
            });
        }
    });
    addr
}

/// Opens silent connections from 127.0.0.2 at `FLOOD_PER_SECOND` until `stop`; holds the
/// most recent ones open (the server closes the others). Returns how many it opened.
fn flood(server: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let mut held = std::collections::VecDeque::new();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = started
            + Duration::from_secs_f64(
                opened.load(Ordering::Relaxed) as f64 / FLOOD_PER_SECOND as f64,
            );
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if let Ok(conn) = connect_from(Ipv4Addr::new(127, 0, 0, 2), server) {
            held.push_back(conn);
            if held.len() > 2000 {
                held.pop_front();
            }
        }
        opened.fetch_add(1, Ordering::Relaxed);
    }
}

fn probe_through(dir: &std::path::Path, relay: SocketAddr) -> (bool, Duration) {
    let mut args: Vec<String> = vec!["probe".into()];
    args.extend(client_args(dir, relay));
    args.extend(["--timeout".into(), "2s".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = streamproxy(&refs);
    (out.status.success(), started.elapsed())
}

#[test]
fn good_clients_with_a_real_rtt_are_served_during_a_handshake_flood() {
    let dir = tmp();
    certs(dir.path());
    let Server { proc, tcp, .. } = server(dir.path(), &["--allow", "127.0.0.1"]);
    let relay = delaying_relay(tcp);
    // Without a flood, a probe through the relay takes a few round trips.
    let (ok, baseline) = probe_through(dir.path(), relay);
    assert!(ok, "the relay path works");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        thread::spawn(move || flood(tcp, stop, opened))
    };
    // Let the flood fill every slot first.
    while opened.load(Ordering::Relaxed) < 1000 {
        thread::sleep(Duration::from_millis(10));
    }
    let lines_before = proc.lines.try_iter().count();
    let probes: Vec<_> = (0..10)
        .map(|i| {
            let dir = dir.path().to_owned();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100 * i));
                probe_through(&dir, relay)
            })
        })
        .collect();
    let results: Vec<(bool, Duration)> = probes
        .into_iter()
        .map(|p| p.join().expect("probe"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    flooder.join().expect("flood");
    let flooded = opened.load(Ordering::Relaxed);
    let served = results
        .iter()
        .filter(|(ok, took)| *ok && *took < Duration::from_secs(2))
        .count();
    let lines: Vec<String> = proc.lines.try_iter().collect();
    let log_lines = lines.len();
    for l in lines.iter().take(5) {
        eprintln!("server: {l}");
    }
    eprintln!(
        "figures tcp flood: {flooded} junk connections; good clients served {served}/10 \
         (baseline {baseline:?}, times {:?}); server log lines during the flood {log_lines} \
         (before {lines_before})",
        results.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!(flooded >= 3000, "the flood was too small: {flooded}");
    assert!(
        served >= 9,
        "only {served} of 10 good clients served: {results:?}"
    );
    assert!(log_lines < 20, "{log_lines} log lines during the flood");
}
