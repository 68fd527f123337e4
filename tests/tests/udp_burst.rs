//! UDP under a burst: 50 DTLS sessions open at once, each with 64 datagrams of 512 bytes in
//! flight, through the server to an echo. Every session must be accepted (its header is its
//! first record: a header lost in a full socket buffer means a refused session) and every
//! datagram must come back, exactly once. With the kernel's default buffers on the server's
//! listener socket this loses sessions and datagrams; the server's 4 MiB buffers hold it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use streamproxy::dtls::UdpBuffers;
use streamproxy::proto::Header;
use streamproxy::proxy::settings::Settings;
use streamproxy::proxy::udp;
use streamproxy_e2e::fixture::{self, Pki, allow_all};

const SESSIONS: usize = 50;
const DATAGRAMS: u32 = 200;
const IN_FLIGHT: u32 = 64;
const SIZE: usize = 512;

/// An echo whose own socket does not drop the burst.
fn big_echo() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    UdpBuffers::default().apply(&socket);
    test_support::udp_echo_on(socket)
}

fn datagram(session: usize, seq: u32) -> Vec<u8> {
    let mut d = fixture::payload(SIZE, (session as u64) << 32 | u64::from(seq));
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// One session's run: the sequence numbers that came back intact.
async fn run_session(
    server: SocketAddr,
    config: Arc<streamproxy::dtls::ClientConfig>,
    echo: SocketAddr,
    session: usize,
) -> Result<HashSet<u32>, String> {
    let header = Header::with_port("127.0.0.1", echo.port()).map_err(|e| e.to_string())?;
    let tunnel = udp::connect(server, &config, &header)
        .await
        .map_err(|e| format!("session {session}: {e}"))?;
    let (send, mut recv) = tunnel.into_split();
    let mut back = HashSet::new();
    let mut next = 0;
    while next < IN_FLIGHT {
        send.send(&datagram(session, next))
            .await
            .map_err(|e| e.to_string())?;
        next += 1;
    }
    let mut buf = vec![0u8; 2048];
    while (back.len() as u32) < DATAGRAMS {
        let n = match tokio::time::timeout(Duration::from_secs(3), recv.recv(&mut buf)).await {
            Ok(Ok(Some(n))) => n,
            // A stall: what is missing is lost.
            Err(_) => break,
            Ok(Ok(None)) => return Err(format!("session {session}: closed by the server")),
            Ok(Err(e)) => return Err(format!("session {session}: {e}")),
        };
        let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if buf[..n] != datagram(session, seq)[..] {
            return Err(format!("session {session}: datagram {seq} corrupted"));
        }
        if !back.insert(seq) {
            return Err(format!("session {session}: datagram {seq} twice"));
        }
        if next < DATAGRAMS {
            send.send(&datagram(session, next))
                .await
                .map_err(|e| e.to_string())?;
            next += 1;
        }
    }
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_bursting_at_once_lose_nothing() {
    let pki = Pki::new();
    let settings = Settings::default().drain_period(Duration::from_millis(200));
    let server = fixture::start(pki.builder(allow_all(), settings)).await;
    let echo = big_echo();
    let config = Arc::new(pki.dtls_client());
    let runs: Vec<_> = (0..SESSIONS)
        .map(|s| tokio::spawn(run_session(server.udp, Arc::clone(&config), echo, s)))
        .collect();
    let mut lost = 0;
    let mut failed = Vec::new();
    for run in runs {
        match run.await.expect("session task") {
            Ok(back) => lost += DATAGRAMS as usize - back.len(),
            Err(e) => failed.push(e),
        }
    }
    let header_errors = server.metrics.encode();
    let rejected: Vec<&str> = header_errors
        .lines()
        .filter(|l| l.starts_with("streamproxy_header_errors_total{transport=\"udp\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(failed.is_empty(), "sessions failed: {failed:#?}");
    assert!(rejected.is_empty(), "sessions refused: {rejected:?}");
    assert_eq!(
        lost,
        0,
        "datagrams lost of {}",
        SESSIONS * DATAGRAMS as usize
    );
    let drops = fixture::metric(&server.metrics, "streamproxy_udp_socket_drops_total", &[]);
    assert_eq!(drops, 0, "the listener's socket dropped datagrams");
    server.stop().await;
}
