//! The client-side forwarders against a real server: byte-exact relaying, one tunnel per
//! connection or source, a wildcard UDP forwarder answering from the address each source
//! reached, failures closing the local side, oversize datagrams, idle eviction, shutdown, and a
//! server name resolved again for every tunnel.

mod support;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamproxy_proxy::dial::{BoxFuture, Resolve};
use streamproxy_proxy::forward::{
    ForwardCounts, ForwardStats, ServerAddr, TcpForwarder, UdpForwarder,
};
use streamproxy_proxy::metrics::Transport;
use streamproxy_proxy::settings::Settings;
use support::{Pki, allow_all, start};
use test_support::{payload, tcp_echo, udp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LOCAL: &str = "127.0.0.1:0";

/// A forwarder running in a task, stopped by `stop`.
struct Running {
    local: SocketAddr,
    stats: ForwardStats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("forwarder stops in time")
            .expect("forwarder task");
    }
}

fn run_tcp(forwarder: TcpForwarder) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let local = forwarder.local_addr();
    let stats = forwarder.stats();
    let task = tokio::spawn(forwarder.run(async move {
        let _ = stopped.await;
    }));
    Running {
        local,
        stats,
        stop,
        task,
    }
}

fn run_udp(forwarder: UdpForwarder) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let local = forwarder.local_addr();
    let stats = forwarder.stats();
    let task = tokio::spawn(forwarder.run(async move {
        let _ = stopped.await;
    }));
    Running {
        local,
        stats,
        stop,
        task,
    }
}

