//! [`ConnectionManager`]: the registry itself.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use papaya::{Compute, Operation};

use crate::slot::{Flight, FlightState, Ready, Slot};
use crate::{Close, GetError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Factory<C, E> = Box<dyn Fn(CreateRequest) -> BoxFuture<Result<Arc<C>, E>> + Send + Sync>;

/// What the factory is asked to create: a connection for `client` to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateRequest {
    /// The client the connection is for (the manager's key).
    pub client: SocketAddr,
    /// The destination host, as the caller of `get_or_create` gave it.
    pub host: String,
    /// The destination port.
    pub port: u16,
}

/// A connection in the registry, as seen by [`ConnectionManager::snapshot`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo<C> {
    /// The client the connection belongs to.
    pub client: SocketAddr,
    /// A handle to the connection.
    pub connection: Arc<C>,
    /// When the connection was last used (millisecond resolution).
    pub last_used: Instant,
}

/// A lock-free registry of one connection per client address.
///
/// `C` is the connection type and `E` the error type of the factory. See the
/// [crate documentation](crate) for the guarantees and an example.
pub struct ConnectionManager<C, E = std::io::Error> {
    map: papaya::HashMap<SocketAddr, Slot<C, E>>,
    factory: Factory<C, E>,
    /// Timestamps are milliseconds since this instant.
    epoch: Instant,
}

/// What a call to `get_or_create` found in the map.
enum Step<C, E> {
    Ready(Arc<C>),
    Wait(tokio::sync::watch::Receiver<FlightState<C, E>>),
    Lead(Arc<Flight<C, E>>),
}

