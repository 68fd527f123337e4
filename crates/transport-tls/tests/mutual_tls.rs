//! Real handshakes over loopback between our acceptor and our (or a raw rustls) client.

mod support;

use std::time::Duration;

use rustls::{AlertDescription, CertificateError, ProtocolVersion};
use streamproxy_tls::{
    AcceptError, Acceptor, AlpnPolicy, AppProtocol, ClientConfigBuilder, ConnectError, Identity,
    ServerConfigBuilder, ServerName, SubjectAltName, TlsVersions, connect, connect_to,
};
use support::{EchoServer, Pki, echo, raw_client, raw_connect, tls_error};
use test_support::{LeafSpec, Usage, Validity};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn mutual_tls_succeeds_and_negotiates_the_stream_alpn() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let mut stream = connect_to(server.addr, &pki.client_config())
        .await
        .expect("connect");
    echo(&mut stream, b"ping").await.expect("echo");

    let peer = server.next().await.expect("server handshake");
    assert_eq!(peer.alpn, Some(AppProtocol::Stream));
    assert_eq!(
        peer.addr,
        stream.get_ref().0.get_ref().local_addr().expect("addr")
    );
    assert_eq!(peer.certificate.common_name.as_deref(), Some("agent-1"));
    assert_eq!(peer.certificate.subject, "CN=agent-1");
    assert_eq!(
        peer.certificate.sans,
        vec![SubjectAltName::Dns("agent-1".into())]
    );
    let (_, client) = stream.get_ref();
    assert_eq!(client.alpn_protocol(), Some(proto::STREAM_ALPN.as_bytes()));
    assert_eq!(
        client.peer_certificates().map(|c| &c[0]),
        Some(&pki.server.der)
    );
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let config = raw_client(&pki.ca_certs(), None, &[proto::STREAM_ALPN]);
    // TLS 1.3: the client finishes its side before the server refuses it; the refusal shows
    // on the first read.
    let client = match raw_connect(server.addr, config).await {
        Ok(mut stream) => echo(&mut stream, b"ping").await,
        Err(e) => Err(e),
    };
    let e = client.expect_err("client without certificate must fail");
    assert_eq!(
        tls_error(&e),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
        ))
    );
    match server.next().await {
        Err(AcceptError::Tls(rustls::Error::NoCertificatesPresented)) => {}
        other => panic!("expected NoCertificatesPresented, got {other:?}"),
    }
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected() {
    let pki = Pki::new("main");
    let other = Pki::new("other");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    // Trusts the right CA, presents a certificate issued by another one.
    let config = ClientConfigBuilder::new(&pki.ca_certs(), &other.client_identity())
        .build()
        .expect("client config");
    let client = match connect_to(server.addr, &config).await {
        Ok(mut stream) => echo(&mut stream, b"ping").await,
        Err(e) => Err(e.into()),
    };
    assert!(
        client.is_err(),
        "a foreign client certificate must not get through"
    );
    match server.next().await {
        Err(AcceptError::Tls(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))) => {}
        other => panic!("expected UnknownIssuer, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_client_certificate_is_rejected() {
    let pki = Pki::new("main");
    let expired = pki
        .ca
        .issue(&LeafSpec::new("expired", "agent-old", Usage::Client).validity(Validity::Expired));
    let identity =
        Identity::from_pem_files(&expired.cert, &expired.key).expect("loads, with a warning");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let config = ClientConfigBuilder::new(&pki.ca_certs(), &identity)
        .build()
        .expect("client config");
    let client = match connect_to(server.addr, &config).await {
        Ok(mut stream) => echo(&mut stream, b"ping").await,
        Err(e) => Err(e.into()),
    };
    assert!(
        client.is_err(),
        "an expired client certificate must not get through"
    );
    match server.next().await {
        Err(AcceptError::Tls(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ))) => {}
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn client_trusting_another_ca_rejects_the_server() {
    let pki = Pki::new("main");
    let other = Pki::new("other");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let config = ClientConfigBuilder::new(&other.ca_certs(), &pki.client_identity())
        .build()
        .expect("client config");
    match connect_to(server.addr, &config).await {
        Err(ConnectError::Tls(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))) => {}
        other => panic!("expected UnknownIssuer, got {other:?}"),
    }
    match server.next().await {
        Err(AcceptError::AlertReceived(AlertDescription::UnknownCA)) => {}
        other => panic!("expected the client's unknown_ca alert, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_server_name_is_rejected() {
    let pki = Pki::new("main");
    let server = EchoServer::stream_only(&pki.credentials()).await;

    let name = ServerName::try_from("not-godoxy.example").expect("valid name");
    let config = pki
        .client_builder()
        .server_name(name)
        .build()
        .expect("client config");
    match connect_to(server.addr, &config).await {
        Err(ConnectError::Tls(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ))) => {}
        other => panic!("expected NotValidForName, got {other:?}"),
    }
}

#[tokio::test]
async fn ip_address_server_name_is_verified_against_ip_sans() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let name = ServerName::try_from("127.0.0.1").expect("IP name");
    let config = pki
        .client_builder()
        .server_name(name)
        .build()
        .expect("client config");
    let mut stream = connect_to(server.addr, &config)
        .await
        .expect("connect by IP name");
    echo(&mut stream, b"ping").await.expect("echo");
    server.next().await.expect("server handshake");

    // An IP the certificate does not name is refused.
    let name = ServerName::try_from("127.0.0.2").expect("IP name");
    let config = pki
        .client_builder()
        .server_name(name)
        .build()
        .expect("client config");
    assert!(matches!(
        connect_to(server.addr, &config).await,
        Err(ConnectError::Tls(rustls::Error::InvalidCertificate(_)))
    ));
}

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_each_succeed() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    for (versions, expected) in [
        (TlsVersions::Tls12Only, ProtocolVersion::TLSv1_2),
        (TlsVersions::Tls13Only, ProtocolVersion::TLSv1_3),
    ] {
        let config = pki
            .client_builder()
            .versions(versions)
            .build()
            .expect("client config");
        let mut stream = connect_to(server.addr, &config).await.expect("connect");
        echo(&mut stream, b"ping").await.expect("echo");
        let peer = server.next().await.expect("server handshake");
        assert_eq!(peer.version, Some(expected));
        assert_eq!(peer.alpn, Some(AppProtocol::Stream));
    }
}

