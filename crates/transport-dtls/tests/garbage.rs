//! Hostile and odd traffic: garbage, truncated records, ClientHello floods, restarted clients.

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamproxy_dtls::{DtlsConnector, DtlsListener, RecvError};
use support::{Impairment, Relay, echo_server, pki, random_bytes, with_cookie};
use test_support::{tagged_payload, wait_until};
use tokio::net::UdpSocket;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn echo_once(session: &mut streamproxy_dtls::DtlsSession, id: u32) {
    let sent = tagged_payload(id, 700);
    session.send(&sent).await.unwrap();
    let mut buf = vec![0u8; 8155];
    let n = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], &sent[..]);
}

#[tokio::test]
async fn survives_garbage_and_hello_floods_while_a_session_keeps_working() {
    let pki = pki();
    let config = pki.server_config().max_half_open(8);
    let (addr, handle) = echo_server(config).await;
    // The legitimate client goes through a transparent relay so that the test can also send
    // garbage *from the session's own address* (the relay's upstream socket).
    let relay = Relay::start(addr, 7, Impairment::NONE, Impairment::NONE).await;
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();
    let mut session = connector.connect(relay.addr).await.unwrap();
    echo_once(&mut session, 0).await;
    let hello = relay.from_client.lock().await[0].clone();
    let mut rng = StdRng::seed_from_u64(42);

    // 1. Random datagrams and truncated records from many addresses, and from the session's.
    let attackers: Vec<UdpSocket> = {
        let mut v = Vec::new();
        for _ in 0..64 {
            v.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        v
    };
    for (i, s) in attackers.iter().enumerate() {
        let len = rng.random_range(1..1500);
        s.send_to(&random_bytes(&mut rng, len), addr).await.unwrap();
        let cut = rng.random_range(1..hello.len());
        s.send_to(&hello[..cut], addr).await.unwrap();
        // A record header that claims more than the datagram holds.
        s.send_to(
            &[23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, i as u8, 0x40, 0],
            addr,
        )
        .await
        .unwrap();
        relay.inject(&random_bytes(&mut rng, len)).await;
        relay
            .inject(&[23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 99, 0, 40])
            .await;
    }
    echo_once(&mut session, 1).await;

    // 2. A flood of cookieless ClientHellos from many source ports: each is answered
    //    statelessly (with a HelloVerifyRequest no larger than the request), none creates state.
    let mut buf = [0u8; 2048];
    for _round in 0..4 {
        for s in &attackers {
            s.send_to(&hello, addr).await.unwrap();
        }
        for s in &attackers {
            let (n, _) = tokio::time::timeout(TIMEOUT, s.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n <= hello.len(), "amplification: {n} > {}", hello.len());
        }
    }
    let stats = handle.stats();
    assert!(stats.hello_verify_sent >= 64 * 4, "{stats:?}");
    assert_eq!(stats.peers, 1, "{stats:?}");
    assert_eq!(stats.half_open, 0, "{stats:?}");
    echo_once(&mut session, 2).await;

    // 3. Attackers that do complete the cookie exchange (they see their HelloVerifyRequest)
    //    and then never finish: bounded by the half-open limit, each newcomer evicting the
    //    oldest.
    for s in &attackers {
        // Drain the answers to the flood, then ask once more and read the cookie.
        while s.try_recv(&mut buf).is_ok() {}
        s.send_to(&hello, addr).await.unwrap();
        let (n, _) = tokio::time::timeout(TIMEOUT, s.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let cookie = buf[n - 32..n].to_vec();
        s.send_to(&with_cookie(&hello, &cookie, 5), addr)
            .await
            .unwrap();
    }
    wait_until(
        "handle.stats().handshakes_evicted >= 64 - 8",
        TIMEOUT,
        || handle.stats().handshakes_evicted >= 64 - 8,
    )
    .await;
    wait_until("handle.stats().half_open <= 8", TIMEOUT, || {
        handle.stats().half_open <= 8
    })
    .await;
    let stats = handle.stats();
    assert_eq!(stats.client_hellos_dropped, 0, "{stats:?}");
    assert!(stats.peers <= 9, "{stats:?}");
    assert_eq!(
        stats.half_open, 8,
        "the last eight hold every slot: {stats:?}"
    );

    // A good client still gets in at once, long before the stalled ones time out (10 s).
    let started = std::time::Instant::now();
    let mut fresh = tokio::time::timeout(Duration::from_secs(2), connector.connect(addr))
        .await
        .expect("a good client is not kept out by stalled handshakes")
        .unwrap();
    echo_once(&mut fresh, 9).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(handle.stats().handshakes_evicted > stats.handshakes_evicted);
    // A forged cookie is refused (from an evicted address: no handshake in progress).
    attackers[0]
        .send_to(&with_cookie(&hello, &[0xab; 32], 6), addr)
        .await
        .unwrap();
    wait_until("handle.stats().bad_cookies >= 1", TIMEOUT, || {
        handle.stats().bad_cookies >= 1
    })
    .await;
    echo_once(&mut session, 3).await;
    assert_eq!(handle.stats().handshakes_ok, 2);
}

#[tokio::test]
async fn restarted_client_reusing_its_port_replaces_the_session() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap();
    let first = tokio::spawn({
        let connector = connector.clone();
        async move { connector.connect_with(socket, addr).await.unwrap() }
    });
    let mut old = listener.accept().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(old.peer_addr(), port);
    // The client "crashes": no close_notify, its socket is gone.
    drop(first);

    let socket = UdpSocket::bind(port).await.unwrap();
    let started = tokio::time::Instant::now();
    let second = tokio::spawn({
        let connector = connector.clone();
        async move { connector.connect_with(socket, addr).await.unwrap() }
    });
    let new = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut second = second.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reconnect waited for a timeout"
    );
    assert_eq!(new.peer_addr(), port);
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(TIMEOUT, old.recv(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Err(RecvError::Replaced)), "{r:?}");
    assert_eq!(listener.stats().sessions_replaced, 1);
    tokio::spawn(support::echo(new));
    echo_once(&mut second, 9).await;
}

#[tokio::test]
async fn empty_datagrams_are_dropped_not_taken_for_the_end_of_the_session() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let relay = Relay::start(addr, 1, Impairment::NONE, Impairment::NONE).await;
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();
    let mut session = connector.connect(relay.addr).await.unwrap();
    echo_once(&mut session, 1).await;
    // A zero-length read is how OpenSSL's BIO reports the end of the input; an empty datagram
    // is not that, on either side.
    relay.inject(&[]).await;
    relay.inject_to_client(&[]).await;
    echo_once(&mut session, 2).await;
    relay.inject(&[]).await;
    relay.inject_to_client(&[]).await;
    echo_once(&mut session, 3).await;
    assert_eq!(handle.stats().handshakes_ok, 1);
}
