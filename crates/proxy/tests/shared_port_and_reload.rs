//! The HTTPS API on the stream port (checked with curl), and live certificate reload.

mod support;

use std::process::Command;
use std::time::Duration;

use proto::Header;
use streamproxy_proxy::settings::Settings;
use streamproxy_proxy::{tcp, udp};
use support::{Pki, allow_all, start};
use test_support::{tcp_echo, udp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn curl(pki: &Pki, port: u16, path: &str) -> Option<String> {
    let output = match Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "10",
            "--http1.1",
        ])
        .arg("--cert")
        .arg(&pki.client.cert)
        .arg("--key")
        .arg(&pki.client.key)
        .arg("--cacert")
        .arg(pki.ca.ca_path())
        .arg("--resolve")
        .arg(format!("godoxy.agent:{port}:127.0.0.1"))
        .arg(format!("https://godoxy.agent:{port}{path}"))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: curl is not available ({e}); `cargo xtask ci` installs it");
            return None;
        }
    };
    assert!(
        output.status.success(),
        "curl {path} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_health_and_metrics_while_a_tunnel_runs_on_the_same_port() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut tunnel = tcp::connect(server.tcp, &pki.tls_client(), &header)
        .await
        .expect("tunnel");
    tunnel.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.expect("echo");

    let port = server.tcp.port();
    // curl blocks this worker; the server runs on the other one.
    let health = tokio::task::block_in_place(|| curl(&pki, port, "/health"));
    let metrics = tokio::task::block_in_place(|| curl(&pki, port, "/metrics"));
    if let (Some(health), Some(metrics)) = (health, metrics) {
        assert_eq!(health, "ok");
        assert!(
            metrics.contains("streamproxy_tunnels_active{transport=\"tcp\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE streamproxy_bytes counter"),
            "{metrics}"
        );
    }
    // The tunnel is unaffected.
    tunnel.write_all(b"pong").await.expect("write");
    tunnel.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"pong");
    tunnel.shutdown().await.expect("close");
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).await.expect("eof");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_new_certificates_to_new_clients_and_keeps_live_tunnels() {
    let pki = Pki::new();
    let settings = Settings::default().drain_period(Duration::from_millis(200));
    let server = start(&pki, allow_all(), settings).await;
    let echo = tcp_echo().await;
    let udp_dest = udp_echo().await;
    let old_tls = pki.tls_client();
    let old_dtls = pki.dtls_client();
    let header = Header::with_port("127.0.0.1", echo.port()).expect("header");
    let mut live = tcp::connect(server.tcp, &old_tls, &header)
        .await
        .expect("tunnel");
    let udp_header = Header::with_port("127.0.0.1", udp_dest.port()).expect("header");
    let mut live_udp = udp::connect(server.udp.expect("udp"), &old_dtls, &udp_header)
        .await
        .expect("session");

    // A bad reload is refused and changes nothing.
    let server_cert = std::fs::read(&pki.server.cert).expect("read cert");
    std::fs::write(&pki.server.cert, b"not a certificate").expect("write");
    assert!(server.reloader.reload().is_err());
    std::fs::write(&pki.server.cert, &server_cert).expect("restore");
    tcp::health_check(server.tcp, &old_tls, Duration::from_secs(5))
        .await
        .expect("old material still in force");

    // Replace everything with material from a new CA.
    let next = Pki::new();
    std::fs::copy(&next.server.cert, &pki.server.cert).expect("copy cert");
    std::fs::copy(&next.server.key, &pki.server.key).expect("copy key");
    std::fs::copy(next.ca.ca_path(), pki.ca.ca_path()).expect("copy ca");
    server.reloader.reload().expect("reload");

    // New handshakes use the new material: old clients are refused, new ones served.
    assert!(
        tcp::health_check(server.tcp, &old_tls, Duration::from_secs(5))
            .await
            .is_err()
    );
    tcp::health_check(server.tcp, &next.tls_client(), Duration::from_secs(5))
        .await
        .expect("new client over TLS");
    udp::health_check(
        server.udp.expect("udp"),
        &next.dtls_client(),
        Duration::from_secs(5),
    )
    .await
    .expect("new client over DTLS");

    // Live tunnels carry on.
    live.write_all(b"still").await.expect("write");
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"still");
    live_udp.send(b"alive").await.expect("send");
    let mut dbuf = vec![0u8; live_udp.max_payload()];
    let n = tokio::time::timeout(Duration::from_secs(5), live_udp.recv(&mut dbuf))
        .await
        .expect("in time")
        .expect("recv")
        .expect("open");
    assert_eq!(&dbuf[..n], b"alive");
    server.stop().await;
}