/// Waits (bounded) until the counters satisfy `done`.
async fn until(stats: &ForwardStats, done: impl Fn(&ForwardCounts) -> bool) -> ForwardCounts {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = stats.snapshot();
        if done(&counts) {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn echo_over_tcp(local: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut conn = TcpStream::connect(local).await.expect("connect locally");
    let (mut r, mut w) = conn.split();
    let write = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let ((), read) = tokio::join!(write, read);
    read.expect("read echo");
    back
}

#[tokio::test]
async fn tcp_forwarder_gives_every_connection_its_own_tunnel_in_both_header_versions() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    for version in proto::Version::ALL {
        let forwarder = TcpForwarder::bind(
            LOCAL.parse().expect("addr"),
            server.tcp,
            pki.tls_client(),
            echo.to_string().parse().expect("target"),
        )
        .await
        .expect("bind")
        .header_version(version);
        let running = run_tcp(forwarder);
        let clients: Vec<_> = (0..4u64)
            .map(|i| {
                let data = payload(100_000 + i as usize, i);
                let local = running.local;
                tokio::spawn(async move { (echo_over_tcp(local, data.clone()).await, data) })
            })
            .collect();
        for client in clients {
            let (back, sent) = client.await.expect("client");
            assert!(back == sent, "echo differs ({version})");
        }
        let counts = until(&running.stats, |c| c.tunnels_closed == 4).await;
        assert_eq!(counts.tunnels_opened, 4);
        assert_eq!(counts.tunnels_failed, 0);
        assert_eq!(counts.bytes_up, 400_006);
        assert_eq!(counts.bytes_down, 400_006);
        running.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn tcp_forwarder_closes_the_local_connection_when_the_tunnel_fails() {
    let pki = Pki::new();
    // A port nothing listens on.
    let closed = {
        let listener = TcpListener::bind(LOCAL).await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let forwarder = TcpForwarder::bind(
        LOCAL.parse().expect("addr"),
        closed,
        pki.tls_client(),
        "127.0.0.1:9".parse().expect("target"),
    )
    .await
    .expect("bind");
    let running = run_tcp(forwarder);
    let mut conn = TcpStream::connect(running.local).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the local connection is closed without data");
    let counts = until(&running.stats, |c| c.tunnels_failed == 1).await;
    assert_eq!(counts.tunnels_opened, 0);
    running.stop().await;
}

#[tokio::test]
async fn tcp_forwarder_refuses_a_server_from_another_ca() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = start(&other, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let forwarder = TcpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.tcp,
        pki.tls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind");
    let running = run_tcp(forwarder);
    let mut conn = TcpStream::connect(running.local).await.expect("connect");
    let _ = conn.write_all(b"hello").await;
    let mut back = Vec::new();
    // A clean close or a reset (the unread "hello"), never data.
    let _ = conn.read_to_end(&mut back).await;
    assert!(back.is_empty());
    until(&running.stats, |c| c.tunnels_failed == 1).await;
    running.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn tcp_forwarder_shutdown_lets_a_live_tunnel_finish() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let forwarder = TcpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.tcp,
        pki.tls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind")
    .drain_period(Duration::from_secs(10));
    let running = run_tcp(forwarder);
    let local = running.local;
    let mut conn = TcpStream::connect(local).await.expect("connect");
    conn.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).await.expect("echo");
    let _ = running.stop.send(());
    // The listener goes away, the live tunnel keeps working.
    conn.write_all(b"after!").await.expect("write during drain");
    conn.read_exact(&mut buf).await.expect("echo during drain");
    assert_eq!(&buf, b"after!");
    conn.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("eof");
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("forwarder ends after its tunnel")
        .expect("task");
    assert!(
        TcpStream::connect(local).await.is_err(),
        "no longer listening"
    );
    server.stop().await;
}

#[tokio::test]
async fn udp_forwarder_gives_every_source_its_own_tunnel_and_answers_it() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let udp = server.udp.expect("udp served");
    for version in proto::Version::ALL {
        let target: streamproxy_proxy::Destination = echo.to_string().parse().expect("target");
        let forwarder =
            UdpForwarder::bind(LOCAL.parse().expect("addr"), udp, pki.dtls_client(), target)
                .await
                .expect("bind")
                .header_version(version);
        let running = run_udp(forwarder);
        let mut sources = Vec::new();
        for _ in 0..3 {
            let socket = UdpSocket::bind(LOCAL).await.expect("bind source");
            socket.connect(running.local).await.expect("connect");
            sources.push(socket);
        }
        // Every source sends its first datagram at once: the tunnels are created concurrently.
        for (i, socket) in sources.iter().enumerate() {
            socket.send(&payload(1000, i as u64)).await.expect("send");
        }
        let mut buf = vec![0u8; 65536];
        for (i, socket) in sources.iter().enumerate() {
            let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
                .await
                .expect("echo in time")
                .expect("recv");
            assert_eq!(&buf[..n], &payload(1000, i as u64)[..]);
        }
        // More datagrams, one at a time, every byte checked.
        for (i, socket) in sources.iter().enumerate() {
            for k in 0..20u64 {
                let data = payload(1 + (k as usize * 397) % 8000, k + 100 * i as u64);
                socket.send(&data).await.expect("send");
                let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
                    .await
                    .expect("echo in time")
                    .expect("recv");
                assert_eq!(&buf[..n], &data[..]);
            }
        }
        let counts = running.stats.snapshot();
        assert_eq!(counts.tunnels_opened, 3, "{version}");
        assert_eq!(counts.datagrams_up, 63);
        assert_eq!(counts.datagrams_down, 63);
        running.stop().await;
    }
    server.stop().await;
}

/// Two applications reach a forwarder bound to `0.0.0.0` at once, one through `127.0.0.2` (not
/// the address the kernel would answer `127.0.0.1` from), one through `127.0.0.1`. Their
/// sockets are connected, so they drop datagrams from any address but the one they sent to:
/// each gets its echoes only if its tunnel answers from the address it reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_forwarder_on_a_wildcard_address_answers_each_source_from_the_address_it_reached() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let forwarder = UdpForwarder::bind(
        "0.0.0.0:0".parse().expect("addr"),
        server.udp.expect("udp"),
        pki.dtls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind");
    let running = run_udp(forwarder);
    let port = running.local.port();
    let mut sources = Vec::new();
    for reached in [[127, 0, 0, 2], [127, 0, 0, 1]] {
        let socket = UdpSocket::bind(LOCAL).await.expect("bind source");
        let reached = SocketAddr::from((reached, port));
        socket.connect(reached).await.expect("connect");
        sources.push((reached, socket));
    }
    let mut buf = vec![0u8; 65536];
    for k in 0..10u64 {
        // Both sources send before either reads: their tunnels open, and carry, side by side.
        let datagram = |i: u64| payload(100 + (k as usize * 397) % 4000, k + 100 * i);
        for (i, (_, socket)) in sources.iter().enumerate() {
            socket.send(&datagram(i as u64)).await.expect("send");
        }
        for (i, (reached, socket)) in sources.iter().enumerate() {
            let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no echo of datagram {k} through {reached}"))
                .expect("recv");
            assert_eq!(&buf[..n], &datagram(i as u64)[..], "through {reached}");
        }
    }
    let counts = running.stats.snapshot();
    assert_eq!(counts.tunnels_opened, 2, "{counts:?}");
    assert_eq!(counts.datagrams_down, 20, "{counts:?}");
    assert_eq!(counts.dropped_other, 0, "{counts:?}");
    running.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn udp_forwarder_drops_and_counts_oversize_datagrams_without_truncating() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.udp.expect("udp"),
        pki.dtls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind");
    let running = run_udp(forwarder);
    let socket = UdpSocket::bind(LOCAL).await.expect("bind");
    socket.connect(running.local).await.expect("connect");
    let mut buf = vec![0u8; 65536];
    socket.send(b"open").await.expect("send");
    let n = socket.recv(&mut buf).await.expect("recv");
    assert_eq!(&buf[..n], b"open");
    socket.send(&payload(20_000, 1)).await.expect("send big");
    socket.send(b"after").await.expect("send");
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(
        &buf[..n],
        b"after",
        "the oversize datagram is not forwarded at all"
    );
    let counts = running.stats.snapshot();
    assert_eq!(counts.dropped_too_large, 1);
    assert_eq!(counts.datagrams_up, 2);
    running.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn udp_forwarder_frees_idle_tunnels_and_opens_a_new_one_on_the_next_datagram() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.udp.expect("udp"),
        pki.dtls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind")
    .idle_timeout(Duration::from_millis(200));
    let running = run_udp(forwarder);
    let socket = UdpSocket::bind(LOCAL).await.expect("bind");
    socket.connect(running.local).await.expect("connect");
    let mut buf = vec![0u8; 1024];
    socket.send(b"one").await.expect("send");
    socket.recv(&mut buf).await.expect("recv");
    until(&running.stats, |c| c.tunnels_closed == 1).await;
    socket.send(b"two").await.expect("send");
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"two");
    assert_eq!(running.stats.snapshot().tunnels_opened, 2);
    running.stop().await;
    let counts = running_closed_all(&server).await;
    assert!(counts);
    server.stop().await;
}

