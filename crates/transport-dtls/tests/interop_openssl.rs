//! Interop with the `openssl` command line (skipped, with a message, where it is missing).

mod support;

use std::process::Stdio;
use std::time::Duration;

use streamproxy_dtls::{DtlsListener, connect};
use support::pki;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const TIMEOUT: Duration = Duration::from_secs(10);

fn openssl_available() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        // `cargo xtask ci` installs it and says so: there, a missing command is a failure.
        assert!(
            std::env::var_os("STREAMPROXY_REQUIRE_OPENSSL").is_none(),
            "STREAMPROXY_REQUIRE_OPENSSL is set but the `openssl` command line is not available"
        );
        eprintln!("skipped: the `openssl` command line is not available");
    }
    ok
}

/// Reads lines of `out` until one contains `needle`; returns that line.
async fn wait_for(out: &mut BufReader<ChildStdout>, needle: &str) -> String {
    let read = async {
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).await.unwrap();
            assert!(n > 0, "openssl exited before printing {needle:?}");
            if line.contains(needle) {
                return line.clone();
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} from openssl"))
}

fn spawn(args: &[&str]) -> Child {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn openssl_s_client_handshakes_with_our_listener() {
    if !openssl_available() {
        return;
    }
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let connect_to = listener.local_addr().to_string();
    let p = |n: &str| pki.path(n).to_str().unwrap().to_owned();
    let mut child = spawn(&[
        "s_client",
        "-dtls1_2",
        "-connect",
        &connect_to,
        "-cert",
        &p("client.pem"),
        "-key",
        &p("client.key"),
        "-CAfile",
        &p("ca.pem"),
        "-servername",
        proto::DEFAULT_SERVER_NAME,
        "-verify_hostname",
        proto::DEFAULT_SERVER_NAME,
        "-verify_return_error",
        "-mtu",
        "1200",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut session = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(session.peer_subject().unwrap().contains("CN=agent-client"));
    session.send(b"hello from streamproxy\n").await.unwrap();
    wait_for(&mut stdout, "hello from streamproxy").await;
    stdin.write_all(b"ping from s_client\n").await.unwrap();
    let mut buf = vec![0u8; 8155];
    let n = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping from s_client\n");
    // End of input: s_client sends close_notify.
    drop(stdin);
    let end = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "expected a clean end of stream");
    let _ = child.wait().await;
}

#[tokio::test]
async fn our_client_handshakes_with_openssl_s_server() {
    if !openssl_available() {
        return;
    }
    let pki = pki();
    let p = |n: &str| pki.path(n).to_str().unwrap().to_owned();
    let mut child = spawn(&[
        "s_server",
        "-dtls1_2",
        "-accept",
        "127.0.0.1:0",
        "-cert",
        &p("server.pem"),
        "-key",
        &p("server.key"),
        "-CAfile",
        &p("ca.pem"),
        "-Verify",
        "1",
        "-verify_return_error",
        "-naccept",
        "1",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // "ACCEPT 127.0.0.1:PORT" once the socket is bound.
    let line = wait_for(&mut stdout, "ACCEPT").await;
    let addr = line
        .trim()
        .trim_start_matches("ACCEPT")
        .trim()
        .parse()
        .unwrap();
    let mut session = connect(addr, &pki.client_config()).await.unwrap();
    assert_eq!(session.cipher(), "ECDHE-ECDSA-AES128-GCM-SHA256");
    session.send(b"hello s_server\n").await.unwrap();
    wait_for(&mut stdout, "hello s_server").await;
    stdin.write_all(b"reply from s_server\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut buf = vec![0u8; 8155];
    let n = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"reply from s_server\n");
    session.shutdown().await.unwrap();
    let end = tokio::time::timeout(TIMEOUT, session.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "s_server answers close_notify with its own");
}

#[tokio::test]
async fn key_exchange_is_x25519_then_p256_and_no_other_group() {
    if !openssl_available() {
        return;
    }
    let pki = pki();
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let connect_to = listener.local_addr().to_string();
    let p = |n: &str| pki.path(n).to_str().unwrap().to_owned();
    // OpenSSL's own default list, P-256 listed first, and P-256 alone. (In DTLS 1.2 the
    // client's groups also name the curves its peer's ECDSA certificate may use: a client
    // offering X25519 alone cannot accept a P-256 certificate.)
    for (groups, expected) in [
        ("X25519:P-256:X448:P-521:P-384", "X25519"),
        ("P-256:X25519", "X25519"),
        ("P-256", "prime256v1"),
    ] {
        let mut child = spawn(&[
            "s_client",
            "-dtls1_2",
            "-connect",
            &connect_to,
            "-cert",
            &p("client.pem"),
            "-key",
            &p("client.key"),
            "-CAfile",
            &p("ca.pem"),
            "-groups",
            groups,
            "-verify_return_error",
            "-mtu",
            "1200",
        ]);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let _session = tokio::time::timeout(TIMEOUT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let line = wait_for(&mut stdout, "Server Temp Key").await;
        assert!(line.contains(expected), "offering {groups}: {line}");
        let _ = child.kill().await;
    }
    // A client with only a group the listener does not offer gets no session.
    let failed = listener.stats().handshakes_failed;
    let mut child = spawn(&[
        "s_client",
        "-dtls1_2",
        "-connect",
        &connect_to,
        "-cert",
        &p("client.pem"),
        "-key",
        &p("client.key"),
        "-CAfile",
        &p("ca.pem"),
        "-groups",
        "P-384",
        "-mtu",
        "1200",
    ]);
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "s_client offering P-384 alone connected");
    assert_eq!(listener.stats().handshakes_failed, failed + 1);
    assert_eq!(listener.stats().handshakes_ok, 3);
}
