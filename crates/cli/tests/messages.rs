//! What a client says when a tunnel cannot open, against the real binaries, on TCP and on UDP:
//! one vocabulary for both transports, each message with the fact and the likely fix.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use support::{Proc, certs, s, server, tmp};
use test_support::blocking::{tcp_echo, udp_echo};

/// Sends through a TCP forward and gives the tunnel time to fail: writes, then reads until the
/// forward closes the connection.
fn poke_tcp(local: SocketAddr) {
    let mut conn = TcpStream::connect(local).expect("connect to the forward");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = conn.write_all(b"hello?\n");
    let mut buf = [0u8; 64];
    let _ = conn.read(&mut buf);
}

/// Sends datagrams through a UDP forward until the client logs a UDP line with `needle` (a
/// datagram may be dropped while a tunnel fails; the next one tries again).
fn poke_udp_until(local: SocketAddr, client: &mut Proc, needle: &str) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        socket.send_to(b"hello?", local).expect("send");
        while let Ok(line) = client.lines.recv_timeout(Duration::from_millis(300)) {
            if line.contains(needle) && line.contains("transport=\"udp\"") {
                return line;
            }
            seen.push(line);
        }
        assert!(Instant::now() < deadline, "no {needle:?}; saw {seen:#?}");
    }
}