/// After the forwarder stops, the server has no UDP session left (close_notify reached it).
async fn running_closed_all(server: &support::Running) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metrics.active_tunnels(Transport::Udp) != 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn udp_forwarder_drops_datagrams_when_the_tunnel_cannot_open() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = start(&other, allow_all(), Settings::default()).await;
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.udp.expect("udp"),
        pki.dtls_client(),
        "127.0.0.1:9".parse().expect("target"),
    )
    .await
    .expect("bind");
    let running = run_udp(forwarder);
    let socket = UdpSocket::bind(LOCAL).await.expect("bind");
    socket.connect(running.local).await.expect("connect");
    socket.send(b"lost").await.expect("send");
    let counts = until(&running.stats, |c| c.tunnels_failed == 1).await;
    assert_eq!(counts.tunnels_opened, 0);
    until(&running.stats, |c| c.dropped_other == 1).await;
    running.stop().await;
    server.stop().await;
}

/// A resolver whose answer the test changes: a server that moves, or a name that does not
/// resolve yet.
#[derive(Clone, Default)]
struct MovingResolver(Arc<Mutex<Vec<IpAddr>>>);

impl MovingResolver {
    fn answer(&self, addrs: &[&str]) {
        *self.0.lock().expect("lock") = addrs.iter().map(|a| a.parse().expect("ip")).collect();
    }
}

impl Resolve for MovingResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        assert_eq!(host, "agent.test");
        let addrs = self.0.lock().expect("lock").clone();
        Box::pin(async move {
            if addrs.is_empty() {
                Err(io::Error::new(io::ErrorKind::NotFound, "no such name yet"))
            } else {
                Ok(addrs)
            }
        })
    }
}

