//! One handshake in its own task, from the replayed ClientHello to the session handed to
//! `accept`, under the handshake timeout; and the guard that releases its half-open slot
//! however the task ends (finished, failed, timed out, cancelled by eviction).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslContext};
use tokio::sync::mpsc;

use crate::config::ServerConfig;
use crate::cookie;
use crate::error::HandshakeError;
use crate::io::DatagramIo;
use crate::record::COOKIE_LEN;
use crate::session::{self, DtlsSession, PeerLink, Stream};
use crate::shared::{Shared, bump};

/// A server-side `SSL` over one peer's datagrams, holding the cookie the driver verified (its
/// cookie callbacks, `cookie::install_callbacks`, issue and check exactly that one).
pub(crate) fn new_server_stream(
    ctx: &SslContext,
    config: &ServerConfig,
    cookie: [u8; COOKIE_LEN],
    io: DatagramIo,
) -> Result<Stream, ErrorStack> {
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_mtu(config.common.mtu.get())?;
    ssl.set_ex_data(cookie::ssl_index()?, cookie);
    crate::ffi::set_retransmit_schedule(&mut ssl);
    ssl.set_accept_state();
    Stream::new(ssl, io)
}

/// One handshake in its own task; its half-open slot is released when it ends, however
/// (finished, failed, timed out, cancelled by eviction).
pub(crate) struct Handshake {
    stream: Stream,
    source: SocketAddr,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    accept_tx: mpsc::Sender<Result<DtlsSession, io::Error>>,
    timeout: Duration,
    max_payload: usize,
    _half_open: HalfOpen,
}

/// A handshake's half-open slot. Dropping it releases the slot, unless the driver evicted the
/// handshake (the driver released it then). A handshake still marked in progress is marked
/// failed first, so that it can no longer be evicted: exactly one of the two releases it.
struct HalfOpen {
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
}

impl HalfOpen {
    /// Takes a slot for the handshake of `link`.
    fn take(shared: Arc<Shared>, link: Arc<PeerLink>) -> Self {
        shared.counters.half_open.fetch_add(1, Ordering::Relaxed);
        Self { shared, link }
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        let _ = self.link.set_failed();
        if !self.link.is_evicted() {
            self.shared
                .counters
                .half_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Handshake {
    /// A handshake of `stream` with `source`, holding a half-open slot from now on (released
    /// even if the task is cancelled before it first runs).
    pub(crate) fn new(
        stream: Stream,
        source: SocketAddr,
        link: Arc<PeerLink>,
        shared: Arc<Shared>,
        accept_tx: mpsc::Sender<Result<DtlsSession, io::Error>>,
        config: &ServerConfig,
    ) -> Self {
        Self {
            stream,
            source,
            _half_open: HalfOpen::take(shared.clone(), link.clone()),
            link,
            shared,
            accept_tx,
            timeout: config.common.handshake_timeout,
            max_payload: config.common.max_payload.get(),
        }
    }

    /// Runs the handshake and hands the session to `accept`.
    pub(crate) async fn run(mut self) {
        let counters = &self.shared.counters;
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        let result = tokio::time::timeout_at(deadline, session::handshake(&mut self.stream))
            .await
            .unwrap_or(Err(HandshakeError::Timeout(self.timeout)));
        if let Err(e) = result {
            if !self.link.set_failed() {
                // Evicted meanwhile: counted as that, not as a failure.
                return;
            }
            bump(&counters.handshakes_failed);
            if matches!(e, HandshakeError::Timeout(_)) {
                bump(&counters.handshakes_timed_out);
            }
            // As on TCP: a warning, within a budget. A timeout is a peer that went away (or a
            // flood's silent handshake), not worth a warning each.
            if matches!(e, HandshakeError::Timeout(_)) {
                tracing::debug!(peer = %self.source, error = %Chain(&e), "DTLS handshake failed");
            } else if let Some(held_back) = self.shared.failure_log.admit() {
                tracing::warn!(transport = "udp", peer = %self.source, held_back, error = %Chain(&e), "DTLS handshake failed");
            }
            return;
        }
        if !self.link.set_established() {
            // Evicted while its last flight was processed: the slot went to a newcomer.
            return;
        }
        bump(&counters.handshakes_ok);
        let took = Some(started.elapsed());
        let session = DtlsSession::new(
            self.stream,
            self.source,
            self.max_payload,
            Some(self.link),
            took,
        );
        let handed = tokio::time::timeout_at(deadline, self.accept_tx.send(Ok(session))).await;
        if !matches!(handed, Ok(Ok(()))) {
            bump(&counters.accept_overflows);
        }
    }
}

/// An error and its causes on one line (this crate's errors keep their cause in `source()`).
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
