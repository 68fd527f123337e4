//! The byte pipe under OpenSSL: one `write` is one datagram, one `read` is one datagram.
//!
//! Non-blocking by construction: a read with nothing to read returns `WouldBlock` (OpenSSL then
//! reports `WANT_READ`), and the caller awaits readiness *outside* the session lock. Writes never
//! block either: a full socket buffer drops the datagram, as UDP would (DTLS retransmits
//! handshake flights; application data is datagrams anyway). Senders await write readiness
//! before taking the lock, so such drops are rare.

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
}

impl DatagramIo {
    /// Client side: a socket connected to the server.
    pub(crate) fn connected(socket: Arc<UdpSocket>) -> Self {
        Self {
            socket,
            peer: None,
            inbox: Inbox::Socket,
        }
    }

    /// Server side: the listener's socket, sending to `peer`, fed by the demultiplexer.
    pub(crate) fn demultiplexed(socket: Arc<UdpSocket>, peer: SocketAddr) -> Self {
        Self {
            socket,
            peer: Some(peer),
            inbox: Inbox::Slot(None),
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
        let sent = match self.peer {
            Some(peer) => self.socket.try_send_to(buf, peer),
            None => self.socket.try_send(buf),
        };
        match sent {
            Ok(_) => Ok(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::trace!(len = buf.len(), "socket buffer full, datagram dropped");
                Ok(buf.len())
            }
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