#[tokio::test]
async fn tls12_client_without_certificate_is_rejected() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.ca_der().clone()).expect("root");
    let mut config =
        rustls::ClientConfig::builder_with_provider(streamproxy_tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS 1.2")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![proto::STREAM_ALPN.as_bytes().to_vec()];
    // TLS 1.2: the server refuses before the client's handshake finishes.
    let e = raw_connect(server.addr, config.into())
        .await
        .expect_err("must fail");
    assert!(tls_error(&e).is_some(), "a TLS failure, not {e:?}");
    assert!(matches!(
        server.next().await,
        Err(AcceptError::Tls(rustls::Error::NoCertificatesPresented))
    ));
}

#[tokio::test]
async fn http11_only_client_fails_on_a_stream_only_listener() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let config = raw_client(&pki.ca_certs(), Some(&pki.client), &["http/1.1"]);
    let e = raw_connect(server.addr, config)
        .await
        .expect_err("no common protocol");
    assert_eq!(
        tls_error(&e),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol
        ))
    );
    assert!(matches!(
        server.next().await,
        Err(AcceptError::Tls(rustls::Error::NoApplicationProtocol))
    ));
}

#[tokio::test]
async fn http11_client_negotiates_http11_on_a_shared_listener() {
    let pki = Pki::new("main");
    let mut server = EchoServer::with_alpn(&pki.credentials(), AlpnPolicy::SharedWithHttp11).await;

    let config = raw_client(&pki.ca_certs(), Some(&pki.client), &["http/1.1"]);
    let mut stream = raw_connect(server.addr, config).await.expect("handshake");
    echo(&mut stream, b"GET").await.expect("echo");
    let peer = server.next().await.expect("server handshake");
    assert_eq!(peer.alpn, Some(AppProtocol::Http11));

    // The stream client still gets the stream protocol on the shared port.
    let mut stream = connect_to(server.addr, &pki.client_config())
        .await
        .expect("connect");
    echo(&mut stream, b"ping").await.expect("echo");
    assert_eq!(
        server.next().await.expect("handshake").alpn,
        Some(AppProtocol::Stream)
    );
}

#[tokio::test]
async fn client_offering_no_alpn_is_accepted_and_reported_as_none() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let config = raw_client(&pki.ca_certs(), Some(&pki.client), &[]);
    let mut stream = raw_connect(server.addr, config).await.expect("handshake");
    echo(&mut stream, b"ping").await.expect("echo");
    assert_eq!(server.next().await.expect("handshake").alpn, None);
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out_the_server_handshake() {
    let pki = Pki::new("main");
    let config = ServerConfigBuilder::new(&pki.credentials())
        .handshake_timeout(Duration::from_secs(3))
        .build()
        .expect("config");
    let acceptor = Acceptor::new(&config);
    assert_eq!(acceptor.handshake_timeout(), Duration::from_secs(3));
    let mut server = EchoServer::start(acceptor).await;

    let _silent = TcpStream::connect(server.addr).await.expect("tcp connect");
    match server.next().await {
        Err(AcceptError::Timeout(after)) => assert_eq!(after, Duration::from_secs(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn silent_server_times_out_the_client_handshake() {
    let pki = Pki::new("main");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki
        .client_builder()
        .handshake_timeout(Duration::from_secs(2))
        .build()
        .expect("client config");

    let (accepted, connected) = tokio::join!(listener.accept(), async {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        connect(tcp, &config).await
    });
    let _held_open = accepted.expect("accept");
    match connected {
        Err(ConnectError::Timeout(after)) => assert_eq!(after, Duration::from_secs(2)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn peer_closing_mid_handshake_is_an_io_error() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;
    drop(TcpStream::connect(server.addr).await.expect("tcp connect"));
    match server.next().await {
        Err(AcceptError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_to_a_closed_port_is_a_connect_error() {
    let pki = Pki::new("main");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    assert!(matches!(
        connect_to(addr, &pki.client_config()).await,
        Err(ConnectError::Connect(_))
    ));
}

#[test]
fn test_server_certificates_carry_the_name_clients_verify_by_default() {
    assert_eq!(test_support::SERVER_NAME, proto::DEFAULT_SERVER_NAME);
}
