//! Echo destinations on loopback, as tokio tasks.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};

/// A TCP echo destination on a loopback port: each connection gets back what it sends until it
/// ends its side, then the destination ends its own. Runs until the runtime stops.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo destination on a loopback port: every datagram goes back to its sender.
pub async fn udp_echo() -> SocketAddr {
    udp_echo_on(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
}

/// A UDP echo destination on `socket`, set up as the caller needs (larger buffers for a
/// burst, say): every datagram goes back to its sender.
pub fn udp_echo_on(socket: std::net::UdpSocket) -> SocketAddr {
    socket.set_nonblocking(true).expect("nonblocking");
    let socket = UdpSocket::from_std(socket).expect("tokio socket");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpStream, UdpSocket};

    use super::*;

    #[tokio::test]
    async fn the_tcp_echo_returns_the_bytes_and_ends_after_the_client() {
        let mut conn = TcpStream::connect(tcp_echo().await).await.expect("connect");
        conn.write_all(b"ping").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"ping");
    }

    #[tokio::test]
    async fn the_udp_echo_returns_each_datagram() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        socket.connect(udp_echo().await).await.expect("connect");
        socket.send(b"one").await.expect("send");
        let mut buf = [0u8; 16];
        let n = socket.recv(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"one");
    }
}
