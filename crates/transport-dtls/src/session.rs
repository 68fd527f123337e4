//! A DTLS session with datagram semantics, shared by client and server.
//!
//! I/O runs through `tokio_openssl::SslStream` over [`DatagramIo`], polled with `poll_fn`.
//!
//! Concurrency design: OpenSSL's `SSL` object is not thread-safe, so each session keeps its
//! stream behind a `std::sync::Mutex` of its own (never a global lock). The lock is taken
//! inside a `poll_fn` closure for one poll of the stream and released before the closure
//! returns, so it is never held across an `.await` and there is no lock order to deadlock on.
//! A critical section is one `SSL_read` or `SSL_write`: one AES-GCM operation and at most one
//! `recv`/`sendto`. A poll that finds nothing to read leaves the polling task's waker with the
//! input (the connected socket's read readiness, or the listener's per-peer queue) and
//! returns; the lock is free while the task waits, so a reader waiting for a datagram never
//! stalls a writer.
//!
//! Each waker slot has one owner. Only the receiving half reads the transport (the handshake is
//! done and renegotiation is disabled, so `SSL_write` never reads), so the waker of a task
//! waiting in `recv` cannot be replaced by a sending task's poll. Writes never park a waker:
//! the adapter's writes never return `Pending` (see [`crate::io`]); senders wait with
//! `UdpSocket::writable()`, which keeps a waiter per task, before they poll. That is why the
//! halves can be moved to two tasks, and why many sessions can share the listener's socket.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use openssl::nid::Nid;
use openssl::ssl::{ErrorCode, ShutdownState, SslRef};
use openssl::x509::{X509NameRef, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;

use crate::error::{HandshakeError, RecvError, SendError};
use crate::ffi;
use crate::io::DatagramIo;

/// What [`SendHalf::send_many`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentMany {
    /// Records handed to the kernel.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Payloads skipped: empty, or over the maximum.
    pub refused: u64,
}

impl SentMany {
    fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

/// A flush's result: true when everything went, false when the socket's buffer is full.
fn flushed(r: io::Result<()>) -> Result<bool, SendError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(SendError::Io(e)),
    }
}

/// The TLS stream over one peer's datagrams.
pub(crate) type Stream = tokio_openssl::SslStream<DatagramIo>;

/// The shortest wait on the retransmission timer (OpenSSL reports < 15 ms as expired).
const MIN_TIMER_WAIT: Duration = Duration::from_millis(1);
/// Handshake steps in one poll before the task yields (a step normally ends waiting for input).
const MAX_STEPS_PER_POLL: usize = 8;

/// Where a listener's peer stands: handshaking, then exactly one of established, failed or
/// evicted (established may later become replaced). The transitions out of handshaking are
/// compare-and-swaps, so a handshake that finishes while the listener evicts it ends up either
/// evicted or established, never both.
#[derive(Debug, Default)]
pub(crate) struct PeerLink {
    state: AtomicU8,
}

impl PeerLink {
    const HANDSHAKING: u8 = 0;
    const ESTABLISHED: u8 = 1;
    const REPLACED: u8 = 2;
    const FAILED: u8 = 3;
    const EVICTED: u8 = 4;

    pub(crate) fn is_established(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::ESTABLISHED
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::HANDSHAKING
    }