#[tokio::test]
async fn tcp_forwarder_resolves_the_server_name_for_every_tunnel_tries_each_address_and_keeps_the_last_good()
 {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = tcp_echo().await;
    let resolver = MovingResolver::default();
    let name: ServerAddr = format!("agent.test:{}", server.tcp.port())
        .parse()
        .expect("name");
    let forwarder = TcpForwarder::bind(
        LOCAL.parse().expect("addr"),
        name,
        pki.tls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind")
    .resolver(resolver.clone());
    let running = run_tcp(forwarder);

    // The name does not resolve yet: the tunnel fails and the local connection is closed.
    let mut conn = TcpStream::connect(running.local).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    until(&running.stats, |c| c.tunnels_failed == 1).await;

    // Now it does, first to an address where nothing listens: the next address is tried.
    resolver.answer(&["127.0.0.2", "127.0.0.1"]);
    let data = payload(50_000, 7);
    assert!(echo_over_tcp(running.local, data.clone()).await == data);
    until(&running.stats, |c| c.tunnels_closed == 1).await;

    // The resolver fails again (DNS down): the last addresses that worked are used.
    resolver.answer(&[]);
    assert!(echo_over_tcp(running.local, data.clone()).await == data);
    let counts = until(&running.stats, |c| c.tunnels_closed == 2).await;
    assert_eq!((counts.tunnels_opened, counts.tunnels_failed), (2, 1));
    running.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn udp_forwarder_resolves_the_server_name_for_every_new_tunnel_and_tries_each_address() {
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = udp_echo().await;
    let udp = server.udp.expect("udp served");
    let resolver = MovingResolver::default();
    let name: ServerAddr = format!("agent.test:{}", udp.port()).parse().expect("name");
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        name,
        pki.dtls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind")
    .resolver(resolver.clone());
    let running = run_udp(forwarder);
    let socket = UdpSocket::bind(LOCAL).await.expect("bind");
    socket.connect(running.local).await.expect("connect");

    socket.send(b"before").await.expect("send");
    let counts = until(&running.stats, |c| c.dropped_other == 1).await;
    assert_eq!((counts.tunnels_failed, counts.tunnels_opened), (1, 0));

    // First an address where nothing listens (the port-unreachable answer ends that
    // handshake at once), then the server.
    resolver.answer(&["127.0.0.2", "127.0.0.1"]);
    socket.send(b"after").await.expect("send");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"after");
    assert_eq!(running.stats.snapshot().tunnels_opened, 1);
    running.stop().await;
    server.stop().await;
}

/// A UDP relay between a client and the server it currently points at: switching it to
/// another server looks, to the client, like the server restarting and forgetting every
/// session without a word.
struct SwitchRelay {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl SwitchRelay {
    async fn start(upstream: SocketAddr) -> SwitchRelay {
        let front = Arc::new(UdpSocket::bind(LOCAL).await.expect("bind"));
        let back = Arc::new(UdpSocket::bind(LOCAL).await.expect("bind"));
        let addr = front.local_addr().expect("addr");
        let upstream = Arc::new(Mutex::new(upstream));
        let to = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            let client = Mutex::new(None::<SocketAddr>);
            let mut up = vec![0u8; 65536];
            let mut down = vec![0u8; 65536];
            loop {
                tokio::select! {
                    received = front.recv_from(&mut up) => {
                        let Ok((n, from)) = received else { continue };
                        *client.lock().expect("lock") = Some(from);
                        let server = *to.lock().expect("lock");
                        let _ = back.send_to(&up[..n], server).await;
                    }
                    received = back.recv_from(&mut down) => {
                        let Ok((n, _)) = received else { continue };
                        let client = *client.lock().expect("lock");
                        if let Some(client) = client {
                            let _ = front.send_to(&down[..n], client).await;
                        }
                    }
                }
            }
        });
        SwitchRelay {
            addr,
            upstream,
            task,
        }
    }

    fn switch_to(&self, server: SocketAddr) {
        *self.upstream.lock().expect("lock") = server;
    }
}

