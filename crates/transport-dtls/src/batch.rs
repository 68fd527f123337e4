//! Many datagrams per system call: [`RecvBatch`] (`recvmmsg`) and [`SendBatch`] (`sendmmsg`),
//! over a tokio [`UdpSocket`], never waiting inside a call.
//!
//! The one batch-I/O module of the data path: the listener's driver, a session's writes and
//! the client's reads (in this crate), and the proxy's destination and local sockets use it.
//! It never turns don't-fragment on (the one socket option it sets is
//! [`report_destinations`]'s, when asked): datagrams larger than the path MTU are still
//! fragmented by IP (DTLS records of up to 16 KiB rely on that), which is why it is written
//! here on `libc` rather than taken from a crate that turns don't-fragment on.
//!
//! Both halves cost no extra call on an idle socket. [`RecvBatch::try_recv`] that receives
//! fewer datagrams than it has slots has emptied the socket's queue, so it clears tokio's
//! readiness: the next wait sleeps until a datagram arrives instead of making one more call
//! that finds nothing (tokio ignores a clear older than the latest readiness event). A
//! [`SendBatch`] holds what its owner has to send and hands all of it to the kernel in one
//! call when flushed; when the socket's buffer fills mid-batch, the rest stays queued, in
//! order, for the next flush. Within that call, a run of datagrams of one size to one
//! destination (a session's records are) is one message with UDP GSO (`UDP_SEGMENT`): the
//! kernel builds and routes the run once and cuts it into the same datagrams. GSO sets no
//! don't-fragment either; a path whose MTU is below the segment size refuses it (`EINVAL`), and
//! the batch then sends datagrams that long one by one.
//!
//! On a socket bound to an unspecified address (`0.0.0.0`, `::`) the kernel picks each reply's
//! source address by route, which need not be the address the peer sent to (a second address
//! on an interface, `127.0.0.2`, a Docker bridge, an IPv6 host's other addresses); a peer whose
//! socket is connected drops a reply from another address. So, on request, the two halves
//! carry addresses too: [`report_destinations`] asks the kernel for each datagram's local
//! destination (`IP_PKTINFO`, `IPV6_RECVPKTINFO`) and a [`RecvBatch`] made
//! [`with_destinations`](RecvBatch::with_destinations) reads it into
//! [`Datagram::destination`]; [`SendBatch::push_from`] and [`try_send_from`] send from a given
//! local address (an `IP_PKTINFO` or `IPV6_PKTINFO` control message, beside `UDP_SEGMENT` in
//! a GSO run, and a run never mixes sources). Sockets bound to one address need none of it and
//! pay nothing: no control buffers on receive, no control message on send.
//!
//! ```no_run
//! # use tokio::net::UdpSocket;
//! # async fn relay(from: UdpSocket, to: UdpSocket) -> std::io::Result<()> {
//! use streamproxy_dtls::batch::{RecvBatch, SendBatch};
//!
//! let mut received = RecvBatch::new(32, 2048);
//! let mut out = SendBatch::new(32, 64 * 1024);
//! loop {
//!     received.recv(&from).await?;
//!     for datagram in received.iter().filter(|d| !d.truncated) {
//!         if !out.push(None, datagram.bytes) {
//!             out.flush(&to).await?;
//!             out.push(None, datagram.bytes);
//!         }
//!     }
//!     out.flush(&to).await?;
//! }
//! # }
//! ```
//!
//! One of the two modules allowed `unsafe` (with `ffi`): the `mmsghdr` arrays the calls take.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one call handles; larger batches are clamped to this.
pub const MAX_SLOTS: usize = 64;

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Where it came from (`None` when the source is not an IP address).
    pub source: Option<SocketAddr>,
    /// The local address it was sent to, when the batch reads destinations
    /// ([`RecvBatch::with_destinations`]) and the socket reports them ([`report_destinations`]);
    /// else `None`. In the family of `source`: on a dual-stack IPv6 socket an IPv4 datagram's
    /// is IPv4-mapped, like its source.
    pub destination: Option<IpAddr>,
    /// Its bytes, at most the batch's slot length.
    pub bytes: &'a [u8],
    /// The datagram was longer than a slot and was cut: callers drop it rather than pass on
    /// part of a datagram.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    len: usize,
    source: Option<SocketAddr>,
    destination: Option<IpAddr>,
    truncated: bool,
}

