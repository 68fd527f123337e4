//! A DTLS session with datagram semantics, shared by client and server.
//!
//! Concurrency design: OpenSSL's `SSL` object is not thread-safe, so each session keeps its
//! `SslStream` behind a `std::sync::Mutex` of its own (never a global lock). Every OpenSSL call
//! made under that lock is non-blocking (see [`crate::io`]): waiting for socket or queue
//! readiness happens *before* taking the lock, never while holding it, so a reader waiting for
//! a datagram never stalls a writer, nothing is held across an `.await`, and no lock order
//! exists to deadlock on. A critical section is one `SSL_read` or `SSL_write`: one AES-GCM
//! operation and one `sendto`. Only the receiving half reads the transport (the handshake is
//! done and renegotiation is disabled, so `SSL_write` never reads), which is why the halves
//! can be moved to two tasks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use openssl::ssl::{ErrorCode, ShutdownState, SslRef, SslStream};
use openssl::x509::X509VerifyResult;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::error::{HandshakeError, RecvError, SendError};
use crate::ffi;
use crate::io::DatagramIo;

/// The shortest wait on the retransmission timer (OpenSSL reports < 15 ms as expired).
const MIN_TIMER_WAIT: Duration = Duration::from_millis(1);

/// Where a session's incoming datagrams come from.
#[derive(Debug)]
pub(crate) enum Input {
    /// Its own connected socket (client).
    Socket,
    /// The listener's per-peer queue (server).
    Queue(mpsc::Receiver<Bytes>),
}

/// How the listener ended a session's feed; set before the queue's sender is dropped.
#[derive(Debug, Default)]
pub(crate) struct PeerLink {
    state: AtomicU8,
}

impl PeerLink {
    const HANDSHAKING: u8 = 0;
    const ESTABLISHED: u8 = 1;
    const REPLACED: u8 = 2;

    pub(crate) fn is_established(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::ESTABLISHED
    }

