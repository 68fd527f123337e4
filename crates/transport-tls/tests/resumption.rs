//! Session resumption by tickets: on by default, bound to the credentials that issued them.

mod support;

use rustls::HandshakeKind;
use streamproxy_tls::{Acceptor, ClientTlsStream, ServerConfigBuilder, connect_to};
use support::{EchoServer, Pki, echo};
use test_support::{LeafSpec, Usage};
use tokio::net::TcpStream;

fn kind(stream: &ClientTlsStream<TcpStream>) -> Option<HandshakeKind> {
    stream.get_ref().1.handshake_kind()
}

/// Connects, echoes once (which also takes in the server's ticket), and reports the kind of
/// handshake and the client identity the server saw.
async fn round(
    server: &mut EchoServer,
    client: &streamproxy_tls::ClientConfig,
) -> (Option<HandshakeKind>, Option<String>) {
    let mut stream = connect_to(server.addr, client).await.expect("connect");
    echo(&mut stream, b"hello").await.expect("echo");
    let peer = server.next().await.expect("server handshake");
    (kind(&stream), peer.certificate.common_name)
}

#[tokio::test]
async fn a_second_connection_resumes_and_keeps_the_client_identity() {
    let pki = Pki::new("resume");
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki.client_config();

    let first = round(&mut server, &client).await;
    assert_eq!(first, (Some(HandshakeKind::Full), Some("agent-1".into())));
    let second = round(&mut server, &client).await;
    assert_eq!(
        second,
        (Some(HandshakeKind::Resumed), Some("agent-1".into())),
        "the server reports the identity of the handshake that issued the ticket"
    );
}

#[tokio::test]
async fn a_reload_ends_resumption_with_tickets_issued_before_it() {
    let pki = Pki::new("resume-reload");
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki.client_config();

    assert_eq!(
        round(&mut server, &client).await.0,
        Some(HandshakeKind::Full)
    );
    pki.ca.issue(
        &LeafSpec::new("server", "godoxy.agent renewed", Usage::Server).sans(&["godoxy.agent"]),
    );
    credentials.reload().expect("reload");
    let after = connect_to(server.addr, &client).await.expect("connect");
    assert_eq!(
        kind(&after),
        Some(HandshakeKind::Full),
        "a ticket from before the reload must not resume"
    );
    assert_eq!(
        after.get_ref().1.peer_certificates().expect("server chain")[0],
        credentials.certificate(),
        "the full handshake presents the new certificate"
    );
}

#[tokio::test]
async fn resumption_can_be_turned_off() {
    let pki = Pki::new("no-resume");
    let credentials = pki.credentials();
    let config = ServerConfigBuilder::new(&credentials)
        .resumption(false)
        .build()
        .expect("server config");
    assert!(!config.resumption());
    let mut server = EchoServer::start(Acceptor::new(&config)).await;
    let client = pki.client_config();

    for _ in 0..2 {
        assert_eq!(
            round(&mut server, &client).await.0,
            Some(HandshakeKind::Full)
        );
    }
}

#[tokio::test]
async fn tls12_sessions_resume_with_tickets_too() {
    let pki = Pki::new("resume12");
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki
        .client_builder()
        .versions(streamproxy_tls::TlsVersions::Tls12Only)
        .build()
        .expect("client config");

    assert_eq!(
        round(&mut server, &client).await.0,
        Some(HandshakeKind::Full)
    );
    assert_eq!(
        round(&mut server, &client).await.0,
        Some(HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn a_ticket_does_not_outlive_the_client_certificate() {
    use test_support::Validity;
    use time::OffsetDateTime;

    let pki = Pki::new("resume-expiry");
    // X.509 times have whole seconds: the certificate is valid for 2 to 3 more seconds.
    let not_after = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let not_after = not_after.replace_nanosecond(0).expect("whole second");
    pki.ca.issue(
        &LeafSpec::new("client", "agent-1", Usage::Client).validity(Validity::Until(not_after)),
    );
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki.client_config();

    let first = round(&mut server, &client).await;
    assert_eq!(first, (Some(HandshakeKind::Full), Some("agent-1".into())));
    // While the certificate is valid a ticket resumes, which proves the ticket is usable...
    let second = round(&mut server, &client).await;
    assert_eq!(second.0, Some(HandshakeKind::Resumed));

    // ...and once it expired, the same client's ticket no longer lets it in.
    while OffsetDateTime::now_utc() <= not_after + time::Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut stream = connect_to(server.addr, &client).await.expect("connect");
    assert_eq!(
        kind(&stream),
        Some(HandshakeKind::Resumed),
        "the client offered its ticket"
    );
    let refused = server.next().await;
    assert!(
        matches!(
            refused,
            Err(streamproxy_tls::AcceptError::CertificateNotValidNow)
        ),
        "{refused:?}"
    );
    assert!(
        echo(&mut stream, b"hello").await.is_err(),
        "the connection was closed"
    );
}
