//! UDP socket buffers: large enough for bursts, and the kernel's count of what still did not
//! fit.
//!
//! A UDP socket whose receive buffer is full drops the next datagram in the kernel, silently.
//! The default buffer (about 208 KiB) holds a few hundred datagrams, so a burst of 50 sessions
//! with 64 datagrams in flight each overruns it, and a DTLS session whose first record (its
//! header) is dropped is refused. [`UdpBuffers::apply`] asks for larger buffers, past the
//! `net.core.rmem_max` / `wmem_max` caps where the process may (`SO_RCVBUFFORCE`,
//! `SO_SNDBUFFORCE` need `CAP_NET_ADMIN`), and reports what the kernel granted;
//! [`kernel_drops`] reads the socket's drop counter from `/proc/net/udp`.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use streamproxy_dtls::UdpBuffers;
//!
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:8890").await?;
//! let granted = UdpBuffers::default().apply(&socket);
//! if granted.short_of(UdpBuffers::default()) {
//!     eprintln!("the kernel granted only {granted:?}");
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};

/// Requested (or granted) sizes of a socket's receive and send buffers, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpBuffers {
    /// The receive buffer.
    pub recv: usize,
    /// The send buffer.
    pub send: usize,
}

impl Default for UdpBuffers {
    /// 4 MiB each way: several thousand full-size datagrams.
    fn default() -> Self {
        UdpBuffers {
            recv: 4 << 20,
            send: 4 << 20,
        }
    }
}

impl UdpBuffers {
    /// The same size both ways.
    pub fn both(bytes: usize) -> Self {
        UdpBuffers {
            recv: bytes,
            send: bytes,
        }
    }

    /// Sets the buffers of `socket` to these sizes (with the `FORCE` options where the process
    /// may, otherwise within the system's caps) and returns what the kernel granted. A failure
    /// leaves the socket as it was: it works with smaller buffers.
    pub fn apply(&self, socket: &impl AsFd) -> UdpBuffers {
        let recv = self.recv.min(i32::MAX as usize);
        let send = self.send.min(i32::MAX as usize);
        if setsockopt(socket, sockopt::RcvBufForce, &recv).is_err() {
            let _ = setsockopt(socket, sockopt::RcvBuf, &recv);
        }
        if setsockopt(socket, sockopt::SndBufForce, &send).is_err() {
            let _ = setsockopt(socket, sockopt::SndBuf, &send);
        }
        Self::of(socket)
    }

    /// The sizes `socket` has now. Linux reports twice what was asked (it counts its own
    /// bookkeeping): this halves it back, so the result compares with a request.
    pub fn of(socket: &impl AsFd) -> UdpBuffers {
        let get = |recv: bool| {
            let v = if recv {
                nix::sys::socket::getsockopt(socket, sockopt::RcvBuf)
            } else {
                nix::sys::socket::getsockopt(socket, sockopt::SndBuf)
            };
            v.map(|n| n / 2).unwrap_or(0)
        };
        UdpBuffers {
            recv: get(true),
            send: get(false),
        }
    }

    /// Whether either buffer is smaller than `requested`.
    pub fn short_of(&self, requested: UdpBuffers) -> bool {
        self.recv < requested.recv || self.send < requested.send
    }
}

/// Logs once per process when the kernel granted less than asked (sockets are opened per
/// session: one line says it for all of them).
pub(crate) fn warn_once_if_short(granted: UdpBuffers, requested: UdpBuffers, socket: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if granted.short_of(requested) && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            socket,
            requested_recv = requested.recv,
            requested_send = requested.send,
            granted_recv = granted.recv,
            granted_send = granted.send,
            "smaller UDP buffers than asked (raise net.core.rmem_max and wmem_max, or give the process CAP_NET_ADMIN); bursts may be dropped"
        );
    }
}

/// How many datagrams the kernel dropped because `socket`'s receive buffer was full (the
/// `drops` column of `/proc/net/udp` and `/proc/net/udp6` for the socket's inode).
pub fn kernel_drops(socket: &impl AsFd) -> io::Result<u64> {
    kernel_drops_by_inode(socket_inode(socket)?)
}

/// The inode number of `socket`, which names it in `/proc/net/udp` for as long as it is open.
pub fn socket_inode(socket: &impl AsFd) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(socket.as_fd())
        .map_err(io::Error::from)?
        .st_ino)
}

/// [`kernel_drops`] of the socket with inode `inode` (from [`socket_inode`]); `NotFound` once
/// the socket is closed. Lets a metrics reader follow a socket without holding it open.
pub fn kernel_drops_by_inode(inode: u64) -> io::Result<u64> {
    // The kernel writes the tables a page at a time and resumes by position, so sockets
    // opened or closed between two pages can hide a live one from one reading; a closed one
    // is missing from every reading.
    let mut result = read_drops(inode);
    for _ in 1..READINGS {
        match result {
            Err(ref e) if e.kind() == io::ErrorKind::NotFound => result = read_drops(inode),
            _ => break,
        }
    }
    result
}

/// Readings of the tables before a socket is taken for closed.
const READINGS: usize = 3;

fn read_drops(inode: u64) -> io::Result<u64> {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(drops) = drops_of(&text, inode) {
            return Ok(drops);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "the socket is not in /proc/net/udp",
    ))
}

/// The `drops` of the line whose `inode` column is `inode`.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let this: u64 = columns.get(9)?.parse().ok()?;
        (this == inode)
            .then(|| columns.last()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:22B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:22B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0
";

    #[test]
    fn drops_are_read_from_the_line_of_the_inode() {
        assert_eq!(drops_of(TABLE, 4242), Some(17));
        assert_eq!(drops_of(TABLE, 4243), Some(0));
        assert_eq!(drops_of(TABLE, 1), None);
    }

    #[test]
    fn buffers_grow_and_a_real_socket_reports_its_drops() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let before = UdpBuffers::of(&socket);
        let granted = UdpBuffers::both(1 << 20).apply(&socket);
        assert!(granted.recv > before.recv, "{before:?} -> {granted:?}");
        assert_eq!(kernel_drops(&socket).expect("drops"), 0);
    }

    #[test]
    fn a_full_receive_buffer_shows_in_the_drop_count() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The smallest buffer the kernel allows: a few datagrams fill it.
        let _ = setsockopt(&receiver, sockopt::RcvBuf, &1024usize);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("addr");
        for _ in 0..200 {
            let _ = sender.send_to(&[0u8; 1200], to);
        }
        assert!(kernel_drops(&receiver).expect("drops") > 0);
    }
}