    fn leave_handshaking(&self, to: u8) -> bool {
        self.state
            .compare_exchange(Self::HANDSHAKING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks the handshake finished. False if the listener evicted it first: the session must
    /// not be handed out.
    pub(crate) fn set_established(&self) -> bool {
        self.leave_handshaking(Self::ESTABLISHED)
    }

    /// Marks a handshake that ended without a session (error, timeout, task dropped). False if
    /// it had already left the handshaking state (established or evicted).
    pub(crate) fn set_failed(&self) -> bool {
        self.leave_handshaking(Self::FAILED)
    }

    /// Takes the handshake away from its task. False if it is no longer in progress (it
    /// finished or failed first): then there is nothing to evict.
    pub(crate) fn evict(&self) -> bool {
        self.leave_handshaking(Self::EVICTED)
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::EVICTED
    }

    pub(crate) fn set_replaced(&self) {
        self.state.store(Self::REPLACED, Ordering::Release);
    }

    fn is_replaced(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::REPLACED
    }
}

/// Drives a handshake to completion. Each step polls `SSL_do_handshake`, which reads the
/// input through the adapter (leaving the task's waker there when nothing is queued); after a
/// step that has to wait, the DTLS retransmission timer (`DTLSv1_get_timeout`) arms a sleep,
/// so the task also wakes when the timer expires. OpenSSL retransmits by itself when a
/// handshake step finds its timer expired; this loop only makes sure that step happens. It
/// never calls `DTLSv1_handle_timeout`: tokio-openssl's BIO only works inside its own polls.
pub(crate) async fn handshake(stream: &mut Stream) -> Result<(), HandshakeError> {
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    poll_fn(|cx| {
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > MAX_STEPS_PER_POLL {
                // Let other tasks run; come back on the next turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            stream.get_mut().clear_read_parked();
            let step = Pin::new(&mut *stream).poll_do_handshake(cx);
            stream
                .get_mut()
                .send_pending()
                .map_err(HandshakeError::Io)?;
            match step {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(handshake_error(e, stream))),
                Poll::Pending => {}
            }
            if !stream.get_ref().read_parked() {
                // OpenSSL wants to go on without new input, and nothing would wake this task
                // for it: step again.
                continue;
            }
            if let Some(left) = ffi::dtls_timeout(stream.ssl()) {
                let at = tokio::time::Instant::now() + left.max(MIN_TIMER_WAIT);
                timer.as_mut().reset(at);
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    })
    .await?;
    stream
        .get_mut()
        .stop_coalescing()
        .map_err(HandshakeError::Io)?;
    if !ffi::extended_master_secret(stream.ssl()) {
        return Err(HandshakeError::NoExtendedMasterSecret);
    }
    // A resumed session carries the certificate of the handshake that created it, unchecked:
    // it must still be valid now, or resumption would outlive the certificate.
    if let Some(cert) = stream.ssl().peer_certificate() {
        check_validity_now(&cert)?;
    }
    Ok(())
}

/// Refuses a peer certificate outside its validity period (`notBefore`..=`notAfter`).
fn check_validity_now(cert: &openssl::x509::X509Ref) -> Result<(), HandshakeError> {
    use std::cmp::Ordering;
    let error = |e: openssl::error::ErrorStack| HandshakeError::Tls(e.into());
    let now = openssl::asn1::Asn1Time::days_from_now(0).map_err(error)?;
    let expired = cert.not_after().compare(&now).map_err(error)? == Ordering::Less;
    let early = cert.not_before().compare(&now).map_err(error)? == Ordering::Greater;
    if expired || early {
        return Err(HandshakeError::CertificateNotValidNow);
    }
    Ok(())
}

fn handshake_error(e: openssl::ssl::Error, stream: &Stream) -> HandshakeError {
    if stream.get_ref().is_detached() {
        return HandshakeError::Detached;
    }
    let verify = stream.ssl().verify_result();
    if verify != X509VerifyResult::OK {
        return HandshakeError::PeerCertificate(verify);
    }
    match e.into_io_error() {
        Ok(io) => HandshakeError::Io(io),
        Err(e) => HandshakeError::Tls(e),
    }
}

/// tokio-openssl reports OpenSSL errors as `io::Error`s wrapping the `ssl::Error`, and errors
/// of the transport as they were: gives the former back.
fn ssl_error(e: io::Error) -> Result<openssl::ssl::Error, io::Error> {
    if !e
        .get_ref()
        .is_some_and(|inner| inner.is::<openssl::ssl::Error>())
    {
        return Err(e);
    }
    let kind = e.kind();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<openssl::ssl::Error>())
    {
        Some(Ok(ssl)) => Ok(*ssl),
        Some(Err(inner)) => Err(io::Error::new(kind, inner)),
        None => Err(kind.into()),
    }
}

fn send_error(e: io::Error) -> SendError {
    match ssl_error(e) {
        Ok(e) if e.code() == ErrorCode::ZERO_RETURN => SendError::Closed,
        Ok(e) => SendError::from_ssl(e),
        Err(io) => SendError::Io(io),
    }
}

/// The group of the peer's ephemeral key. OpenSSL keeps that key on the client (the server's
/// ServerKeyExchange key) for the life of the connection, and drops it on the server.
fn key_exchange_group(ssl: &SslRef) -> Option<&'static str> {
    let key = ssl.peer_tmp_key().ok()?;
    let nid = match key.ec_key() {
        Ok(ec) => ec.group().curve_name()?,
        // X25519 and X448 keys are not EC keys; their key type is their group.
        Err(_) => Nid::from_raw(key.id().as_raw()),
    };
    nid.short_name().ok()
}

/// Facts about an established session.
#[derive(Debug, Clone)]
struct Info {
    peer: SocketAddr,
    local: SocketAddr,
    peer_subject: Option<String>,
    peer_certificate: Option<Vec<u8>>,
    cipher: &'static str,
    key_exchange_group: Option<&'static str>,
    data_mtu: usize,
    resumed: bool,
    handshake: Option<std::time::Duration>,
}

#[derive(Debug)]
struct Shared {
    stream: Mutex<Stream>,
    socket: Arc<UdpSocket>,
    info: Info,
    max_payload: usize,
    link: Option<Arc<PeerLink>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Stream> {
        // A panic inside OpenSSL calls cannot leave Rust-side state half-updated; go on.
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An established, mutually authenticated DTLS session: [`send`](Self::send) one record,
/// [`recv`](Self::recv) one record.
///
/// To send and receive from two tasks, [`into_split`](Self::into_split) it.
#[derive(Debug)]
pub struct DtlsSession {
    send: SendHalf,
    recv: RecvHalf,
}

/// The sending half of a [`DtlsSession`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct SendHalf {
    shared: Arc<Shared>,
}

/// The receiving half of a [`DtlsSession`].
#[derive(Debug)]
pub struct RecvHalf {
    shared: Arc<Shared>,
}

impl DtlsSession {
    /// Wraps a stream whose handshake has finished.
    pub(crate) fn new(
        stream: Stream,
        peer: SocketAddr,
        max_payload: usize,
        link: Option<Arc<PeerLink>>,
        handshake: Option<std::time::Duration>,
    ) -> Self {
        let socket = stream.get_ref().socket().clone();
        let local = stream.get_ref().local_addr().unwrap_or(peer);
        let ssl = stream.ssl();
        let info = Info {
            peer,
            local,
            peer_subject: ssl
                .peer_certificate()
                .map(|c| format_name(c.subject_name())),
            peer_certificate: ssl.peer_certificate().and_then(|c| c.to_der().ok()),
            cipher: ssl.current_cipher().map_or("", |c| c.name()),
            key_exchange_group: key_exchange_group(ssl),
            data_mtu: ffi::data_mtu(ssl),
            resumed: ssl.session_reused(),
            handshake,
        };
        let shared = Arc::new(Shared {
            stream: Mutex::new(stream),
            socket,
            info,
            max_payload,
            link,
        });
        Self {
            send: SendHalf {
                shared: shared.clone(),
            },
            recv: RecvHalf { shared },
        }
    }

