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
use support::{Server, WAIT, certs, client_args, server, streamproxy, tmp};
use test_support::blocking::wait_until;

const DELAY: Duration = Duration::from_millis(50);
const FLOOD_PER_SECOND: usize = 3000;
/// DTLS junk handshakes a second (each costs the server an ECDHE and ECDSA flight).
const DTLS_FLOOD_PER_SECOND: usize = 4000;

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
    let (fds_before, rss_before) = (proc.open_fds(), proc.rss_kib());

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        thread::spawn(move || flood(tcp, stop, opened))
    };
    // Let the flood fill every slot first.
    wait_until("the flood opens 1000 connections", WAIT, || {
        opened.load(Ordering::Relaxed) >= 1000
    });
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
    // The flood's connections are gone (the flooder closed them): so are the server's.
    let deadline = Instant::now() + Duration::from_secs(15);
    while proc.open_fds() > fds_before + 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let (fds_after, rss_after) = (proc.open_fds(), proc.rss_kib());
    eprintln!(
        "figures tcp flood: server fds {fds_before} -> {fds_after}, rss {rss_before} -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 4,
        "descriptors left: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew {rss_before} -> {rss_after} KiB"
    );
}

/// The first ClientHello a DTLS client sends (without a cookie), captured from our own
/// client against a socket that never answers.
fn captured_client_hello(dir: &std::path::Path) -> Vec<u8> {
    let trap = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    trap.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let addr = trap.local_addr().expect("addr");
    let config = streamproxy::dtls::ClientConfig::new(
        streamproxy::dtls::Identity::from_pem_files(
            dir.join("client.pem"),
            dir.join("client-key.pem"),
        )
        .expect("identity"),
        streamproxy::dtls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca"),
    )
    .handshake_timeout(Duration::from_secs(1));
    let client = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = rt.block_on(streamproxy::dtls::connect(addr, &config));
    });
    let mut buf = [0u8; 2048];
    let (n, _) = trap.recv_from(&mut buf).expect("a ClientHello");
    let _ = client.join();
    buf[..n].to_vec()
}

/// `hello` (a cookieless ClientHello record) with `cookie` inserted, as a client's second
/// ClientHello.
fn with_cookie(hello: &[u8], cookie: &[u8]) -> Vec<u8> {
    // Record header 13 bytes, handshake header 12, client_version 2, random 32, session id.
    let sid_at = 13 + 12 + 2 + 32;
    let cookie_at = sid_at + 1 + usize::from(hello[sid_at]);
    let mut out = Vec::with_capacity(hello.len() + cookie.len());
    out.extend_from_slice(&hello[..cookie_at]);
    out.push(cookie.len() as u8);
    out.extend_from_slice(cookie);
    out.extend_from_slice(&hello[cookie_at + 1..]);
    let grow = |at: usize, width: usize, out: &mut Vec<u8>| {
        let mut v = 0usize;
        for b in &out[at..at + width] {
            v = v << 8 | usize::from(*b);
        }
        v += cookie.len();
        for i in 0..width {
            out[at + width - 1 - i] = (v >> (8 * i)) as u8;
        }
    };
    grow(11, 2, &mut out); // record length
    grow(14, 3, &mut out); // handshake length
    grow(22, 3, &mut out); // fragment length
    out[17] = 0;
    out[18] = 1; // message_seq 1
    out[10] = 1; // record sequence 1
    out
}

/// The cookie of a HelloVerifyRequest record, if `datagram` is one.
fn cookie_of(datagram: &[u8]) -> Option<Vec<u8>> {
    // Record header 13, handshake header 12 (type 3), server_version 2, then the cookie.
    if datagram.len() < 28 || datagram[0] != 22 || datagram[13] != 3 {
        return None;
    }
    let len = usize::from(datagram[27]);
    datagram.get(28..28 + len).map(<[u8]>::to_vec)
}

/// Opens DTLS handshakes from 127.0.0.2 that prove their address with the cookie and then go
/// silent, at `FLOOD_PER_SECOND` until `stop`: each holds a half-open slot until it is evicted
/// or times out.
fn dtls_flood(server: SocketAddr, hello: Vec<u8>, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let mut held = std::collections::VecDeque::new();
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let due = started
            + Duration::from_secs_f64(
                opened.load(Ordering::Relaxed) as f64 / DTLS_FLOOD_PER_SECOND as f64,
            );
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        opened.fetch_add(1, Ordering::Relaxed);
        let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)) else {
            continue;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        if socket.send_to(&hello, server).is_err() {
            continue;
        }
        let Some(cookie) = socket
            .recv(&mut buf)
            .ok()
            .and_then(|n| cookie_of(&buf[..n]))
        else {
            continue;
        };
        let _ = socket.send_to(&with_cookie(&hello, &cookie), server);
        held.push_back(socket);
        if held.len() > 3000 {
            held.pop_front();
        }
    }
}

