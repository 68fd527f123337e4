//! Loading PEM material: every key format, and every error naming its file.

mod support;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use streamproxy_tls::{
    CaCerts, ClientConfigBuilder, Identity, LoadError, ServerCredentials, ServerPaths, connect_to,
};
use support::{EchoServer, Pki, echo};
use test_support::{KeyFormat, LeafSpec, TestCa, Usage, Validity};

#[tokio::test]
async fn keys_load_in_pkcs8_sec1_and_pkcs1_and_work_in_a_handshake() {
    let pki = Pki::new("main");
    let mut server = EchoServer::stream_only(&pki.credentials()).await;
    for (format, header) in [
        (KeyFormat::Pkcs8, "-----BEGIN PRIVATE KEY-----"),
        (KeyFormat::Sec1, "-----BEGIN EC PRIVATE KEY-----"),
        (KeyFormat::Pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let stem = format!("{format:?}");
        let files = pki
            .ca
            .issue(&LeafSpec::new(&stem, &stem, Usage::Client).key_format(format));
        let pem = std::fs::read_to_string(&files.key).expect("key file");
        assert!(
            pem.starts_with(header),
            "{format:?} file starts with {header}"
        );

        let identity = Identity::from_pem_files(&files.cert, &files.key).expect("identity loads");
        assert_eq!(identity.certificate(), &files.der);
        let config = ClientConfigBuilder::new(&pki.ca_certs(), &identity)
            .build()
            .expect("config");
        let mut stream = connect_to(server.addr, &config).await.expect("handshake");
        echo(&mut stream, b"ping").await.expect("echo");
        let peer = server.next().await.expect("server handshake");
        assert_eq!(peer.certificate.common_name.as_deref(), Some(stem.as_str()));
    }
}

#[tokio::test]
async fn server_keys_load_in_every_format() {
    let pki = Pki::new("main");
    for format in [KeyFormat::Pkcs8, KeyFormat::Sec1, KeyFormat::Pkcs1] {
        let stem = format!("server-{format:?}");
        let files = pki.ca.issue(
            &LeafSpec::new(&stem, "godoxy.agent", Usage::Server)
                .sans(&["godoxy.agent"])
                .key_format(format),
        );
        let credentials =
            ServerCredentials::load(ServerPaths::new(&files.cert, &files.key, pki.ca.ca_path()))
                .expect("credentials load");
        let mut server = EchoServer::stream_only(&credentials).await;
        let mut stream = connect_to(server.addr, &pki.client_config())
            .await
            .expect("handshake");
        echo(&mut stream, b"ping").await.expect("echo");
        server.next().await.expect("server handshake");
    }
}

#[test]
fn certificate_and_key_may_share_one_file() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let mut both = std::fs::read(&files.cert).expect("cert");
    both.extend(std::fs::read(&files.key).expect("key"));
    let combined = ca.write("combined.pem", both);
    let identity = Identity::from_pem_files(&combined, &combined).expect("loads");
    assert_eq!(identity.certificate(), &files.der);
}

#[test]
fn chain_keeps_its_order() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let mut chain = std::fs::read(&files.cert).expect("cert");
    chain.extend(std::fs::read(ca.ca_path()).expect("ca"));
    let chain_path = ca.write("chain.pem", chain);
    let identity = Identity::from_pem_files(&chain_path, &files.key).expect("loads");
    assert_eq!(identity.chain(), &[files.der.clone(), ca.ca_der().clone()]);
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let ca = TestCa::new("main");
    let missing = ca.dir().join("nope.crt");
    let files = ca.client("client", "agent-1");
    for err in [
        Identity::from_pem_files(&missing, &files.key).expect_err("missing cert"),
        Identity::from_pem_files(&files.cert, &missing).expect_err("missing key"),
        CaCerts::from_pem_file(&missing).expect_err("missing CA"),
    ] {
        match &err {
            LoadError::Read { path, source } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Read, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }
}

#[test]
fn unreadable_file_is_a_read_error() {
    let ca = TestCa::new("main");
    // A directory cannot be read as a file, even by root.
    match CaCerts::from_pem_file(ca.dir()) {
        Err(LoadError::Read { path, .. }) => assert_eq!(path, ca.dir()),
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn file_without_a_certificate_is_rejected() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let empty = ca.write("empty.pem", "");
    for path in [&empty, &files.key] {
        match Identity::from_pem_files(path, &files.key) {
            Err(LoadError::NoCertificate { path: p }) => assert_eq!(&p, path),
            other => panic!("expected NoCertificate, got {other:?}"),
        }
        match CaCerts::from_pem_file(path) {
            Err(LoadError::NoCertificate { path: p }) => assert_eq!(&p, path),
            other => panic!("expected NoCertificate, got {other:?}"),
        }
    }
}

#[test]
fn file_without_a_key_is_rejected() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let err = Identity::from_pem_files(&files.cert, &files.cert).expect_err("no key");
    match &err {
        LoadError::NoPrivateKey { path } => assert_eq!(path, &files.cert),
        other => panic!("expected NoPrivateKey, got {other:?}"),
    }
    assert!(err.to_string().contains("no private key"), "{err}");
}

