//! UDP tunnels end to end over loopback: real DTLS, a real server, echo destinations.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use proto::{Header, Version};
use streamproxy_proxy::metrics::Transport;
use streamproxy_proxy::proxy_protocol::ProxyProtocol;
use streamproxy_proxy::server::Server;
use streamproxy_proxy::settings::Settings;
use streamproxy_proxy::udp;
use support::{Pki, allow_all, start, start_on};
use test_support::{payload, udp_echo, wait_until};

/// Receives one datagram, failing the test after five seconds.
async fn recv(session: &mut dtls::DtlsSession) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; session.max_payload()];
    match tokio::time::timeout(Duration::from_secs(5), session.recv(&mut buf)).await {
        Ok(Ok(Some(n))) => Some(buf[..n].to_vec()),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => panic!("recv failed: {e}"),
        Err(_) => panic!("no datagram within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_datagrams_with_both_header_versions() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let udp_addr = server.udp.expect("udp");
    let echo = udp_echo().await;
    let config = pki.dtls_client();
    for version in Version::ALL {
        let header = Header::with_port("127.0.0.1", echo.port())
            .expect("header")
            .with_version(version);
        let mut session = udp::connect(udp_addr, &config, &header)
            .await
            .expect("session");
        for (i, len) in [1usize, 100, 1200, 8000, session.max_payload()]
            .into_iter()
            .enumerate()
        {
            let data = payload(len, i as u64);
            session.send(&data).await.expect("send");
            assert_eq!(
                recv(&mut session).await.as_deref(),
                Some(&data[..]),
                "{version} {len}"
            );
        }
        session.shutdown().await.expect("close_notify");
    }
    assert_eq!(server.metrics.total_tunnels(Transport::Udp), 2);
    // Two handshakes, two headers and two dials were timed; the bytes were counted as they
    // moved.
    let text = server.metrics.encode();
    for series in [
        "streamproxy_handshake_seconds_count{transport=\"udp\"} 2",
        "streamproxy_header_seconds_count{transport=\"udp\"} 2",
        "streamproxy_dial_seconds_count{transport=\"udp\"} 2",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    assert!(
        !text.contains("streamproxy_bytes_total{transport=\"udp\",direction=\"up\"} 0"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_frees_the_session_at_once() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("session");
    session.send(b"x").await.expect("send");
    recv(&mut session).await.expect("echo");
    assert_eq!(server.metrics.active_tunnels(Transport::Udp), 1);
    session.shutdown().await.expect("close_notify");
    wait_until("no UDP tunnel active", Duration::from_secs(5), || {
        server.metrics.active_tunnels(Transport::Udp) == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_freed_with_close_notify() {
    let pki = Pki::new();
    let settings = Settings::default().udp_idle_timeout(Duration::from_millis(400));
    let server = start(&pki, allow_all(), settings).await;
    let echo = udp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("session");
    session.send(b"x").await.expect("send");
    recv(&mut session).await.expect("echo");
    // Silence: the server closes the session and tells the client.
    assert_eq!(recv(&mut session).await, None, "expected close_notify");
    assert_eq!(server.metrics.active_tunnels(Transport::Udp), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_is_not_listening_does_not_end_the_session() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    // A port nobody listens on yet: datagrams to it draw ICMP port unreachable.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let header = Header::with_port("127.0.0.1", port).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("session");
    for _ in 0..5 {
        session.send(b"anyone?").await.expect("send");
    }
    // Now the destination comes up on that port; the same session reaches it.
    let dest = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .expect("bind port");
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = dest.recv_from(&mut buf).await.expect("recv");
            if &buf[..n] == b"hello" {
                dest.send_to(b"still here", from).await.expect("send");
                return;
            }
        }
    });
    let mut answer = None;
    for _ in 0..50 {
        session.send(b"hello").await.expect("send");
        let mut buf = vec![0u8; session.max_payload()];
        if let Ok(Ok(Some(n))) =
            tokio::time::timeout(Duration::from_millis(100), session.recv(&mut buf)).await
        {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"still here"[..]));
    echo.await.expect("echo task");
    session.shutdown().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_over_dtls() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    udp::health_check(
        server.udp.expect("udp"),
        &pki.dtls_client(),
        Duration::from_secs(5),
    )
    .await
    .expect("healthy");
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_health_checks_total{transport=\"udp\"} 1")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_header_record_ends_the_session() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let mut session = dtls::connect(server.udp.expect("udp"), &pki.dtls_client())
        .await
        .expect("handshake");
    let mut bytes = Header::new("127.0.0.1", "53")
        .expect("h")
        .to_bytes()
        .expect("e")
        .to_vec();
    bytes.push(0); // one byte too many
    session.send(&bytes).await.expect("send");
    assert_eq!(recv(&mut session).await, None);
    assert!(server.metrics.encode().contains("kind=\"length\"} 1"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_on_the_same_port_gets_a_fresh_session() {
    let pki = Pki::new();
    // The last client vanishes without close_notify: a short drain ends the test quickly.
    let settings = Settings::default().drain_period(Duration::from_millis(100));
    let server = start(&pki, allow_all(), settings).await;
    let udp_addr = server.udp.expect("udp");
    let echo_a = udp_echo().await;
    let echo_b = udp_echo().await;
    let connector = dtls::DtlsConnector::new(&pki.dtls_client()).expect("connector");
    let local = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local_addr = local.local_addr().expect("addr");
    drop(local);
    for echo in [echo_a, echo_b] {
        let socket = tokio::net::UdpSocket::bind(local_addr)
            .await
            .expect("rebind");
        let mut session = connector
            .connect_with(socket, udp_addr)
            .await
            .expect("session");
        let header = Header::with_port("127.0.0.1", echo.port())
            .expect("h")
            .to_bytes()
            .expect("e");
        session.send(&header).await.expect("header");
        session.send(b"which?").await.expect("send");
        assert_eq!(recv(&mut session).await.as_deref(), Some(&b"which?"[..]));
        // Vanish without close_notify: the next session reuses the address.
        drop(session);
    }
    wait_until("one UDP tunnel active", Duration::from_secs(5), || {
        server.metrics.active_tunnels(Transport::Udp) == 1
    })
    .await;
    assert_eq!(server.metrics.total_tunnels(Transport::Udp), 2);
    let metrics = server.metrics.clone();
    server.stop().await;
    assert_eq!(
        metrics.active_tunnels(Transport::Udp),
        0,
        "shutdown closed the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals_end_the_session_before_any_dial() {
    let pki = Pki::new();
    let policy = streamproxy_proxy::policy::Policy::new(
        ["10.0.0.0/8".parse().expect("rule")],
        ["127.0.0.0/8".parse().expect("rule")],
    )
    .expect("policy");
    let server = start(&pki, policy, Settings::default()).await;
    let echo = udp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("handshake");
    assert_eq!(recv(&mut session).await, None, "refused session is closed");
    assert!(
        server
            .metrics
            .encode()
            .contains("streamproxy_policy_refusals_total{transport=\"udp\"} 1")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_datagrams_too_large_for_a_record_are_dropped_not_cut() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    // A destination that answers every datagram with a 9000-byte one, then a small one.
    let dest = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = dest.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = dest.recv_from(&mut buf).await {
            let _ = dest.send_to(&[1u8; 9000], from).await;
            let _ = dest.send_to(b"small", from).await;
        }
    });
    let header = Header::with_port("127.0.0.1", port).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("session");
    session.send(b"go").await.expect("send");
    assert_eq!(recv(&mut session).await.as_deref(), Some(&b"small"[..]));
    assert!(
        server.metrics.encode().contains(
            "streamproxy_dropped_datagrams_total{transport=\"udp\",kind=\"too_large\"} 1"
        )
    );
    session.shutdown().await.expect("close");
    server.stop().await;
}

/// A client that vanished (sends nothing more, never closes) while its destination keeps
/// sending: the two-way idle timer never fires, the client-silence timeout ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_while_the_destination_keeps_sending() {
    let pki = Pki::new();
    let settings = Settings::default()
        .udp_idle_timeout(Duration::from_secs(60))
        .udp_client_silence_timeout(Duration::from_millis(500));
    let server = start(&pki, allow_all(), settings).await;
    // A destination that, once it has heard from a source, sends to it every 20 ms.
    let feed = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let feed_addr = feed.local_addr().expect("addr");
    let streaming = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (_, to) = feed.recv_from(&mut buf).await.expect("first datagram");
        loop {
            if feed.send_to(b"frame", to).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let header = Header::with_port("127.0.0.1", feed_addr.port()).expect("header");
    let mut session = udp::connect(server.udp.expect("udp"), &pki.dtls_client(), &header)
        .await
        .expect("session");
    session.send(b"subscribe").await.expect("send");
    let started = std::time::Instant::now();
    let mut frames = 0;
    let mut buf = vec![0u8; session.max_payload()];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), session.recv(&mut buf)).await {
            // Frames keep coming while the session lives; give up after 5 s.
            Ok(Ok(Some(_))) if started.elapsed() < Duration::from_secs(5) => frames += 1,
            other => break other,
        }
    };
    assert!(
        matches!(end, Ok(Ok(None))),
        "expected close_notify, got {end:?}"
    );
    assert!(
        frames > 5,
        "the destination's frames did not flow ({frames})"
    );
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(450) && lived < Duration::from_secs(5),
        "closed after {lived:?}"
    );
    streaming.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_server_tells_the_destination_the_address_the_client_reached() {
    let pki = Pki::new();
    let builder = Server::builder(allow_all(), pki.cert_paths()).proxy_protocol(ProxyProtocol::V2);
    let server = start_on(builder, "0.0.0.0:0".parse().expect("addr")).await;
    let port = server.udp.expect("udp").port();
    // Not the address the kernel would answer 127.0.0.1 from: the server must answer from it.
    let reached = SocketAddr::from(([127, 0, 0, 2], port));
    let destination = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let to = destination.local_addr().expect("addr");
    let header = Header::with_port("127.0.0.1", to.port()).expect("header");
    let mut session = udp::connect(reached, &pki.dtls_client(), &header)
        .await
        .expect("a session through 127.0.0.2");
    session.send(b"who am I").await.expect("send");
    let mut buf = [0u8; 512];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), destination.recv_from(&mut buf))
        .await
        .expect("a datagram within 5 s")
        .expect("recv");
    let datagram = &buf[..n];
    // PROXY v2, PROXY command, UDP over IPv4: source, destination, their ports, then TLVs.
    assert_eq!(&datagram[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(datagram[12..14], [0x21, 0x12]);
    let at = |range: std::ops::Range<usize>| &datagram[range];
    let ipv4 = |range| std::net::Ipv4Addr::from(<[u8; 4]>::try_from(at(range)).expect("4 bytes"));
    let port_at = |range| u16::from_be_bytes(<[u8; 2]>::try_from(at(range)).expect("2 bytes"));
    let source = SocketAddr::from((ipv4(16..20), port_at(24..26)));
    let told = SocketAddr::from((ipv4(20..24), port_at(26..28)));
    assert_eq!(source, session.local_addr());
    assert_eq!(
        told, reached,
        "the header names the address the client reached"
    );
    let len = usize::from(u16::from_be_bytes([datagram[14], datagram[15]]));
    assert_eq!(&datagram[16 + len..], b"who am I");
    // And the answer comes back through 127.0.0.2.
    destination
        .send_to(b"you are you", from)
        .await
        .expect("send");
    assert_eq!(
        recv(&mut session).await.as_deref(),
        Some(&b"you are you"[..])
    );
    session.shutdown().await.expect("close");
    server.stop().await;
}