/// Room for the control messages of one received datagram, aligned for `cmsghdr`: an
/// `IPV6_PKTINFO` (`CMSG_SPACE(20)`, 40 bytes on 64-bit Linux) and an `IP_PKTINFO` (32), with
/// room to spare.
type RecvControl = [u64; 16];

/// Calls in a row that use at most a quarter of a grown batch before it halves.
const QUIET_CALLS: u32 = 64;

/// Buffers for one `recvmmsg` call and what it received.
pub struct RecvBatch {
    /// `slots` slots of `slot_len` bytes (allocated zeroed, so untouched pages cost nothing).
    buf: Box<[u8]>,
    slot_len: usize,
    meta: Vec<Meta>,
    /// One control buffer per slot when the batch reads destinations; else empty.
    controls: Vec<RecvControl>,
    /// Whether the batch reads destinations ([`with_destinations`](Self::with_destinations)).
    destinations: bool,
    /// The slots a batch that keeps filling up grows to.
    max_slots: usize,
    /// The slots it started with, which a batch that has gone quiet shrinks back to.
    min_slots: usize,
    /// Calls in a row that received at most a quarter of the slots.
    quiet_calls: u32,
    /// How many datagrams the last call received.
    len: usize,
    /// The next datagram [`next_datagram`](Self::next_datagram) hands out.
    cursor: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.meta.len())
            .field("slot_len", &self.slot_len)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for `slots` datagrams (1 to [`MAX_SLOTS`]) of up to `slot_len` bytes each (at
    /// least 1); a longer datagram is received cut and marked [`truncated`](Datagram).
    pub fn new(slots: usize, slot_len: usize) -> Self {
        Self::growing(slots, slots, slot_len)
    }

    /// A batch that starts with `slots` slots and doubles them, up to `max_slots`, after each
    /// call that fills every slot: for per-session sockets, where most sessions never burst
    /// and a slot of a large datagram costs a page of memory once touched.
    pub fn growing(slots: usize, max_slots: usize, slot_len: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        let slot_len = slot_len.max(1);
        Self {
            buf: vec![0; slots * slot_len].into_boxed_slice(),
            slot_len,
            meta: vec![Meta::default(); slots],
            controls: Vec::new(),
            destinations: false,
            max_slots: max_slots.clamp(slots, MAX_SLOTS),
            min_slots: slots,
            quiet_calls: 0,
            len: 0,
            cursor: 0,
        }
    }

    /// The same batch, reading each datagram's local destination into
    /// [`Datagram::destination`] from the control message the kernel adds when the socket asks
    /// for it ([`report_destinations`]). Costs a control buffer of 128 bytes per slot, and the
    /// kernel's work of filling it: only for sockets bound to an unspecified address, which need
    /// it to answer from the address a peer sent to.
    pub fn with_destinations(mut self) -> Self {
        self.destinations = true;
        self.controls = vec![[0; 16]; self.meta.len()];
        self
    }

    /// How many datagrams the next call can receive.
    pub fn slots(&self) -> usize {
        self.meta.len()
    }

    /// Doubles the slots (within `max_slots`) when the last call filled them all; halves them
    /// (down to the slots it started with) after [`QUIET_CALLS`] calls in a row that received
    /// at most a quarter of them, so a session that burst once does not keep the memory.
    fn resize(&mut self) {
        let slots = self.meta.len();
        if self.len >= slots && slots < self.max_slots {
            self.quiet_calls = 0;
            self.reallocate((slots * 2).min(self.max_slots));
        } else if self.len <= slots / 4 && slots > self.min_slots {
            self.quiet_calls += 1;
            if self.quiet_calls >= QUIET_CALLS {
                self.quiet_calls = 0;
                self.reallocate((slots / 2).max(self.min_slots));
            }
        } else {
            self.quiet_calls = 0;
        }
    }

    fn reallocate(&mut self, slots: usize) {
        self.buf = vec![0; slots * self.slot_len].into_boxed_slice();
        self.meta = vec![Meta::default(); slots];
        if self.destinations {
            self.controls = vec![[0; 16]; slots];
        }
    }

    /// Receives what `socket` has queued, up to the batch's slots, replacing what the batch
    /// held, and returns how many (at least one). `WouldBlock` when there was nothing; other
    /// errors as the socket reports them (an ICMP error for an earlier datagram among them).
    pub fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.resize();
        self.len = 0;
        self.cursor = 0;
        let fd = socket.as_raw_fd();
        let slots = self.meta.len();
        let (buf, meta, controls, slot_len, len) = (
            &mut self.buf,
            &mut self.meta,
            &mut self.controls,
            self.slot_len,
            &mut self.len,
        );
        let result = socket.try_io(Interest::READABLE, || {
            *len = recvmmsg(fd, buf, slot_len, meta, controls)?;
            if *len < slots {
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

    /// Waits until `socket` has datagrams and receives them (see [`try_recv`](Self::try_recv)).
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match self.try_recv(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// [`recv`](Self::recv) as a poll: `Pending` leaves `cx`'s waker with the socket.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        socket: &UdpSocket,
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Err(e) = std::task::ready!(socket.poll_recv_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            match self.try_recv(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// How many datagrams the last call received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Datagram `i` of the last call; `None` past the end.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.len {
            return None;
        }
        let meta = self.meta.get(i)?;
        let start = i * self.slot_len;
        Some(Datagram {
            source: meta.source,
            destination: meta.destination,
            bytes: self.buf.get(start..start + meta.len.min(self.slot_len))?,
            truncated: meta.truncated,
        })
    }

    /// The datagrams of the last call, in the order they arrived.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// The next datagram of the last call not yet handed out by `next_datagram`, in order;
    /// `None` when all have been.
    pub fn next_datagram(&mut self) -> Option<Datagram<'_>> {
        let i = self.cursor;
        if i >= self.len {
            return None;
        }
        self.cursor += 1;
        self.get(i)
    }

    /// Whether [`next_datagram`](Self::next_datagram) has datagrams left.
    pub fn has_next_datagram(&self) -> bool {
        self.cursor < self.len
    }
}

/// One non-blocking `recvmmsg` into the slots of `buf`; fills `meta` in order, with each
/// datagram's destination when `controls` has a buffer for its slot (else none is asked for).
fn recvmmsg(
    fd: RawFd,
    buf: &mut [u8],
    slot_len: usize,
    meta: &mut [Meta],
    controls: &mut [RecvControl],
) -> io::Result<usize> {
    let slots = meta.len().min(MAX_SLOTS).min(buf.len() / slot_len);
    // SAFETY: all-zero bytes are valid values of these plain C structs.
    let mut addrs: [libc::sockaddr_storage; MAX_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_SLOTS] = unsafe { zeroed() };
    for (i, chunk) in buf.chunks_mut(slot_len).take(slots).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: chunk.len(),
        };
        hdrs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if let Some(control) = controls.get_mut(i) {
            hdrs[i].msg_hdr.msg_control = control.as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = size_of::<RecvControl>() as _;
        }
    }
    // SAFETY: the first `slots` headers point at live, distinct buffers (`buf`'s slots, `iovs`,
    // `addrs`, `controls` when it has any) that outlive the call and are as long as the
    // headers say; the call does not block (`MSG_DONTWAIT`) and keeps no pointer after it
    // returns.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            slots as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (i, slot) in meta.iter_mut().take(n).enumerate() {
        let source = from_sockaddr(&addrs[i]);
        *slot = Meta {
            len: hdrs[i].msg_len as usize,
            source,
            destination: destination_of(&hdrs[i].msg_hdr).map(|ip| in_family_of(ip, source)),
            truncated: hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(n)
}

/// The destination address of the `IPV6_PKTINFO` or `IP_PKTINFO` control message of a received
/// message (the former when both are there); `None` without either, or without control buffer.
fn destination_of(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() {
        return None;
    }
    let mut found = None;
    // SAFETY: `hdr` is as `recvmmsg` left it: `msg_control` points at a live control buffer
    // of which the kernel filled `msg_controllen` bytes, so `CMSG_FIRSTHDR` and `CMSG_NXTHDR`
    // return headers that lie inside it, or null. A header's data is read only when its
    // `cmsg_len` covers the structure read, and read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while let Some(c) = cmsg.as_ref() {
            let data = libc::CMSG_DATA(cmsg);
            match (c.cmsg_level, c.cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if carries::<libc::in6_pktinfo>(c) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if carries::<libc::in_pktinfo>(c) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    found = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    found
}

/// Whether the control message `cmsg` is long enough to carry a `T`.
fn carries<T>(cmsg: &libc::cmsghdr) -> bool {
    // SAFETY: a pure computation on a constant.
    let len = unsafe { libc::CMSG_LEN(size_of::<T>() as u32) };
    // `cmsg_len` is a `size_t` on glibc, a `socklen_t` on musl.
    cmsg.cmsg_len >= len as _
}

/// `ip` in the family of `peer`: IPv4-mapped when `peer` is an IPv6 address and `ip` an IPv4
/// one (an `IP_PKTINFO` on a dual-stack socket), IPv4 when the reverse.
fn in_family_of(ip: IpAddr, peer: Option<SocketAddr>) -> IpAddr {
    match (ip, peer) {
        (IpAddr::V4(v4), Some(SocketAddr::V6(_))) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(v6), Some(SocketAddr::V4(_))) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    }
}

/// Asks the kernel to report the local address each datagram `socket` receives was sent to,
/// for a [`RecvBatch`] made [`with_destinations`](RecvBatch::with_destinations), when `socket`
/// is bound to an unspecified address (`0.0.0.0`, `::`): `IP_PKTINFO` on an IPv4 socket,
/// `IPV6_RECVPKTINFO` on an IPv6 one (which reports IPv4 datagrams on a dual-stack socket as
/// IPv4-mapped addresses). True when it did; a socket bound to one address is left alone
/// (false): everything it receives was sent to that address, and its replies come from it.
pub fn report_destinations(socket: &UdpSocket) -> io::Result<bool> {
    let local = socket.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(false);
    }
    let (level, name) = match local {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live `c_int`, the value these options take, passed with its size; the
    // call keeps no pointer after it returns.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// A socket address the kernel wrote, as a Rust one (`None` for other families).
fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which it is large
            // and aligned enough for.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` as a C socket address and its length.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: `sockaddr_storage` is large and aligned enough for a `sockaddr_in`.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The room an emptied [`SendBatch`] keeps for the next batch; more is given back.
const KEEP_BYTES: usize = 64 * 1024;

/// What a [`SendBatch`] has handed to the kernel since it was last asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Datagrams the socket refused with an error (dropped, see [`SendBatch::try_flush`]).
    pub failed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    len: usize,
    to: Option<SocketAddr>,
    /// The local address to send from; `None`: the kernel's choice.
    from: Option<IpAddr>,
}

/// Datagrams waiting to be sent with one `sendmmsg`, in the order they were pushed.
///
/// Its buffer grows to the largest batch pushed; once flushed empty it keeps at most 64 KiB.
#[derive(Debug)]
pub struct SendBatch {
    buf: Vec<u8>,
    items: Vec<Item>,
    /// The first item not sent yet.
    head: usize,
    max_datagrams: usize,
    max_bytes: usize,
    sent: Sent,
    /// Datagrams shorter than this go out with UDP GSO when they can; the path refused
    /// segments this long (longer than its MTU), or GSO at all (0).
    gso_below: usize,
}

impl SendBatch {
    /// A batch of at most `max_datagrams` datagrams (1 to [`MAX_SLOTS`]) and `max_bytes` bytes
    /// (an empty batch takes one datagram of any size).
    pub fn new(max_datagrams: usize, max_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            items: Vec::new(),
            head: 0,
            max_datagrams: max_datagrams.clamp(1, MAX_SLOTS),
            max_bytes,
            sent: Sent::default(),
            gso_below: usize::MAX,
        }
    }

    /// Queues a copy of `datagram` for `to` (`None`: the socket's connected peer). False, and
    /// nothing queued, when the batch is full: flush it first.
    pub fn push(&mut self, to: Option<SocketAddr>, datagram: &[u8]) -> bool {
        self.push_from(to, None, datagram)
    }

    /// [`push`](Self::push), sent from the local address `from` (`None`: the one the kernel
    /// picks): how a socket bound to an unspecified address answers a peer from the address
    /// the peer sent to ([`Datagram::destination`]). An IPv4 or IPv4-mapped `from` goes as
    /// `IP_PKTINFO` (`ipi_spec_dst`), which an IPv4 socket and a dual-stack IPv6 socket's
    /// IPv4 path both read, an IPv6 one as `IPV6_PKTINFO` (`ipi6_addr`); the kernel refuses
    /// the datagram (`EINVAL`) when `from` is not one of the host's addresses.
    pub fn push_from(
        &mut self,
        to: Option<SocketAddr>,
        from: Option<IpAddr>,
        datagram: &[u8],
    ) -> bool {
        if !self.is_empty() && !self.fits(datagram.len()) {
            return false;
        }
        self.items.push(Item {
            start: self.buf.len(),
            len: datagram.len(),
            to,
            from,
        });
        self.buf.extend_from_slice(datagram);
        true
    }

    fn fits(&self, len: usize) -> bool {
        self.len() < self.max_datagrams && self.waiting_bytes() + len <= self.max_bytes
    }

    fn waiting_bytes(&self) -> usize {
        let first = self
            .items
            .get(self.head)
            .map_or(self.buf.len(), |i| i.start);
        self.buf.len() - first
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the next push of `len` bytes would be refused.
    pub fn is_full(&self, len: usize) -> bool {
        !self.is_empty() && !self.fits(len)
    }

    /// Sends what waits, without waiting: `Ok` once all of it is with the kernel;
    /// `WouldBlock` when the socket's buffer filled first (the rest stays queued, in order).
    /// Any other error is the socket's for the first waiting datagram (for example an ICMP
    /// error reported on a connected socket): that datagram is dropped, counted in
    /// [`Sent::failed`], and the error returned; the rest stays queued.
    pub fn try_flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        self.flush_with(|buf, items, gso_below| {
            socket.try_io(Interest::WRITABLE, || sendmmsg(fd, buf, items, gso_below))
        })
    }

    /// The loop of [`try_flush`](Self::try_flush) over any `send`, which sends a prefix of the
    /// datagrams it is given (their bytes in the buffer; GSO for those shorter than its third
    /// argument) and says how many.
    fn flush_with(
        &mut self,
        mut send: impl FnMut(&[u8], &[Item], usize) -> io::Result<usize>,
    ) -> io::Result<()> {
        while !self.is_empty() {
            let waiting = &self.items[self.head..];
            match send(&self.buf, waiting, self.gso_below) {
                // A call that sends nothing without an error would loop for ever.
                Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(n) => self.advance(n.min(waiting.len())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // The path takes no GSO segments this long (EINVAL: over its MTU) or none at
                // all (EIO: no checksum offload): send them one by one from now on.
                Err(e) if run_len(waiting, self.gso_below) > 1 && gso_refused(&e) => {
                    let len = waiting.first().map_or(0, |i| i.len);
                    self.gso_below = if e.raw_os_error() == Some(libc::EIO) {
                        0
                    } else {
                        len
                    };
                }
                Err(e) => {
                    self.head += 1;
                    self.sent.failed += 1;
                    self.compact();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends what waits, waiting for the socket's buffer when it is full; errors as
    /// [`try_flush`](Self::try_flush).
    pub async fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        loop {
            match self.try_flush(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
                other => return other,
            }
        }
    }

    /// Drops what waits and returns how many datagrams that was.
    pub fn clear(&mut self) -> usize {
        let dropped = self.len();
        self.head = self.items.len();
        self.compact();
        dropped
    }

    /// What was sent since the last call.
    pub fn take_sent(&mut self) -> Sent {
        std::mem::take(&mut self.sent)
    }

    fn advance(&mut self, n: usize) {
        for item in self.items.iter().skip(self.head).take(n) {
            self.sent.datagrams += 1;
            self.sent.bytes += item.len as u64;
        }
        self.head += n;
        self.compact();
    }

    /// Forgets the sent datagrams (the buffer keeps its capacity): at once when none waits,
    /// else by moving the waiting ones to the front, so that a batch never flushed whole
    /// does not grow.
    fn compact(&mut self) {
        if self.head >= self.items.len() {
            self.items.clear();
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > KEEP_BYTES {
                // A burst of large datagrams is over: do not hold its room while idle.
                self.buf = Vec::new();
            }
            return;
        }
        let first = self.items.get(self.head).map_or(0, |i| i.start);
        if self.head == 0 || first == 0 {
            return;
        }
        self.buf.drain(..first);
        self.items.drain(..self.head);
        self.head = 0;
        for item in &mut self.items {
            item.start -= first;
        }
    }
}

/// Datagrams one UDP GSO message carries at most (the limit of older kernels).
const GSO_SEGMENTS: usize = 64;
/// Bytes one UDP GSO message carries at most (within a UDP payload).
const GSO_BYTES: usize = 65_000;
/// `UDP_SEGMENT` of `linux/udp.h`: the segment size of a GSO send.
const UDP_SEGMENT: libc::c_int = 103;

/// Errors with which the kernel refuses a GSO send it would take without GSO.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO))
}

/// How many of `items` (at least one, if any) one message carries: with GSO, a run to one
/// destination from one source of datagrams of one size, the last of which may be shorter
/// (what the kernel cuts one buffer into), when that size is below `gso_below`; else one
/// datagram.
fn run_len(items: &[Item], gso_below: usize) -> usize {
    let Some(first) = items.first() else {
        return 0;
    };
    if first.len == 0 || first.len >= gso_below {
        return 1;
    }
    let (mut n, mut bytes) = (1, first.len);
    for item in &items[1..] {
        let fits = n < GSO_SEGMENTS && bytes + item.len <= GSO_BYTES;
        let same_path = item.to == first.to && item.from == first.from;
        if !fits || !same_path || item.len == 0 || item.len > first.len {
            break;
        }
        n += 1;
        bytes += item.len;
        if item.len < first.len {
            break;
        }
    }
    n
}

/// Room for the control messages of one sent message, aligned for `cmsghdr`: a `UDP_SEGMENT`
/// (`CMSG_SPACE(2)`, 24 bytes on 64-bit Linux) and an `IPV6_PKTINFO` (40) or `IP_PKTINFO` (32).
type Control = [u64; 8];

/// One non-blocking `sendmmsg` of up to [`MAX_SLOTS`] messages, each one datagram of `items`
/// or a GSO run of them (see [`run_len`]); their bytes, consecutive, in `buf`. Returns how
/// many datagrams went.
fn sendmmsg(fd: RawFd, buf: &[u8], items: &[Item], gso_below: usize) -> io::Result<usize> {
    // SAFETY: all-zero bytes are valid values of these plain C structs and arrays.
    let mut addrs: [(libc::sockaddr_storage, libc::socklen_t); MAX_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_SLOTS] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_SLOTS] = unsafe { zeroed() };
    let mut controls: [Control; MAX_SLOTS] = [[0; 8]; MAX_SLOTS];
    let mut runs = [0usize; MAX_SLOTS];
    let (mut msgs, mut k) = (0, 0);
    while msgs < MAX_SLOTS && k < items.len() {
        let run = run_len(&items[k..], gso_below);
        let (first, last) = (items[k], items[k + run - 1]);
        let bytes = buf
            .get(first.start..last.start + last.len)
            .unwrap_or_default();
        iovs[msgs] = libc::iovec {
            // The kernel only reads through it.
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let hdr = &mut hdrs[msgs].msg_hdr;
        hdr.msg_iov = &raw mut iovs[msgs];
        hdr.msg_iovlen = 1;
        if let Some(to) = first.to {
            addrs[msgs] = to_sockaddr(to);
            hdr.msg_name = (&raw mut addrs[msgs].0).cast();
            hdr.msg_namelen = addrs[msgs].1;
        }
        let segment = (run > 1).then_some(first.len);
        set_control(hdr, &mut controls[msgs], segment, first.from);
        runs[msgs] = run;
        msgs += 1;
        k += run;
    }
    // SAFETY: the first `msgs` headers point at live buffers (`buf`, `iovs`, `addrs`,
    // `controls`) that outlive the call and are as long as the headers say; the kernel only
    // reads them; the call does not block (`MSG_DONTWAIT`) and keeps no pointer after it
    // returns.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            msgs as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(runs.iter().take(n as usize).sum())
}

/// Gives `hdr` its control messages, in `control`: the GSO segment size when `segment` is
/// set, the source address when `from` is (see [`SendBatch::push_from`]); none without either.
fn set_control(
    hdr: &mut libc::msghdr,
    control: &mut Control,
    segment: Option<usize>,
    from: Option<IpAddr>,
) {
    let mut used = 0;
    if let Some(segment) = segment {
        // At most `GSO_BYTES`, below `u16::MAX`.
        used = put_cmsg(control, used, libc::SOL_UDP, UDP_SEGMENT, segment as u16);
    }
    match from.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => {
            // SAFETY: all-zero bytes are a valid `in_pktinfo` (interface 0: any).
            let mut info: libc::in_pktinfo = unsafe { zeroed() };
            info.ipi_spec_dst.s_addr = u32::from(v4).to_be();
            used = put_cmsg(control, used, libc::IPPROTO_IP, libc::IP_PKTINFO, info);
        }
        Some(IpAddr::V6(v6)) => {
            // SAFETY: all-zero bytes are a valid `in6_pktinfo` (interface 0: any).
            let mut info: libc::in6_pktinfo = unsafe { zeroed() };
            info.ipi6_addr.s6_addr = v6.octets();
            used = put_cmsg(control, used, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info);
        }
        None => {}
    }
    if used > 0 {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = used as _;
    }
}

/// Writes a control message of `level` and `kind` carrying `value` at byte `at` of `control`
/// and returns where the next one goes; writes nothing (and returns `at`) when it would not
/// fit, which [`Control`]'s size rules out for the messages [`set_control`] writes.
fn put_cmsg<T: Copy>(
    control: &mut Control,
    at: usize,
    level: libc::c_int,
    kind: libc::c_int,
    value: T,
) -> usize {
    // SAFETY: pure computations on a constant.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size_of::<T>() as u32) as usize,
            libc::CMSG_LEN(size_of::<T>() as u32) as usize,
        )
    };
    if at + space > size_of::<Control>() {
        return at;
    }
    // SAFETY: `at` is 0 or the sum of earlier `CMSG_SPACE`s, a multiple of `cmsghdr`'s
    // alignment within `control` (itself aligned for it), and `space` bytes from `at` lie
    // inside `control`: room for the header and `value` behind it, written unaligned.
    unsafe {
        let cmsg = control
            .as_mut_ptr()
            .cast::<u8>()
            .add(at)
            .cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<T>(), value);
    }
    at + space
}