#[test]
fn malformed_pem_is_rejected() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let truncated = ca.write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    match Identity::from_pem_files(&truncated, &files.key) {
        Err(LoadError::Pem { path, .. }) => assert_eq!(path, truncated),
        other => panic!("expected Pem, got {other:?}"),
    }
    let truncated_key = ca.write("truncated.key", "-----BEGIN PRIVATE KEY-----\nMIIB\n");
    match Identity::from_pem_files(&files.cert, &truncated_key) {
        Err(LoadError::Pem { path, .. }) => assert_eq!(path, truncated_key),
        other => panic!("expected Pem, got {other:?}"),
    }
}

#[test]
fn certificate_block_that_is_not_x509_is_rejected() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let junk = ca.write(
        "junk.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    match Identity::from_pem_files(&junk, &files.key) {
        Err(LoadError::BadCertificate { path, index, .. }) => {
            assert_eq!((path, index), (junk.clone(), 0));
        }
        other => panic!("expected BadCertificate, got {other:?}"),
    }
    assert!(matches!(
        CaCerts::from_pem_file(&junk),
        Err(LoadError::BadCertificate { .. })
    ));
}

#[test]
fn key_block_that_is_not_a_key_is_rejected() {
    let ca = TestCa::new("main");
    let files = ca.client("client", "agent-1");
    let junk = ca.write(
        "junk.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    match Identity::from_pem_files(&files.cert, &junk) {
        Err(LoadError::UnsupportedKey { path, .. }) => assert_eq!(path, junk),
        other => panic!("expected UnsupportedKey, got {other:?}"),
    }
}

#[test]
fn key_of_another_certificate_is_rejected() {
    let ca = TestCa::new("main");
    let a = ca.client("a", "a");
    let b = ca.client("b", "b");
    let err = Identity::from_pem_files(&a.cert, &b.key).expect_err("mismatch");
    match &err {
        LoadError::KeyMismatch { cert, key } => assert_eq!((cert, key), (&a.cert, &b.key)),
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&*a.cert.to_string_lossy()) && text.contains(&*b.key.to_string_lossy()));
}

#[test]
fn ca_file_without_a_ca_certificate_is_rejected() {
    let ca = TestCa::new("main");
    let leaf = ca.client("client", "agent-1");
    let err = CaCerts::from_pem_file(&leaf.cert).expect_err("a leaf is not a CA");
    match &err {
        LoadError::NoCaCertificate { path } => assert_eq!(path, &leaf.cert),
        other => panic!("expected NoCaCertificate, got {other:?}"),
    }
    // Server credentials refuse it too.
    let server = ca.server("server");
    assert!(matches!(
        ServerCredentials::load(ServerPaths::new(&server.cert, &server.key, &leaf.cert)),
        Err(LoadError::NoCaCertificate { .. })
    ));
}

#[test]
fn ca_bundle_keeps_only_ca_certificates() {
    let a = TestCa::new("a");
    let b = TestCa::new("b");
    let leaf = a.client("client", "agent-1");
    let mut bundle = std::fs::read(a.ca_path()).expect("a");
    bundle.extend(std::fs::read(&leaf.cert).expect("leaf"));
    bundle.extend(std::fs::read(b.ca_path()).expect("b"));
    let path = a.write("bundle.pem", bundle);
    let ca = CaCerts::from_pem_file(&path).expect("bundle");
    assert_eq!(ca.certificates(), &[a.ca_der().clone(), b.ca_der().clone()]);
    assert_eq!(ca.path(), path);
}

/// Collects what `tracing` writes while `f` runs.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().expect("lock").clone();
    String::from_utf8(bytes).expect("utf-8 logs")
}

#[test]
fn expired_or_not_yet_valid_certificate_loads_with_a_warning_giving_its_dates() {
    let ca = TestCa::new("main");
    for (validity, state) in [
        (Validity::Expired, "expired"),
        (Validity::NotYetValid, "not yet valid"),
    ] {
        let stem = format!("{validity:?}");
        let files = ca.issue(&LeafSpec::new(&stem, "agent-x", Usage::Client).validity(validity));
        let logs = logs_of(|| {
            Identity::from_pem_files(&files.cert, &files.key).expect("loads anyway");
        });
        assert!(logs.contains("WARN"), "{logs}");
        assert!(
            logs.contains(&format!("leaf certificate is {state}")),
            "{logs}"
        );
        assert!(
            logs.contains("not_before=") && logs.contains("not_after="),
            "{logs}"
        );
        assert!(logs.contains(&*files.cert.to_string_lossy()), "{logs}");
    }
    let current = ca.client("current", "agent-y");
    let logs = logs_of(|| {
        Identity::from_pem_files(&current.cert, &current.key).expect("loads");
    });
    assert!(!logs.contains("WARN"), "{logs}");
}
