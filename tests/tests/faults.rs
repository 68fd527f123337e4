//! Fault injection on loopback: destinations that reset, stall or close early, clients that
//! vanish, shutdown (what SIGTERM starts) and certificate rotation (what SIGHUP does) under
//! load, and DTLS through a relay that drops, duplicates and reorders datagrams.
//!
//! Every test ends with the server holding no tunnel and the process's descriptors back to
//! their baseline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streamproxy::proxy::metrics::Transport;
use streamproxy::proxy::settings::Settings;
use streamproxy_e2e::check::{self, Totals};
use streamproxy_e2e::fixture::{self, Pki, Running, allow_all, payload};
use streamproxy_e2e::lossy::{self, Faults};
use streamproxy_e2e::process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer of a destination that closes with unread input: small enough that its kernel
/// has sent all of it before the reset (it discards what it has not sent).
const ANSWER_LEN: usize = 32 * 1024;

fn settings() -> Settings {
    Settings::default()
        .udp_idle_timeout(Duration::from_secs(1))
        .drain_period(Duration::from_secs(10))
}

/// Waits until the server holds no tunnel on `transport` and the open sockets are back to
/// `sockets`.
async fn settled(server: &Running, transport: Transport, sockets: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metrics.active_tunnels(transport) != 0 || process::open_sockets() > sockets {
        assert!(
            Instant::now() < deadline,
            "{what}: {} tunnels active, {} sockets open (baseline {sockets}): {:?}",
            server.metrics.active_tunnels(transport),
            process::open_sockets(),
            process::fd_targets()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A destination that runs `behave` on each connection it accepts.
async fn destination<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(behave(conn));
        }
    });
    addr
}

