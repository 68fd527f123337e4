//! Handshakes/s and datagrams/s over loopback, and the cost of the listener's demultiplexer
//! hop against connected per-peer sockets. `cargo bench -p streamproxy-dtls`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use streamproxy_dtls::{DtlsConnector, DtlsSession};
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `iters` ping-pongs of `size` bytes spread over the sessions, concurrently.
async fn ping_pong(
    sessions: Vec<DtlsSession>,
    size: usize,
    iters: u64,
) -> (Vec<DtlsSession>, Duration) {
    let per = iters.div_ceil(sessions.len() as u64);
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            tokio::spawn(async move {
                let msg = vec![7u8; size];
                let mut buf = vec![0u8; 8192];
                for _ in 0..per {
                    session.send(&msg).await.unwrap();
                    // A datagram lost on loopback (full socket buffer) would stall the run.
                    tokio::time::timeout(Duration::from_secs(5), session.recv(&mut buf))
                        .await
                        .expect("echo lost")
                        .unwrap()
                        .unwrap();
                }
                session
            })
        })
        .collect();
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.unwrap());
    }
    (back, start.elapsed())
}

fn dtls(c: &mut Criterion) {
    let rt = runtime();
    let pki = support::pki();
    let (addr, _handle) = rt.block_on(support::echo_server(pki.server_config()));
    let connector = DtlsConnector::new(&pki.client_config()).unwrap();

    let mut g = c.benchmark_group("dtls_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.iter(|| rt.block_on(async { connector.connect(addr).await.unwrap() }))
    });
    g.finish();

    for n in [1usize, 32] {
        let mut sessions: Vec<DtlsSession> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(connector.connect(addr).await.unwrap());
            }
            v
        });
        let mut g = c.benchmark_group(format!("dtls_echo_{n}_sessions"));
        for size in [64usize, 1200] {
            // Criterion's elements/s: datagrams/s, two per round trip.
            g.throughput(Throughput::Elements(2));
            g.bench_function(format!("{size}B"), |b| {
                b.iter_custom(|iters| {
                    let (back, elapsed) =
                        rt.block_on(ping_pong(std::mem::take(&mut sessions), size, iters));
                    sessions = back;
                    elapsed
                })
            });
        }
        g.finish();
    }
}

/// The raw UDP cost of the listener's design choice, without DTLS: a server that reads one
/// socket and hands each datagram to its peer's task through a bounded channel (what
/// `DtlsListener` does) against one connected socket per peer in a SO_REUSEPORT group (the
/// kernel routes by 4-tuple). Each peer task echoes; clients ping-pong.
fn demux_hop(c: &mut Criterion) {
    let rt = runtime();
    for peers in [1usize, 32] {
        let mut g = c.benchmark_group(format!("udp_echo_{peers}_peers"));
        g.throughput(Throughput::Elements(2));
        let clients = rt.block_on(channel_hop_server(peers));
        let mut clients = Some(clients);
        g.bench_function("channel_hop", |b| {
            b.iter_custom(|iters| {
                let (back, d) = rt.block_on(udp_ping_pong(clients.take().unwrap(), iters));
                clients = Some(back);
                d
            })
        });
        let mut clients = Some(rt.block_on(connected_sockets_server(peers)));
        g.bench_function("connected_reuseport", |b| {
            b.iter_custom(|iters| {
                let (back, d) = rt.block_on(udp_ping_pong(clients.take().unwrap(), iters));
                clients = Some(back);
                d
            })
        });
        g.finish();
    }
}

async fn udp_ping_pong(
    clients: Vec<Arc<UdpSocket>>,
    iters: u64,
) -> (Vec<Arc<UdpSocket>>, Duration) {
    let per = iters.div_ceil(clients.len() as u64);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                let msg = [7u8; 1200];
                let mut buf = [0u8; 2048];
                for _ in 0..per {
                    s.send(&msg).await.unwrap();
                    tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
                        .await
                        .expect("echo lost")
                        .unwrap();
                }
                s
            })
        })
        .collect();
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.unwrap());
    }
    (back, start.elapsed())
}

async fn client_for(server: SocketAddr) -> Arc<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    Arc::new(s)
}

async fn channel_hop_server(peers: usize) -> Vec<Arc<UdpSocket>> {
    let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = server.local_addr().unwrap();
    let mut table: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut clients = Vec::new();
    for _ in 0..peers {
        let c = client_for(addr).await;
        let peer = c.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        table.insert(peer, tx);
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let _ = server.send_to(&d, peer).await;
            }
        });
        clients.push(c);
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut pool = bytes::BytesMut::new();
        while let Ok((n, src)) = server.recv_from(&mut buf).await {
            if let Some(tx) = table.get(&src) {
                if pool.capacity() - pool.len() < n {
                    pool.reserve(256 * 1024);
                }
                pool.extend_from_slice(&buf[..n]);
                let _ = tx.try_send(pool.split().freeze());
            }
        }
    });
    clients
}

async fn connected_sockets_server(peers: usize) -> Vec<Arc<UdpSocket>> {
    use socket2::{Domain, Socket, Type};
    let bind = |addr: SocketAddr| {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s
    };
    let listener = bind("127.0.0.1:0".parse().unwrap());
    let addr: SocketAddr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut clients = Vec::new();
    for _ in 0..peers {
        let c = client_for(addr).await;
        let own = bind(addr);
        own.connect(&c.local_addr().unwrap().into()).unwrap();
        let own = UdpSocket::from_std(own.into()).unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = own.recv(&mut buf).await {
                let _ = own.send(&buf[..n]).await;
            }
        });
        clients.push(c);
    }
    // Keep the unconnected listener alive for the duration (it would take new peers' first
    // datagrams in a real server).
    std::mem::forget(listener);
    clients
}

criterion_group!(benches, dtls, demux_hop);
criterion_main!(benches);
