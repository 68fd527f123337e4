//! End-to-end tests of the built `streamproxy` binary: certificates, server, client, probe,
//! demo, user errors and signals. Servers bind port 0 and print their addresses in their
//! ready line; the tests wait for that line, never for a fixed time.

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};

use support::*;
use test_support::blocking::{tcp_echo, udp_echo};
use test_support::payload;

#[test]
fn certs_server_and_client_forward_tcp_and_udp_byte_exact() {
    let dir = tmp();
    certs(dir.path());
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join(name))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("server-key.pem"), 0o600);
    assert_eq!(mode("client-key.pem"), 0o600);
    assert_eq!(mode("ca/ca-key.pem"), 0o600);
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    let (tcp_target, udp_target) = (tcp_echo(), udp_echo());
    for version in ["0.1.0.0", "0.1.0"] {
        let (_client, locals) = client(
            dir.path(),
            server.tcp,
            &[("tcp", tcp_target), ("udp", udp_target)],
            &["--header-version", version],
        );
        let mut conn = TcpStream::connect(locals[0]).expect("connect");
        tcp_roundtrip(&mut conn, &payload(1 << 20, 1));
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("eof");
        assert!(rest.is_empty());
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect(locals[1]).expect("connect");
        for i in 0..20 {
            udp_roundtrip(&socket, &payload(1 + i * 401, i as u64));
        }
    }
}

#[test]
fn a_server_given_by_name_is_resolved_for_tunnels_and_probes() {
    let dir = tmp();
    certs(dir.path());
    let server = server(dir.path(), &["--allow", "127.0.0.1"]);
    // `localhost` may resolve to ::1 first, where nothing listens: the next address is tried.
    let name = format!("localhost:{}", server.tcp.port());
    let (mut client, locals) = client(dir.path(), &name, &[("tcp", tcp_echo())], &[]);
    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    tcp_roundtrip(&mut conn, &payload(100_000, 3));
    drop(conn);
    let out = probe(dir.path(), &name, false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name));
    client.signal("TERM");
    assert!(client.wait_exit().success());
}