/// Sends one datagram to `to` from the local address `from` (see [`SendBatch::push_from`])
/// at once, without waiting: `WouldBlock` when the socket's buffer is full. Without `from`, a
/// plain `sendto`. For a datagram that goes alone (a handshake flight, a HelloVerifyRequest).
pub fn try_send_from(
    socket: &UdpSocket,
    to: SocketAddr,
    from: Option<IpAddr>,
    datagram: &[u8],
) -> io::Result<usize> {
    if from.is_none() {
        return socket.try_send_to(datagram, to);
    }
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::WRITABLE, || sendmsg(fd, datagram, to, from))
}

/// One non-blocking `sendmsg` of `datagram` to `to`, from `from` when set.
fn sendmsg(fd: RawFd, datagram: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<usize> {
    let (mut addr, addr_len) = to_sockaddr(to);
    let mut iov = libc::iovec {
        // The kernel only reads through it.
        iov_base: datagram.as_ptr().cast_mut().cast(),
        iov_len: datagram.len(),
    };
    let mut control: Control = [0; 8];
    // SAFETY: all-zero bytes are a valid `msghdr` (no name, no data, no control).
    let mut hdr: libc::msghdr = unsafe { zeroed() };
    hdr.msg_name = (&raw mut addr).cast();
    hdr.msg_namelen = addr_len;
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    set_control(&mut hdr, &mut control, None, from);
    // SAFETY: `hdr` points at live buffers (`addr`, `iov` and through it `datagram`, `control`)
    // that outlive the call and are as long as it says; the kernel only reads them; the call
    // does not block (`MSG_DONTWAIT`) and keeps no pointer after it returns.
    let n = unsafe { libc::sendmsg(fd, &raw const hdr, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests;
