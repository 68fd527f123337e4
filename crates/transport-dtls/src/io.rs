//! The byte pipe under OpenSSL: one `write` is one datagram, one `read` is one datagram.
//!
//! Non-blocking by construction: a read with nothing to read returns `WouldBlock` (OpenSSL then
//! reports `WANT_READ`), and the caller awaits readiness *outside* the session lock. Writes never
//! block either: a full socket buffer drops the datagram, as UDP would (DTLS retransmits
//! handshake flights; application data is datagrams anyway). Senders await write readiness
//! before taking the lock, so such drops are rare.
//!
//! During the handshake, writes are coalesced up to the MTU and sent when the handshake step
//! returns: OpenSSL retransmits a flight one message per datagram, and a flight of five
//! datagrams over a path losing 20% arrives whole only a third of the time; packed into one
//! datagram, four times in five.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;

use crate::record;

/// Where incoming datagrams come from.
#[derive(Debug)]
pub(crate) enum Inbox {
    /// A connected socket owned by this session (client side): read it directly.
    Socket,
    /// The listener's demultiplexer hands datagrams over one at a time (server side).
    Slot(Option<Bytes>),
}

#[derive(Debug)]
pub(crate) struct DatagramIo {
    socket: Arc<UdpSocket>,
    /// `None`: the socket is connected to the peer.
    peer: Option<SocketAddr>,
    pub(crate) inbox: Inbox,
    /// Handshake writes waiting to go out as one datagram; `None` once the handshake is over.
    pending: Option<Vec<u8>>,
    mtu: usize,
}

impl DatagramIo {
    /// Client side: a socket connected to the server.
    pub(crate) fn connected(socket: Arc<UdpSocket>, mtu: usize) -> Self {
        Self {
            socket,
            peer: None,
            inbox: Inbox::Socket,
            pending: Some(Vec::with_capacity(mtu)),
            mtu,
        }
    }

    /// Server side: the listener's socket, sending to `peer`, fed by the demultiplexer.
    pub(crate) fn demultiplexed(socket: Arc<UdpSocket>, peer: SocketAddr, mtu: usize) -> Self {
        Self {
            socket,
            peer: Some(peer),
            inbox: Inbox::Slot(None),
            pending: Some(Vec::with_capacity(mtu)),
            mtu,
        }
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

    fn send_now(&self, buf: &[u8]) -> io::Result<()> {
        let sent = match self.peer {
            Some(peer) => self.socket.try_send_to(buf, peer),
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

    /// Hands one datagram to the next read (server side).
    pub(crate) fn put(&mut self, datagram: Bytes) {
        self.inbox = Inbox::Slot(Some(datagram));
    }
}

impl Read for DatagramIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inbox {
            Inbox::Socket => self.socket.try_recv(buf),
            Inbox::Slot(slot) => match slot.take() {
                Some(d) => {
                    // OpenSSL reads with a buffer larger than any DTLS record; a longer datagram
                    // is not a record and fails authentication whatever is cut.
                    let n = d.len().min(buf.len());
                    buf[..n].copy_from_slice(&d[..n]);
                    Ok(n)
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }
}

impl Write for DatagramIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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
            _ => self.send_now(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