/// A UDP relay on 127.0.0.1 that forwards each client's datagrams to `server` from its own
/// socket on 127.0.0.3, and delays every datagram by `DELAY` each way.
fn delaying_udp_relay(server: SocketAddr) -> SocketAddr {
    let front = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"));
    let addr = front.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel::<(Instant, Arc<std::net::UdpSocket>, Vec<u8>, SocketAddr)>();
    thread::spawn(move || {
        for (due, socket, data, to) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            let _ = socket.send_to(&data, to);
        }
    });
    thread::spawn(move || {
        let mut upstreams: std::collections::HashMap<SocketAddr, Arc<std::net::UdpSocket>> =
            std::collections::HashMap::new();
        let mut buf = [0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf) {
            let upstream = upstreams.entry(client).or_insert_with(|| {
                let up = Arc::new(
                    std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 3), 0)).expect("bind"),
                );
                let (up2, front2, tx2) = (Arc::clone(&up), Arc::clone(&front), tx.clone());
                thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = up2.recv(&mut buf) {
                        let item = (
                            Instant::now() + DELAY,
                            Arc::clone(&front2),
                            buf[..n].to_vec(),
                            client,
                        );
                        if tx2.send(item).is_err() {
                            break;
                        }
                    }
                });
                up.connect(server).expect("connect");
                up
            });
            let _ = tx.send((
                Instant::now() + DELAY,
                Arc::clone(upstream),
                buf[..n].to_vec(),
                server,
            ));
        }
    });
    addr
}

/// `streamproxy_limit_refusals_total{transport="udp"}` from the status listener: DTLS
/// handshakes evicted at the half-open limit.
fn udp_evictions(status: SocketAddr) -> u64 {
    let mut conn = TcpStream::connect(status).expect("status");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read");
    text.lines()
        .find(|l| l.starts_with("streamproxy_limit_refusals_total{transport=\"udp\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn good_dtls_clients_with_a_real_rtt_are_served_during_a_half_open_flood() {
    let dir = tmp();
    certs(dir.path());
    let Server { mut proc, udp, .. } = server(
        dir.path(),
        &["--allow", "127.0.0.1", "--status-listen", "127.0.0.1:0"],
    );
    let status = support::field(&proc.wait_for("status listening"), "addr");
    let hello = captured_client_hello(dir.path());
    let relay = delaying_udp_relay(udp);
    let probe = move |dir: &std::path::Path| {
        let mut args: Vec<String> = vec!["probe".into(), "--udp".into()];
        args.extend(client_args(dir, relay));
        args.extend(["--timeout".into(), "2s".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = streamproxy(&refs);
        (out.status.success(), started.elapsed())
    };
    let (ok, baseline) = probe(dir.path());
    assert!(ok, "the relay path works");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    // Two flooding threads: one alone cannot keep up the rate on a loaded machine.
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, opened, hello) = (Arc::clone(&stop), Arc::clone(&opened), hello.clone());
            thread::spawn(move || dtls_flood(udp, hello, stop, opened))
        })
        .collect();
    wait_until("the flood sends 1200 ClientHellos", WAIT, || {
        opened.load(Ordering::Relaxed) >= 1200
    });
    let probes: Vec<_> = (0..10)
        .map(|i| {
            let dir = dir.path().to_owned();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100 * i));
                probe(&dir)
            })
        })
        .collect();
    let results: Vec<(bool, Duration)> = probes
        .into_iter()
        .map(|p| p.join().expect("probe"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("flood");
    }
    let flooded = opened.load(Ordering::Relaxed);
    let served = results
        .iter()
        .filter(|(ok, took)| *ok && *took < Duration::from_secs(2))
        .count();
    let lines: Vec<String> = proc.lines.try_iter().collect();
    // The server copies its listener's counters into the metrics every few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut evicted = udp_evictions(status);
    while evicted <= 1000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        evicted = udp_evictions(status);
    }
    eprintln!("dtls flood: {evicted} half-open handshakes evicted");
    assert!(
        evicted > 1000,
        "the flood did not fill the half-open table ({evicted} evicted)"
    );
    eprintln!(
        "figures dtls flood: {flooded} verified silent handshakes; good clients served {served}/10 \
         (baseline {baseline:?}, times {:?}); server log lines {}",
        results.iter().map(|r| r.1).collect::<Vec<_>>(),
        lines.len()
    );
    assert!(flooded >= 1500, "the flood was too small: {flooded}");
    assert!(
        served >= 9,
        "only {served} of 10 good clients served: {results:?}"
    );
    assert!(
        lines.len() < 20,
        "{} log lines: {:#?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );
}