#[test]
fn probe_exit_codes_follow_server_health() {
    let dir = tmp();
    certs(dir.path());
    let other = tmp();
    certs(other.path());
    let mut server = server(dir.path(), &["--allow-all"]);
    for udp in [false, true] {
        let out = probe(dir.path(), server.tcp, udp);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another CA: the server refuses the client and the client refuses the server.
        let out = probe(other.path(), server.tcp, udp);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit().success());
    let out = probe(dir.path(), server.tcp, false);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn user_errors_are_one_line_and_a_failure_status() {
    let dir = tmp();
    certs(dir.path());
    let d = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").expect("write");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = busy.local_addr().expect("addr").to_string();
    let _keep = TcpListener::bind(&busy);
    let server = |extra: &[&str]| {
        let mut args = vec![
            "server".to_owned(),
            "--ca".into(),
            d("ca.pem"),
            "--cert".into(),
            d("server.pem"),
            "--key".into(),
            d("server-key.pem"),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no policy", server(&["--listen", "127.0.0.1:0"]), "--allow"),
        (
            "bad address",
            server(&["--listen", "nowhere", "--allow-all"]),
            "--listen",
        ),
        (
            "bad rule",
            server(&["--listen", "127.0.0.1:0", "--allow", "a b"]),
            "rule",
        ),
        ("port in use", vec![], "cannot listen"),
        (
            "missing file",
            vec![
                "server".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--allow-all".into(),
                "--ca".into(),
                d("ca.pem"),
                "--cert".into(),
                d("server.pem"),
                "--key".into(),
                d("missing.pem"),
            ],
            "missing.pem",
        ),
        (
            "unreadable key",
            vec![
                "server".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--allow-all".into(),
                "--ca".into(),
                d("ca.pem"),
                "--cert".into(),
                d("server.pem"),
                "--key".into(),
                d("ca.pem"),
            ],
            "key",
        ),
        (
            "bad config",
            server(&["--config", bad_toml.to_str().expect("utf-8"), "--allow-all"]),
            "line 3: unknown field `lisen`",
        ),
        (
            "missing config",
            server(&["--config", &d("none.toml"), "--allow-all"]),
            "none.toml",
        ),
        (
            "bad forward",
            vec!["client".into(), "--tcp".into(), "127.0.0.1:0".into()],
            "LOCAL=TARGET",
        ),
        (
            "bad header version",
            vec!["client".into(), "--header-version".into(), "2".into()],
            "header version",
        ),
        (
            "nothing to forward",
            vec![
                "client".into(),
                "--server".into(),
                "127.0.0.1:1".into(),
                "--ca".into(),
                d("ca.pem"),
                "--cert".into(),
                d("client.pem"),
                "--key".into(),
                d("client-key.pem"),
            ],
            "--tcp",
        ),
        (
            "server without a port",
            vec![
                "client".into(),
                "--server".into(),
                "agent.example".into(),
                "--ca".into(),
                d("ca.pem"),
                "--cert".into(),
                d("client.pem"),
                "--key".into(),
                d("client-key.pem"),
                "--tcp".into(),
                "127.0.0.1:0=127.0.0.1:9".into(),
            ],
            "expected HOST:PORT",
        ),
        (
            "existing certs",
            vec!["certs".into(), "--out".into(), s(dir.path()).into()],
            "--force",
        ),
        ("unknown command", vec!["serve".into()], "serve"),
    ];
    for (name, mut args, needle) in cases {
        if name == "port in use" {
            args = server(&["--listen", &busy, "--allow-all"]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = streamproxy(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: succeeded");
        // One line, and clap's suggestions (`tip: ...`) after it.
        let lines = err.lines().filter(|l| !l.starts_with("streamproxy: tip:"));
        assert_eq!(lines.count(), 1, "{name}: not one line: {err}");
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn demo_exits_zero() {
    let out = streamproxy(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[test]
fn sigterm_lets_a_live_tunnel_finish_then_exits_zero() {
    let dir = tmp();
    certs(dir.path());
    let mut server = server(dir.path(), &["--allow-all"]);
    let (_client, locals) = client(dir.path(), server.tcp, &[("tcp", tcp_echo())], &[]);
    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    tcp_roundtrip(&mut conn, b"before");
    server.proc.signal("TERM");
    server.proc.wait_for("draining");
    tcp_roundtrip(&mut conn, &payload(100_000, 7));
    assert!(
        server.proc.child.try_wait().expect("try_wait").is_none(),
        "server waits for the tunnel"
    );
    drop(conn);
    assert!(server.proc.wait_exit().success());
}

#[test]
fn sighup_reloads_certificates_for_new_tunnels_while_a_live_one_continues() {
    let dir = tmp();
    certs(dir.path());
    let old = tmp();
    for f in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(dir.path().join(f), old.path().join(f)).expect("copy");
    }
    let mut server = server(dir.path(), &["--allow-all"]);
    let (_client, locals) = client(old.path(), server.tcp, &[("tcp", tcp_echo())], &[]);
    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    tcp_roundtrip(&mut conn, b"before");

    // A bad reload (a key that is not a key) is logged and changes nothing.
    let key = dir.path().join("server-key.pem");
    let good_key = std::fs::read(&key).expect("read key");
    std::fs::write(&key, b"not a key").expect("write");
    server.proc.signal("HUP");
    server.proc.wait_for("reload failed");
    assert_eq!(probe(old.path(), server.tcp, false).status.code(), Some(0));
    std::fs::write(&key, good_key).expect("write");

    // New certificates from a new CA.
    certs(dir.path());
    server.proc.signal("HUP");
    server.proc.wait_for("reloaded");
    assert_eq!(probe(dir.path(), server.tcp, false).status.code(), Some(0));
    assert_eq!(probe(dir.path(), server.udp, true).status.code(), Some(0));
    assert_eq!(probe(old.path(), server.tcp, false).status.code(), Some(1));
    // The tunnel opened before the reload carries on.
    tcp_roundtrip(&mut conn, b"after the reload");
}

/// `-v` raises our own log targets only: the server's debug lines appear, rustls' internal
/// ones ("decided upon suite", logged at debug for every handshake) do not.
#[test]
fn verbose_raises_our_targets_not_the_libraries() {
    let dir = tmp();
    certs(dir.path());
    let mut server = server(dir.path(), &["--allow", "127.0.0.1", "-vv"]);
    let out = probe(dir.path(), server.tcp, false);
    assert!(out.status.success());
    server.proc.wait_for("health check");
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit().success());
    let lines: Vec<String> = server.proc.lines.try_iter().collect();
    assert!(
        !lines.iter().any(|l| l.contains("decided upon suite")),
        "{lines:#?}"
    );
}

/// Every missing required option is named in one run, and clap's suggestions are kept.
#[test]
fn usage_errors_name_everything_missing_and_keep_suggestions() {
    let out = streamproxy(&["server", "--allow", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for missing in ["--listen", "--cert", "--key", "--ca"] {
        assert!(err.contains(missing), "{err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = streamproxy(&["client", "--tcp", "127.0.0.1:0=127.0.0.1:7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    for missing in ["--server", "--ca", "--cert", "--key"] {
        assert!(err.contains(missing), "{err}");
    }
    let out = streamproxy(&["server", "--allow-al"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tip: a similar argument exists: '--allow-all'"),
        "{err}"
    );
}

/// Durations use one syntax everywhere: `500ms`, `1h30m`, a bare number of seconds.
#[test]
fn durations_read_the_same_in_flags_and_the_file() {
    let dir = tmp();
    certs(dir.path());
    // A port where nothing listens: the probe fails within its timeout, not the default 5 s.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let mut args: Vec<String> = vec!["probe".into()];
    args.extend(client_args(dir.path(), addr));
    args.extend(["--timeout".into(), "500ms".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = streamproxy(&refs);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    for bad in ["0s", "5 parsecs", "-1s"] {
        let mut args = refs.clone();
        *args.last_mut().expect("timeout") = bad;
        let out = streamproxy(&args);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "[server]\ndrain_period = \"1h30m\"\nheader_timeout = \"1500ms\"\n",
    )
    .expect("config");
    let mut server = server(
        dir.path(),
        &["--allow", "127.0.0.1", "--config", s(&config)],
    );
    server.proc.signal("TERM");
    let line = server.proc.wait_for("draining");
    assert!(line.contains("drain=5400s"), "{line}");
}

/// `server --check` loads everything the server would, prints the effective configuration and
/// exits, without binding the configured address.
#[test]
fn server_check_validates_and_prints_the_effective_configuration() {
    let dir = tmp();
    certs(dir.path());
    let d = |f: &str| s(&dir.path().join(f)).to_owned();
    // The configured port is taken: --check does not bind it.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = busy.local_addr().expect("addr").to_string();
    let (ca, cert, key, wrong_key) = (
        d("ca.pem"),
        d("server.pem"),
        d("server-key.pem"),
        d("client-key.pem"),
    );
    let base = |key: &str| {
        vec![
            "server", "--check", "--listen", &listen, "--ca", &ca, "--cert", &cert, "--key", key,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
    };
    let mut args = base(&key);
    args.extend(
        [
            "--allow",
            "10.0.0.0/8:22,443",
            "--allow",
            "*.svc.internal",
            "--deny",
            "10.0.0.1",
        ]
        .map(str::to_owned),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = streamproxy(&refs);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("configuration is valid"), "{text}");
    for line in [
        "allow                  10.0.0.0/8:22,443",
        "allow                  *.svc.internal",
        "deny                   10.0.0.1",
        "max_handshakes         256",
        &format!("listen                 {listen}"),
    ] {
        assert!(text.contains(line), "{text} lacks {line}");
    }
    let mut args = base(&wrong_key);
    args.push("--allow-all".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = streamproxy(&refs);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");
    assert!(out.stdout.is_empty());
}