/// Writes `data` until done or the stream fails; returns the bytes written.
async fn write_until_fails<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8]) -> usize {
    let mut written = 0;
    for chunk in data.chunks(16 * 1024) {
        if w.write_all(chunk).await.is_err() || w.flush().await.is_err() {
            break;
        }
        written += chunk.len();
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_reset_mid_transfer_ends_the_tunnel_and_frees_everything() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let dest = destination(|mut conn| async move {
        let mut buf = vec![0u8; 100 * 1024];
        let _ = conn.read_exact(&mut buf).await;
        // RST: linger zero, then close.
        let _ = fixture::reset_on_close(&conn);
        drop(conn);
    })
    .await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let config = pki.tls_client();
    for i in 0..8 {
        let stream = check::tcp_open(server.tcp, &config, dest)
            .await
            .expect("open");
        let (mut rd, mut wr) = tokio::io::split(stream);
        let data = payload(4 << 20, i);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let reader = async {
                let mut sink = Vec::new();
                rd.read_to_end(&mut sink).await
            };
            let (written, read) = tokio::join!(write_until_fails(&mut wr, &data), reader);
            (written, read)
        })
        .await
        .expect("the tunnel ends after the reset");
        assert!(
            ended.1.is_err(),
            "a reset must not look like a clean end: {:?}",
            ended.1
        );
    }
    settled(&server, Transport::Tcp, base, "after resets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_reads_gets_backpressure_and_memory_stays_bounded() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let dest = destination(move |mut conn| {
        let mut release = release.clone();
        let got_tx = got_tx.clone();
        async move {
            // Accept, then read nothing until released.
            let _ = release.wait_for(|r| *r).await;
            let mut all = Vec::new();
            let _ = conn.read_to_end(&mut all).await;
            let _ = got_tx.send(all).await;
        }
    })
    .await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let config = pki.tls_client();
    let data = Arc::new(payload(64 << 20, 42));
    process::trim_heap();
    let rss_before = process::rss_kib();
    let stream = check::tcp_open(server.tcp, &config, dest)
        .await
        .expect("open");
    let (_rd, mut wr) = tokio::io::split(stream);
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (data, written) = (Arc::clone(&data), Arc::clone(&written));
        async move {
            for chunk in data.chunks(64 * 1024) {
                wr.write_all(chunk).await.expect("write");
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            wr.shutdown().await.expect("shutdown");
        }
    });
    // Writes stop making progress: the relay holds back.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let rss_stalled = process::rss_kib();
    eprintln!(
        "figures backpressure: {last} bytes accepted before the writer stalled; rss {rss_before} -> {rss_stalled} KiB (payload buffer {} KiB)",
        data.len() / 1024
    );
    assert!(
        last < 32 << 20,
        "{last} bytes went in while the destination read nothing"
    );
    // The payload itself is 256 MiB of this process; the tunnel may hold a few MiB of buffers.
    assert!(
        rss_stalled < rss_before + 32 * 1024,
        "rss {rss_before} -> {rss_stalled} KiB"
    );
    // Then the destination reads: every byte arrives, in order.
    let _ = release_tx.send(true);
    writer.await.expect("writer");
    let got = tokio::time::timeout(Duration::from_secs(60), got_rx.recv())
        .await
        .expect("destination done")
        .expect("bytes");
    assert_eq!(got.len(), data.len());
    assert!(got == *data, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stops_sending_early_still_receives_every_byte() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let dest = destination(move |mut conn| {
        let got_tx = got_tx.clone();
        async move {
            let _ = conn.write_all(b"early answer").await;
            let _ = conn.shutdown().await;
            let mut all = Vec::new();
            let _ = conn.read_to_end(&mut all).await;
            let _ = got_tx.send(all).await;
        }
    })
    .await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let stream = check::tcp_open(server.tcp, &pki.tls_client(), dest)
        .await
        .expect("open");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut answer = Vec::new();
    rd.read_to_end(&mut answer)
        .await
        .expect("clean end of the destination's side");
    assert_eq!(answer, b"early answer");
    let data = payload(8 << 20, 5);
    wr.write_all(&data)
        .await
        .expect("upload after the destination's end");
    wr.shutdown().await.expect("shutdown");
    let got = got_rx.recv().await.expect("bytes");
    assert!(got == data, "upload differs after a half close");
    drop((rd, wr));
    settled(&server, Transport::Tcp, base, "after half close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_closes_with_unread_data_still_delivers_its_answer() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let answer = payload(ANSWER_LEN, 77);
    let dest = destination({
        let answer = answer.clone();
        move |mut conn| {
            let answer = answer.clone();
            async move {
                let mut first = vec![0u8; 10_000];
                let _ = conn.read_exact(&mut first).await;
                let _ = conn.write_all(&answer).await;
                // Closing with unread input: the kernel answers further data with a reset.
                drop(conn);
            }
        }
    })
    .await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let config = pki.tls_client();
    let mut intact = 0;
    let rounds = 8;
    for i in 0..rounds {
        let stream = check::tcp_open(server.tcp, &config, dest)
            .await
            .expect("open");
        let (mut rd, mut wr) = tokio::io::split(stream);
        let data = payload(4 << 20, i);
        let (_, got) = tokio::time::timeout(Duration::from_secs(10), async {
            let reader = async {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                got
            };
            tokio::join!(write_until_fails(&mut wr, &data), reader)
        })
        .await
        .expect("the tunnel ends");
        assert!(answer.starts_with(&got), "the answer came back altered");
        if got == answer {
            intact += 1;
        }
    }
    eprintln!("figures early close: {intact} of {rounds} answers complete before the reset");
    assert_eq!(intact, rounds, "answers the destination sent were lost");
    settled(&server, Transport::Tcp, base, "after early closes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_vanishes_is_torn_down() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::tcp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let config = pki.tls_client();
    for (i, reset) in [(0u64, false), (1, true), (2, false), (3, true)] {
        let mut stream = check::tcp_open(server.tcp, &config, echo)
            .await
            .expect("open");
        stream.write_all(&payload(100_000, i)).await.expect("write");
        let mut back = vec![0u8; 1000];
        stream.read_exact(&mut back).await.expect("echo flows");
        // Gone without close_notify: a plain FIN (the process died) or a reset.
        let (tcp, _) = stream.into_inner();
        if reset {
            fixture::reset_on_close(tcp.get_ref()).expect("linger");
        }
        drop(tcp);
    }
    settled(&server, Transport::Tcp, base, "after vanished clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_client_that_vanishes_is_freed_by_the_idle_timeout() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let relay = lossy::start(server.udp, Faults::none(1)).await;
    let config = pki.dtls_client();
    let mut sessions = Vec::new();
    for i in 0..8 {
        let mut s = check::udp_open(relay.addr, &config, echo)
            .await
            .expect("open");
        s.send(&payload(100, i)).await.expect("send");
        let mut buf = vec![0u8; 2048];
        s.recv(&mut buf).await.expect("echo").expect("datagram");
        sessions.push(s);
    }
    assert_eq!(server.metrics.active_tunnels(Transport::Udp), 8);
    // The network path disappears: not even a close_notify gets through.
    relay.cut();
    drop(sessions);
    let started = Instant::now();
    fixture::wait_until("sessions freed", Duration::from_secs(10), || {
        server.metrics.active_tunnels(Transport::Udp) == 0
    })
    .await;
    let freed_after = started.elapsed();
    eprintln!("figures vanished udp clients: freed after {freed_after:?} (idle timeout 1 s)");
    assert!(
        freed_after >= Duration::from_millis(700),
        "freed before the idle timeout"
    );
    drop(relay);
    settled(&server, Transport::Udp, base, "after vanished UDP clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_tunnels_finish_byte_exact_within_the_drain() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let tcp_echo = fixture::tcp_echo().await;
    let udp_echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let (tcp, udp) = (server.tcp, server.udp);
    let config = pki.tls_client();
    let dconfig = pki.dtls_client();
    let mut tcp_tunnels = Vec::new();
    for i in 0..16u64 {
        let stream = check::tcp_open(tcp, &config, tcp_echo).await.expect("open");
        tcp_tunnels.push(stream);
        let _ = i;
    }
    let mut udp_sessions = Vec::new();
    for _ in 0..8 {
        udp_sessions.push(
            check::udp_open(udp, &dconfig, udp_echo)
                .await
                .expect("open"),
        );
    }
    fixture::wait_until("tunnels open", Duration::from_secs(5), || {
        server.metrics.active_tunnels(Transport::Tcp) == 16
    })
    .await;
    // What SIGTERM starts.
    let stopping = server.begin_stop();
    let started = Instant::now();
    let mut work = Vec::new();
    for (i, stream) in tcp_tunnels.into_iter().enumerate() {
        work.push(tokio::spawn(async move {
            // Paced, so the transfer outlives the start of the shutdown.
            let data = payload(2 << 20, i as u64);
            let (mut rd, mut wr) = tokio::io::split(stream);
            let write = async {
                for chunk in data.chunks(64 * 1024) {
                    wr.write_all(chunk).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                wr.shutdown().await
            };
            let read = async {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.map(|_| got)
            };
            let (w, r) = tokio::join!(write, read);
            w.expect("write during the drain");
            assert!(
                r.expect("read during the drain") == data,
                "tunnel {i} not byte-exact"
            );
        }));
    }
    for (i, session) in udp_sessions.into_iter().enumerate() {
        work.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut session = session;
            for seq in 0..50u64 {
                tick.tick().await;
                let d = payload(500, seq + 1000 * i as u64);
                session.send(&d).await.expect("send during the drain");
                let mut buf = vec![0u8; 2048];
                let n = tokio::time::timeout(Duration::from_secs(2), session.recv(&mut buf))
                    .await
                    .expect("echo during the drain")
                    .expect("recv")
                    .expect("datagram");
                assert_eq!(&buf[..n], &d[..]);
            }
            let _ = session.shutdown().await;
        }));
    }
    // New clients are turned away (the listener closes as soon as the server sees the
    // shutdown) while the old ones finish.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(tcp).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting during the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in work {
        w.await.expect("in-flight tunnel finished");
    }
    stopping.await.expect("server stopped");
    let took = started.elapsed();
    eprintln!(
        "figures drain: 16 TCP tunnels x 2 MiB and 8 UDP sessions x 50 datagrams finished; server stopped after {took:?} (drain 10 s)"
    );
    assert!(took < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_outliving_the_drain_are_closed_when_it_ends() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::tcp_echo().await;
    let server = fixture::start(pki.builder(
        allow_all(),
        settings().drain_period(Duration::from_millis(500)),
    ))
    .await;
    let mut stream = check::tcp_open(server.tcp, &pki.tls_client(), echo)
        .await
        .expect("open");
    stream.write_all(b"ping").await.expect("write");
    let mut four = [0u8; 4];
    stream.read_exact(&mut four).await.expect("echo");
    let started = Instant::now();
    server.stop().await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_sustained_load_fails_no_tunnel() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let tcp_echo = fixture::tcp_echo().await;
    let udp_echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(
        allow_all(),
        settings().udp_idle_timeout(Duration::from_secs(60)),
    ))
    .await;
    let (tcp, udp) = (server.tcp, server.udp);
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Live tunnels opened before the first rotation and used after the last.
    let config = pki.tls_client();
    let long_tcp = check::tcp_open(tcp, &config, tcp_echo).await.expect("open");
    let long_udp = check::udp_open(udp, &pki.dtls_client(), udp_echo)
        .await
        .expect("open");
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let (totals, stop, config) = (Arc::clone(&totals), Arc::clone(&stop), config.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = check::tcp_roundtrip(tcp, &config, tcp_echo, 20_000, w << 32 | i).await;
                errors.extend(totals.record(r).map(|e| format!("tcp {w}/{i}: {e}")));
                i += 1;
            }
            errors
        }));
    }
    for w in 0..3u64 {
        let (totals, stop, config) = (Arc::clone(&totals), Arc::clone(&stop), pki.dtls_client());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = check::udp_roundtrip(
                    udp,
                    &config,
                    udp_echo,
                    4,
                    1000,
                    w << 32 | i,
                    Duration::from_secs(2),
                )
                .await;
                errors.extend(totals.record(r).map(|e| format!("udp {w}/{i}: {e}")));
                i += 1;
            }
            errors
        }));
    }
    let rotations = 6;
    let mut current = None;
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    tick.tick().await;
    for _ in 0..rotations {
        tick.tick().await;
        current = Some(pki.rotate_server().der);
        server.reloader.reload().expect("reload");
    }
    tick.tick().await;
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.expect("worker"));
    }
    // The live tunnels still work.
    check::tcp_exchange(long_tcp, 100_000, 9)
        .await
        .expect("long TCP tunnel unaffected");
    check::udp_exchange(long_udp, 8, 1000, 9, Duration::from_secs(2), None)
        .await
        .expect("long UDP session unaffected");
    // New handshakes see the last certificate.
    let stream = tls::connect_to(tcp, &config).await.expect("handshake");
    let presented = stream.get_ref().1.peer_certificates().expect("certs")[0].clone();
    assert_eq!(
        Some(presented),
        current,
        "the server does not present the rotated certificate"
    );
    let (tunnels, bytes, _, failed) = totals.snapshot();
    eprintln!(
        "figures rotation: {rotations} rotations, {tunnels} tunnels, {bytes} bytes, {failed} failed"
    );
    assert!(errors.is_empty(), "failed tunnels: {errors:?}");
    assert!(tunnels > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_through_a_lossy_relay_completes_handshakes_delivers_intact_and_leaks_nothing() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let relay = lossy::start(
        server.udp,
        Faults {
            drop: 0.20,
            duplicate: 0.05,
            reorder: 0.10,
            seed: 0x10557,
            backward_pass_first: None,
            drop_first_record: false,
        },
    )
    .await;
    let clients = 24;
    let per_client = 40u64;
    let config = pki.dtls_client();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (config, relay_addr) = (config.clone(), relay.addr);
        tasks.push(tokio::spawn(async move {
            let session = check::udp_open(relay_addr, &config, echo)
                .await
                .expect("handshake completes");
            let (send, mut recv) = session.into_split();
            let sent: Vec<Vec<u8>> = (0..per_client)
                .map(|seq| {
                    let mut d = payload(64 + (seq as usize * 37) % 1100, c * 1000 + seq);
                    d[..8].copy_from_slice(&seq.to_be_bytes());
                    d
                })
                .collect();
            let sender = async {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                for d in &sent {
                    tick.tick().await;
                    let _ = send.send(d).await;
                }
            };
            let receiver = async {
                let mut seen = std::collections::BTreeSet::new();
                let mut buf = vec![0u8; 2048];
                while let Ok(Ok(Some(n))) =
                    tokio::time::timeout(Duration::from_millis(1500), recv.recv(&mut buf)).await
                {
                    let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    let original = sent.get(seq as usize).expect("a sequence number we sent");
                    assert!(buf[..n] == original[..], "datagram {seq} altered");
                    seen.insert(seq);
                }
                seen.len()
            };
            let ((), delivered) = tokio::join!(sender, receiver);
            let _ = send.shutdown().await;
            delivered
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await.expect("client");
    }
    let total = clients * per_client;
    eprintln!(
        "figures lossy dtls: {clients} handshakes, {delivered}/{total} datagrams echoed intact; {}",
        relay.stats
    );
    // Both ways through 20 % loss: about 64 % survive; the header itself may be lost.
    assert!(
        delivered as u64 > total / 3,
        "only {delivered} of {total} delivered"
    );
    drop(relay);
    settled(&server, Transport::Udp, base, "after the lossy relay").await;
}

/// A datagram of source `source`, number `n`: its identity, then bytes derived from it.
fn numbered(source: u64, n: u64) -> Vec<u8> {
    let id = source << 32 | n;
    let mut d = id.to_be_bytes().to_vec();
    d.extend(payload(192, id));
    d
}

/// One datagram from `socket` within `ms` milliseconds.
async fn recv_within(socket: &tokio::net::UdpSocket, buf: &mut [u8], ms: u64) -> Option<usize> {
    tokio::time::timeout(Duration::from_millis(ms), socket.recv(buf))
        .await
        .ok()?
        .ok()
}

/// The UDP forwarder's whole path on a lossy link: sources that each send until their first
/// echo (from a new socket, so a new tunnel, after 8 tries: when the path drops a session's
/// header the server refuses the session), then 30 paced datagrams. Every echo is intact and
/// belongs to its source, and everything is freed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_forwarder_through_a_lossy_relay_delivers_intact_and_leaks_nothing() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let base = process::open_sockets();
    let relay = lossy::start(
        server.udp,
        Faults {
            drop: 0.2,
            duplicate: 0.05,
            reorder: 0.1,
            seed: 11,
            backward_pass_first: None,
            drop_first_record: false,
        },
    )
    .await;
    let forwarder = streamproxy::proxy::forward::UdpForwarder::bind(
        "127.0.0.1:0".parse().expect("addr"),
        relay.addr,
        pki.dtls_client(),
        format!("127.0.0.1:{}", echo.port())
            .parse()
            .expect("target"),
    )
    .await
    .expect("bind");
    let local = forwarder.local_addr();
    let stop = shutdown_trigger();
    let forwarding = tokio::spawn(forwarder.run(stop.1));
    let (sources, per_source) = (12u64, 30u64);
    let mut tasks = Vec::new();
    for source in 0..sources {
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let started = Instant::now();
            let hello = numbered(source, u64::MAX >> 32);
            let socket = 'tunnel: loop {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "source {source}: no echo through the lossy path"
                );
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                socket.connect(local).await.expect("connect");
                for _ in 0..8 {
                    socket.send(&hello).await.expect("send");
                    if recv_within(&socket, &mut buf, 300).await.is_some() {
                        break 'tunnel socket;
                    }
                }
            };
            for n in 0..per_source {
                socket.send(&numbered(source, n)).await.expect("send");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut intact = 0u64;
            while let Some(len) = recv_within(&socket, &mut buf, 500).await {
                let got = &buf[..len];
                let id = u64::from_be_bytes(got[..8].try_into().expect("8 bytes"));
                assert_eq!(id >> 32, source, "another source's datagram");
                assert_eq!(got, &numbered(source, id & 0xffff_ffff)[..], "altered");
                if id & 0xffff_ffff < per_source {
                    intact += 1;
                }
            }
            intact
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await.expect("a source failed");
    }
    let total = sources * per_source;
    eprintln!(
        "figures lossy forwarder: {sources} sources through, {delivered}/{total} datagrams echoed intact (duplicates count twice); {}",
        relay.stats
    );
    assert!(
        delivered > 0 && delivered <= 2 * total,
        "{delivered} of {total}"
    );
    let _ = stop.0.send(());
    let _ = forwarding.await;
    drop(relay);
    settled(&server, Transport::Udp, base, "after the lossy forwarder").await;
}

