//! The HTTPS API of the real binary. A GoDoxy server adopting `streamproxy server` as its agent,
//! step by step as GoDoxy's `AgentConfig.InitWithCerts` does it: TLS (>= 1.2, server name
//! `godoxy.agent`, client certificate) **offering no ALPN**, `GET /godoxy/agent/info`, the JSON
//! read into its three fields, then a TCP and a UDP health check. The routing rules behind it
//! (a header sent without the stream ALPN is never relayed), bad input on the endpoints, and the
//! API's limits: idle connections, a connection cap apart from the tunnels, shutdown.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamproxy::proto::Header;
use streamproxy::proxy::{tcp, udp};
use support::{Server, certs, s, server, tmp};
use test_support::blocking::tcp_echo;

/// A rustls client config with our test client certificate and the given ALPN offer (GoDoxy's
/// HTTP client offers none). `cert = false` presents no certificate.
fn rustls_config(dir: &Path, alpn: &[&str], cert: bool) -> Arc<rustls::ClientConfig> {
    let ca = streamproxy::tls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca");
    let id = streamproxy::tls::Identity::from_pem_files(
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    )
    .expect("identity");
    let ours = streamproxy::tls::ClientConfig::builder(&ca, &id)
        .build()
        .expect("config");
    let mut config = (*ours.rustls()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !cert {
        let mut store = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_file_iter(dir.join("ca.pem")).expect("ca") {
            store.add(c.expect("ca cert")).expect("add ca");
        }
        config = rustls::ClientConfig::builder_with_provider(streamproxy::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(store)
            .with_no_client_auth();
    }
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(server: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let name = rustls_pki_types::ServerName::try_from("godoxy.agent").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(server)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake to its end (and so the server's verdict on our certificate).
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `request` and reads until the server closes; returns the whole response.
fn exchange(tls: &mut Tls, request: &[u8]) -> String {
    tls.write_all(request).expect("write request");
    tls.flush().expect("flush");
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            // A close without close_notify, or a reset after the answer: what came counts.
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn get(server: SocketAddr, config: Arc<rustls::ClientConfig>, method: &str, path: &str) -> String {
    let mut tls = connect(server, config).expect("connect");
    exchange(
        &mut tls,
        format!("{method} {path} HTTP/1.1\r\nHost: godoxy.agent\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn client_configs(
    dir: &Path,
) -> (
    streamproxy::tls::ClientConfig,
    streamproxy::dtls::ClientConfig,
) {
    let ca = streamproxy::tls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("ca");
    let id = streamproxy::tls::Identity::from_pem_files(
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    )
    .expect("identity");
    let tls = streamproxy::tls::ClientConfig::builder(&ca, &id)
        .build()
        .expect("tls");
    let dtls = streamproxy::dtls::ClientConfig::new(
        streamproxy::dtls::Identity::from_pem_files(
            dir.join("client.pem"),
            dir.join("client-key.pem"),
        )
        .expect("dtls identity"),
        streamproxy::dtls::CaCerts::from_pem_file(dir.join("ca.pem")).expect("dtls ca"),
    );
    (tls, dtls)
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--allow", "127.0.0.1"];
    args.extend_from_slice(extra);
    server(dir, &args)
}

#[test]
fn godoxy_adopts_the_server_as_an_agent() {
    let dir = tmp();
    certs(dir.path());
    let server = start(dir.path(), &["--agent-name", "edge-1"]);

    // 1. GET /godoxy/agent/info over TLS without ALPN.
    let r = get(
        server.tcp,
        rustls_config(dir.path(), &[], true),
        "GET",
        "/godoxy/agent/info",
    );
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/json\r\n"),
        "{r}"
    );
    let info: serde_json::Value = serde_json::from_str(body(&r)).expect("JSON body");
    let fields = info.as_object().expect("a JSON object");
    assert_eq!(fields.len(), 3, "{info}");
    assert_eq!(info["name"], "edge-1");
    assert_eq!(info["runtime"], "docker");
    let version = info["version"].as_str().expect("version is a string");
    let parts: Vec<&str> = version
        .strip_prefix('v')
        .expect("GoDoxy's vMAJOR.MINOR.PATCH")
        .split('.')
        .collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{version}");

    // 2. The TCP and UDP health checks (0.1.0 header with the close flag).
    let (tls, dtls) = client_configs(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        tcp::health_check(server.tcp, &tls, Duration::from_secs(10))
            .await
            .expect("TCP health check: supports_tcp_stream");
        udp::health_check(server.udp, &dtls, Duration::from_secs(10))
            .await
            .expect("UDP health check: supports_udp_stream");
    });
}

#[test]
fn the_agent_name_defaults_to_the_host_name() {
    let dir = tmp();
    certs(dir.path());
    let server = start(dir.path(), &[]);
    let r = get(
        server.tcp,
        rustls_config(dir.path(), &[], true),
        "GET",
        "/godoxy/agent/info",
    );
    let info: serde_json::Value = serde_json::from_str(body(&r)).expect("JSON body");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    assert_eq!(info["name"], host.trim(), "{r}");
}

/// A header that arrives on a connection that did not negotiate the stream protocol goes to the
/// API (which answers 400), or is closed when the API is off: it is never relayed.
#[test]
fn a_header_sent_without_the_stream_alpn_is_not_relayed() {
    let dir = tmp();
    certs(dir.path());
    let echo = tcp_echo();
    let header = Header::with_port("127.0.0.1", echo.port())
        .expect("header")
        .to_bytes()
        .expect("encode");
    let mut request = header.to_vec();
    request.extend_from_slice(b"relay me\n");
    for (extra, alpn) in [
        (&[][..], &[][..]),
        (&[][..], &["http/1.1"][..]),
        (&["--no-api"][..], &[][..]),
    ] {
        let server = start(dir.path(), extra);
        let mut tls = connect(server.tcp, rustls_config(dir.path(), alpn, true)).expect("connect");
        let r = exchange(&mut tls, &request);
        assert!(
            !r.contains("relay me"),
            "relayed with {extra:?} {alpn:?}: {r}"
        );
        if extra.is_empty() {
            assert!(r.starts_with("HTTP/1.1 400"), "{extra:?} {alpn:?}: {r}");
        } else {
            assert!(r.is_empty(), "{r}");
        }
    }
    // The same header with the stream ALPN is relayed (so the check above can fail).
    let server = start(dir.path(), &[]);
    let mut tls = connect(
        server.tcp,
        rustls_config(dir.path(), &["godoxy-agent-stream/1"], true),
    )
    .expect("connect");
    tls.write_all(&request).expect("write");
    let mut echoed = [0u8; 9];
    tls.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"relay me\n");
}

#[test]
fn an_unknown_alpn_protocol_is_refused_in_the_handshake() {
    let dir = tmp();
    certs(dir.path());
    let server = start(dir.path(), &[]);
    let refused = connect(server.tcp, rustls_config(dir.path(), &["h2"], true));
    let Err(e) = refused else {
        panic!("the handshake offering only h2 succeeded");
    };
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
}

#[test]
fn bad_requests_on_the_agent_api_get_clear_answers() {
    let dir = tmp();
    certs(dir.path());
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "[server]\napi_header_timeout = \"1s\"\napi_idle_timeout = \"1s\"\n",
    )
    .expect("config");
    let mut server = start(dir.path(), &["--config", s(&config)]);
    let with_cert = rustls_config(dir.path(), &[], true);

    // Wrong method.
    let r = get(server.tcp, with_cert.clone(), "POST", "/godoxy/agent/info");
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.to_ascii_lowercase().contains("\r\nallow: get\r\n"), "{r}");
    // Another agent path: JSON 404.
    let r = get(
        server.tcp,
        with_cert.clone(),
        "GET",
        "/godoxy/agent/system_info",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let e: serde_json::Value = serde_json::from_str(body(&r)).expect("JSON error");
    assert_eq!(e["error"], "not found");
    // A path longer than the request limit.
    let long = format!("/godoxy/agent/{}", "x".repeat(40 * 1024));
    let r = get(server.tcp, with_cert.clone(), "GET", &long);
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 414"),
        "{}",
        &r[..r.len().min(200)]
    );
    // No client certificate: refused in the handshake, as for tunnels.
    let refused = connect(server.tcp, rustls_config(dir.path(), &[], false)).and_then(|mut tls| {
        tls.write_all(b"GET /godoxy/agent/info HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf)
    });
    assert!(refused.is_err(), "{refused:?}");
    // A slow request (one byte at a time, never finished) is closed by the header timeout.
    let mut tls = connect(server.tcp, with_cert.clone()).expect("connect");
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /godoxy/agent/info HTTP/1.1\r\nHost: slow\r\n"
        .iter()
        .cycle()
        .take(400)
    {
        if tls.write_all(&[*b]).and_then(|()| tls.flush()).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a slow request was kept open");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // A connection that sends nothing is closed by the idle timeout.
    let mut tls = connect(server.tcp, with_cert).expect("connect");
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let n = tls.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Nothing of this is a panic or a flood of log lines.
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit().success());
    let lines: Vec<String> = server.proc.lines.try_iter().collect();
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:#?}");
    assert!(lines.len() < 20, "{lines:#?}");
}

fn keep_alive_get(tls: &mut Tls, path: &str) -> String {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: godoxy.agent\r\n\r\n").as_bytes())
        .expect("write");
    tls.flush().expect("flush");
    // One response: the head, then Content-Length bytes.
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tls.read(&mut buf).expect("read");
        assert!(n > 0, "closed before a whole response");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

fn config_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A metrics scraper between scrapes holds an idle keep-alive connection; SIGTERM must not wait
/// the drain period (30 s by default) for it.
#[test]
fn sigterm_closes_an_idle_keep_alive_api_connection_at_once() {
    let dir = tmp();
    certs(dir.path());
    let config = config_file(
        dir.path(),
        "[server]\napi_idle_timeout = \"1h\"\napi_header_timeout = \"1h\"\n",
    );
    let mut server = start(dir.path(), &["--config", s(&config)]);
    let mut scraper = connect(server.tcp, rustls_config(dir.path(), &[], true)).expect("connect");
    let r = keep_alive_get(&mut scraper, "/metrics");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let started = Instant::now();
    server.proc.signal("TERM");
    assert!(server.proc.wait_exit().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        scraper.read(&mut buf).unwrap_or(0),
        0,
        "the connection was closed"
    );
}

/// API connections have their own cap: idle API clients cannot take the descriptors tunnels
/// need, and the refusals are counted.
#[test]
fn api_connections_beyond_their_limit_are_closed_and_tunnels_still_work() {
    let dir = tmp();
    certs(dir.path());
    let config = config_file(
        dir.path(),
        "[server]\napi_max_connections = 4\napi_idle_timeout = \"1h\"\napi_header_timeout = \"1h\"\n",
    );
    let server = start(dir.path(), &["--config", s(&config)]);
    let config = rustls_config(dir.path(), &[], true);
    let mut held: Vec<Tls> = (0..4)
        .map(|_| connect(server.tcp, config.clone()).expect("connect"))
        .collect();
    // Each held connection is served (so it holds a permit before the next one comes).
    for tls in &mut held {
        assert!(keep_alive_get(tls, "/health").starts_with("HTTP/1.1 200"));
    }
    for _ in 0..3 {
        let r = get(server.tcp, config.clone(), "GET", "/health");
        assert!(r.is_empty(), "served beyond the limit: {r}");
    }
    // Tunnels are not affected.
    let echo = tcp_echo();
    let header = Header::with_port("127.0.0.1", echo.port())
        .expect("header")
        .to_bytes()
        .expect("encode");
    let mut tunnel = connect(
        server.tcp,
        rustls_config(dir.path(), &["godoxy-agent-stream/1"], true),
    )
    .expect("tunnel");
    tunnel.write_all(&header).expect("header");
    tunnel.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    let metrics = keep_alive_get(&mut held[0], "/metrics");
    assert!(
        metrics.contains("streamproxy_api_refusals_total 3"),
        "{metrics}"
    );
    // A freed slot is usable again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(server.tcp, config.clone(), "GET", "/health");
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain-HTTP GET on any byte stream; returns the whole response.
fn plain_get<S: Read + Write>(mut stream: S, path: &str) -> String {
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// The status listener serves /health and /metrics without TLS (on TCP and on a unix
/// socket), and no agent API; the client has one too, with its forwarders' counters.
#[test]
fn status_listeners_serve_health_and_metrics_in_plain_http() {
    let dir = tmp();
    certs(dir.path());
    let mut server = start(dir.path(), &["--status-listen", "127.0.0.1:0"]);
    let line = server.proc.wait_for("status listening");
    let status = support::field(&line, "addr");
    let r = plain_get(TcpStream::connect(status).expect("connect"), "/health");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
    let r = plain_get(TcpStream::connect(status).expect("connect"), "/metrics");
    assert!(
        r.contains("streamproxy_tunnels_active{transport=\"tcp\"} 0"),
        "{r}"
    );
    assert!(r.contains("streamproxy_udp_socket_drops_total 0"), "{r}");
    let r = plain_get(
        TcpStream::connect(status).expect("connect"),
        "/godoxy/agent/info",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");

    let socket = dir.path().join("status.sock");
    let unix = format!("unix:{}", s(&socket));
    let mut unix_server = start(dir.path(), &["--status-listen", &unix]);
    unix_server.proc.wait_for("status listening");
    let conn = std::os::unix::net::UnixStream::connect(&socket).expect("unix socket");
    let r = plain_get(conn, "/health");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // The client's own status listener: its forwarders' counters.
    let echo = tcp_echo();
    let mut args = vec![
        "client".to_owned(),
        "--status-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--tcp".to_owned(),
        format!("127.0.0.1:0={echo}"),
    ];
    args.extend(support::client_args(dir.path(), server.tcp));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = support::Proc::spawn(&refs);
    let local = support::field(&client.wait_for("forwarding"), "local");
    let status = support::field(&client.wait_for("status listening"), "addr");
    let mut conn = TcpStream::connect(local).expect("connect");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo");
    let r = plain_get(TcpStream::connect(status).expect("connect"), "/metrics");
    let opened =
        format!("streamproxy_client_tunnels_opened_total{{transport=\"tcp\",local=\"{local}\"}} 1");
    assert!(r.contains(&opened), "{r}");
}
