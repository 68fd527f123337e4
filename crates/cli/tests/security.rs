//! Security properties of the built binary against a hostile certificate holder: the
//! destination policy cannot be walked around by spelling an address differently.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use support::*;

/// A TCP and a UDP echo on 127.0.0.1 (one port number for both) that count what reaches them.
struct CountingEcho {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl CountingEcho {
    fn start() -> CountingEcho {
        let hits = Arc::new(AtomicUsize::new(0));
        // One port for both: try until the UDP port of a fresh TCP port is free.
        let (listener, socket) = loop {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
            let port = listener.local_addr().expect("addr").port();
            if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)) {
                break (listener, socket);
            }
        };
        let port = listener.local_addr().expect("addr").port();
        let tcp_hits = Arc::clone(&hits);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                tcp_hits.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut back = conn.try_clone().expect("clone");
                    let _ = std::io::copy(&mut conn, &mut back);
                });
            }
        });
        let udp_hits = Arc::clone(&hits);
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                udp_hits.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&buf[..n], from);
            }
        });
        CountingEcho { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Every spelling of the unspecified address a client may put in a header.
const UNSPECIFIED: &[&str] = &[
    "0.0.0.0",
    "0",
    "0.0",
    "0.0.0",
    "0x0",
    "00",
    "[::]",
    "[::ffff:0.0.0.0]",
    "[::ffff:0:0]",
    "[0:0:0:0:0:0:0:0]",
];

/// Opens a TCP and a UDP forward through the client to each target; returns the locals.
fn forwards(
    dir: &std::path::Path,
    server: SocketAddr,
    targets: &[String],
) -> (Proc, Vec<SocketAddr>) {
    let mut args: Vec<String> = vec!["client".into()];
    args.extend(client_args(dir, server));
    for target in targets {
        for kind in ["tcp", "udp"] {
            args.push(format!("--{kind}"));
            args.push(format!("127.0.0.1:0={target}"));
        }
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(&refs);
    // TCP forwards start first, then UDP ones, each in the order given.
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for _ in 0..targets.len() * 2 {
        let line = proc.wait_for("forwarding");
        let local = field(&line, "local");
        if line.contains("udp") {
            udp.push(local)
        } else {
            tcp.push(local)
        }
    }
    let locals = tcp.into_iter().zip(udp).flat_map(|(t, u)| [t, u]).collect();
    (proc, locals)
}

/// Sends one TCP stream and one datagram through each pair of forwards.
fn poke(locals: &[SocketAddr]) {
    for pair in locals.chunks(2) {
        let mut conn = TcpStream::connect(pair[0]).expect("connect forward");
        conn.write_all(b"hello").expect("write");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.send_to(b"hello", pair[1]).expect("send");
        // The tunnel is refused: the stream ends without an echo (a breach echoes and stays
        // open, so the read is bounded to fail rather than hang).
        conn.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut back = Vec::new();
        let _ = conn.read_to_end(&mut back);
        assert!(back.is_empty(), "an echo came back through {}", pair[0]);
    }
}

#[test]
fn the_unspecified_address_in_any_spelling_does_not_reach_a_denied_loopback() {
    let dir = tmp();
    certs(dir.path());
    let echo = CountingEcho::start();
    let mut server = server(
        dir.path(),
        &["--allow-all", "--deny", "127.0.0.0/8", "--deny", "::1"],
    );
    let targets: Vec<String> = UNSPECIFIED
        .iter()
        .map(|host| format!("{host}:{}", echo.port))
        .collect();
    let (_client, locals) = forwards(dir.path(), server.tcp, &targets);
    poke(&locals);
    // Each spelling is refused by the policy on both transports, before any dial.
    for _ in 0..UNSPECIFIED.len() * 2 {
        assert_eq!(echo.hits(), 0, "the loopback echo was reached");
        let line = server.proc.wait_for("tunnel refused");
        assert!(line.contains("unspecified address"), "{line}");
    }
    assert_eq!(echo.hits(), 0, "the loopback echo was reached");
}

#[test]
fn a_rule_naming_the_unspecified_address_lets_it_through() {
    // The control: the same spellings do reach this host when a rule names 0.0.0.0, so the
    // test above would see a breach if there were one.
    let dir = tmp();
    certs(dir.path());
    let echo = CountingEcho::start();
    let server = server(dir.path(), &["--allow", "0.0.0.0"]);
    let targets = vec![format!("0:{}", echo.port), format!("0x0.0:{}", echo.port)];
    let (_client, locals) = forwards(dir.path(), server.tcp, &targets);
    for pair in locals.chunks(2) {
        let mut conn = TcpStream::connect(pair[0]).expect("connect forward");
        tcp_roundtrip(&mut conn, b"hello");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect(pair[1]).expect("connect");
        udp_roundtrip(&socket, b"hello");
    }
    assert!(echo.hits() >= 4);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server certificate for the same key, signed by the same CA with SHA-1: rustls loads it,
/// OpenSSL (security level 1 and up) refuses it.
fn sha1_server_cert(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:godoxy.agent,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "server-key.pem",
            "-subj",
            "/CN=godoxy.agent",
            "-out",
            "sha1.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "sha1.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca/ca-key.pem",
            "-sha1",
            "-days",
            "3",
            "-extfile",
            "ext.cnf",
            "-out",
            "server-sha1.pem",
        ],
    );
    dir.join("server-sha1.pem")
}

#[test]
fn a_reload_that_one_transport_refuses_changes_neither() {
    let dir = tmp();
    certs(dir.path());
    let mut server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let sha1 = sha1_server_cert(dir.path());
    let good = std::fs::read(dir.path().join("server.pem")).expect("read");
    std::fs::copy(&sha1, dir.path().join("server.pem")).expect("copy");
    server.proc.signal("HUP");
    let line = server.proc.wait_for("reload failed");
    assert!(line.contains("DTLS"), "{line}");
    // Both transports still present the previous certificate: a client (whose verifier
    // refuses SHA-1 signatures) still gets through on each.
    for udp in [false, true] {
        let out = probe(dir.path(), server.tcp, udp);
        assert_eq!(
            out.status.code(),
            Some(0),
            "udp={udp}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And a good reload afterwards still applies to both.
    std::fs::write(dir.path().join("server.pem"), good).expect("restore");
    server.proc.signal("HUP");
    server.proc.wait_for("reloaded");
}

/// Runs `streamproxy server` with `extra` and expects it to refuse to start with one line
/// containing `needle`.
fn refused_at_start(dir: &std::path::Path, extra: &[&str], needle: &str) {
    let mut args = vec![
        "server".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--ca".into(),
        s(&dir.join("ca.pem")).into(),
        "--allow-all".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = streamproxy(&refs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} started");
    assert_eq!(err.lines().count(), 1, "{extra:?}: not one line: {err}");
    assert!(err.contains(needle), "{extra:?}: {err:?} lacks {needle:?}");
}

#[test]
fn settings_that_refuse_everything_are_refused_at_start() {
    let dir = tmp();
    certs(dir.path());
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server-key.pem");
    let files = ["--cert", s(&cert), "--key", s(&key)];
    for (setting, needle) in [
        ("max_handshakes = 0", "max_handshakes = 0"),
        ("max_tcp_tunnels = 0", "max_tcp_tunnels = 0"),
        ("max_udp_sessions = 0", "max_udp_sessions = 0"),
        ("max_lookups = 0", "max_lookups = 0"),
        ("max_lookups_per_client = 0", "max_lookups_per_client = 0"),
        ("dial_timeout = \"0s\"", "dial_timeout = 0"),
        ("handshake_timeout = \"0s\"", "handshake_timeout = 0"),
        ("header_timeout = \"0s\"", "header_timeout = 0"),
    ] {
        let config = dir.path().join("zero.toml");
        std::fs::write(&config, format!("[server]\n{setting}\n")).expect("write");
        let mut extra = files.to_vec();
        extra.extend(["--config", s(&config)]);
        refused_at_start(dir.path(), &extra, needle);
    }

    // An RSA server certificate cannot serve DTLS (ECDSA suites only): refused with UDP on,
    // served with UDP off.
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa-key.pem",
            "-out",
            "rsa.pem",
            "-subj",
            "/CN=godoxy.agent",
            "-days",
            "3",
        ],
    );
    let rsa = ["--cert", "rsa.pem", "--key", "rsa-key.pem"].map(|f| {
        if f.ends_with(".pem") {
            s(&dir.path().join(f)).to_owned()
        } else {
            f.to_owned()
        }
    });
    let rsa: Vec<&str> = rsa.iter().map(String::as_str).collect();
    refused_at_start(dir.path(), &rsa, "DTLS offers ECDSA cipher suites only");
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--ca"];
    let ca = dir.path().join("ca.pem");
    args.extend([s(&ca), "--allow-all", "--no-udp"]);
    args.extend(&rsa);
    let mut proc = Proc::spawn(&args);
    proc.wait_for("listening");
}

#[test]
fn an_ip_address_as_server_name_means_the_same_on_both_transports() {
    let dir = tmp();
    certs(dir.path());
    // The server certificate of `streamproxy certs` names 127.0.0.1 and ::1 among its SANs.
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    for (name, ok) in [("127.0.0.1", true), ("::1", true), ("10.9.9.9", false)] {
        for udp in [false, true] {
            let mut args: Vec<String> = vec!["probe".into()];
            args.extend(client_args(dir.path(), server.tcp));
            args.extend(["--server-name".into(), name.into()]);
            if udp {
                args.push("--udp".into());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = streamproxy(&refs);
            assert_eq!(
                out.status.success(),
                ok,
                "--server-name {name} udp={udp}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn peer_controlled_text_cannot_break_or_forge_a_log_line() {
    let dir = tmp();
    certs(dir.path());
    let mut server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let host = "evil\u{2028}x\" forged=1 \u{85}y\u{2029}";
    let (_client, locals) = forwards(dir.path(), server.tcp, &[format!("{host}:80")]);
    let mut conn = TcpStream::connect(locals[0]).expect("connect forward");
    conn.write_all(b"hello").expect("write");
    let line = server.proc.wait_for("tunnel refused");
    for raw in ['\u{2028}', '\u{2029}', '\u{85}'] {
        assert!(!line.contains(raw), "raw {raw:?} in {line:?}");
    }
    assert!(line.contains("\\u{2028}"), "{line}");
    // The host is one quoted value: `forged=1` is inside the quotes, not a field of its own.
    assert!(
        line.contains("destination=\"evil\\u{2028}x\\\" forged=1"),
        "{line}"
    );
}

#[test]
fn a_server_warns_about_a_key_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    certs(dir.path());
    let key = dir.path().join("server-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--allow-all"];
    let (ca, cert) = (dir.path().join("ca.pem"), dir.path().join("server.pem"));
    args.extend(["--ca", s(&ca), "--cert", s(&cert), "--key", s(&key)]);
    let mut proc = Proc::spawn(&args);
    let line = proc.wait_for("readable");
    assert!(line.contains(s(&key)), "{line}");
    proc.wait_for("listening");

    // With mode 0600 there is no warning before the ready line.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let proc = Proc::spawn(&args);
    let mut before_ready = Vec::new();
    loop {
        let line = proc.lines.recv_timeout(WAIT).expect("a ready line");
        if line.contains("listening") {
            break;
        }
        before_ready.push(line);
    }
    assert!(
        before_ready.iter().all(|l| !l.contains("readable")),
        "{before_ready:#?}"
    );
}

#[test]
fn certs_never_write_through_a_symbolic_link() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tmp();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let elsewhere = dir.path().join("elsewhere");
    // A dangling link where a key goes: refused without --force, nothing created at its target.
    symlink(&elsewhere, out.join("server-key.pem")).expect("symlink");
    let run = streamproxy(&["certs", "--out", s(&out)]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("server-key.pem"));
    assert!(!elsewhere.exists(), "written through a dangling link");

    // With --force the link itself is replaced; the file it points to is untouched.
    std::fs::write(&elsewhere, "precious").expect("write");
    std::fs::create_dir(out.join("ca")).expect("mkdir ca");
    symlink(&elsewhere, out.join("ca").join("ca-key.pem")).expect("symlink");
    let run = streamproxy(&["certs", "--out", s(&out), "--force"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere).expect("read"),
        "precious"
    );
    for name in ["ca/ca-key.pem", "server-key.pem", "client-key.pem"] {
        let meta = std::fs::symlink_metadata(out.join(name)).expect("meta");
        assert!(meta.file_type().is_file(), "{name} is still a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    // ca.pem, the two leaves and their keys, and the CA's directory.
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(
        std::fs::read_dir(out.join("ca")).expect("ca dir").count(),
        2
    );
}
