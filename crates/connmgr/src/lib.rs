//! A lock-free registry of live connections, one per key.
//!
//! [`ConnectionManager<K, C, E>`](ConnectionManager) holds one connection `C` per key `K` (the
//! spec's `ConnectionManager[Conn]`; with `K` = [`SocketAddr`](std::net::SocketAddr), one per
//! client address). It is a data structure and knows no protocol: what a connection is, where
//! it leads and how it is made are the caller's business. It is the registry of the UDP
//! server's sessions, of the client-side UDP forwarder's tunnels, and of what graceful
//! shutdown closes.
//!
//! - **Lookup** ([`get`](ConnectionManager::get)) is the per-datagram hot path: a read of
//!   [papaya]'s lock-free map, no lock and no allocation.
//! - **Single-flight creation** ([`get_or_create`](ConnectionManager::get_or_create)): each
//!   caller passes an async `make`; for one key, only the caller that claims the entry runs
//!   its `make`, however many callers ask at the same time, and they all receive the same
//!   handle, or the same error. Errors are not cached.
//! - **Close exactly once**: [`remove`](ConnectionManager::remove),
//!   [`remove_if_same`](ConnectionManager::remove_if_same),
//!   [`close_all`](ConnectionManager::close_all) and
//!   [`evict_idle`](ConnectionManager::evict_idle) may race with creation and with each other;
//!   every connection a `make` produced is either cached or closed, and is closed (through
//!   the [`Close`] trait, with a [`CloseReason`]) at most once. A connection created for an
//!   entry that was removed while its `make` ran is closed, not cached.
//! - **Idle tracking**: each entry keeps a last-used time (milliseconds, one atomic) updated
//!   by lookups; `evict_idle(now, older_than)` closes the idle ones with
//!   [`CloseReason::Idle`], so an owner's idle timer needs nothing more than that call.
//!
//! What it does **not** do: it performs no I/O of its own, spawns no task, logs nothing and
//! reads no clock after construction. Time comes in as `now: Instant` and eviction happens
//! when the owner calls it (from its timer). Dropping the manager does not close the
//! connections: call [`close_all`](ConnectionManager::close_all) first.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::{Arc, OnceLock};
//! use std::time::{Duration, Instant};
//! use streamproxy_connmgr::{Close, CloseReason, ConnectionManager};
//!
//! struct Destination {
//!     target: String,
//!     closed: OnceLock<CloseReason>,
//! }
//!
//! impl Close for Destination {
//!     async fn close(self: Arc<Self>, why: CloseReason) {
//!         // Shut the socket down, cancel the forwarding tasks, remember why...
//!         let _ = self.closed.set(why);
//!     }
//! }
//!
//! async fn dial(target: String) -> std::io::Result<Arc<Destination>> {
//!     // Connect to `target` here.
//!     Ok(Arc::new(Destination { target, closed: OnceLock::new() }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager: ConnectionManager<SocketAddr, Destination> = ConnectionManager::new();
//!
//! let client: SocketAddr = "192.0.2.10:40000".parse()?;
//! let start = Instant::now();
//! // The caller knows where the connection leads; the manager only runs `make` (at most one
//! // at a time per key) and registers the result.
//! let conn = manager
//!     .get_or_create(client, start, || dial("10.0.0.7:53".to_owned()))
//!     .await?;
//! assert_eq!(conn.target, "10.0.0.7:53");
//!
//! // Per datagram: a lock-free lookup that also marks the entry used.
//! let same = manager.get(&client, start + Duration::from_secs(1)).expect("cached");
//! assert!(Arc::ptr_eq(&conn, &same));
//!
//! // From the owner's idle timer: close what has not been used for 30 s.
//! let later = start + Duration::from_secs(40);
//! assert_eq!(manager.evict_idle(later, Duration::from_secs(30)).await, 1);
//! assert_eq!(conn.closed.get(), Some(&CloseReason::Idle));
//! assert!(manager.is_empty());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod close;
mod error;
mod manager;
mod slot;

pub use close::{Close, CloseReason};
pub use error::GetError;
pub use manager::{ConnectionInfo, ConnectionManager};
