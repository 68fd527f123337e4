//! The datagram pipe under `tokio_openssl::SslStream`: one `poll_write` is one datagram, one
//! `poll_read` is one datagram.
//!
//! Reads come from the client's connected socket (`poll_recv`) or, on the server, from the
//! datagrams the listener's demultiplexer queued for this peer (`poll_recv` on the queue);
//! with nothing to read they return `Pending` and register the calling task's waker. Only the
//! task that drives the handshake, and after it the session's receiving half, ever causes reads
//! (renegotiation is disabled, so `SSL_write` never reads), so each read side has exactly one
//! waiting task and its waker is never overwritten by another task.
//!
//! The client's reads take what its socket has queued with one `recvmmsg` ([`RecvBatch`]) and
//! hand the datagrams out one per read.
//!
//! Writes never wait. After the handshake a write queues its datagram in a [`SendBatch`]
//! and the caller flushes the batch with [`DatagramIo::flush_out`] once it has written what
//! it had (one `sendmmsg` for many records); a full batch is flushed first, and a datagram
//! that finds the batch full and the socket's buffer full is dropped, as UDP would. Waiting for
//! write readiness is left to the callers, which await `UdpSocket::writable()` before they
//! poll the session and after a flush that would block. A write that returned `Pending` would
//! park the caller's waker in the socket's single write-waker slot, which tokio keeps per
//! socket, not per task: the listener's socket is shared by every session, and a session's
//! receiving half writes too (close_notify, a retransmitted final flight), so a later write
//! from another task would replace that waker and strand the first writer.
//!
//! On a listener bound to an unspecified address, every datagram to the peer, during the
//! handshake and after it, goes from the local address the peer reached (`from`, see
//! [`crate::batch::SendBatch::push_from`]): the kernel's choice may be another one, which a
//! client's connected socket drops.
//!
//! During the handshake, writes are coalesced up to the MTU and sent when the handshake step
//! returns: OpenSSL retransmits a flight one message per datagram, and a flight of five
//! datagrams over a path losing 20% arrives whole only a third of the time; packed into one
//! datagram, four times in five.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::batch::{self, RecvBatch, SendBatch};
use crate::record;

/// Datagrams one read of the client's socket takes at first, and at most once bursts have
/// grown it (see [`RecvBatch::growing`]).
const RECV_SLOTS: (usize, usize) = (4, 32);
/// Room for a record's framing on top of its payload (DTLS 1.2 header, explicit nonce, tag or
/// padding and MAC).
pub(crate) const RECORD_OVERHEAD: usize = 256;
/// Datagrams and bytes written records wait for one flush at most.
const OUT_DATAGRAMS: usize = 32;
const OUT_BYTES: usize = 256 * 1024;

/// Where incoming datagrams come from.
#[derive(Debug)]
enum Inbox {
    /// A connected socket owned by this session (client side): read it in batches.
    Socket(RecvBatch),
    /// The listener's demultiplexer queues this peer's datagrams (server side); `first` holds
    /// datagrams to read before the queue (the replayed ClientHello exchange).
    Queue {
        first: VecDeque<Bytes>,
        rx: mpsc::Receiver<Bytes>,
    },
}

#[derive(Debug)]
pub(crate) struct DatagramIo {
    socket: Arc<UdpSocket>,
    /// `None`: the socket is connected to the peer.
    peer: Option<SocketAddr>,
    /// The local address datagrams go out from; `None`: the kernel's choice (a socket bound to
    /// one address, or the client's connected socket).
    from: Option<IpAddr>,
    inbox: Inbox,
    /// Handshake writes waiting to go out as one datagram; `None` once the handshake is over.
    pending: Option<Vec<u8>>,
    /// Records written after the handshake, waiting for [`flush_out`](Self::flush_out).
    out: SendBatch,
    mtu: usize,
    /// The listener closed this peer's queue: reads fail from now on.
    detached: bool,
    /// The last read returned `Pending`, so the reading task's waker is registered.
    read_parked: bool,
}

impl DatagramIo {
    /// Client side: a socket connected to the server, whose records carry up to `max_payload`
    /// bytes.
    pub(crate) fn connected(socket: Arc<UdpSocket>, mtu: usize, max_payload: usize) -> Self {
        let batch = RecvBatch::growing(RECV_SLOTS.0, RECV_SLOTS.1, max_payload + RECORD_OVERHEAD);
        Self::new(socket, None, Inbox::Socket(batch), mtu)
    }

    /// Server side: the listener's socket, sending to `peer` from the local address `from`
    /// (`None`: the kernel's choice), reading `first` and then the demultiplexer's queue for
    /// this peer.
    pub(crate) fn demultiplexed(
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        from: Option<IpAddr>,
        mtu: usize,
        first: VecDeque<Bytes>,
        rx: mpsc::Receiver<Bytes>,
    ) -> Self {
        let mut io = Self::new(socket, Some(peer), Inbox::Queue { first, rx }, mtu);
        io.from = from;
        io
    }

    fn new(socket: Arc<UdpSocket>, peer: Option<SocketAddr>, inbox: Inbox, mtu: usize) -> Self {
        Self {
            socket,
            peer,
            from: None,
            inbox,
            pending: Some(Vec::with_capacity(mtu)),
            out: SendBatch::new(OUT_DATAGRAMS, OUT_BYTES),
            mtu,
            detached: false,
            read_parked: false,
        }
    }

