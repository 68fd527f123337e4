//! Hostile input: malformed headers of every kind, random bytes after and garbage before a
//! handshake, unresolvable names, port 0, slow headers, slowloris, handshake floods and
//! destinations the policy denies. In every case the bad client is closed, the server keeps
//! serving good clients, and nothing reaches a destination it should not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamproxy::dtls;
use streamproxy::proto::{Header, Version};
use streamproxy::proxy::dial::StaticResolver;
use streamproxy::proxy::metrics::Transport;
use streamproxy::proxy::policy::Policy;
use streamproxy::proxy::settings::Settings;
use streamproxy::proxy::tcp::{Served, StreamError, StreamHandler};
use streamproxy::proxy::tunnel::Client;
use streamproxy::proxy::{self, ServerContext};
use streamproxy_e2e::check;
use streamproxy_e2e::fixture::{self, Pki, Rng, Running, Witness, allow_all, craft_header, metric};
use streamproxy_e2e::process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

fn settings() -> Settings {
    Settings::default()
        .header_timeout(HEADER_TIMEOUT)
        .handshake_timeout(Duration::from_secs(2))
}

async fn server(pki: &Pki, settings: Settings) -> Running {
    fixture::start(
        pki.builder(allow_all(), settings)
            .resolver(StaticResolver::new()),
    )
    .await
}

/// Sends `bytes` after a TLS handshake (closing the sending side if `close`), and waits for
/// the server to close the stream; returns what the server sent before closing.
async fn send_after_handshake(
    server: SocketAddr,
    config: &tls::ClientConfig,
    bytes: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut stream = tls::connect_to(server, config).await.expect("handshake");
    // The server may close before everything is written; that is its right.
    let _ = stream.write_all(bytes).await;
    if close {
        let _ = stream.shutdown().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the server did not close the stream within 5 s"
    );
    got
}

