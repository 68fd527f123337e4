//! A listener bound to an unspecified address answers each client from the address the client
//! reached (a client's connected socket drops datagrams from any other), and its sessions
//! report that address as their local one.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use streamproxy_dtls::{DtlsListener, DtlsSession, connect};
use support::{Pki, pki};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `up` from `client` to `server` and `down` back; both must arrive whole.
async fn exchange(client: &mut DtlsSession, server: &mut DtlsSession, up: &[u8], down: &[u8]) {
    let mut buf = vec![0u8; server.max_payload()];
    client.send(up).await.unwrap();
    let n = tokio::time::timeout(TIMEOUT, server.recv(&mut buf))
        .await
        .expect("the record up arrives")
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], up);
    server.send(down).await.unwrap();
    let n = tokio::time::timeout(TIMEOUT, client.recv(&mut buf))
        .await
        .expect("the record down arrives")
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], down);
}

/// Connects one client to each address of `reached` at once, through `listener`: every
/// handshake must complete, every session must carry data both ways while the others are up,
/// and each server session's local address must be `expected(the address its client reached)`.
async fn serves_each_client_from_the_address_it_reached(
    pki: &Pki,
    mut listener: DtlsListener,
    reached: &[SocketAddr],
    expected: impl Fn(SocketAddr) -> SocketAddr,
) {
    let clients: Vec<_> = reached
        .iter()
        .map(|addr| {
            let (addr, config) = (*addr, pki.client_config());
            tokio::spawn(async move { connect(addr, &config).await })
        })
        .collect();
    let mut servers = Vec::new();
    for _ in reached {
        let accepted = tokio::time::timeout(TIMEOUT, listener.accept()).await;
        servers.push(accepted.expect("a session within 10 s").unwrap());
    }
    let mut pairs = Vec::new();
    for (client, addr) in clients.into_iter().zip(reached) {
        let client = client.await.unwrap().expect("the handshake completes");
        assert_eq!(client.peer_addr(), *addr);
        let at = servers
            .iter()
            .position(|s| s.peer_addr().port() == client.local_addr().port())
            .expect("a server session for each client");
        let server = servers.swap_remove(at);
        assert_eq!(server.local_addr(), expected(*addr), "reached via {addr}");
        pairs.push((client, server, *addr));
    }
    for round in 0..2 {
        for (client, server, addr) in &mut pairs {
            let up = format!("round {round} up to {addr}");
            let down = format!("round {round} down from {addr}");
            exchange(client, server, up.as_bytes(), down.as_bytes()).await;
        }
    }
}

#[tokio::test]
async fn an_ipv4_wildcard_listener_answers_each_client_from_the_address_it_reached() {
    let pki = pki();
    let listener = DtlsListener::bind("0.0.0.0:0".parse().unwrap(), pki.server_config())
        .await
        .unwrap();
    let port = listener.local_addr().port();
    // 127.0.0.2 is not the kernel's choice of source for an answer to 127.0.0.1.
    let reached = [
        SocketAddr::from(([127, 0, 0, 2], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    ];
    serves_each_client_from_the_address_it_reached(&pki, listener, &reached, |addr| addr).await;
}

/// A UDP socket on `[::]:0` that takes IPv4 too (`IPV6_V6ONLY` off), if the machine allows.
fn dual_stack_socket() -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::from(([0u16; 8], 0)).into())?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

#[tokio::test]
async fn a_dual_stack_wildcard_listener_answers_ipv4_clients_from_the_address_they_reached() {
    let pki = pki();
    let Ok(socket) = dual_stack_socket() else {
        eprintln!("skipped: this machine has no dual-stack [::] socket");
        return;
    };
    let listener = DtlsListener::from_socket(socket, pki.server_config()).unwrap();
    let port = listener.local_addr().port();
    let reached = [
        SocketAddr::from(([127, 0, 0, 2], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    ];
    // The listener sees IPv4 clients as IPv4-mapped IPv6 addresses, and its own end too.
    let mapped = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    serves_each_client_from_the_address_it_reached(&pki, listener, &reached, mapped).await;
}