    /// The socket datagrams are sent on (and, on the client, received from).
    pub(crate) fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// The local end of this peer's datagrams: the address the peer reached, with the socket's
    /// port, when they go out from one; else the socket's address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        let bound = self.socket.local_addr()?;
        Ok(self
            .from
            .map_or(bound, |ip| SocketAddr::new(ip, bound.port())))
    }

    /// Whether the listener stopped feeding this peer (reads then fail with
    /// `ConnectionAborted`).
    pub(crate) fn is_detached(&self) -> bool {
        self.detached
    }

    /// Stops taking datagrams from the listener (the receiving half is gone): the listener then
    /// sees the peer's queue closed and forgets the address.
    pub(crate) fn close_input(&mut self) {
        if let Inbox::Queue { first, rx } = &mut self.inbox {
            first.clear();
            rx.close();
        }
    }

    /// Clears the record of a parked read; call before polling the stream, then ask
    /// [`read_parked`](Self::read_parked) whether the poll left a waker with the input.
    pub(crate) fn clear_read_parked(&mut self) {
        self.read_parked = false;
    }

    /// Whether a read since [`clear_read_parked`](Self::clear_read_parked) returned `Pending`.
    pub(crate) fn read_parked(&self) -> bool {
        self.read_parked
    }

    /// Sends the coalesced handshake writes as one datagram.
    pub(crate) fn send_pending(&mut self) -> io::Result<()> {
        let Some(mut pending) = self.pending.take() else {
            return Ok(());
        };
        let r = if pending.is_empty() {
            Ok(())
        } else {
            self.send_now(&pending)
        };
        pending.clear();
        self.pending = Some(pending);
        r
    }

    /// Ends coalescing (after the handshake): from now on one write is one datagram at once.
    pub(crate) fn stop_coalescing(&mut self) -> io::Result<()> {
        let r = self.send_pending();
        self.pending = None;
        r
    }

    /// Hands the records written since the last flush to the kernel (one `sendmmsg` for up to
    /// [`crate::batch::MAX_SLOTS`]). `WouldBlock` when the socket's buffer filled first: the
    /// rest stays queued, in order, for the next flush.
    pub(crate) fn flush_out(&mut self) -> io::Result<()> {
        self.out.try_flush(&self.socket)
    }

    /// Whether a record of up to `payload` bytes can be written without flushing first.
    pub(crate) fn has_room(&self, payload: usize) -> bool {
        !self.out.is_full(payload + RECORD_OVERHEAD)
    }

    /// Whether written records wait for a flush.
    pub(crate) fn has_unflushed(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues a record for the next flush; flushes first when the batch is full, and drops the
    /// record (as a full socket buffer would) when that cannot make room.
    fn queue(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.out.is_full(buf.len()) {
            match self.flush_out() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tracing::trace!(len = buf.len(), "socket buffer full, datagram dropped");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.out.push_from(self.peer, self.from, buf);
        Ok(())
    }

    fn send_now(&self, buf: &[u8]) -> io::Result<()> {
        let sent = match self.peer {
            Some(peer) => batch::try_send_from(&self.socket, peer, self.from, buf),
            None => self.socket.try_send(buf),
        };
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::trace!(len = buf.len(), "socket buffer full, datagram dropped");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn write_datagram(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.peer.is_some() && record::is_hello_verify_request(buf) {
            // The listener answered the cookieless ClientHello itself; OpenSSL's own answer to
            // the replayed copy (see `demux`) must not reach the client.
            return Ok(buf.len());
        }
        let fits = |p: &Vec<u8>| p.len() + buf.len() <= self.mtu;
        match &self.pending {
            Some(p) if fits(p) => {}
            Some(p) if !p.is_empty() => self.send_pending()?,
            _ => {}
        }
        match &mut self.pending {
            Some(p) if p.len() + buf.len() <= self.mtu => p.extend_from_slice(buf),
            Some(_) => self.send_now(buf)?,
            None => self.queue(buf)?,
        }
        Ok(buf.len())
    }

    fn poll_datagram(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // An empty datagram is never a record; OpenSSL would take a zero-length read for the
        // end of the stream, so skip it.
        loop {
            let datagram = match &mut self.inbox {
                Inbox::Socket(batch) => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    match batch.next_datagram() {
                        // Longer than any record: not one, whatever is cut.
                        Some(d) if d.truncated || d.bytes.is_empty() => continue,
                        Some(d) => {
                            let n = d.bytes.len().min(buf.remaining());
                            buf.put_slice(&d.bytes[..n]);
                            return Poll::Ready(Ok(()));
                        }
                        None => match batch.poll_recv(cx, &self.socket) {
                            Poll::Ready(Ok(_)) => continue,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        },
                    }
                }
                Inbox::Queue { first, rx } => match first.pop_front() {
                    Some(d) => d,
                    None => match rx.poll_recv(cx) {
                        Poll::Ready(Some(d)) => d,
                        Poll::Ready(None) => {
                            self.detached = true;
                            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                        }
                        Poll::Pending => return Poll::Pending,
                    },
                },
            };
            if datagram.is_empty() {
                continue;
            }
            // OpenSSL reads with a buffer larger than any DTLS record; a longer datagram is not
            // a record and fails authentication whatever is cut.
            let n = datagram.len().min(buf.remaining());
            buf.put_slice(&datagram[..n]);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncRead for DatagramIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.detached {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let r = this.poll_datagram(cx, buf);
        if r.is_pending() {
            this.read_parked = true;
        }
        r
    }
}

impl AsyncWrite for DatagramIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().write_datagram(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
