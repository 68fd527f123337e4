//! Session resumption (the listener's session cache): a connector resumes its last session, a server reload
//! ends that, and either end can turn it off.

mod support;

use std::net::SocketAddr;

use streamproxy_dtls::{DtlsConnector, DtlsListener, DtlsSession, ServerConfig};
use support::pki;

/// Accepts one session, checks it echoes, and returns (client resumed, server resumed,
/// subject the server saw).
async fn round(
    listener: &mut DtlsListener,
    connector: &DtlsConnector,
    addr: SocketAddr,
) -> (bool, bool, Option<String>) {
    let client = tokio::spawn({
        let connector = connector.clone();
        async move { connector.connect(addr).await.expect("connect") }
    });
    let mut server: DtlsSession = listener.accept().await.expect("accept");
    let client = client.await.expect("client task");
    client.send(b"ping").await.expect("send");
    let mut buf = [0u8; 16];
    let n = server
        .recv(&mut buf)
        .await
        .expect("recv")
        .expect("datagram");
    assert_eq!(&buf[..n], b"ping");
    let seen = (
        client.resumed(),
        server.resumed(),
        server.peer_subject().map(str::to_owned),
    );
    // A session that ends without close_notify is dropped from the listener's cache (as
    // OpenSSL does with any connection freed before a shutdown); these end cleanly.
    server.shutdown().await.expect("server close_notify");
    client.shutdown().await.expect("client close_notify");
    seen
}

async fn listener(config: ServerConfig) -> (DtlsListener, SocketAddr) {
    let listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    (listener, addr)
}

#[tokio::test]
async fn a_connector_resumes_its_last_session_and_the_server_keeps_the_identity() {
    let pki = pki();
    let (mut listener, addr) = listener(pki.server_config()).await;
    let connector = DtlsConnector::new(&pki.client_config()).expect("connector");

    let (client, server, subject) = round(&mut listener, &connector, addr).await;
    assert!(!client && !server, "the first handshake is a full one");
    let first_subject = subject.expect("client subject");

    for _ in 0..3 {
        let (client, server, subject) = round(&mut listener, &connector, addr).await;
        assert!(client && server, "later handshakes resume");
        assert_eq!(subject.as_deref(), Some(first_subject.as_str()));
    }
}

#[tokio::test]
async fn a_reload_refuses_sessions_from_before_it() {
    let pki = pki();
    let (mut listener, addr) = listener(pki.server_config()).await;
    let handle = listener.handle();
    let connector = DtlsConnector::new(&pki.client_config()).expect("connector");
    round(&mut listener, &connector, addr).await;
    assert!(round(&mut listener, &connector, addr).await.0);

    // Same material, reloaded: the old session no longer resumes.
    handle
        .reload_from_pem_files(
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        )
        .expect("reload");
    let (client, server, _) = round(&mut listener, &connector, addr).await;
    assert!(!client && !server, "a full handshake after the reload");

    // Clients of the first CA are no longer trusted: the connector's session must not let
    // it in.
    round(&mut listener, &connector, addr).await;
    handle
        .reload_from_pem_files(
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("other-ca.pem"),
        )
        .expect("reload");
    let refused = tokio::spawn({
        let connector = connector.clone();
        async move { connector.connect(addr).await }
    });
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept());
    let (refused, accepted) = tokio::join!(refused, accepted);
    assert!(refused.expect("task").is_err(), "the old client is refused");
    assert!(
        !matches!(accepted, Ok(Ok(_))),
        "the server accepted no session"
    );
}

#[tokio::test]
async fn resumption_can_be_turned_off_on_either_end() {
    let pki = pki();
    let (mut listener, addr) = listener(pki.server_config().resumption(false)).await;
    let connector = DtlsConnector::new(&pki.client_config()).expect("connector");
    for _ in 0..2 {
        assert!(
            !round(&mut listener, &connector, addr).await.0,
            "the server keeps no session"
        );
    }

    let (mut listener, addr) = self::listener(pki.server_config()).await;
    let connector = DtlsConnector::new(&pki.client_config().resumption(false)).expect("connector");
    for _ in 0..2 {
        assert!(
            !round(&mut listener, &connector, addr).await.0,
            "the client offers no session"
        );
    }
}

#[tokio::test]
async fn a_cached_session_does_not_outlive_the_client_certificate() {
    use time::OffsetDateTime;

    // X.509 times have whole seconds: the certificate is valid for 2 to 3 more seconds.
    let not_after = (OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .expect("whole second");
    let pki = support::pki_with_client_until(Some(not_after));
    let (mut listener, addr) = listener(pki.server_config()).await;
    let handle = listener.handle();
    let connector = DtlsConnector::new(&pki.client_config()).expect("connector");
    round(&mut listener, &connector, addr).await;
    // While the certificate is valid its session resumes...
    assert!(round(&mut listener, &connector, addr).await.1);

    // ...and once it expired the server refuses the session the client resumes.
    while OffsetDateTime::now_utc() <= not_after + time::Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let failed_before = handle.stats().handshakes_failed;
    let _client = connector.connect(addr).await;
    test_support::wait_until(
        "handle.stats().handshakes_failed > failed_before",
        std::time::Duration::from_secs(10),
        || handle.stats().handshakes_failed > failed_before,
    )
    .await;
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept());
    assert!(
        !matches!(accepted.await, Ok(Ok(_))),
        "the server accepted the resumed session of an expired certificate"
    );
}
