//! Receiving many datagrams with one system call (`recvmmsg`, through `nix`), for the
//! listener's driver.
//!
//! A [`RecvBatch`] owns room for [`SLOTS`] datagrams of any size; [`RecvBatch::recv`] fills as
//! many as the socket has queued and [`RecvBatch::get`] hands them out one by one. It never
//! waits. A call that finds fewer than [`SLOTS`] datagrams has emptied the socket's queue, so it
//! also clears tokio's readiness: the driver's next wait then sleeps until a datagram arrives
//! instead of making one more call that finds nothing (the arrival of the next datagram raises
//! readiness again; tokio ignores a clear that is older than the latest readiness event).

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams one call receives at most.
pub(crate) const SLOTS: usize = 32;
/// Room for one datagram: the largest UDP payload, so nothing is ever truncated.
const SLOT_LEN: usize = 65536;

/// Buffers for one `recvmmsg` call and what it received.
pub(crate) struct RecvBatch {
    /// `SLOTS` slots of `SLOT_LEN` bytes (allocated zeroed, so untouched pages cost nothing).
    buf: Box<[u8]>,
    /// Length and source of each datagram of the last call.
    meta: [(usize, Option<SocketAddr>); SLOTS],
    /// How many datagrams the last call received.
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; SLOTS * SLOT_LEN].into_boxed_slice(),
            meta: [(0, None); SLOTS],
            len: 0,
        }
    }

    /// Receives what `socket` has queued, up to [`SLOTS`] datagrams, and returns how many
    /// (at least one). `WouldBlock` when there was nothing; other errors as the socket reports
    /// them (an ICMP error for one peer among them).
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.len = 0;
        let fd = socket.as_raw_fd();
        let (buf, meta, len) = (&mut self.buf, &mut self.meta, &mut self.len);
        let result = socket.try_io(Interest::READABLE, || {
            *len = receive(fd, buf, meta)?;
            if *len < SLOTS {
                // The queue is empty now: let tokio clear the readiness this call consumed.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match result {
            Err(e) if !(e.kind() == io::ErrorKind::WouldBlock && self.len > 0) => Err(e),
            _ => Ok(self.len),
        }
    }

    /// Datagram `i` of the last [`recv`](Self::recv): its source and its bytes. `None` past
    /// the end, or when the source is not an IP address.
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.len {
            return None;
        }
        let (n, source) = *self.meta.get(i)?;
        let start = i * SLOT_LEN;
        Some((source?, self.buf.get(start..start + n.min(SLOT_LEN))?))
    }
}

/// One `recvmmsg` on a non-blocking call: fills the slots of `buf` and `meta` in order.
fn receive(
    fd: RawFd,
    buf: &mut [u8],
    meta: &mut [(usize, Option<SocketAddr>); SLOTS],
) -> io::Result<usize> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(SLOTS, None);
    let mut chunks = buf.chunks_mut(SLOT_LEN);
    let mut slices: [[IoSliceMut<'_>; 1]; SLOTS] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    let received = recvmmsg(
        fd,
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    let mut n = 0;
    for (slot, msg) in meta.iter_mut().zip(received) {
        *slot = (msg.bytes, msg.address.as_ref().and_then(socket_addr));
        n += 1;
    }
    Ok(n)
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receives_every_queued_datagram_with_its_source_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        a.send_to(b"one", to).await.unwrap();
        b.send_to(b"", to).await.unwrap();
        a.send_to(&[7u8; 9000], to).await.unwrap();
        let mut batch = RecvBatch::new();
        rx.readable().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            rx.readable().await.unwrap();
            let Ok(n) = batch.recv(&rx) else { continue };
            for i in 0..n {
                let (source, bytes) = batch.get(i).unwrap();
                got.push((source, bytes.to_vec()));
            }
            assert!(batch.get(n).is_none());
        }
        assert_eq!(got[0], (a.local_addr().unwrap(), b"one".to_vec()));
        assert_eq!(got[1], (b.local_addr().unwrap(), Vec::new()));
        assert_eq!(got[2], (a.local_addr().unwrap(), vec![7u8; 9000]));
    }

    #[tokio::test]
    async fn an_empty_socket_would_block() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut batch = RecvBatch::new();
        let e = batch.recv(&rx).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(batch.get(0).is_none());
    }

    #[tokio::test]
    async fn a_full_batch_leaves_the_rest_for_the_next_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..SLOTS + 3 {
            tx.send_to(&[i as u8], to).await.unwrap();
        }
        let mut batch = RecvBatch::new();
        let mut seen = Vec::new();
        while seen.len() < SLOTS + 3 {
            rx.readable().await.unwrap();
            let Ok(n) = batch.recv(&rx) else { continue };
            seen.extend((0..n).map(|i| batch.get(i).unwrap().1[0]));
        }
        let expected: Vec<u8> = (0..SLOTS + 3).map(|i| i as u8).collect();
        assert_eq!(seen, expected);
    }
}
