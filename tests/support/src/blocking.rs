//! The same helpers for tests without an async runtime (tests of the built binary): echo
//! destinations on threads and polling with a deadline.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP echo destination on a loopback port, one thread per connection: each connection gets
/// back what it sends until it ends its side, then the destination ends its own.
pub fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            thread::spawn(move || {
                let Ok(mut back) = conn.try_clone() else {
                    return;
                };
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A UDP echo destination on a loopback port, on a thread: every datagram goes back to its
/// sender.
pub fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Polls `cond` (state another thread or process sets) every 20 ms until it holds, and returns
/// how long that took; panics naming `what` once `limit` has passed.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn the_echoes_return_what_they_get() {
        let mut conn = TcpStream::connect(tcp_echo()).expect("connect");
        conn.write_all(b"ping").expect("write");
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        conn.read_to_end(&mut back).expect("read");
        assert_eq!(back, b"ping");

        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.connect(udp_echo()).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket.send(b"one").expect("send");
        let mut buf = [0u8; 16];
        let n = socket.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"one");
    }

    #[test]
    fn wait_until_returns_when_another_thread_sets_the_condition() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let setter = std::sync::Arc::clone(&flag);
        thread::spawn(move || setter.store(true, std::sync::atomic::Ordering::SeqCst));
        wait_until("the flag", Duration::from_secs(5), || {
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
    }
}
