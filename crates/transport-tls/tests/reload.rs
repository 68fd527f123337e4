//! Live reload of the server's certificate, key and client CA.

mod support;

use streamproxy_tls::{AcceptError, LoadError, ServerPaths, connect_to};
use support::{EchoServer, Pki, echo};
use test_support::{LeafSpec, TestCa, Usage};

fn presented(
    stream: &streamproxy_tls::ClientTlsStream<tokio::net::TcpStream>,
) -> rustls::pki_types::CertificateDer<'static> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().expect("server certificate")[0].clone()
}

#[tokio::test]
async fn live_connection_survives_a_reload_and_new_connections_see_the_new_certificate() {
    let pki = Pki::new("main");
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki.client_config();

    let mut live = connect_to(server.addr, &client).await.expect("connect");
    echo(&mut live, b"before")
        .await
        .expect("echo before reload");
    server.next().await.expect("handshake");
    assert_eq!(presented(&live), pki.server.der);

    // New certificate and key at the same paths, then reload.
    let renewed = pki.ca.issue(
        &LeafSpec::new("server", "godoxy.agent renewed", Usage::Server).sans(&["godoxy.agent"]),
    );
    assert_eq!(renewed.cert, pki.server.cert);
    credentials.reload().expect("reload");
    assert_eq!(credentials.certificate(), renewed.der);

    echo(&mut live, b"after")
        .await
        .expect("the live connection keeps working");

    let fresh = connect_to(server.addr, &client)
        .await
        .expect("connect after reload");
    assert_eq!(presented(&fresh), renewed.der);
    server.next().await.expect("handshake");
    assert_eq!(
        presented(&live),
        pki.server.der,
        "the live connection is untouched"
    );
}

#[tokio::test]
async fn bad_reload_is_rejected_and_the_old_certificate_stays_in_force() {
    let pki = Pki::new("main");
    let credentials = pki.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;
    let client = pki.client_config();

    // A new certificate whose key file holds another key.
    let other = pki.ca.client("unrelated", "unrelated");
    pki.ca
        .issue(&LeafSpec::new("server", "godoxy.agent", Usage::Server).sans(&["godoxy.agent"]));
    std::fs::copy(&other.key, &pki.server.key).expect("overwrite the key");

    match credentials.reload() {
        Err(LoadError::KeyMismatch { cert, key }) => {
            assert_eq!(
                (cert, key),
                (pki.server.cert.clone(), pki.server.key.clone())
            );
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert_eq!(credentials.certificate(), pki.server.der);

    let mut stream = connect_to(server.addr, &client)
        .await
        .expect("still serving");
    echo(&mut stream, b"ping").await.expect("echo");
    server.next().await.expect("handshake");
    assert_eq!(
        presented(&stream),
        pki.server.der,
        "old certificate in force"
    );

    // A reload from a missing file fails the same way.
    let missing = ServerPaths::new(
        pki.ca.dir().join("missing.crt"),
        &pki.server.key,
        pki.ca.ca_path(),
    );
    assert!(matches!(
        credentials.reload_from(missing),
        Err(LoadError::Read { .. })
    ));
    assert_eq!(
        credentials.paths(),
        pki.server_paths(),
        "paths unchanged after a failed reload"
    );
    let mut stream = connect_to(server.addr, &client)
        .await
        .expect("still serving");
    echo(&mut stream, b"ping").await.expect("echo");
    assert_eq!(presented(&stream), pki.server.der);
}

#[tokio::test]
async fn reloading_the_client_ca_changes_who_may_connect() {
    let old = Pki::new("old");
    let new_ca = TestCa::new("new");
    let new_client = new_ca.client("client", "agent-2");
    let credentials = old.credentials();
    let mut server = EchoServer::stream_only(&credentials).await;

    let old_client = old.client_config();
    let mut live = connect_to(server.addr, &old_client)
        .await
        .expect("old client admitted");
    echo(&mut live, b"ping").await.expect("echo");
    server.next().await.expect("handshake");

    credentials
        .reload_from(ServerPaths::new(
            &old.server.cert,
            &old.server.key,
            new_ca.ca_path(),
        ))
        .expect("reload with the new CA");

    // The old client is refused from now on...
    let refused = match connect_to(server.addr, &old_client).await {
        Ok(mut stream) => echo(&mut stream, b"ping").await,
        Err(e) => Err(e.into()),
    };
    assert!(refused.is_err());
    assert!(matches!(server.next().await, Err(AcceptError::Tls(_))));

    // ...a client of the new CA is admitted...
    let identity = streamproxy_tls::Identity::from_pem_files(&new_client.cert, &new_client.key)
        .expect("identity");
    let config = streamproxy_tls::ClientConfigBuilder::new(&old.ca_certs(), &identity)
        .build()
        .expect("config");
    let mut stream = connect_to(server.addr, &config)
        .await
        .expect("new client admitted");
    echo(&mut stream, b"ping").await.expect("echo");
    let peer = server.next().await.expect("handshake");
    assert_eq!(peer.certificate.common_name.as_deref(), Some("agent-2"));

    // ...and the connection established under the old CA is not cut.
    echo(&mut live, b"still here")
        .await
        .expect("live connection untouched");
}

#[tokio::test]
async fn clones_of_the_handle_share_the_material() {
    let pki = Pki::new("main");
    let credentials = pki.credentials();
    let clone = credentials.clone();
    let renewed = pki
        .ca
        .issue(&LeafSpec::new("server", "renewed", Usage::Server).sans(&["godoxy.agent"]));
    clone.reload().expect("reload through the clone");
    assert_eq!(credentials.certificate(), renewed.der);
}