    /// Sends `payload` as one record in one datagram. See [`SendHalf::send`].
    pub async fn send(&self, payload: &[u8]) -> Result<(), SendError> {
        self.send.send(payload).await
    }

    /// Receives one record. See [`RecvHalf::recv`].
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        self.recv.recv(buf).await
    }

    /// Sends close_notify. See [`SendHalf::shutdown`].
    pub async fn shutdown(&self) -> Result<(), SendError> {
        self.send.shutdown().await
    }

    /// Splits into halves that can be used from two tasks at once.
    pub fn into_split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.send.shared.info.peer
    }

    /// The local address of the session: the socket's, except on a listener bound to an
    /// unspecified address (`0.0.0.0`, `::`), where it is the address the client sent its
    /// handshake to, with the listener's port (IPv4-mapped on a dual-stack socket, like
    /// [`peer_addr`](Self::peer_addr)).
    pub fn local_addr(&self) -> SocketAddr {
        self.send.shared.info.local
    }

    /// The subject of the peer's certificate, as `CN=..., O=...`.
    pub fn peer_subject(&self) -> Option<&str> {
        self.send.shared.info.peer_subject.as_deref()
    }

    /// The peer's certificate (DER), for matching its names and key.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.send.shared.info.peer_certificate.as_deref()
    }

    /// The negotiated cipher suite (OpenSSL name).
    pub fn cipher(&self) -> &'static str {
        self.send.shared.info.cipher
    }

    /// The group of the handshake's ECDHE key exchange, by OpenSSL short name (`X25519`,
    /// `prime256v1` for P-256), as far as OpenSSL reports it: for a full handshake on the
    /// client side. `None` on the server side and for a resumed session (no key exchange).
    pub fn key_exchange_group(&self) -> Option<&'static str> {
        self.send.shared.info.key_exchange_group
    }

    /// How long the server's side of the handshake took, from the first flight it answered
    /// to its last (`None` on a client's session).
    pub fn handshake_duration(&self) -> Option<std::time::Duration> {
        self.send.shared.info.handshake
    }

    /// Whether the handshake resumed an earlier session instead of a
    /// full handshake with certificates.
    pub fn resumed(&self) -> bool {
        self.send.shared.info.resumed
    }

    /// The largest payload that fits in one datagram of the configured MTU; larger payloads
    /// (up to [`max_payload`](Self::max_payload)) rely on IP fragmentation.
    pub fn data_mtu(&self) -> usize {
        self.send.shared.info.data_mtu
    }

    /// The largest payload [`send`](Self::send) accepts.
    pub fn max_payload(&self) -> usize {
        self.send.shared.max_payload
    }
}

