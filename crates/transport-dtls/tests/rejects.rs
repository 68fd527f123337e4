//! Handshakes that must fail: each side refuses what mutual TLS forbids.

mod support;

use std::time::Duration;

use openssl::ssl::{SslContext, SslMethod, SslVerifyMode};
use streamproxy_dtls::{ConnectError, HandshakeError, connect};
use support::{echo_server, pki};
use test_support::wait_until;

fn is_handshake_failure(r: &Result<streamproxy_dtls::DtlsSession, ConnectError>) -> bool {
    matches!(r, Err(ConnectError::Handshake(HandshakeError::Tls(_))))
}

#[tokio::test]
async fn rejects_client_without_certificate() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let mut b = SslContext::builder(SslMethod::dtls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    // The listener takes ClientHellos in one datagram: keep OpenSSL from fragmenting to 256 B.
    b.set_options(openssl::ssl::SslOptions::NO_QUERY_MTU);
    let ctx = b.build();
    let r = tokio::task::spawn_blocking(move || support::raw_openssl_handshake(addr, &ctx))
        .await
        .unwrap();
    assert!(
        r.is_err(),
        "handshake without a client certificate succeeded"
    );
    wait_until(
        "handle.stats().handshakes_failed >= 1",
        Duration::from_secs(5),
        || handle.stats().handshakes_failed >= 1,
    )
    .await;
    assert_eq!(handle.stats().handshakes_ok, 0);
}

#[tokio::test]
async fn rejects_client_certificate_from_another_ca() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let config = streamproxy_dtls::ClientConfig::new(pki.identity("other-client"), pki.ca("ca"));
    let r = connect(addr, &config).await;
    assert!(is_handshake_failure(&r), "{r:?}");
    wait_until(
        "handle.stats().handshakes_failed >= 1",
        Duration::from_secs(5),
        || handle.stats().handshakes_failed >= 1,
    )
    .await;
    assert_eq!(handle.stats().handshakes_ok, 0);
}

#[tokio::test]
async fn rejects_server_with_wrong_name() {
    let pki = pki();
    let (addr, _h) = echo_server(pki.server_config()).await;
    let config = pki
        .client_config()
        .server_name(streamproxy_dtls::ServerName::try_from("not-godoxy.example").expect("name"));
    let r = connect(addr, &config).await;
    assert!(
        matches!(
            r,
            Err(ConnectError::Handshake(HandshakeError::PeerCertificate(_)))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn rejects_server_certificate_from_another_ca() {
    let pki = pki();
    let server = streamproxy_dtls::ServerConfig::new(pki.identity("other-server"), pki.ca("ca"));
    let (addr, _h) = echo_server(server).await;
    let r = connect(addr, &pki.client_config()).await;
    assert!(
        matches!(
            r,
            Err(ConnectError::Handshake(HandshakeError::PeerCertificate(_)))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn rejects_cipher_suite_mismatch() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let config = pki
        .client_config()
        .cipher_list("ECDHE-ECDSA-AES256-GCM-SHA384");
    let r = connect(addr, &config).await;
    assert!(is_handshake_failure(&r), "{r:?}");
    wait_until(
        "handle.stats().handshakes_failed >= 1",
        Duration::from_secs(5),
        || handle.stats().handshakes_failed >= 1,
    )
    .await;
}

#[tokio::test]
async fn refuses_bad_configuration_naming_the_file() {
    let pki = pki();
    let missing = pki.path("missing.pem");
    let err =
        streamproxy_dtls::Identity::from_pem_files(&missing, pki.path("client.key")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    std::fs::write(pki.path("junk.pem"), "not pem").unwrap();
    let err = streamproxy_dtls::CaCerts::from_pem_file(pki.path("junk.pem")).unwrap_err();
    assert!(err.to_string().contains("junk.pem"), "{err}");
    let (client_cert, server_key) = (pki.path("client.pem"), pki.path("server.key"));
    let err = streamproxy_dtls::Identity::from_pem_files(&client_cert, &server_key).unwrap_err();
    assert!(
        matches!(
            &err,
            streamproxy_dtls::LoadError::KeyMismatch { cert, key }
                if *cert == client_cert && *key == server_key
        ),
        "{err:?}"
    );
    let err =
        streamproxy_dtls::DtlsConnector::new(&pki.client_config().cipher_list("NO-SUCH-CIPHER"))
            .unwrap_err();
    assert!(
        matches!(err, streamproxy_dtls::ConfigError::CipherList { .. }),
        "{err:?}"
    );
    assert!(streamproxy_dtls::Mtu::new(100).is_err());
    assert!(streamproxy_dtls::MaxPayload::new(16385).is_err());
}

#[tokio::test]
async fn reload_swaps_material_for_new_handshakes_and_keeps_it_on_error() {
    let pki = pki();
    let (addr, handle) = echo_server(pki.server_config()).await;
    let bad = handle.reload_from_pem_files(
        pki.path("server.pem"),
        pki.path("client.key"),
        pki.path("ca.pem"),
    );
    assert!(
        matches!(
            bad,
            Err(streamproxy_dtls::ConfigError::Load(
                streamproxy_dtls::LoadError::KeyMismatch { .. }
            ))
        ),
        "{bad:?}"
    );
    let missing = handle.reload_from_pem_files(
        pki.path("nope.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    assert!(missing.is_err());
    // The old material is still in use.
    let mut kept = connect(addr, &pki.client_config()).await.unwrap();
    // Now trust the other CA for clients instead.
    handle
        .reload_from_pem_files(
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("other-ca.pem"),
        )
        .unwrap();
    let other = streamproxy_dtls::ClientConfig::new(pki.identity("other-client"), pki.ca("ca"));
    connect(addr, &other).await.unwrap();
    assert!(connect(addr, &pki.client_config()).await.is_err());
    // The session established before the reload is unaffected.
    kept.send(b"still").await.unwrap();
    let mut buf = [0u8; 16];
    let n = kept.recv(&mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"still");
}
