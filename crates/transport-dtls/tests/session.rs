//! Handshake, datagram echo, concurrency and close on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use streamproxy_dtls::{DtlsConnector, DtlsListener, MaxPayload, RecvError, SendError, connect};
use support::{echo_server, pki};
use test_support::{tagged_payload, wait_until};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn echoes_datagrams_of_every_size_both_ways() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let mut session = connect(addr, &pki.client_config()).await.unwrap();
    assert_eq!(session.cipher(), "ECDHE-ECDSA-AES128-GCM-SHA256");
    assert_eq!(session.max_payload(), 8155);
    // DTLS_get_data_mtu at MTU 1200 with AES-128-GCM: 1200 - 28 (IPv4+UDP) - 37 ... as OpenSSL
    // computes it; what matters is that it is positive and below the MTU.
    assert!(
        (1000..1200).contains(&session.data_mtu()),
        "{}",
        session.data_mtu()
    );
    let mut buf = vec![0u8; 16384];
    for (id, len) in [1usize, 1200, 8000, MaxPayload::DEFAULT.get()]
        .into_iter()
        .enumerate()
    {
        let sent = tagged_payload(id as u32, len);
        session.send(&sent).await.unwrap();
        let n = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &sent[..], "datagram of {len} bytes");
    }
    assert_eq!(handle.stats().handshakes_ok, 1);
}

#[tokio::test]
async fn server_session_reports_peer_and_subject() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn({
        let config = pki.client_config();
        async move { connect(addr, &config).await.unwrap() }
    });
    let mut server = listener.accept().await.unwrap();
    let mut client = client.await.unwrap();
    assert_eq!(server.peer_addr().port(), client.local_addr().port());
    let subject = server.peer_subject().unwrap();
    assert!(subject.contains("CN=agent-client"), "{subject}");
    assert!(client.peer_subject().unwrap().contains("CN=godoxy.agent"));
    // Server-initiated datagrams, max size both ways.
    let max = server.max_payload();
    let big = tagged_payload(9, max);
    server.send(&big).await.unwrap();
    let mut buf = vec![0u8; max];
    let n = client.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..n], &big[..]);
    client.send(&big).await.unwrap();
    let n = server.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..n], &big[..]);
}

#[tokio::test]
async fn our_ends_agree_on_x25519_and_a_resumed_session_has_no_key_exchange() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();
    let full = tokio::spawn({
        let connector = connector.clone();
        async move { connector.connect(addr).await.unwrap() }
    });
    let server = listener.accept().await.unwrap();
    let full = full.await.unwrap();
    assert!(!full.resumed());
    assert_eq!(full.key_exchange_group(), Some("X25519"));
    // OpenSSL does not keep the client's ephemeral key on the server.
    assert_eq!(server.key_exchange_group(), None);
    let resumed = tokio::spawn(async move { connector.connect(addr).await.unwrap() });
    let _server = listener.accept().await.unwrap();
    let resumed = resumed.await.unwrap();
    assert!(resumed.resumed());
    assert_eq!(resumed.key_exchange_group(), None);
}

#[tokio::test]
async fn refuses_oversize_and_empty_payloads_without_sending() {
    let pki = pki();
    let (addr, _h) = echo_server(pki.server_config()).await;
    let config = pki
        .client_config()
        .max_payload(MaxPayload::new(1000).unwrap());
    let mut session = connect(addr, &config).await.unwrap();
    let err = session.send(&[0u8; 1001]).await.unwrap_err();
    assert!(
        matches!(
            err,
            SendError::TooLarge {
                len: 1001,
                max: 1000
            }
        ),
        "{err:?}"
    );
    assert!(matches!(session.send(&[]).await, Err(SendError::Empty)));
    // The default maximum: one byte over pion's limit is refused.
    let session2 = connect(addr, &pki.client_config()).await.unwrap();
    assert!(matches!(
        session2.send(&vec![0u8; 8156]).await,
        Err(SendError::TooLarge {
            len: 8156,
            max: 8155
        })
    ));
    // Nothing was sent: the next datagram echoed is the next one sent.
    session.send(b"after").await.unwrap();
    let mut buf = [0u8; 1000];
    let n = session.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"after");
}

#[tokio::test]
async fn reports_truncation_instead_of_splitting_a_record() {
    let pki = pki();
    let (addr, _h) = echo_server(pki.server_config()).await;
    let mut session = connect(addr, &pki.client_config()).await.unwrap();
    session.send(&tagged_payload(1, 3000)).await.unwrap();
    session.send(b"next").await.unwrap();
    let mut small = [0u8; 100];
    let err = session.recv(&mut small).await.unwrap_err();
    assert!(
        matches!(
            err,
            RecvError::Truncated {
                len: 3000,
                capacity: 100
            }
        ),
        "{err:?}"
    );
    let n = session.recv(&mut small).await.unwrap().unwrap();
    assert_eq!(&small[..n], b"next");
}