/// A DTLS session's header is its first record, a datagram the path may lose. The server then
/// reads a data record as the header: it refuses the session with the reason "first record is
/// not a header" (counted apart from malformed headers), and the forwarder opens a new session
/// at the source's next datagram, which carries a header again. The source's flow recovers at
/// once and no header is ever sent twice on an accepted session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_header_costs_one_session_not_the_flow() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let echo = fixture::udp_echo().await;
    let server = fixture::start(pki.builder(allow_all(), settings())).await;
    let relay = lossy::start(
        server.udp,
        Faults {
            drop_first_record: true,
            ..Faults::none(7)
        },
    )
    .await;
    let target = format!("127.0.0.1:{}", echo.port())
        .parse()
        .expect("target");
    let forwarder = streamproxy::proxy::forward::UdpForwarder::bind(
        "127.0.0.1:0".parse().expect("addr"),
        relay.addr,
        pki.dtls_client(),
        target,
    )
    .await
    .expect("bind");
    let local = forwarder.local_addr();
    let stop = shutdown_trigger();
    let forwarding = tokio::spawn(forwarder.run(stop.1));
    let source = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    source.connect(local).await.expect("connect");
    let started = Instant::now();
    let mut echoed = 0;
    let mut buf = [0u8; 64];
    while echoed < 10 && started.elapsed() < Duration::from_secs(10) {
        source.send(b"ping").await.expect("send");
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), source.recv(&mut buf)).await
        {
            assert_eq!(&buf[..n], b"ping");
            echoed += 1;
        }
    }
    let recovered_after = started.elapsed();
    eprintln!("figures lost header: flow recovered, 10 echoes after {recovered_after:?}");
    assert_eq!(echoed, 10, "the flow did not recover");
    assert!(
        recovered_after < Duration::from_secs(3),
        "{recovered_after:?}"
    );
    assert_eq!(relay.stats.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(
        fixture::metric(
            &server.metrics,
            "streamproxy_header_errors",
            &["kind=\"first_record_not_header\""]
        ),
        1
    );
    // The second session carried its header and was the only tunnel.
    assert_eq!(server.metrics.total_tunnels(Transport::Udp), 1);
    let _ = stop.0.send(());
    let _ = forwarding.await;
}

/// A shutdown future and its trigger.
fn shutdown_trigger() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}
