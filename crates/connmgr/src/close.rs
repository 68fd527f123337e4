//! The one thing the manager needs from a connection: a way to close it, and why.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Why the [`ConnectionManager`](crate::ConnectionManager) closed a connection.
///
/// Passed to [`Close::close`], so a connection can report (log, count, tell its peer) why it
/// ended without its owner marking it beforehand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// It had not been used for the time given to
    /// [`evict_idle`](crate::ConnectionManager::evict_idle).
    Idle,
    /// Its entry was removed: by [`remove`](crate::ConnectionManager::remove) or
    /// [`remove_if_same`](crate::ConnectionManager::remove_if_same), or, for a connection
    /// whose creation finished after its entry had been removed (by `remove` or `close_all`),
    /// by the [`get_or_create`](crate::ConnectionManager::get_or_create) call that created it.
    Removed,
    /// [`close_all`](crate::ConnectionManager::close_all) closed every connection.
    Shutdown,
}

impl CloseReason {
    /// A short lowercase description: `"idle"`, `"removed"` or `"shut down"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Removed => "removed",
            CloseReason::Shutdown => "shut down",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection the [`ConnectionManager`](crate::ConnectionManager) can close.
///
/// The manager calls [`close`](Close::close) **exactly once** for every connection it took
/// ownership of: when the connection is removed ([`CloseReason::Removed`]), evicted
/// ([`CloseReason::Idle`]), swept by [`close_all`](crate::ConnectionManager::close_all)
/// ([`CloseReason::Shutdown`]), or when it was created for an entry that had been removed
/// before the creation finished ([`CloseReason::Removed`]). It is never called twice for the
/// same handle, and never for a connection that no `get_or_create` call produced.
///
/// `close` receives one `Arc` handle, but other tasks may still hold clones of it (a forwarding
/// task, for instance). Closing must therefore make the connection unusable for every holder
/// and release its resources (send a DTLS `close_notify`, shut a socket down, cancel the tasks
/// that pump it), rather than rely on `Drop`: the manager's own reference is released by
/// lock-free memory reclamation, which may run later.
///
/// The future returned by `close` runs in the task of whoever triggered the close (the caller
/// of `remove`, `close_all`, `evict_idle`, or the `get_or_create` that lost a race with a
/// removal). It should finish promptly: start the shutdown, do not wait for the peer. If that
/// caller is cancelled mid-close, the future is dropped and not resumed.
///
/// # Async close
///
/// ```
/// use std::sync::Arc;
/// use streamproxy_connmgr::{Close, CloseReason};
///
/// struct DtlsSession { /* ... */ }
///
/// impl DtlsSession {
///     async fn send_close_notify(&self) { /* queue the alert, mark the session closed */ }
/// }
///
/// impl Close for DtlsSession {
///     async fn close(self: Arc<Self>, why: CloseReason) {
///         // e.g. log "session closed: {why}"
///         let _ = why;
///         self.send_close_notify().await;
///     }
/// }
/// ```
///
/// # Sync close
///
/// A connection that closes synchronously wraps its work in a ready future. Here the reason is
/// kept for the forwarding loop, which reports it when it stops:
///
/// ```
/// use std::future::Future;
/// use std::sync::{Arc, OnceLock};
/// use streamproxy_connmgr::{Close, CloseReason};
///
/// struct UdpDestination {
///     socket: std::net::UdpSocket,
///     closed: OnceLock<CloseReason>, // checked by the forwarding loop
/// }
///
/// impl Close for UdpDestination {
///     fn close(self: Arc<Self>, why: CloseReason) -> impl Future<Output = ()> + Send {
///         let _ = self.closed.set(why);
///         std::future::ready(())
///     }
/// }
/// ```
pub trait Close: Send + Sync + 'static {
    /// Closes the connection for the reason `why`. Called at most once per connection by the
    /// manager.
    fn close(self: Arc<Self>, why: CloseReason) -> impl Future<Output = ()> + Send;
}
