//! Interop with the `openssl` command line, in both directions. Skipped (with the reason
//! printed) where `openssl` is not installed; `cargo xtask ci` installs it.

mod support;

use std::process::Stdio;
use std::time::Duration;

use streamproxy_tls::{AppProtocol, CaCerts, ClientConfigBuilder, Identity, connect_to};
use support::{EchoServer, Pki};
use test_support::{KeyFormat, LeafSpec, Usage};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::Command;

/// How long a step may take before the test fails (a bound, never a wait).
const STEP: Duration = Duration::from_secs(30);

fn have_openssl() -> bool {
    let why = match std::process::Command::new("openssl")
        .arg("version")
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`openssl version` failed with {}", out.status),
        Err(e) => format!("the openssl command line is not available ({e})"),
    };
    // `cargo xtask ci` installs it and says so: there, a missing command is a failure.
    assert!(
        std::env::var_os("STREAMPROXY_REQUIRE_OPENSSL").is_none(),
        "STREAMPROXY_REQUIRE_OPENSSL is set but {why}"
    );
    eprintln!("skipping: {why}");
    false
}

/// Reads lines until one satisfies `want`; returns every line read.
async fn read_until<R: AsyncRead + Unpin>(
    lines: &mut Lines<BufReader<R>>,
    want: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(STEP, async {
        while let Some(line) = lines.next_line().await.expect("read openssl output") {
            let done = want(&line);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "openssl output so far:\n{}",
        seen.join("\n")
    );
    seen
}

#[tokio::test]
async fn openssl_s_client_completes_a_handshake_with_our_server() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new("main");
    // An RSA client key in PKCS#1, to cover OpenSSL's side of another key type.
    let client = pki.ca.issue(
        &LeafSpec::new("openssl-client", "openssl-agent", Usage::Client)
            .sans(&["openssl-agent"])
            .key_format(KeyFormat::Pkcs1),
    );
    let mut server = EchoServer::stream_only(&pki.credentials()).await;

    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &server.addr.to_string()])
        .args(["-servername", proto::DEFAULT_SERVER_NAME])
        .args(["-verify_hostname", proto::DEFAULT_SERVER_NAME])
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .arg("-CAfile")
        .arg(pki.ca.ca_path())
        .args([
            "-alpn",
            proto::STREAM_ALPN,
            "-verify_return_error",
            "-no_ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();

    stdin
        .write_all(b"ping-from-openssl\n")
        .await
        .expect("write to s_client");
    stdin.flush().await.expect("flush");
    // The echo can follow the dump of the session ticket on the same line.
    let mut output = read_until(&mut stdout, |line| line.ends_with("ping-from-openssl")).await;

    // Close stdin: s_client sends close_notify and exits.
    drop(stdin);
    let mut rest = String::new();
    let mut inner = stdout.into_inner();
    tokio::time::timeout(STEP, inner.read_to_string(&mut rest))
        .await
        .expect("s_client exits")
        .expect("read");
    output.extend(rest.lines().map(str::to_owned));
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("exit")
        .expect("status");
    let text = output.join("\n");
    assert!(status.success(), "s_client failed: {status}\n{text}");
    assert!(
        text.contains(&format!("ALPN protocol: {}", proto::STREAM_ALPN)),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let peer = server.next().await.expect("our server accepted s_client");
    assert_eq!(peer.alpn, Some(AppProtocol::Stream));
    assert_eq!(
        peer.certificate.common_name.as_deref(),
        Some("openssl-agent")
    );
}

#[tokio::test]
async fn our_client_completes_a_handshake_with_openssl_s_server() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new("main");
    // A SEC1 server key: OpenSSL must read what our test helper writes.
    let server = pki.ca.issue(
        &LeafSpec::new("openssl-server", proto::DEFAULT_SERVER_NAME, Usage::Server)
            .sans(&[proto::DEFAULT_SERVER_NAME])
            .key_format(KeyFormat::Sec1),
    );

    let mut child = Command::new("openssl")
        .arg("s_server")
        .args(["-accept", "127.0.0.1:0", "-naccept", "1"])
        .arg("-cert")
        .arg(&server.cert)
        .arg("-key")
        .arg(&server.key)
        .arg("-CAfile")
        .arg(pki.ca.ca_path())
        .args([
            "-Verify",
            "1",
            "-verify_return_error",
            "-alpn",
            proto::STREAM_ALPN,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();

    // Ready when it prints the address it listens on: `ACCEPT 127.0.0.1:PORT`.
    let lines = read_until(&mut stdout, |line| line.starts_with("ACCEPT ")).await;
    let addr = lines
        .last()
        .and_then(|line| line.strip_prefix("ACCEPT "))
        .expect("ACCEPT line")
        .to_owned();

    let ca = CaCerts::from_pem_file(pki.ca.ca_path()).expect("CA");
    let identity = Identity::from_pem_files(&pki.client.cert, &pki.client.key).expect("identity");
    let config = ClientConfigBuilder::new(&ca, &identity)
        .build()
        .expect("config");
    let mut stream = connect_to(addr.as_str(), &config)
        .await
        .expect("handshake with s_server");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(proto::STREAM_ALPN.as_bytes())
    );

    // Client to server: s_server prints what it receives.
    stream
        .write_all(b"ping-from-rustls\n")
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    read_until(&mut stdout, |line| line == "ping-from-rustls").await;

    // Server to client: s_server sends what it reads on stdin.
    stdin
        .write_all(b"hello-from-openssl\n")
        .await
        .expect("write to s_server");
    stdin.flush().await.expect("flush");
    let want = b"hello-from-openssl\n";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(STEP, stream.read_exact(&mut got))
        .await
        .expect("data from s_server in time")
        .expect("read");
    assert_eq!(&got, want);

    drop(stream);
    drop(stdin);
    let _ = tokio::time::timeout(STEP, child.wait()).await;
}
