//! TCP tunnels end to end over loopback: real TLS, a real server, echo destinations.

mod support;

use std::time::Duration;

use proto::{Flags, Header, Version};
use streamproxy_proxy::metrics::Transport;
use streamproxy_proxy::policy::Policy;
use streamproxy_proxy::settings::Settings;
use streamproxy_proxy::tcp;
use support::{Pki, allow_all, start, tcp_sink};
use test_support::{payload, tcp_echo, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `data` through a tunnel to an echo destination and returns what came back.
async fn echo_through(
    server: std::net::SocketAddr,
    config: &tls::ClientConfig,
    header: Header<'_>,
    data: Vec<u8>,
) -> Vec<u8> {
    let stream = tcp::connect(server, config, &header).await.expect("tunnel");
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read");
    writer.await.expect("writer");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_one_mebibyte_byte_exact_with_both_header_versions() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let config = pki.tls_client();
    for (i, version) in Version::ALL.into_iter().enumerate() {
        let header = Header::with_port("127.0.0.1", echo.port())
            .expect("header")
            .with_version(version);
        let data = payload(1 << 20, i as u64);
        let back = echo_through(server.tcp, &config, header, data.clone()).await;
        assert!(back == data, "version {version}: echo differs");
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_sixty_four_mebibytes_byte_exact() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let data = payload(64 << 20, 7);
    let back = echo_through(server.tcp, &pki.tls_client(), header, data.clone()).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_delivers_the_whole_response() {
    // The destination reads the whole request, then answers, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dest = listener.local_addr().expect("addr");
    let response = payload(300_000, 3);
    tokio::spawn({
        let response = response.clone();
        async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            conn.read_to_end(&mut request).await.expect("read request");
            assert_eq!(request, b"the whole request");
            conn.write_all(&response).await.expect("respond");
            conn.shutdown().await.expect("close");
        }
    });
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let header = Header::with_port("127.0.0.1", dest.port()).expect("header");
    let back = echo_through(
        server.tcp,
        &pki.tls_client(),
        header,
        b"the whole request".to_vec(),
    )
    .await;
    assert!(back == response);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_tunnels() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let config = std::sync::Arc::new(pki.tls_client());
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let config = config.clone();
        let addr = server.tcp;
        tasks.push(tokio::spawn(async move {
            let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
            let data = payload(10_000 + i as usize, i);
            let back = echo_through(addr, &config, header, data.clone()).await;
            assert!(back == data, "tunnel {i}");
        }));
    }
    for t in tasks {
        t.await.expect("tunnel task");
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_header_in_the_same_write_reach_the_destination() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let (dest, mut received) = tcp_sink().await;
    let mut stream = tls::connect_to(server.tcp, &pki.tls_client())
        .await
        .expect("tls");
    let mut bytes = Header::with_port("127.0.0.1", dest.port())
        .expect("header")
        .to_bytes()
        .expect("encode")
        .to_vec();
    bytes.extend_from_slice(b"first bytes, same write");
    stream.write_all(&bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let got = received.recv().await.expect("destination saw a connection");
    assert_eq!(got, b"first bytes, same write");
    server.stop().await;
}

/// Writes raw bytes after the handshake and returns whether the server closed the connection
/// (EOF or error) without sending anything.
async fn server_closes_after(server: std::net::SocketAddr, pki: &Pki, bytes: &[u8]) -> bool {
    let mut stream = tls::connect_to(server, &pki.tls_client())
        .await
        .expect("tls");
    stream.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_header_kind_is_closed_and_counted() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let good = Header::new("127.0.0.1", "80")
        .expect("header")
        .to_bytes()
        .expect("encode");
    let reseal = |mut b: Vec<u8>| {
        let n = b.len();
        let crc = crc_of(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_be_bytes());
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut v = good.to_vec();
    v[..8].copy_from_slice(b"GET / HT");
    cases.push(("unknown_version", v));
    let mut v = good.to_vec();
    v[20] ^= 1;
    cases.push(("checksum", v));
    let mut v = good.to_vec();
    v[proto::field::PORT_LEN] = 9;
    cases.push(("port_too_long", reseal(v)));
    let mut v = good.to_vec();
    v[proto::field::HOST.start] = b'\n';
    cases.push(("invalid_host", reseal(v)));
    let mut v = good.to_vec();
    v[proto::field::PORT.start] = b'x';
    cases.push(("invalid_port", reseal(v)));
    for (kind, bytes) in &cases {
        assert!(server_closes_after(server.tcp, &pki, bytes).await, "{kind}");
    }
    let text = server.metrics.encode();
    for (kind, _) in &cases {
        let line =
            format!("streamproxy_header_errors_total{{transport=\"tcp\",kind=\"{kind}\"}} 1");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    server.stop().await;
}

fn crc_of(bytes: &[u8]) -> u32 {
    // Test-side CRC-32/IEEE, bitwise, independent of the codec's.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_at_the_header_timeout_without_delaying_good_ones() {
    let pki = Pki::new();
    let settings = Settings::default().header_timeout(Duration::from_millis(800));
    let server = start(&pki, allow_all(), settings).await;
    let echo = tcp_echo().await;
    let config = pki.tls_client();
    // Twenty clients send half a header and stall.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = tls::connect_to(server.tcp, &config).await.expect("tls");
        let bytes = Header::new("127.0.0.1", "1")
            .expect("h")
            .to_bytes()
            .expect("e");
        s.write_all(&bytes[..100]).await.expect("write");
        s.flush().await.expect("flush");
        stalled.push(s);
    }
    // A good client is served at once.
    let started = std::time::Instant::now();
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let back = echo_through(server.tcp, &config, header, b"hello".to_vec()).await;
    assert_eq!(back, b"hello");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "good client delayed"
    );
    // The stalled ones are closed at the header timeout.
    for mut s in stalled {
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "stalled client not closed");
    }
    assert!(server.metrics.encode().contains("kind=\"timeout\"} 20"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_closes_cleanly_without_dialing() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    tcp::health_check(server.tcp, &pki.tls_client(), Duration::from_secs(5))
        .await
        .expect("healthy");
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_health_checks_total{transport=\"tcp\"} 1")
    );
    assert_eq!(server.metrics.total_tunnels(Transport::Tcp), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagless_0_1_0_header_is_a_tunnel() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port())
        .expect("header")
        .with_version(Version::V0_1_0)
        .with_flags(Flags::NONE);
    let back = echo_through(server.tcp, &pki.tls_client(), header, b"x".to_vec()).await;
    assert_eq!(back, b"x");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals_never_reach_the_destination() {
    let (dest, mut received) = tcp_sink().await;
    let pki = Pki::new();
    let policy = Policy::new(
        [
            "10.0.0.0/8".parse().expect("rule"),
            "allowed.test".parse().expect("rule"),
        ],
        ["127.0.0.0/8".parse().expect("rule")],
    )
    .expect("policy");
    let builder = streamproxy_proxy::server::Server::builder(policy, pki.cert_paths()).resolver(
        streamproxy_proxy::dial::StaticResolver::new()
            .with("allowed.test", ["127.0.0.1".parse().expect("ip")])
            .with("other.test", ["192.0.2.1".parse().expect("ip")]),
    );
    let server = support::start_with(builder).await;
    // Denied by address; allowed by name but resolving into a denied network; allowed by
    // nothing (never dialed, so its documentation address is never contacted).
    for host in ["127.0.0.1", "allowed.test", "other.test"] {
        let header = Header::with_port(host, dest.port()).expect("header");
        let bytes = header.to_bytes().expect("encode");
        assert!(
            server_closes_after(server.tcp, &pki, &bytes).await,
            "{host}"
        );
    }
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_policy_refusals_total{transport=\"tcp\"} 3")
    );
    // Nothing connected to the destination.
    assert!(received.try_recv().is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_failures_close_the_tunnel_and_are_counted() {
    let pki = Pki::new();
    let builder = streamproxy_proxy::server::Server::builder(allow_all(), pki.cert_paths())
        .resolver(streamproxy_proxy::dial::StaticResolver::new());
    let server = support::start_with(builder).await;
    // A closed port: bind one, then free it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for header in [
        Header::with_port("127.0.0.1", closed).expect("header"),
        Header::with_port("unresolvable.test", 80).expect("header"),
    ] {
        let bytes = header.to_bytes().expect("encode");
        assert!(server_closes_after(server.tcp, &pki, &bytes).await);
    }
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_dial_failures_total{transport=\"tcp\"} 2")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_beyond_the_limit_are_refused() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default().max_tcp_tunnels(2)).await;
    let echo = tcp_echo().await;
    let config = pki.tls_client();
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tcp::connect(server.tcp, &config, &header)
            .await
            .expect("tunnel");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("echo");
        open.push(s);
    }
    let mut third = tcp::connect(server.tcp, &config, &header)
        .await
        .expect("handshake");
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "third tunnel was served");
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_limit_refusals_total{transport=\"tcp\"} 1")
    );
    drop(open);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_live_tunnel_finish_within_the_drain_period() {
    let pki = Pki::new();
    let server = start(
        &pki,
        allow_all(),
        Settings::default().drain_period(Duration::from_secs(10)),
    )
    .await;
    let echo = tcp_echo().await;
    let config = pki.tls_client();
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut s = tcp::connect(server.tcp, &config, &header)
        .await
        .expect("tunnel");
    s.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.expect("echo");
    let addr = server.tcp;
    let stopping = server.begin_stop();
    // New connections are refused once the listener is closed...
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("listener closed");
    // ...while the live tunnel keeps working.
    s.write_all(b"after!").await.expect("write");
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"after!");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("eof");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("server stops once the tunnel ends")
        .expect("server task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_fails_the_handshake_and_is_counted() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let stranger = Pki::new();
    // The stranger trusts our server's CA but presents its own certificate.
    let ca = tls::CaCerts::from_pem_file(pki.ca.ca_path()).expect("ca");
    let id = tls::Identity::from_pem_files(&stranger.client.cert, &stranger.client.key)
        .expect("identity");
    let config = tls::ClientConfig::builder(&ca, &id)
        .build()
        .expect("config");
    assert!(
        tcp::health_check(server.tcp, &config, Duration::from_secs(5))
            .await
            .is_err()
    );
    wait_until(
        "the certificate failure counted",
        Duration::from_secs(5),
        || {
            server.metrics.encode().contains(
                "streamproxy_handshake_failures_total{transport=\"tcp\",reason=\"certificate\"} 1",
            )
        },
    )
    .await;
    server.stop().await;
}
