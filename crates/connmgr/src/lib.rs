//! A lock-free registry of live per-client connections.
//!
//! [`ConnectionManager`] holds one connection per client address (the spec's
//! `ConnectionManager[Conn]`, keyed by a typed [`SocketAddr`](std::net::SocketAddr) instead of its string form). It is
//! the registry of the UDP server's sessions, of the client-side UDP forwarder's tunnels, and
//! of what graceful shutdown closes.
//!
//! - **Lookup** ([`get`](ConnectionManager::get)) is the per-datagram hot path: a read of
//!   [papaya]'s lock-free map, no lock and no allocation.
//! - **Single-flight creation** ([`get_or_create`](ConnectionManager::get_or_create)): an async
//!   factory given at construction runs once per client however many callers ask at the same
//!   time; they all receive the same handle, or the same error. Errors are not cached.
//! - **Close exactly once**: [`remove`](ConnectionManager::remove),
//!   [`remove_if_same`](ConnectionManager::remove_if_same),
//!   [`close_all`](ConnectionManager::close_all) and
//!   [`evict_idle`](ConnectionManager::evict_idle) may race with creation and with each other;
//!   every connection the factory produced is either cached or closed, and is closed (through
//!   the [`Close`] trait) at most once. A connection created for an entry that was removed while
//!   its factory ran is closed, not cached.
//! - **Idle tracking**: each entry keeps a last-used time (milliseconds, one atomic) updated
//!   by lookups; `evict_idle(now, older_than)` closes the idle ones.
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
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use streamproxy_connmgr::{Close, ConnectionManager, CreateRequest};
//!
//! struct Destination {
//!     target: String,
//! }
//!
//! impl Close for Destination {
//!     async fn close(self: Arc<Self>) {
//!         // Shut the socket down, cancel the forwarding tasks...
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = ConnectionManager::new(|request: CreateRequest| async move {
//!     // Dial request.host:request.port here.
//!     let target = format!("{}:{}", request.host, request.port);
//!     Ok::<_, std::io::Error>(Arc::new(Destination { target }))
//! });
//!
//! let client: SocketAddr = "192.0.2.10:40000".parse()?;
//! let start = Instant::now();
//! let conn = manager.get_or_create(client, "10.0.0.7", 53, start).await?;
//! assert_eq!(conn.target, "10.0.0.7:53");
//!
//! // Per datagram: a lock-free lookup that also marks the entry used.
//! let same = manager.get(&client, start + Duration::from_secs(1)).expect("cached");
//! assert!(Arc::ptr_eq(&conn, &same));
//!
//! // From the owner's idle timer: close what has not been used for 30 s.
//! let later = start + Duration::from_secs(40);
//! assert_eq!(manager.evict_idle(later, Duration::from_secs(30)).await, 1);
//! assert!(manager.is_empty());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod close;
mod error;
mod manager;
mod slot;

pub use close::Close;
pub use error::GetError;
pub use manager::{ConnectionInfo, ConnectionManager, CreateRequest};
