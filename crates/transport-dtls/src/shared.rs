//! What the listener, its driver and its handshake tasks share: the OpenSSL context in force
//! (a reload replaces it), the configuration it was built from, the counters behind
//! [`ListenerStats`](crate::ListenerStats), and the budget of handshake-failure log lines.
//!
//! Plain data; it reads no socket and spawns nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use openssl::ssl::SslContext;

use crate::config::ServerConfig;

/// The listener's counters (see [`ListenerStats`](crate::ListenerStats) for their meaning).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handshakes_ok: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
    pub(crate) hello_verify_sent: AtomicU64,
    pub(crate) client_hellos_dropped: AtomicU64,
    pub(crate) handshakes_evicted: AtomicU64,
    pub(crate) bad_cookies: AtomicU64,
    pub(crate) queue_overflows: AtomicU64,
    pub(crate) bad_datagrams: AtomicU64,
    pub(crate) sessions_replaced: AtomicU64,
    pub(crate) stale_hellos: AtomicU64,
    pub(crate) accept_overflows: AtomicU64,
    pub(crate) half_open: AtomicUsize,
    pub(crate) peers: AtomicUsize,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Owned by the listener handle, the driver and every handshake task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The context new handshakes use; a reload replaces it.
    pub(crate) ctx: RwLock<SslContext>,
    /// The configuration `ctx` was built from.
    pub(crate) config: Mutex<ServerConfig>,
    pub(crate) counters: Counters,
    pub(crate) failure_log: FailureLog,
}

impl Shared {
    pub(crate) fn new(ctx: SslContext, config: ServerConfig) -> Self {
        Self {
            ctx: RwLock::new(ctx),
            config: Mutex::new(config),
            counters: Counters::default(),
            failure_log: FailureLog::default(),
        }
    }

    /// The context in force now.
    pub(crate) fn context(&self) -> SslContext {
        self.ctx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Lets at most `FailureLog::PER_WINDOW` handshake-failure lines through per
/// `FailureLog::WINDOW`: a flood of failing handshakes must not flood the log. The first line
/// after a quieter spell says how many were held back.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    window: Mutex<(Option<Instant>, u64, u64)>,
}

impl FailureLog {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u64 = 10;

    /// `Some(held back so far)` when a line may be written now.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, written, held) = &mut *w;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Self::WINDOW) {
            *start = Some(now);
            *written = 0;
        }
        if *written < Self::PER_WINDOW {
            *written += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}