    pub(crate) fn set_established(&self) {
        let _ = self.state.compare_exchange(
            Self::HANDSHAKING,
            Self::ESTABLISHED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn set_replaced(&self) {
        self.state.store(Self::REPLACED, Ordering::Release);
    }

    fn is_replaced(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::REPLACED
    }
}

/// Drives a handshake to completion: feeds `first` datagrams, then waits for input or the
/// DTLS retransmission timer, whichever comes first. OpenSSL retransmits by itself when a
/// handshake step finds the timer expired; this loop only makes sure that step happens.
pub(crate) async fn handshake(
    stream: &mut SslStream<DatagramIo>,
    socket: &UdpSocket,
    input: &mut Input,
    mut first: VecDeque<Bytes>,
) -> Result<(), HandshakeError> {
    loop {
        let step = stream.do_handshake();
        stream
            .get_mut()
            .send_pending()
            .map_err(HandshakeError::Io)?;
        match step {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => return Err(handshake_error(e, stream.ssl())),
        }
        if let Some(d) = first.pop_front() {
            stream.get_mut().put(d);
            continue;
        }
        let timer = ffi::dtls_timeout(stream.ssl());
        let expired = async {
            match timer {
                Some(t) => tokio::time::sleep(t.max(MIN_TIMER_WAIT)).await,
                None => std::future::pending().await,
            }
        };
        match input {
            Input::Socket => {
                tokio::select! {
                    r = socket.readable() => r.map_err(HandshakeError::Io)?,
                    () = expired => {}
                }
            }
            Input::Queue(rx) => {
                tokio::select! {
                    d = rx.recv() => match d {
                        Some(d) => stream.get_mut().put(d),
                        None => return Err(HandshakeError::Detached),
                    },
                    () = expired => {}
                }
            }
        }
    }
    stream
        .get_mut()
        .stop_coalescing()
        .map_err(HandshakeError::Io)?;
    if !ffi::extended_master_secret(stream.ssl()) {
        return Err(HandshakeError::NoExtendedMasterSecret);
    }
    Ok(())
}

fn handshake_error(e: openssl::ssl::Error, ssl: &SslRef) -> HandshakeError {
    let verify = ssl.verify_result();
    if verify != X509VerifyResult::OK {
        return HandshakeError::PeerCertificate(verify);
    }
    match e.into_io_error() {
        Ok(io) => HandshakeError::Io(io),
        Err(e) => HandshakeError::Tls(e),
    }
}

/// Facts about an established session.
#[derive(Debug, Clone)]
struct Info {
    peer: SocketAddr,
    local: SocketAddr,
    peer_subject: Option<String>,
    cipher: &'static str,
    data_mtu: usize,
}

#[derive(Debug)]
struct Shared {
    stream: Mutex<SslStream<DatagramIo>>,
    socket: Arc<UdpSocket>,
    info: Info,
    max_payload: usize,
    link: Option<Arc<PeerLink>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SslStream<DatagramIo>> {
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
    input: Input,
}

impl DtlsSession {
    /// Wraps a stream whose handshake has finished.
    pub(crate) fn new(
        stream: SslStream<DatagramIo>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        input: Input,
        max_payload: usize,
        link: Option<Arc<PeerLink>>,
    ) -> Self {
        let ssl = stream.ssl();
        let info = Info {
            peer,
            local: socket.local_addr().unwrap_or(peer),
            peer_subject: ssl
                .peer_certificate()
                .map(|c| crate::server::format_name(c.subject_name())),
            cipher: ssl.current_cipher().map_or("", |c| c.name()),
            data_mtu: ffi::data_mtu(ssl),
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
            recv: RecvHalf { shared, input },
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

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.send.shared.info.local
    }

    /// The subject of the peer's certificate, as `CN=..., O=...`.
    pub fn peer_subject(&self) -> Option<&str> {
        self.send.shared.info.peer_subject.as_deref()
    }

    /// The negotiated cipher suite (OpenSSL name).
    pub fn cipher(&self) -> &'static str {
        self.send.shared.info.cipher
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
    /// Returns once the datagram is handed to the kernel. Like UDP, a datagram may still be
    /// lost; when the socket buffer is full it is dropped rather than blocking other writers.
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
        self.shared.socket.writable().await.map_err(SendError::Io)?;
        let mut stream = self.shared.lock();
        if stream.get_shutdown() != ShutdownState::empty() {
            return Err(SendError::Closed);
        }
        match stream.ssl_write(payload) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Err(SendError::Closed),
            Err(e) => Err(SendError::from_ssl(e)),
        }
    }

    /// Sends close_notify (once); the peer's `recv` then returns `Ok(None)`. Does not wait for
    /// the peer's close_notify. Later `send`s fail with [`SendError::Closed`].
    pub async fn shutdown(&self) -> Result<(), SendError> {
        self.shared.socket.writable().await.map_err(SendError::Io)?;
        let mut stream = self.shared.lock();
        if stream.get_shutdown().contains(ShutdownState::SENT) {
            return Ok(());
        }
        match stream.shutdown() {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(()),
            Err(e) => Err(SendError::from_ssl(e)),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.info.peer
    }
}

enum Step {
    Record(usize),
    Eof,
    Wait,
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
        loop {
            match self.try_recv(buf)? {
                Step::Record(n) => return Ok(Some(n)),
                Step::Eof => return Ok(None),
                Step::Wait => {}
            }
            match &mut self.input {
                Input::Socket => self.shared.socket.readable().await.map_err(RecvError::Io)?,
                Input::Queue(rx) => match rx.recv().await {
                    Some(d) => self.shared.lock().get_mut().put(d),
                    None => return Err(self.detached()),
                },
            }
        }
    }

    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Step, RecvError> {
        let mut stream = self.shared.lock();
        loop {
            match stream.ssl_read(buf) {
                Ok(n) => {
                    if n == buf.len() && stream.ssl().pending() > 0 {
                        return Err(discard_rest(&mut stream, n, buf.len()));
                    }
                    return Ok(Step::Record(n));
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    if !stream.get_shutdown().contains(ShutdownState::SENT) {
                        // Best effort: a lost close_notify only delays the peer's idle timeout.
                        let _ = stream.shutdown();
                    }
                    return Ok(Step::Eof);
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    // Feed queued datagrams without dropping the lock in between.
                    if let Input::Queue(rx) = &mut self.input {
                        if let Ok(d) = rx.try_recv() {
                            stream.get_mut().put(d);
                            continue;
                        }
                    }
                    return Ok(Step::Wait);
                }
                Err(e) => return Err(RecvError::from_ssl(e)),
            }
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

fn discard_rest(stream: &mut SslStream<DatagramIo>, read: usize, capacity: usize) -> RecvError {
    let mut len = read;
    let mut scratch = [0u8; 1024];
    while stream.ssl().pending() > 0 {
        match stream.ssl_read(&mut scratch) {
            Ok(n) => len += n,
            Err(_) => break,
        }
    }
    RecvError::Truncated { len, capacity }
}
