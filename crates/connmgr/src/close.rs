//! The one thing the manager needs from a connection: a way to close it.

use std::future::Future;
use std::sync::Arc;

/// A connection the [`ConnectionManager`](crate::ConnectionManager) can close.
///
/// The manager calls [`close`](Close::close) **exactly once** for every connection it took
/// ownership of: when the connection is removed, evicted, swept by
/// [`close_all`](crate::ConnectionManager::close_all), or when it was created for an entry
/// that had been removed before the creation finished. It is never called twice for the same
/// handle, and never for a connection the manager did not create.
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
/// use streamproxy_connmgr::Close;
///
/// struct DtlsSession { /* ... */ }
///
/// impl DtlsSession {
///     async fn send_close_notify(&self) { /* queue the alert, mark the session closed */ }
/// }
///
/// impl Close for DtlsSession {
///     async fn close(self: Arc<Self>) {
///         self.send_close_notify().await;
///     }
/// }
/// ```
///
/// # Sync close
///
/// A connection that closes synchronously wraps its work in a ready future:
///
/// ```
/// use std::future::Future;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use streamproxy_connmgr::Close;
///
/// struct UdpDestination {
///     socket: std::net::UdpSocket,
///     closed: AtomicBool, // checked by the forwarding loop
/// }
///
/// impl Close for UdpDestination {
///     fn close(self: Arc<Self>) -> impl Future<Output = ()> + Send {
///         self.closed.store(true, Ordering::Release);
///         std::future::ready(())
///     }
/// }
/// ```
pub trait Close: Send + Sync + 'static {
    /// Closes the connection. Called at most once per connection by the manager.
    fn close(self: Arc<Self>) -> impl Future<Output = ()> + Send;
}
