//! Destination names are resolved asynchronously under bounds: a client flooding names whose
//! name server never answers costs only its own share of lookups, and other clients' names
//! (from `/etc/hosts` or DNS) keep their normal latency.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::A};
use streamproxy_proxy::Destination;
use streamproxy_proxy::dial::{DialError, Dialer, DnsResolver, LookupLimits, dial_tcp};
use streamproxy_proxy::policy::Policy;
use tokio::net::{TcpListener, UdpSocket};

/// A name server on loopback: names under `good.test` are 127.0.0.1 at once; every other
/// query is swallowed, as by a name server that never answers.
async fn name_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries().first().cloned() else {
                continue;
            };
            if !q.name().to_ascii().ends_with("good.test.") {
                continue;
            }
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .add_query(q.clone());
            if q.query_type() == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

async fn echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    port
}

fn request(host: &str, port: u16) -> Destination {
    Destination::new(host, port).expect("a valid destination")
}

const HOSTILE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
const GOOD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// The slowest of `rounds` dials of `localhost` and of fresh `good.test` names by `GOOD`.
async fn good_latency(dialer: &Dialer, port: u16, rounds: usize, tag: &str) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..rounds {
        for host in ["localhost".to_owned(), format!("{tag}{i}.good.test")] {
            let start = Instant::now();
            dial_tcp(&request(&host, port), dialer, Some(GOOD))
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            worst = worst.max(start.elapsed());
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_slow_names_costs_only_its_own_share() {
    let dns = name_server().await;
    let port = echo().await;
    let lookup_timeout = Duration::from_millis(1500);
    let dialer = Dialer {
        policy: Arc::new(Policy::allow_all([])),
        resolver: Arc::new(DnsResolver::with_name_servers(&[dns], lookup_timeout)),
        timeout: Duration::from_secs(3),
        keepalive: None,
        lookups: Arc::new(LookupLimits::new(64, 8, lookup_timeout)),
        udp_buffers: None,
    };
    let before = good_latency(&dialer, port, 10, "before").await;

    // 600 tunnels to names that never resolve, all at once, from one client.
    let flood: Vec<_> = (0..600)
        .map(|i| {
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let result = dial_tcp(
                    &request(&format!("n{i}.slow.test"), port),
                    &dialer,
                    Some(HOSTILE),
                )
                .await;
                (result, start.elapsed())
            })
        })
        .collect();
    // Wait until the hostile client holds its whole share.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dialer.lookups.in_flight() < 8 {
        assert!(Instant::now() < deadline, "the flood never started");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        dialer.lookups.in_flight(),
        8,
        "one client exceeded its share"
    );

    let during = good_latency(&dialer, port, 10, "during").await;
    eprintln!("good client's slowest dial: before the flood {before:?}, during it {during:?}");
    assert!(
        during < Duration::from_millis(500),
        "good clients slowed down to {during:?} (before: {before:?})"
    );
    assert!(dialer.lookups.in_flight() <= 8 + 1);

    // Every hostile dial fails, none later than the dial timeout; the first ones because their
    // lookup timed out, within the dial timeout.
    let mut lookup_timeouts = 0;
    for task in flood {
        let (result, took) = task.await.expect("join");
        assert!(took < Duration::from_millis(3500), "{took:?}");
        match result {
            Err(DialError::Resolve { source, .. })
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
                lookup_timeouts += 1;
            }
            Err(DialError::Timeout { .. }) => {}
            other => panic!("a slow name gave {other:?}"),
        }
    }
    assert!(lookup_timeouts >= 8, "{lookup_timeouts}");
    assert_eq!(dialer.lookups.in_flight(), 0, "a lookup place leaked");
}

#[tokio::test]
async fn many_hostile_clients_together_stay_within_the_global_bound() {
    let dns = name_server().await;
    let lookup_timeout = Duration::from_millis(800);
    let dialer = Dialer {
        policy: Arc::new(Policy::allow_all([])),
        resolver: Arc::new(DnsResolver::with_name_servers(&[dns], lookup_timeout)),
        timeout: Duration::from_secs(1),
        keepalive: None,
        lookups: Arc::new(LookupLimits::new(20, 4, lookup_timeout)),
        udp_buffers: None,
    };
    let flood: Vec<_> = (0..200u32)
        .map(|i| {
            let dialer = dialer.clone();
            let client = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i % 50));
            tokio::spawn(async move {
                let _ = dial_tcp(
                    &request(&format!("m{i}.slow.test"), 9),
                    &dialer,
                    Some(client),
                )
                .await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dialer.lookups.in_flight() < 20 {
        assert!(
            Instant::now() < deadline,
            "the flood never filled the bound"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(dialer.lookups.in_flight(), 20);
    for task in flood {
        task.await.expect("join");
    }
    assert_eq!(dialer.lookups.in_flight(), 0);
}

/// The same through the server's stream handler: the share is counted per client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_handler_counts_lookups_against_the_clients_address() {
    use streamproxy_proxy::ServerContext;
    use streamproxy_proxy::settings::Settings;
    use streamproxy_proxy::tcp::StreamHandler;
    use streamproxy_proxy::tunnel::Client;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dns = name_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let settings = Settings::default()
        .dial_timeout(Duration::from_secs(3))
        .lookup_timeout(Duration::from_millis(1500))
        .max_lookups(64, 4);
    let ctx = ServerContext::new(Policy::allow_all([]), settings).with_resolver(
        DnsResolver::with_name_servers(&[dns], Duration::from_millis(1500)),
    );
    let lookups = Arc::clone(&ctx.dialer.lookups);
    let handler = StreamHandler::new(ctx);
    let open = |host: String, from: IpAddr| {
        let handler = handler.clone();
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = handler
                .serve(theirs, Client::from_addr(SocketAddr::new(from, 40000)))
                .await;
        });
        async move {
            let header = proto::Header::with_port(&host, port).expect("header");
            ours.write_all(&header.to_bytes().expect("encode"))
                .await
                .expect("send header");
            (ours, server)
        }
    };

    let mut flood = Vec::new();
    for i in 0..200 {
        flood.push(open(format!("s{i}.slow.test"), HOSTILE).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookups.in_flight() < 4 {
        assert!(Instant::now() < deadline, "the flood never started");
        tokio::task::yield_now().await;
    }
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        for host in ["localhost".to_owned(), format!("h{i}.good.test")] {
            let start = Instant::now();
            let (mut stream, _server) = open(host.clone(), GOOD).await;
            stream.write_all(b"ping").await.expect("write");
            let mut back = [0u8; 4];
            stream
                .read_exact(&mut back)
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            worst = worst.max(start.elapsed());
        }
    }
    assert_eq!(
        lookups.in_flight(),
        4,
        "the hostile client holds only its share"
    );
    eprintln!("good client's slowest tunnel during the flood: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    for (stream, server) in flood {
        drop(stream);
        server.await.expect("join");
    }
    assert_eq!(lookups.in_flight(), 0);
}