impl SendHalf {
    /// Sends `payload` as one record in one datagram. Refuses (never splits or truncates)
    /// payloads over the configured maximum, and empty ones.
    ///
    /// Returns once the datagram is handed to the kernel; like UDP, it may still be lost. When
    /// the socket's buffer is full, waits for room.
    pub async fn send(&self, payload: &[u8]) -> Result<(), SendError> {
        let max = self.shared.max_payload;
        if payload.len() > max {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        if payload.is_empty() {
            return Err(SendError::Empty);
        }
        self.send_many([payload]).await.map(|_| ())
    }

    /// Sends each payload as one record in one datagram, in order, handing the records to the
    /// kernel in batches (one `sendmmsg` for up to 32). Payloads [`send`](Self::send) would
    /// refuse (empty, or over the maximum) are skipped and counted in [`SentMany::refused`].
    /// Waits for room when the socket's buffer is full. On an error, records already written
    /// may have been sent.
    pub async fn send_many<'a, I>(&self, payloads: I) -> Result<SentMany, SendError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut payloads = payloads.into_iter().peekable();
        let mut sent = SentMany::default();
        loop {
            self.shared.socket.writable().await.map_err(SendError::Io)?;
            if self.write_some(&mut payloads, &mut sent)? {
                return Ok(sent);
            }
        }
    }

    /// Flushes what earlier calls left, then writes and flushes payloads until they run out
    /// (true) or the socket's buffer is full (false: wait for room and call again).
    fn write_some<'a>(
        &self,
        payloads: &mut std::iter::Peekable<impl Iterator<Item = &'a [u8]>>,
        sent: &mut SentMany,
    ) -> Result<bool, SendError> {
        let mut stream = self.shared.lock();
        if ffi::shutdown_state(stream.ssl()) != ShutdownState::empty() {
            return Err(SendError::Closed);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if !flushed(stream.get_mut().flush_out())? {
                return Ok(false);
            }
            if payloads.peek().is_none() {
                return Ok(true);
            }
            while let Some(&payload) = payloads.peek() {
                if payload.is_empty() || payload.len() > self.shared.max_payload {
                    sent.refused += 1;
                } else if !stream.get_ref().has_room(payload.len()) {
                    break;
                } else {
                    match Pin::new(&mut *stream).poll_write(&mut cx, payload) {
                        Poll::Ready(Ok(_)) => sent.add(payload.len()),
                        Poll::Ready(Err(e)) => return Err(send_error(e)),
                        // Not expected: the adapter's writes never wait and `SSL_write` never
                        // reads. Try again after the flush.
                        Poll::Pending => break,
                    }
                }
                payloads.next();
            }
        }
    }

    /// Sends close_notify (once); the peer's `recv` then returns `Ok(None)`. Does not wait for
    /// the peer's close_notify. Later `send`s fail with [`SendError::Closed`].
    pub async fn shutdown(&self) -> Result<(), SendError> {
        loop {
            self.shared.socket.writable().await.map_err(SendError::Io)?;
            if self.shutdown_some()? {
                return Ok(());
            }
        }
    }

    /// One attempt of [`shutdown`](Self::shutdown): true once close_notify is with the kernel.
    fn shutdown_some(&self) -> Result<bool, SendError> {
        let mut stream = self.shared.lock();
        if !flushed(stream.get_mut().flush_out())? {
            return Ok(false);
        }
        // Once close_notify is out, `SSL_shutdown` would wait for the peer's: reading, from
        // the sending side.
        if ffi::shutdown_state(stream.ssl()).contains(ShutdownState::SENT) {
            return Ok(true);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut *stream).poll_shutdown(&mut cx) {
            // Sent whatever else happens: close_notify goes out with the next flush.
            Poll::Ready(Ok(())) | Poll::Pending => {}
            Poll::Ready(Err(e)) => return Err(send_error(e)),
        }
        flushed(stream.get_mut().flush_out())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.info.peer
    }
}