impl Drop for SwitchRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn udp_forwarder_replaces_a_tunnel_the_server_stopped_answering() {
    let pki = Pki::new();
    // The first server's session outlives its client: a short drain keeps the test short.
    let settings = || Settings::default().drain_period(Duration::from_millis(100));
    let first = start(&pki, allow_all(), settings()).await;
    let second = start(&pki, allow_all(), settings()).await;
    let echo = udp_echo().await;
    let relay = SwitchRelay::start(first.udp.expect("udp")).await;
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        relay.addr,
        pki.dtls_client(),
        echo.to_string().parse().expect("target"),
    )
    .await
    .expect("bind")
    .reply_timeout(Duration::from_millis(300));
    let running = run_udp(forwarder);
    let socket = UdpSocket::bind(LOCAL).await.expect("bind");
    socket.connect(running.local).await.expect("connect");
    let mut buf = [0u8; 64];
    socket.send(b"first").await.expect("send");
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"first");

    // The server "restarts": the session is unknown there, nothing comes back. The source
    // keeps sending, far more often than the idle timeout, until a new tunnel answers.
    relay.switch_to(second.udp.expect("udp"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut k = 0u32;
    let back = loop {
        assert!(
            Instant::now() < deadline,
            "no answer after the server restarted"
        );
        k += 1;
        let datagram = format!("after {k}");
        socket.send(datagram.as_bytes()).await.expect("send");
        match tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buf)).await {
            Ok(received) => break buf[..received.expect("recv")].to_vec(),
            Err(_) => continue,
        }
    };
    assert!(back.starts_with(b"after "), "{back:?}");
    let counts = running.stats.snapshot();
    assert_eq!(counts.tunnels_unanswered, 1, "{counts:?}");
    assert_eq!(counts.tunnels_opened, 2, "{counts:?}");
    running.stop().await;
    first.stop().await;
    second.stop().await;
}

/// An echo whose own socket holds a storm (4 MiB buffers).
fn big_udp_echo() -> SocketAddr {
    let socket = std::net::UdpSocket::bind(LOCAL).expect("bind");
    dtls::UdpBuffers::default().apply(&socket);
    test_support::udp_echo_on(socket)
}

/// The storm of issue 18 with the default settings: 50 new sources send 64 datagrams each at
/// once, all before any of their tunnels is open. Every datagram waits for its tunnel and comes
/// back, in the order it was sent; none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_forwarder_holds_a_storm_of_new_sources_in_order_with_the_defaults() {
    const SOURCES: usize = 50;
    const EACH: u64 = 64;
    let pki = Pki::new();
    let server = start(&pki, allow_all(), Settings::default()).await;
    let echo = big_udp_echo();
    let target: streamproxy_proxy::Destination = echo.to_string().parse().expect("target");
    let forwarder = UdpForwarder::bind(
        LOCAL.parse().expect("addr"),
        server.udp.expect("udp"),
        pki.dtls_client(),
        target,
    )
    .await
    .expect("bind");
    let running = run_udp(forwarder);
    let mut sources = Vec::new();
    for _ in 0..SOURCES {
        let socket = UdpSocket::bind(LOCAL).await.expect("bind source");
        socket.connect(running.local).await.expect("connect");
        sources.push(socket);
    }
    let datagram = |source: usize, k: u64| payload(512, (source as u64) << 32 | k);
    for k in 0..EACH {
        for (i, socket) in sources.iter().enumerate() {
            socket.send(&datagram(i, k)).await.expect("send");
        }
    }
    let mut buf = vec![0u8; 65536];
    for (i, socket) in sources.iter().enumerate() {
        for k in 0..EACH {
            let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("source {i}: datagram {k} lost"))
                .expect("recv");
            assert_eq!(&buf[..n], &datagram(i, k)[..], "source {i}: datagram {k}");
        }
    }
    let counts = running.stats.snapshot();
    assert_eq!(counts.dropped_other, 0, "{counts:?}");
    assert_eq!(counts.datagrams_up, SOURCES as u64 * EACH, "{counts:?}");
    assert_eq!(counts.tunnels_opened, SOURCES as u64, "{counts:?}");
    running.stop().await;
    server.stop().await;
}
