//! `streamproxy certs`: a CA kept apart, certificates issued from it one at a time (a second
//! client joins a running server without touching anything else), unique CA names, validity,
//! key modes, and files that are never written through a symbolic link.

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{Proc, field, s, streamproxy, tcp_roundtrip, tmp};
use test_support::blocking::tcp_echo;
use test_support::payload;

fn ok(args: &[&str]) -> String {
    let out = streamproxy(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

fn subject_and_issuer(cert: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-enddate",
            "-in",
            s(cert),
        ])
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client forwarding one TCP port with the certificate in `dir`; returns it and the port.
fn client(
    dir: &Path,
    server: std::net::SocketAddr,
    echo: std::net::SocketAddr,
) -> (Proc, std::net::SocketAddr) {
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    );
    let forward = format!("127.0.0.1:0={echo}");
    let server = server.to_string();
    let mut proc = Proc::spawn(&[
        "client",
        "--server",
        &server,
        "--ca",
        s(&ca),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
        "--tcp",
        &forward,
    ]);
    let local = field(&proc.wait_for("forwarding"), "local");
    (proc, local)
}

#[test]
fn clients_issued_from_a_kept_ca_join_a_running_server() {
    let dir = tmp();
    let d = |name: &str| dir.path().join(name);
    ok(&["certs", "ca", "--out", s(&d("ca"))]);
    ok(&[
        "certs",
        "server",
        "--ca-dir",
        s(&d("ca")),
        "--out",
        s(&d("server")),
    ]);
    ok(&[
        "certs",
        "client",
        "--ca-dir",
        s(&d("ca")),
        "--name",
        "alice",
        "--out",
        s(&d("alice")),
    ]);
    // What goes to hosts never holds the CA's key.
    for host in ["server", "alice"] {
        assert!(
            !d(host).join("ca-key.pem").exists(),
            "{host} got the CA key"
        );
        assert!(d(host).join("ca.pem").exists());
    }
    assert_eq!(mode(&d("ca").join("ca-key.pem")), 0o600);
    assert_eq!(mode(&d("server").join("server-key.pem")), 0o600);
    assert_eq!(mode(&d("alice").join("client-key.pem")), 0o600);

    let (ca, cert, key) = (
        d("server").join("ca.pem"),
        d("server").join("server.pem"),
        d("server").join("server-key.pem"),
    );
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
    let addr = field(&server.wait_for("listening"), "tcp");
    let echo = tcp_echo();
    let (_alice, local) = client(&d("alice"), addr, echo);
    tcp_roundtrip(
        &mut TcpStream::connect(local).expect("connect"),
        &payload(10_000, 1),
    );

    // A second client, issued while the server runs: nothing else changes.
    ok(&[
        "certs",
        "client",
        "--ca-dir",
        s(&d("ca")),
        "--name",
        "bob",
        "--out",
        s(&d("bob")),
    ]);
    let (_bob, local) = client(&d("bob"), addr, echo);
    tcp_roundtrip(
        &mut TcpStream::connect(local).expect("connect"),
        &payload(10_000, 2),
    );
    let text = subject_and_issuer(&d("bob").join("client.pem"));
    assert!(text.contains("subject=CN = bob"), "{text}");
}

#[test]
fn every_ca_gets_its_own_name_and_validity_is_a_flag() {
    let dir = tmp();
    let d = |name: &str| dir.path().join(name);
    ok(&["certs", "ca", "--out", s(&d("one"))]);
    ok(&["certs", "ca", "--out", s(&d("two"))]);
    let one = subject_and_issuer(&d("one").join("ca.pem"));
    let two = subject_and_issuer(&d("two").join("ca.pem"));
    let name = |t: &str| t.lines().next().unwrap_or_default().to_owned();
    assert_ne!(name(&one), name(&two), "two CAs share a name: {one} {two}");
    ok(&[
        "certs",
        "ca",
        "--out",
        s(&d("named")),
        "--name",
        "Example Ops CA",
    ]);
    assert!(subject_and_issuer(&d("named").join("ca.pem")).contains("CN = Example Ops CA"));
    ok(&[
        "certs",
        "client",
        "--ca-dir",
        s(&d("one")),
        "--name",
        "x",
        "--days",
        "2",
        "--out",
        s(&d("x")),
    ]);
    let end = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(3 * 86_400).to_string(),
            "-in",
        ])
        .arg(d("x").join("client.pem"))
        .status()
        .expect("openssl");
    assert!(
        !end.success(),
        "a 2-day certificate is still valid in 3 days"
    );
    let out = streamproxy(&["certs", "ca", "--out", s(&d("bad")), "--days", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn certificate_files_are_never_written_through_a_link() {
    let dir = tmp();
    let d = |name: &str| dir.path().join(name);
    std::fs::create_dir(d("out")).expect("dir");
    // A dangling link where ca.pem goes, and a link to a file the user cares about.
    std::os::unix::fs::symlink(d("nowhere"), d("out").join("ca.pem")).expect("link");
    std::fs::write(d("precious"), "keep me").expect("write");
    std::os::unix::fs::symlink(d("precious"), d("out").join("ca-key.pem")).expect("link");
    let out = streamproxy(&["certs", "ca", "--out", s(&d("out"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force"), "{err}");
    assert!(!d("nowhere").exists(), "written through a dangling link");
    ok(&["certs", "ca", "--out", s(&d("out")), "--force"]);
    assert_eq!(
        std::fs::read_to_string(d("precious")).expect("read"),
        "keep me"
    );
    assert!(!d("nowhere").exists());
    for name in ["ca.pem", "ca-key.pem"] {
        let meta = std::fs::symlink_metadata(d("out").join(name)).expect("meta");
        assert!(meta.file_type().is_file(), "{name} is still a link");
    }
    assert_eq!(mode(&d("out").join("ca-key.pem")), 0o600);
}