impl RecvHalf {
    /// Receives one record into `buf` and returns its length; `Ok(None)` once the peer has sent
    /// close_notify (a clean end, answered with our own close_notify).
    ///
    /// Give a buffer of at least [`DtlsSession::max_payload`] bytes: a longer record is
    /// discarded with [`RecvError::Truncated`], never split across calls. Datagrams that do not
    /// authenticate (garbage, replays, duplicates) are dropped silently, as DTLS requires.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RecvError> {
        if buf.is_empty() {
            return Err(RecvError::EmptyBuffer);
        }
        poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    /// Receives one record into `buf` if one is ready, without waiting: `None` when none is.
    /// What [`recv`](Self::recv) returns otherwise. For draining what has arrived into a batch
    /// after a `recv`.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Option<Result<Option<usize>, RecvError>> {
        if buf.is_empty() {
            return Some(Err(RecvError::EmptyBuffer));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_recv(&mut cx, buf) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Option<usize>, RecvError>> {
        let mut stream = self.shared.lock();
        let r = poll_record(&mut stream, cx, buf, |stream, e| self.read_error(stream, e));
        // Reading may have written (an alert, close_notify, a retransmitted final flight): best
        // effort, as before batching; what does not fit now goes with the next send.
        if stream.get_ref().has_unflushed() {
            let _ = stream.get_mut().flush_out();
        }
        r
    }

    fn read_error(&self, stream: &Stream, e: io::Error) -> RecvError {
        if stream.get_ref().is_detached() {
            return self.detached();
        }
        match ssl_error(e) {
            Ok(e) => RecvError::from_ssl(e),
            Err(io) => RecvError::Io(io),
        }
    }

    fn detached(&self) -> RecvError {
        match &self.shared.link {
            Some(link) if link.is_replaced() => RecvError::Replaced,
            _ => RecvError::ListenerClosed,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.info.peer
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        // Nobody reads any more: let the listener stop queueing for this peer.
        self.shared.lock().get_mut().close_input();
    }
}

/// One read of a record into `buf`; `error` says what a failed read means for this half.
fn poll_record(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    error: impl FnOnce(&Stream, io::Error) -> RecvError,
) -> Poll<Result<Option<usize>, RecvError>> {
    let capacity = buf.len();
    let mut read = ReadBuf::new(buf);
    let n = match Pin::new(&mut *stream).poll_read(cx, &mut read) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(error(stream, e))),
        Poll::Ready(Ok(())) => read.filled().len(),
    };
    if n == 0 {
        // The adapter never reports the end of its input, so OpenSSL read an alert.
        return Poll::Ready(end_of_session(stream, cx));
    }
    if n == capacity && stream.ssl().pending() > 0 {
        return Poll::Ready(Err(discard_rest(stream, cx, n, capacity)));
    }
    Poll::Ready(Ok(Some(n)))
}

/// After a read of zero bytes: tokio-openssl reports a received close_notify that way, and also
/// every later read once the peer has sent a fatal alert (which OpenSSL reports as
/// `SSL_ERROR_SYSCALL`). `SSL_peek` returns at once in that state and tells the two apart.
fn end_of_session(stream: &mut Stream, cx: &mut Context<'_>) -> Result<Option<usize>, RecvError> {
    if !ffi::shutdown_state(stream.ssl()).contains(ShutdownState::RECEIVED) {
        return Err(RecvError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    let mut probe = [0u8; 1];
    match Pin::new(&mut *stream).poll_peek(cx, &mut probe) {
        Poll::Ready(Err(e)) if e.code() == ErrorCode::ZERO_RETURN => {}
        Poll::Ready(Err(e)) => return Err(RecvError::from_ssl(e)),
        // Not reached: OpenSSL answers at once once it has received a shutdown.
        Poll::Ready(Ok(_)) | Poll::Pending => {}
    }
    if !ffi::shutdown_state(stream.ssl()).contains(ShutdownState::SENT) {
        // Best effort: a lost close_notify only delays the peer's idle timeout.
        let _ = Pin::new(&mut *stream).poll_shutdown(cx);
    }
    Ok(None)
}

fn discard_rest(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    read: usize,
    capacity: usize,
) -> RecvError {
    let mut len = read;
    let mut scratch = [0u8; 1024];
    // The rest of the record is already decrypted in OpenSSL's buffer: no input is read.
    while stream.ssl().pending() > 0 {
        let mut rest = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *stream).poll_read(cx, &mut rest) {
            Poll::Ready(Ok(())) if !rest.filled().is_empty() => len += rest.filled().len(),
            _ => break,
        }
    }
    RecvError::Truncated { len, capacity }
}
/// `CN=client, O=org` from a certificate name.
pub(crate) fn format_name(name: &X509NameRef) -> String {
    let mut out = String::new();
    for entry in name.entries() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(entry.object().nid().short_name().unwrap_or("?"));
        out.push('=');
        match entry.data().to_string() {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push('?'),
        }
    }
    out
}