#[tokio::test]
async fn many_sessions_on_one_listener_at_once() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let connector = Arc::new(DtlsConnector::new(&pki.client_config()).unwrap());
    let mut tasks = Vec::new();
    for id in 0..24u32 {
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connector.connect(addr).await.unwrap();
            let mut buf = vec![0u8; 8155];
            let mut resent = 0;
            for (k, len) in [1usize, 1200, 8000, 8155].into_iter().enumerate() {
                let sent = tagged_payload(id * 16 + k as u32, len);
                // 24 sessions sending 8 KB datagrams at once can overflow a default-sized
                // socket buffer (212 KB): like any UDP application, resend after a while.
                loop {
                    s.send(&sent).await.unwrap();
                    match tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf)).await {
                        Ok(r) => {
                            let n = r.unwrap().unwrap();
                            assert_eq!(&buf[..n], &sent[..]);
                            break;
                        }
                        Err(_) => {
                            resent += 1;
                            assert!(resent < 20, "no echo after {resent} attempts");
                        }
                    }
                }
            }
            s.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(handle.stats().handshakes_ok, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_receives_concurrently_from_two_tasks() {
    let pki = pki();
    let (addr, _h) = echo_server(pki.server_config()).await;
    let session = connect(addr, &pki.client_config()).await.unwrap();
    let (tx, mut rx) = session.into_split();
    const N: u32 = 2000;
    // Paced in small windows so that loopback buffers never overflow: the claim is concurrency
    // without deadlock, not loss behaviour.
    let (window_tx, mut window_rx) = tokio::sync::mpsc::channel::<()>(32);
    let writer = tokio::spawn(async move {
        for id in 0..N {
            window_tx.send(()).await.unwrap();
            tx.send(&tagged_payload(id, 200)).await.unwrap();
        }
        tx
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 8155];
        let mut got = 0u32;
        while got < N {
            let n = tokio::time::timeout(TIMEOUT, rx.recv(&mut buf))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(
                &buf[..n],
                &tagged_payload(got, 200)[..],
                "in order on loopback"
            );
            got += 1;
            window_rx.recv().await.unwrap();
        }
        rx
    });
    let tx = writer.await.unwrap();
    let _rx = reader.await.unwrap();
    tx.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_notify_ends_the_session_cleanly_both_ways() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let config = pki.client_config();
    let client = tokio::spawn(async move { connect(addr, &config).await.unwrap() });
    let mut server = listener.accept().await.unwrap();
    let mut client = client.await.unwrap();
    client.send(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    assert!(matches!(client.send(b"more").await, Err(SendError::Closed)));
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"last words");
    assert!(
        server.recv(&mut buf).await.unwrap().is_none(),
        "clean end of stream"
    );
    assert!(
        server.recv(&mut buf).await.unwrap().is_none(),
        "stays ended"
    );
    // The server answered with its own close_notify.
    let end = tokio::time::timeout(TIMEOUT, client.recv(&mut buf))
        .await
        .unwrap();
    assert!(end.unwrap().is_none());
}

#[tokio::test]
async fn dropping_the_receiving_half_frees_the_address_and_keeps_sending() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let config = pki.client_config();
    let client = tokio::spawn(async move { connect(addr, &config).await.unwrap() });
    let server = listener.accept().await.unwrap();
    let mut client = client.await.unwrap();
    assert_eq!(listener.stats().peers, 1);
    let (tx, rx) = server.into_split();
    drop(rx);
    // Nobody reads for that address any more: the listener stops queueing for it.
    wait_until("listener.stats().peers == 0", TIMEOUT, || {
        listener.stats().peers == 0
    })
    .await;
    tx.send(b"one way").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"one way");
}

#[tokio::test]
async fn dropping_the_listener_keeps_accepted_sessions_working() {
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let config = pki.client_config();
    let client = tokio::spawn(async move { connect(addr, &config).await.unwrap() });
    let server = listener.accept().await.unwrap();
    drop(listener);
    tokio::spawn(support::echo(server));
    let mut client = client.await.unwrap();
    client.send(b"still there?").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(TIMEOUT, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"still there?");
    // New handshakes are not accepted any more.
    let short = pki
        .client_config()
        .handshake_timeout(Duration::from_millis(1500));
    assert!(connect(addr, &short).await.is_err());
}

#[tokio::test]
async fn loopback_handshakes_need_no_retransmission() {
    let pki = pki();
    let (addr, _h) = echo_server(pki.server_config()).await;
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let session = connector.connect(addr).await.unwrap();
        // The first retransmission timer fires at 500 ms: nothing may have been lost.
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        drop(session);
    }
}