impl<C: Close, E: Send + Sync + 'static> ConnectionManager<C, E> {
    /// A manager that creates connections with `factory`.
    ///
    /// The factory runs in the task of the `get_or_create` call that found no entry, at most
    /// once at a time per client. Timestamps count from the moment of this call.
    pub fn new<F, Fut>(factory: F) -> Self
    where
        F: Fn(CreateRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<C>, E>> + Send + 'static,
    {
        ConnectionManager {
            map: papaya::HashMap::new(),
            factory: Box::new(move |request| Box::pin(factory(request))),
            epoch: Instant::now(),
        }
    }

    /// The connection for `client`, if one is ready, marking it used at `now`.
    ///
    /// This is the per-datagram lookup: it takes no lock and does not allocate. A creation
    /// still in flight counts as absent.
    #[inline]
    pub fn get(&self, client: &SocketAddr, now: Instant) -> Option<Arc<C>> {
        let map = self.map.pin();
        match map.get(client)? {
            Slot::Ready(ready) => {
                ready.touch(self.stamp(now));
                Some(Arc::clone(&ready.conn))
            }
            Slot::Pending(_) => None,
        }
    }

    /// Marks the connection for `client` used at `now`; `false` if there is none ready.
    #[inline]
    pub fn touch(&self, client: &SocketAddr, now: Instant) -> bool {
        let map = self.map.pin();
        match map.get(client) {
            Some(Slot::Ready(ready)) => {
                ready.touch(self.stamp(now));
                true
            }
            _ => false,
        }
    }

    /// Whether `client` has an entry, ready or being created.
    pub fn contains(&self, client: &SocketAddr) -> bool {
        self.map.pin().contains_key(client)
    }

    /// The connection for `client`, created by the factory for `host:port` if there is none.
    ///
    /// Concurrent calls for the same client run the factory once: the first runs it, the
    /// others wait and receive the same handle or the same error. A factory error is not
    /// cached. The entry (new or found) is marked used at `now`.
    ///
    /// If the entry is removed while the factory runs, the new connection is closed instead of
    /// cached and every caller gets [`GetError::Removed`]. If the caller running the factory
    /// is cancelled, the creation is dropped and one of the waiters runs the factory again.
    ///
    /// # Errors
    ///
    /// [`GetError::Create`] with the factory's error, or [`GetError::Removed`].
    pub async fn get_or_create(
        &self,
        client: SocketAddr,
        host: &str,
        port: u16,
        now: Instant,
    ) -> Result<Arc<C>, GetError<E>> {
        let stamp = self.stamp(now);
        loop {
            match self.find_or_claim(client, stamp) {
                Step::Ready(conn) => return Ok(conn),
                Step::Lead(flight) => return self.create(client, host, port, stamp, flight).await,
                Step::Wait(mut flight) => {
                    let outcome = match flight.wait_for(|state| !state.is_running()).await {
                        Ok(state) => match &*state {
                            FlightState::Done(outcome) => Some(outcome.clone()),
                            FlightState::Running | FlightState::Abandoned => None,
                        },
                        // The flight was dropped without an outcome: same as abandoned.
                        Err(_) => None,
                    };
                    match outcome {
                        Some(Ok(conn)) => {
                            self.touch(&client, now);
                            return Ok(conn);
                        }
                        Some(Err(error)) => return Err(error),
                        None => continue,
                    }
                }
            }
        }
    }

    /// Closes and removes the connection for `client`.
    ///
    /// Returns `false` if there was no entry. If the connection was still being created, the
    /// entry is removed at once and the connection is closed by the creating call as soon as
    /// the factory returns (its callers get [`GetError::Removed`]).
    pub async fn remove(&self, client: &SocketAddr) -> bool {
        let conn = {
            let map = self.map.pin();
            match map.remove(client) {
                None => return false,
                Some(Slot::Ready(ready)) => Some(Arc::clone(&ready.conn)),
                Some(Slot::Pending(_)) => None,
            }
        };
        if let Some(conn) = conn {
            conn.close().await;
        }
        true
    }

    /// Closes and removes the entry for `client` only if it holds `conn` (the same handle, by
    /// pointer), and returns whether it did.
    ///
    /// For a session ending on its own: it removes its own connection, never one that has
    /// replaced it under the same address in the meantime.
    pub async fn remove_if_same(&self, client: &SocketAddr, conn: &Arc<C>) -> bool {
        let removed = {
            let map = self.map.pin();
            let same = |_: &SocketAddr, slot: &Slot<C, E>| matches!(slot, Slot::Ready(ready) if Arc::ptr_eq(&ready.conn, conn));
            matches!(map.remove_if(client, same), Ok(Some(_)))
        };
        if removed {
            Arc::clone(conn).close().await;
        }
        removed
    }

    /// Closes every connection and empties the map; returns how many connections it closed.
    ///
    /// Creations in flight are cancelled as by [`remove`](Self::remove). Entries created by
    /// calls that start while `close_all` runs may survive it; stop creating first (stop
    /// accepting clients) when shutting down.
    pub async fn close_all(&self) -> usize {
        let conns = {
            let map = self.map.pin();
            let mut conns = Vec::new();
            for (client, _) in map.iter() {
                if let Some(Slot::Ready(ready)) = map.remove(client) {
                    conns.push(Arc::clone(&ready.conn));
                }
            }
            conns
        };
        close_each(conns).await
    }

    /// Closes and removes every ready connection not used for at least `older_than` at `now`;
    /// returns how many it closed. Creations in flight are never evicted.
    pub async fn evict_idle(&self, now: Instant, older_than: Duration) -> usize {
        let now = self.stamp(now);
        let limit = millis(older_than);
        let is_idle = |slot: &Slot<C, E>| match slot {
            Slot::Ready(ready) => now.saturating_sub(ready.last_used()) >= limit,
            Slot::Pending(_) => false,
        };
        let conns = {
            let map = self.map.pin();
            let mut conns = Vec::new();
            for (client, slot) in map.iter() {
                if !is_idle(slot) {
                    continue;
                }
                // Checked again atomically: the entry may have been used or replaced since.
                if let Ok(Some((_, Slot::Ready(ready)))) =
                    map.remove_if(client, |_, slot| is_idle(slot))
                {
                    conns.push(Arc::clone(&ready.conn));
                }
            }
            conns
        };
        close_each(conns).await
    }

    /// The number of entries, counting creations in flight.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no entries, not even creations in flight.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ready connections at this moment, for metrics and inspection.
    ///
    /// Not an atomic snapshot: entries added or removed concurrently may or may not appear.
    pub fn snapshot(&self) -> Vec<ConnectionInfo<C>> {
        let map = self.map.pin();
        map.iter()
            .filter_map(|(client, slot)| match slot {
                Slot::Ready(ready) => Some(ConnectionInfo {
                    client: *client,
                    connection: Arc::clone(&ready.conn),
                    last_used: self.instant(ready.last_used()),
                }),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// Looks `client` up; if absent, claims it with a new flight that this call will run.
    fn find_or_claim(&self, client: SocketAddr, stamp: u64) -> Step<C, E> {
        let map = self.map.pin();
        let found = |slot: &Slot<C, E>| match slot {
            Slot::Ready(ready) => {
                ready.touch(stamp);
                Step::Ready(Arc::clone(&ready.conn))
            }
            Slot::Pending(flight) => Step::Wait(flight.subscribe()),
        };
        if let Some(slot) = map.get(&client) {
            return found(slot);
        }
        let flight = Arc::new(Flight::new());
        match map.try_insert(client, Slot::Pending(Arc::clone(&flight))) {
            Ok(_) => Step::Lead(flight),
            Err(occupied) => found(occupied.current),
        }
    }

    /// Runs the factory for a flight this call claimed, and settles the entry.
    async fn create(
        &self,
        client: SocketAddr,
        host: &str,
        port: u16,
        stamp: u64,
        flight: Arc<Flight<C, E>>,
    ) -> Result<Arc<C>, GetError<E>> {
        let claim = Claim {
            map: &self.map,
            client,
            flight: &flight,
            settled: false,
        };
        let request = CreateRequest {
            client,
            host: host.to_owned(),
            port,
        };
        let created = (self.factory)(request).await;
        // No await between here and the settlement below: the outcome is published even if
        // this call is cancelled afterwards.
        match created {
            Ok(conn) => {
                if claim.install(&conn, stamp) {
                    flight.finish(FlightState::Done(Ok(Arc::clone(&conn))));
                    Ok(conn)
                } else {
                    flight.finish(FlightState::Done(Err(GetError::Removed)));
                    conn.close().await;
                    Err(GetError::Removed)
                }
            }
            Err(error) => {
                claim.release();
                let error = GetError::Create(Arc::new(error));
                flight.finish(FlightState::Done(Err(error.clone())));
                Err(error)
            }
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch
            .checked_add(Duration::from_millis(stamp))
            .unwrap_or(self.epoch)
    }

    #[cfg(test)]
    fn waiters(&self, client: &SocketAddr) -> Option<usize> {
        match self.map.pin().get(client)? {
            Slot::Pending(flight) => Some(flight.waiters()),
            Slot::Ready(_) => None,
        }
    }
}

impl<C, E> fmt::Debug for ConnectionManager<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

/// The pending entry a `get_or_create` call put in the map and must settle.
///
/// Dropped without being settled (the call was cancelled or the factory panicked), it removes
/// the entry if it is still there and tells the waiters to try again.
struct Claim<'a, C, E> {
    map: &'a papaya::HashMap<SocketAddr, Slot<C, E>>,
    client: SocketAddr,
    flight: &'a Arc<Flight<C, E>>,
    settled: bool,
}

impl<C, E> Claim<'_, C, E> {
    fn is_ours(&self, slot: &Slot<C, E>) -> bool {
        matches!(slot, Slot::Pending(flight) if Arc::ptr_eq(flight, self.flight))
    }

    /// Replaces the pending entry with the ready connection; `false` if the entry is no longer
    /// ours (it was removed, and possibly claimed again by a later call).
    fn install(mut self, conn: &Arc<C>, stamp: u64) -> bool {
        self.settled = true;
        let map = self.map.pin();
        let outcome = map.compute(self.client, |entry| match entry {
            Some((_, slot)) if self.is_ours(slot) => {
                Operation::Insert(Slot::Ready(Ready::new(Arc::clone(conn), stamp)))
            }
            _ => Operation::Abort(()),
        });
        !matches!(outcome, Compute::Aborted(()))
    }

    /// Removes the pending entry if it is still ours.
    fn release(mut self) {
        self.settled = true;
        self.remove_if_ours();
    }

    fn remove_if_ours(&self) {
        let map = self.map.pin();
        let _ = map.remove_if(&self.client, |_, slot| self.is_ours(slot));
    }
}

impl<C, E> Drop for Claim<'_, C, E> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.remove_if_ours();
        self.flight.finish(FlightState::Abandoned);
    }
}

/// Closes connections one after another, in the caller's task; returns how many.
async fn close_each<C: Close>(conns: Vec<Arc<C>>) -> usize {
    let count = conns.len();
    for conn in conns {
        conn.close().await;
    }
    count
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