async fn good_tcp_client_is_served(pki: &Pki, server: &Running) {
    let echo = fixture::tcp_echo().await;
    let started = Instant::now();
    check::tcp_roundtrip(server.tcp, &pki.tls_client(), echo, 64 * 1024, 7)
        .await
        .expect("a good client is served");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn crafted_headers_match_the_encoder() {
    let ours = craft_header(b"127.0.0.1", b"8080", None, None);
    let theirs = Header::new("127.0.0.1", "8080")
        .expect("valid")
        .with_version(streamproxy::proto::Version::V0_1_0_0)
        .to_bytes()
        .expect("encodes");
    assert_eq!(ours, &*theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_header_kind_is_rejected_and_counted() {
    let pki = Pki::new();
    let server = server(&pki, settings()).await;
    let config = pki.tls_client();
    let valid = craft_header(b"127.0.0.1", b"8080", None, None);
    let mut bad_checksum = valid.clone();
    *bad_checksum.last_mut().expect("bytes") ^= 1;
    let mut bad_version = valid.clone();
    bad_version[..8].copy_from_slice(b"9.9.9.9\0");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("unknown_version", bad_version, false),
        (
            "unknown_version",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("truncated", valid[..100].to_vec(), true),
        ("truncated", valid[..3].to_vec(), true),
        ("checksum", bad_checksum, false),
        ("invalid_host", craft_header(b"", b"80", None, None), false),
        (
            "invalid_host",
            craft_header(b"ho\x00st", b"80", None, None),
            false,
        ),
        (
            "invalid_host",
            craft_header(b"ho\nst", b"80", None, None),
            false,
        ),
        (
            "invalid_host",
            craft_header(b"\xff\xfe", b"80", None, None),
            false,
        ),
        (
            "port_too_long",
            craft_header(b"host", b"80", None, Some(6)),
            false,
        ),
        (
            "port_too_long",
            craft_header(b"host", b"80", None, Some(255)),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"", None, None),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"8o", None, None),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"-1", None, None),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"0", None, None),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"00000", None, None),
            false,
        ),
        (
            "invalid_port",
            craft_header(b"host", b"65536", None, None),
            false,
        ),
    ];
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    for (kind, bytes, close) in &cases {
        let got = send_after_handshake(server.tcp, &config, bytes, *close).await;
        assert!(
            got.is_empty(),
            "{kind}: the server sent {} bytes",
            got.len()
        );
        *expected.entry(kind).or_default() += 1;
    }
    for (kind, count) in expected {
        let label = format!("kind=\"{kind}\"");
        fixture::wait_until(kind, Duration::from_secs(5), || {
            metric(
                &server.metrics,
                "streamproxy_header_errors",
                &["transport=\"tcp\"", &label],
            ) == count
        })
        .await;
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 0);
    good_tcp_client_is_served(&pki, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_udp_headers_are_rejected_with_close_notify() {
    let pki = Pki::new();
    let server = server(&pki, settings()).await;
    let config = pki.dtls_client();
    let valid = craft_header(b"127.0.0.1", b"8080", None, None);
    let mut long = valid.clone();
    long.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length", valid[..200].to_vec()),
        ("length", long),
        ("unknown_version", vec![0x42; 274]),
        ("checksum", {
            let mut v = valid.clone();
            v[20] ^= 0x80;
            v
        }),
        ("invalid_port", craft_header(b"host", b"0", None, None)),
        ("invalid_host", craft_header(b"a\x01b", b"53", None, None)),
    ];
    for (kind, bytes) in &cases {
        let mut session = dtls::connect(server.udp, &config).await.expect("handshake");
        session.send(bytes).await.expect("send");
        let mut buf = vec![0u8; 2048];
        let end = tokio::time::timeout(Duration::from_secs(5), session.recv(&mut buf)).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "{kind}: expected close_notify, got {end:?}"
        );
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Udp), 0);
    assert_eq!(
        metric(
            &server.metrics,
            "streamproxy_header_errors",
            &["transport=\"udp\""]
        ),
        cases.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_after_the_handshake_are_closed() {
    let pki = Pki::new();
    let server = server(&pki, settings()).await;
    let config = pki.tls_client();
    let mut rng = Rng::new(0xBAD);
    for i in 0..64 {
        let mut junk = vec![0u8; 1 + rng.below(4096) as usize];
        rng.fill(&mut junk);
        if i % 2 == 0 {
            // Half of them look like the start of a header.
            let tag = Version::V0_1_0_0.tag();
            let n = tag.len().min(junk.len());
            junk[..n].copy_from_slice(&tag[..n]);
        }
        let got = send_after_handshake(server.tcp, &config, &junk, true).await;
        assert!(got.is_empty());
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 0);
    good_tcp_client_is_served(&pki, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_a_handshake_is_dropped_on_both_transports() {
    let pki = Pki::new();
    let server = server(&pki, settings()).await;
    let mut rng = Rng::new(0x6A6);
    for i in 0..64 {
        let mut tcp = TcpStream::connect(server.tcp).await.expect("connect");
        let mut junk = vec![0u8; 1 + rng.below(2048) as usize];
        rng.fill(&mut junk);
        if i % 4 == 0 {
            // A TLS handshake record header with garbage inside.
            junk.splice(0..0, [0x16, 0x03, 0x01, 0x02, 0x00]);
        }
        let _ = tcp.write_all(&junk).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "garbage connection {i} not closed");
    }
    // DTLS: garbage and truncated record headers from many source ports.
    for i in 0..256u32 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut junk = vec![0u8; 1 + rng.below(1400) as usize];
        rng.fill(&mut junk);
        if i % 3 == 0 {
            junk.splice(0..0, [22u8, 0xfe, 0xfd, 0, 0]);
        }
        socket.send_to(&junk, server.udp).await.expect("send");
    }
    fixture::wait_until("handshake failures counted", Duration::from_secs(5), || {
        metric(
            &server.metrics,
            "streamproxy_handshake_failures",
            &["transport=\"tcp\""],
        ) == 64
    })
    .await;
    good_tcp_client_is_served(&pki, &server).await;
    let echo = fixture::udp_echo().await;
    check::udp_roundtrip(
        server.udp,
        &pki.dtls_client(),
        echo,
        32,
        1200,
        1,
        Duration::from_secs(2),
    )
    .await
    .expect("a good UDP client is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_names_and_port_zero_are_refused_without_traffic() {
    let pki = Pki::new();
    let server = server(&pki, settings()).await;
    let config = pki.tls_client();
    // The static resolver knows no name: nothing is asked of DNS.
    let header = Header::new("nowhere.invalid", "80")
        .expect("valid")
        .to_bytes()
        .expect("enc");
    let got = send_after_handshake(server.tcp, &config, &header, false).await;
    assert!(got.is_empty());
    fixture::wait_until("dial failure counted", Duration::from_secs(5), || {
        metric(
            &server.metrics,
            "streamproxy_dial_failures",
            &["transport=\"tcp\""],
        ) == 1
    })
    .await;
    let mut session = proxy::udp::connect(
        server.udp,
        &pki.dtls_client(),
        &Header::new("nowhere.invalid", "53").expect("valid"),
    )
    .await
    .expect("connect");
    let mut buf = vec![0u8; 2048];
    let end = tokio::time::timeout(Duration::from_secs(5), session.recv(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    // Port 0 never gets past the header check, by number or by text.
    let zero = craft_header(b"127.0.0.1", b"0", None, None);
    assert!(
        send_after_handshake(server.tcp, &config, &zero, false)
            .await
            .is_empty()
    );
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 0);
    assert_eq!(server.metrics.total_tunnels(Transport::Udp), 0);
}

/// A handler over an in-memory pipe with paused time: the header timeout is exact.
async fn header_in_single_bytes(span: Duration) -> Result<Served, StreamError> {
    let ctx = ServerContext::new(allow_all(), settings());
    let handler = StreamHandler::new(ctx);
    let (mut client, server_side) = tokio::io::duplex(4096);
    let header = Header::health_check().to_bytes().expect("encodes");
    let len = header.len() as u32;
    let start = tokio::time::Instant::now();
    let writer = tokio::spawn(async move {
        for (i, byte) in (1..).zip(header.iter()) {
            // The last byte goes out at `span`, whatever the timer's granularity.
            tokio::time::sleep_until(start + span * i / len).await;
            if client.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    });
    let client = Client::from_addr("127.0.0.1:1".parse().expect("addr"));
    let served = handler.serve(server_side, client).await;
    let _ = writer.await;
    served
}

#[tokio::test(start_paused = true)]
async fn a_header_in_single_bytes_is_accepted_just_under_the_timeout() {
    let served = header_in_single_bytes(HEADER_TIMEOUT - Duration::from_millis(20)).await;
    assert!(matches!(served, Ok(Served::HealthCheck)), "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_header_in_single_bytes_is_closed_just_over_the_timeout() {
    let served = header_in_single_bytes(HEADER_TIMEOUT + Duration::from_millis(20)).await;
    assert!(
        matches!(
            served,
            Err(StreamError::Refused(
                streamproxy::proxy::Refusal::HeaderTimeout(_)
            ))
        ),
        "{served:?}"
    );
}

/// The same over real TLS with real time and generous margins: 1-byte records paced over
/// 60 % of the timeout are a working tunnel, over 160 % are closed at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_over_tls_is_accepted_under_and_closed_over_the_timeout() {
    let pki = Pki::new();
    let timeout = Duration::from_millis(1000);
    let server = server(&pki, settings().header_timeout(timeout)).await;
    let config = pki.tls_client();
    let echo = fixture::tcp_echo().await;
    let host = echo.ip().to_string();
    let header = Header::with_port(&host, echo.port())
        .expect("valid")
        .to_bytes()
        .expect("enc");
    for (span, accepted) in [(timeout * 6 / 10, true), (timeout * 16 / 10, false)] {
        let mut stream = tls::connect_to(server.tcp, &config)
            .await
            .expect("handshake");
        let started = Instant::now();
        let mut tick = tokio::time::interval(span / header.len() as u32);
        let mut write_failed = false;
        for byte in header.iter() {
            tick.tick().await;
            if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                write_failed = true;
                break;
            }
        }
        if accepted {
            assert!(!write_failed);
            check::tcp_exchange(stream, 10_000, 3)
                .await
                .expect("tunnel works");
        } else {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                .await
                .expect("closed");
            let at = started.elapsed();
            assert!(rest.is_empty());
            assert!(
                at >= timeout - Duration::from_millis(100) && at < timeout * 16 / 10,
                "closed after {at:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_closed_at_the_header_timeout_while_a_good_client_is_served() {
    let _serial = fixture::serial().await;
    process::raise_nofile(65_536);
    let pki = Pki::new();
    let timeout = Duration::from_secs(5);
    let server = server(&pki, settings().header_timeout(timeout)).await;
    let config = pki.tls_client();
    let echo = fixture::tcp_echo().await;
    let normal = {
        let started = Instant::now();
        check::tcp_roundtrip(server.tcp, &config, echo, 64 * 1024, 1)
            .await
            .expect("baseline");
        started.elapsed()
    };
    let clients = process::scaled(1000);
    let half = &craft_header(b"127.0.0.1", b"8080", None, None)[..137];
    let gate = Arc::new(Semaphore::new(64));
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut stalled = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (gate, config, waiting) = (Arc::clone(&gate), config.clone(), Arc::clone(&waiting));
        let half = half.to_vec();
        let tcp = server.tcp;
        stalled.push(tokio::spawn(async move {
            let mut stream = {
                let _permit = gate.acquire().await.expect("gate");
                tls::connect_to(tcp, &config).await.expect("handshake")
            };
            stream.write_all(&half).await.expect("half a header");
            stream.flush().await.expect("flush");
            let sent = Instant::now();
            waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            sent.elapsed()
        }));
    }
    // While they stall: a good client, in its normal time.
    fixture::wait_until("stalled clients waiting", Duration::from_secs(60), || {
        waiting.load(std::sync::atomic::Ordering::SeqCst) == clients
    })
    .await;
    let still_stalled = clients as u64
        - metric(
            &server.metrics,
            "streamproxy_header_errors",
            &["kind=\"timeout\""],
        );
    let started = Instant::now();
    check::tcp_roundtrip(server.tcp, &config, echo, 64 * 1024, 2)
        .await
        .expect("a good client is served");
    let loaded = started.elapsed();
    assert!(
        loaded < (normal * 10).max(Duration::from_millis(500)),
        "good client took {loaded:?} (normal {normal:?})"
    );
    let mut longest = Duration::ZERO;
    for s in stalled {
        let after = s.await.expect("task");
        assert!(
            after + Duration::from_millis(50) >= timeout
                && after < timeout + Duration::from_secs(2),
            "a stalled client was closed after {after:?}"
        );
        longest = longest.max(after);
    }
    eprintln!(
        "figures slowloris: {clients} stalled clients ({still_stalled} stalled while the good client ran) closed within {longest:?}; good client {loaded:?} (normal {normal:?}); peak rss {} KiB",
        process::peak_rss_kib()
    );
    fixture::wait_until("timeouts counted", Duration::from_secs(5), || {
        metric(
            &server.metrics,
            "streamproxy_header_errors",
            &["kind=\"timeout\""],
        ) == clients as u64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_handshake_flood_is_held_to_the_limit_and_a_good_client_is_served() {
    let _serial = fixture::serial().await;
    process::raise_nofile(65_536);
    let pki = Pki::new();
    let limit = 32;
    // Long enough that "served before a stalled handshake could time out" holds with room to
    // spare on a loaded machine; the evictions, not the timeout, must make room.
    let handshake_timeout = Duration::from_secs(8);
    let server = server(
        &pki,
        settings()
            .max_handshakes(limit)
            .handshake_timeout(handshake_timeout),
    )
    .await;
    let rss_before = process::rss_kib();
    let flood = process::scaled(1000);
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(TcpStream::connect(server.tcp).await.expect("connect"));
    }
    // Every connection beyond the limit evicts the oldest idle one.
    fixture::wait_until("evictions", Duration::from_secs(10), || {
        metric(
            &server.metrics,
            "streamproxy_limit_refusals",
            &["transport=\"tcp\""],
        ) >= (flood - limit) as u64
    })
    .await;
    let rss_flood = process::rss_kib();
    // While the flood holds every slot, a good client is served at once: its connection
    // evicts the oldest idle one.
    let echo = fixture::tcp_echo().await;
    let config = pki.tls_client();
    let started = Instant::now();
    check::tcp_roundtrip(server.tcp, &config, echo, 16 * 1024, 5)
        .await
        .expect("a good client is served during the flood");
    let served_after = started.elapsed();
    // The flood keeps coming: still served.
    let mut more = Vec::new();
    for _ in 0..limit {
        more.push(TcpStream::connect(server.tcp).await.expect("connect"));
    }
    check::tcp_roundtrip(server.tcp, &config, echo, 16 * 1024, 6)
        .await
        .expect("a good client is served while the flood goes on");
    // The evicted connections were closed by the server.
    let mut closed = 0;
    for conn in idle.iter_mut().take(flood - limit) {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(2), conn.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, flood - limit, "evicted connections still open");
    eprintln!(
        "figures tcp handshake flood: {flood} idle connections, limit {limit}; good client served in {served_after:?}; rss {rss_before} -> {rss_flood} KiB"
    );
    assert!(
        served_after < handshake_timeout / 2,
        "good client waited {served_after:?}"
    );
    assert!(
        rss_flood < rss_before + 32 * 1024,
        "memory grew {rss_before} -> {rss_flood} KiB"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_client_hello_flood_from_many_ports_leaves_a_good_client_served() {
    let _serial = fixture::serial().await;
    let pki = Pki::new();
    let limit = 32;
    // Long enough that "served before a stalled handshake could time out" holds with room to
    // spare on a loaded machine; the evictions, not the timeout, must make room.
    let handshake_timeout = Duration::from_secs(8);
    let server = server(
        &pki,
        settings()
            .max_handshakes(limit)
            .handshake_timeout(handshake_timeout),
    )
    .await;
    let config = pki.dtls_client();
    let echo = fixture::udp_echo().await;
    // The good client's time without a flood: handshake and 16 datagrams echoed.
    let normal = {
        let started = Instant::now();
        check::udp_roundtrip(
            server.udp,
            &config,
            echo,
            16,
            1200,
            2,
            Duration::from_secs(2),
        )
        .await
        .expect("baseline");
        started.elapsed()
    };
    let rss_before = process::rss_kib();
    // Real handshakes that stall half-way: the relay passes each client's first answer (the
    // HelloVerifyRequest) and drops everything after, so the server holds half-open sessions.
    let relay = streamproxy_e2e::lossy::start(
        server.udp,
        streamproxy_e2e::lossy::Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            seed: 9,
            backward_pass_first: Some(1),
            drop_first_record: false,
        },
    )
    .await;
    let relay_addr = relay.addr;
    let flood = process::scaled(300);
    let mut stalled = Vec::new();
    // Each stalled client gives up before its first retransmission (OpenSSL's first timer is
    // 1 s), so it sends its cookie ClientHello once: the server holds the half-open handshake
    // until its own timeout, and no later wave of retransmissions competes with the good
    // client below.
    for _ in 0..flood {
        let config = config.clone();
        stalled.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(900),
                dtls::connect(relay_addr, &config),
            )
            .await;
        }));
    }
    // Cookieless ClientHellos answered statelessly, from many ports.
    let hello = [22u8, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for _ in 0..process::scaled(2000) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let _ = socket.send_to(&hello, server.udp).await;
    }
    for s in stalled {
        let _ = s.await;
    }
    // The stalled handshakes fill the limit; each one beyond it evicts the oldest. A client
    // too slow to send its cookie ClientHello within its 900 ms on a loaded machine starts
    // none, so half of the flood beyond the limit is enough.
    fixture::wait_until("evictions", Duration::from_secs(10), || {
        metric(
            &server.metrics,
            "streamproxy_limit_refusals",
            &["transport=\"udp\""],
        ) >= ((flood - limit) / 2) as u64
    })
    .await;
    let refusals = || {
        metric(
            &server.metrics,
            "streamproxy_limit_refusals",
            &["transport=\"udp\""],
        )
    };
    let refused_before = refusals();
    let started = Instant::now();
    check::udp_roundtrip(
        server.udp,
        &config,
        echo,
        16,
        1200,
        3,
        Duration::from_secs(2),
    )
    .await
    .expect("a good client is served");
    let served_after = started.elapsed();
    assert!(
        refusals() > refused_before,
        "the good client arrived at a full table and evicted a stalled handshake"
    );
    let rss_flood = process::rss_kib();
    eprintln!(
        "figures dtls hello flood: {flood} stalled handshakes, limit {limit}; good client served after {served_after:?} (normal {normal:?}); rss {rss_before} -> {rss_flood} KiB"
    );
    // At the limit, the good client's ClientHello evicts the oldest stalled handshake: it is
    // served in about its normal time and does not wait for a stalled one to time out.
    assert!(
        served_after < (normal * 10).max(Duration::from_secs(1)),
        "good client took {served_after:?} (normal {normal:?})"
    );
    assert!(
        served_after < handshake_timeout / 4,
        "good client waited {served_after:?} (handshake timeout {handshake_timeout:?})"
    );
    // Both ends live in this process: bound the cost of a stalled handshake, client side
    // included.
    let per_attempt = rss_flood.saturating_sub(rss_before) / flood as u64;
    assert!(per_attempt < 256, "{per_attempt} KiB per stalled handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_destinations_are_refused_before_any_dial() {
    let pki = Pki::new();
    let witness = Witness::start().await;
    let echo = fixture::tcp_echo().await;
    let deny_tcp: proxy::policy::Rule = format!("127.0.0.0/8:{}", witness.tcp.port())
        .parse()
        .expect("rule");
    let deny_udp: proxy::policy::Rule = format!("127.0.0.0/8:{}", witness.udp.port())
        .parse()
        .expect("rule");
    let policy = Policy::allow_all([deny_tcp, deny_udp, "10.0.0.0/8".parse().expect("rule")]);
    let resolver = StaticResolver::new()
        .with("inside.test", ["127.0.0.1".parse().expect("ip")])
        .with(
            "mixed.test",
            [
                "10.1.2.3".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
            ],
        )
        .with("echo.test", [echo.ip()]);
    let server = fixture::start(pki.builder(policy, settings()).resolver(resolver)).await;
    let config = pki.tls_client();
    let tcp_port = witness.tcp.port().to_string();
    for host in [
        "127.0.0.1",
        "inside.test",
        "mixed.test",
        "INSIDE.test.",
        "10.9.9.9",
        "127.0.0.01",
    ] {
        let header = match Header::new(host, &tcp_port) {
            Ok(h) => h.to_bytes().expect("enc"),
            Err(_) => continue,
        };
        let got = send_after_handshake(server.tcp, &config, &header, false).await;
        assert!(got.is_empty(), "{host}");
    }
    let udp_port = witness.udp.port().to_string();
    for host in ["127.0.0.1", "inside.test", "mixed.test"] {
        let mut session = proxy::udp::connect(
            server.udp,
            &pki.dtls_client(),
            &Header::new(host, &udp_port).expect("valid"),
        )
        .await
        .expect("connect");
        let _ = session.send(b"must not arrive").await;
        let mut buf = vec![0u8; 2048];
        let end = tokio::time::timeout(Duration::from_secs(5), session.recv(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(None))), "{host}: {end:?}");
    }
    assert_eq!(
        witness.connections(),
        0,
        "a denied TCP destination was dialed"
    );
    assert_eq!(
        witness.datagrams(),
        0,
        "a denied UDP destination got a datagram"
    );
    assert!(metric(&server.metrics, "streamproxy_policy_refusals", &[]) >= 7);
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 0);
    // The same server still tunnels to what is allowed, by name.
    let s = proxy::tcp::connect(
        server.tcp,
        &config,
        &Header::with_port("echo.test", echo.port()).expect("valid"),
    )
    .await
    .expect("connect");
    check::tcp_exchange(s, 4096, 4)
        .await
        .expect("allowed destination works");
}