/// A client forwarding one TCP and one UDP port to the echo destinations through `server`.
fn start_client(
    dir: &Path,
    server: SocketAddr,
    files: (&str, &str, &str),
    extra: &[&str],
) -> (Proc, SocketAddr, SocketAddr) {
    let (ca, cert, key) = files;
    let mut args = vec![
        "client".to_owned(),
        "--server".to_owned(),
        server.to_string(),
        "--ca".to_owned(),
        s(&dir.join(ca)).to_owned(),
        "--cert".to_owned(),
        s(&dir.join(cert)).to_owned(),
        "--key".to_owned(),
        s(&dir.join(key)).to_owned(),
        "--tcp".to_owned(),
        format!("127.0.0.1:0={}", tcp_echo()),
        "--udp".to_owned(),
        format!("127.0.0.1:0={}", udp_echo()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(&refs);
    let tcp = support::field(&proc.wait_for("forwarding transport=\"tcp\""), "local");
    let udp = support::field(&proc.wait_for("forwarding transport=\"udp\""), "local");
    (proc, tcp, udp)
}

/// Checks that both transports log `words` for the same cause.
fn expect_on_both(client: &mut Proc, tcp: SocketAddr, udp: SocketAddr, words: &[&str]) {
    poke_tcp(tcp);
    let line = client.wait_for("transport=\"tcp\"");
    let line = if line.contains("reason=") {
        line
    } else {
        client.wait_for("reason=")
    };
    for w in words {
        assert!(line.contains(w), "TCP: {line} lacks {w:?}");
    }
    let line = poke_udp_until(udp, client, "reason=");
    for w in words {
        assert!(line.contains(w), "UDP: {line} lacks {w:?}");
    }
}

#[test]
fn a_server_certificate_from_another_ca() {
    let dir = tmp();
    certs(dir.path());
    let other = dir.path().join("other");
    certs(&other);
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        server.tcp,
        ("other/ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    expect_on_both(
        &mut client,
        tcp,
        udp,
        &["the server's certificate is not signed by the CA this client trusts"],
    );
}

#[test]
fn a_client_certificate_the_server_does_not_accept() {
    let dir = tmp();
    certs(dir.path());
    let other = dir.path().join("other");
    certs(&other);
    let mut server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        server.tcp,
        ("ca.pem", "other/client.pem", "other/client-key.pem"),
        &[],
    );
    expect_on_both(
        &mut client,
        tcp,
        udp,
        &["the server rejected our client certificate (not signed by the server's CA)"],
    );
    // The server says so too, at the same level on both transports.
    for needle in ["WARN handshake failed", "WARN DTLS handshake failed"] {
        let line = server.proc.wait_for(needle);
        assert!(line.contains("peer="), "{line}");
    }
}

#[test]
fn a_destination_the_servers_policy_refuses() {
    let dir = tmp();
    certs(dir.path());
    // The echo destinations are on 127.0.0.1; the server allows another address only.
    let server = server(dir.path(), &["--allow", "10.255.255.1"]);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        server.tcp,
        ("ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    expect_on_both(
        &mut client,
        tcp,
        udp,
        &["the server closed the tunnel before answering: its policy or limits refused it"],
    );
}

#[test]
fn a_server_that_is_not_running() {
    let dir = tmp();
    certs(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        addr,
        ("ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    expect_on_both(
        &mut client,
        tcp,
        udp,
        &["nothing accepts connections at the server's address (connection refused)"],
    );
}

#[test]
fn a_server_name_the_certificate_does_not_carry() {
    let dir = tmp();
    certs(dir.path());
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        server.tcp,
        ("ca.pem", "client.pem", "client-key.pem"),
        &["--server-name", "proxy.example"],
    );
    expect_on_both(
        &mut client,
        tcp,
        udp,
        &[
            "the server's certificate is not valid for the",
            "--server-name",
        ],
    );
}

/// A server certificate that expired yesterday, issued by the CA `streamproxy certs` made.
fn expired_server_certificate(dir: &Path) {
    let ca_dir = dir.join("ca");
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).expect("key"))
            .expect("ca key");
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let mut params =
        CertificateParams::new(vec!["godoxy.agent".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "godoxy.agent");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(dir.join("expired.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("expired-key.pem"), key.serialize_pem()).expect("write");
}

#[test]
fn an_expired_server_certificate_with_its_date() {
    let dir = tmp();
    certs(dir.path());
    expired_server_certificate(dir.path());
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("expired.pem");
    let key = dir.path().join("expired-key.pem");
    let mut server = Proc::spawn(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
        "--allow",
        "127.0.0.1",
    ]);
    let ready = server.wait_for("listening");
    let addr = support::field(&ready, "tcp");
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        addr,
        ("ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let date = format!(
        "{:04}-{:02}-{:02}",
        yesterday.year(),
        u8::from(yesterday.month()),
        yesterday.day()
    );
    poke_tcp(tcp);
    let line = client.wait_for("tunnel failed");
    assert!(
        line.contains(&format!("the server's certificate expired on {date}")),
        "{line}"
    );
    let line = poke_udp_until(udp, &mut client, "reason=");
    assert!(
        line.contains("the server's certificate has expired"),
        "{line}"
    );
}

/// At start the client checks the server once and says what is wrong, without exiting.
#[test]
fn the_client_checks_the_server_at_start() {
    let dir = tmp();
    certs(dir.path());
    let other = dir.path().join("other");
    certs(&other);
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (mut client, _, _) = start_client(
        dir.path(),
        server.tcp,
        ("other/ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    let line = client.wait_for("does not answer a health check");
    assert!(
        line.contains("the server's certificate is not signed by the CA this client trusts"),
        "{line}"
    );
    assert!(
        client.child.try_wait().expect("wait").is_none(),
        "the client exited"
    );
    let (mut client, _, _) = start_client(
        dir.path(),
        server.tcp,
        ("ca.pem", "client.pem", "client-key.pem"),
        &[],
    );
    client.wait_for("the server answered a health check");
}

/// SIGHUP makes the client read its certificate, key and CA again: new tunnels use them, open
/// tunnels go on, and a reload that fails keeps the previous material. It never kills it.
#[test]
fn the_client_reloads_its_certificates_on_sighup() {
    let dir = tmp();
    certs(dir.path());
    let other = dir.path().join("other");
    certs(&other);
    let files = dir.path().join("client-files");
    std::fs::create_dir(&files).expect("dir");
    for f in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(dir.path().join(f), files.join(f)).expect("copy");
    }
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (mut client, tcp, udp) = start_client(
        dir.path(),
        server.tcp,
        (
            "client-files/ca.pem",
            "client-files/client.pem",
            "client-files/client-key.pem",
        ),
        &[],
    );
    let echo_through = |local: SocketAddr| -> std::io::Result<TcpStream> {
        let mut conn = TcpStream::connect(local)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        Ok(conn)
    };
    let mut live = echo_through(tcp).expect("a tunnel with the first certificate");

    // A broken file: the reload fails and the previous material stays.
    std::fs::write(files.join("client.pem"), "not a certificate").expect("write");
    client.signal("HUP");
    client.wait_for("reload failed; keeping the previous certificates");
    echo_through(tcp).expect("a new tunnel with the previous certificate");

    // A certificate from a CA the server does not trust: new tunnels use it (and fail).
    std::fs::copy(other.join("client.pem"), files.join("client.pem")).expect("copy");
    std::fs::copy(other.join("client-key.pem"), files.join("client-key.pem")).expect("copy");
    client.signal("HUP");
    client.wait_for("reloaded the certificate, key and CA");
    poke_tcp(tcp);
    let line = client.wait_for("before any answer");
    assert!(line.contains("rejected our client certificate"), "{line}");
    let line = poke_udp_until(udp, &mut client, "reason=");
    assert!(line.contains("rejected our client certificate"), "{line}");

    // The tunnel opened before both reloads still works, and the client is alive.
    live.write_all(b"pong").expect("write");
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"pong");
    assert!(
        client.child.try_wait().expect("wait").is_none(),
        "SIGHUP killed the client"
    );
}
