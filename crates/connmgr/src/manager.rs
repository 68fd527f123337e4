//! [`ConnectionManager`]: the registry itself.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use papaya::{Compute, Operation};

use crate::slot::{Flight, FlightState, Ready, Slot};
use crate::{Close, CloseReason, GetError};

/// A connection in the registry, as seen by [`ConnectionManager::snapshot`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo<K, C> {
    /// The key the connection is registered under.
    pub key: K,
    /// A handle to the connection.
    pub connection: Arc<C>,
    /// When the connection was last used (millisecond resolution).
    pub last_used: Instant,
}

/// A lock-free registry of one connection per key.
///
/// `K` is the key (a client's [`SocketAddr`](std::net::SocketAddr) in the common case), `C` the
/// connection type and `E` the error type of the `make` functions given to
/// [`get_or_create`](Self::get_or_create). See the [crate documentation](crate) for the
/// guarantees and an example.
pub struct ConnectionManager<K, C, E = std::io::Error> {
    map: papaya::HashMap<K, Slot<C, E>>,
    /// Timestamps are milliseconds since this instant.
    epoch: Instant,
}

/// What a call to `get_or_create` found in the map.
enum Step<C, E> {
    Ready(Arc<C>),
    Wait(tokio::sync::watch::Receiver<FlightState<C, E>>),
    Lead(Arc<Flight<C, E>>),
}

impl<K, C, E> ConnectionManager<K, C, E> {
    /// An empty manager. Timestamps count from the moment of this call.
    pub fn new() -> Self {
        ConnectionManager {
            map: papaya::HashMap::new(),
            epoch: Instant::now(),
        }
    }
}

impl<K, C, E> Default for ConnectionManager<K, C, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, C, E> ConnectionManager<K, C, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Close,
    E: Send + Sync + 'static,
{
    /// The connection for `key`, if one is ready, marking it used at `now`.
    ///
    /// This is the per-datagram lookup: it takes no lock and does not allocate. A creation
    /// still in flight counts as absent.
    #[inline]
    pub fn get(&self, key: &K, now: Instant) -> Option<Arc<C>> {
        let map = self.map.pin();
        match map.get(key)? {
            Slot::Ready(ready) => {
                ready.touch(self.stamp(now));
                Some(Arc::clone(&ready.conn))
            }
            Slot::Pending(_) => None,
        }
    }

    /// Marks the connection for `key` used at `now`; `false` if there is none ready.
    #[inline]
    pub fn touch(&self, key: &K, now: Instant) -> bool {
        let map = self.map.pin();
        match map.get(key) {
            Some(Slot::Ready(ready)) => {
                ready.touch(self.stamp(now));
                true
            }
            _ => false,
        }
    }

    /// Whether `key` has an entry, ready or being created.
    pub fn contains(&self, key: &K) -> bool {
        self.map.pin().contains_key(key)
    }

    /// The connection for `key`, created by `make` if there is none.
    ///
    /// Concurrent calls for the same key create one connection: the call that finds no entry
    /// claims it and runs **its own** `make`, in its own task; the others wait and receive the
    /// same handle or the same error, and their `make` is dropped without being called. An
    /// error is not cached: the next call runs its `make`. The entry (new or found) is marked
    /// used at `now`.
    ///
    /// If the entry is removed while `make` runs, the new connection is closed (with
    /// [`CloseReason::Removed`]) instead of cached, and every caller gets
    /// [`GetError::Removed`]. If the call running `make` is cancelled, the creation is dropped
    /// and one of the waiters claims the entry and runs its own `make`.
    ///
    /// The returned future is [`Send`] when `K`, `make` and its future are.
    ///
    /// # Errors
    ///
    /// [`GetError::Create`] with the error of the `make` that ran, or [`GetError::Removed`].
    pub async fn get_or_create<F, Fut>(
        &self,
        key: K,
        now: Instant,
        make: F,
    ) -> Result<Arc<C>, GetError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<C>, E>>,
    {
        let stamp = self.stamp(now);
        loop {
            match self.find_or_claim(&key, stamp) {
                Step::Ready(conn) => return Ok(conn),
                Step::Lead(flight) => return self.create(key, stamp, flight, make).await,
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
                            self.touch(&key, now);
                            return Ok(conn);
                        }
                        Some(Err(error)) => return Err(error),
                        None => continue,
                    }
                }
            }
        }
    }

    /// Closes (with [`CloseReason::Removed`]) and removes the connection for `key`.
    ///
    /// Returns `false` if there was no entry. If the connection was still being created, the
    /// entry is removed at once and the connection is closed by the creating call as soon as
    /// its `make` returns (its callers get [`GetError::Removed`]).
    pub async fn remove(&self, key: &K) -> bool {
        let conn = {
            let map = self.map.pin();
            match map.remove(key) {
                None => return false,
                Some(Slot::Ready(ready)) => Some(Arc::clone(&ready.conn)),
                Some(Slot::Pending(_)) => None,
            }
        };
        if let Some(conn) = conn {
            conn.close(CloseReason::Removed).await;
        }
        true
    }

    /// Closes (with [`CloseReason::Removed`]) and removes the entry for `key` only if it holds
    /// `conn` (the same handle, by pointer), and returns whether it did.
    ///
    /// For a session ending on its own: it removes its own connection, never one that has
    /// replaced it under the same key in the meantime.
    pub async fn remove_if_same(&self, key: &K, conn: &Arc<C>) -> bool {
        let removed = {
            let map = self.map.pin();
            let same = |_: &K, slot: &Slot<C, E>| matches!(slot, Slot::Ready(ready) if Arc::ptr_eq(&ready.conn, conn));
            matches!(map.remove_if(key, same), Ok(Some(_)))
        };
        if removed {
            Arc::clone(conn).close(CloseReason::Removed).await;
        }
        removed
    }

    /// Closes every connection (with [`CloseReason::Shutdown`]) and empties the map; returns
    /// how many connections it closed.
    ///
    /// Creations in flight are cancelled as by [`remove`](Self::remove) (their connections are
    /// closed with [`CloseReason::Removed`]). Entries created by calls that start while
    /// `close_all` runs may survive it; stop creating first (stop accepting clients) when
    /// shutting down.
    pub async fn close_all(&self) -> usize {
        let conns = {
            let map = self.map.pin();
            let mut conns = Vec::new();
            for (key, _) in map.iter() {
                if let Some(Slot::Ready(ready)) = map.remove(key) {
                    conns.push(Arc::clone(&ready.conn));
                }
            }
            conns
        };
        close_each(conns, CloseReason::Shutdown).await
    }

    /// Closes (with [`CloseReason::Idle`]) and removes every ready connection not used for at
    /// least `older_than` at `now`; returns how many it closed. Creations in flight are never
    /// evicted.
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
            for (key, slot) in map.iter() {
                if !is_idle(slot) {
                    continue;
                }
                // Checked again atomically: the entry may have been used or replaced since.
                if let Ok(Some((_, Slot::Ready(ready)))) =
                    map.remove_if(key, |_, slot| is_idle(slot))
                {
                    conns.push(Arc::clone(&ready.conn));
                }
            }
            conns
        };
        close_each(conns, CloseReason::Idle).await
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
    pub fn snapshot(&self) -> Vec<ConnectionInfo<K, C>> {
        let map = self.map.pin();
        map.iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Ready(ready) => Some(ConnectionInfo {
                    key: key.clone(),
                    connection: Arc::clone(&ready.conn),
                    last_used: self.instant(ready.last_used()),
                }),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// Looks `key` up; if absent, claims it with a new flight that this call will run.
    fn find_or_claim(&self, key: &K, stamp: u64) -> Step<C, E> {
        let map = self.map.pin();
        let found = |slot: &Slot<C, E>| match slot {
            Slot::Ready(ready) => {
                ready.touch(stamp);
                Step::Ready(Arc::clone(&ready.conn))
            }
            Slot::Pending(flight) => Step::Wait(flight.subscribe()),
        };
        if let Some(slot) = map.get(key) {
            return found(slot);
        }
        let flight = Arc::new(Flight::new());
        match map.try_insert(key.clone(), Slot::Pending(Arc::clone(&flight))) {
            Ok(_) => Step::Lead(flight),
            Err(occupied) => found(occupied.current),
        }
    }

    /// Runs `make` for a flight this call claimed, and settles the entry.
    async fn create<F, Fut>(
        &self,
        key: K,
        stamp: u64,
        flight: Arc<Flight<C, E>>,
        make: F,
    ) -> Result<Arc<C>, GetError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<C>, E>>,
    {
        let claim = Claim {
            map: &self.map,
            key,
            flight: &flight,
            settled: false,
        };
        let created = make().await;
        // No await between here and the settlement below: the outcome is published even if
        // this call is cancelled afterwards.
        match created {
            Ok(conn) => {
                if claim.install(&conn, stamp) {
                    flight.finish(FlightState::Done(Ok(Arc::clone(&conn))));
                    Ok(conn)
                } else {
                    flight.finish(FlightState::Done(Err(GetError::Removed)));
                    Arc::clone(&conn).close(CloseReason::Removed).await;
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
    fn waiters(&self, key: &K) -> Option<usize> {
        match self.map.pin().get(key)? {
            Slot::Pending(flight) => Some(flight.waiters()),
            Slot::Ready(_) => None,
        }
    }
}

impl<K: Hash + Eq, C, E> fmt::Debug for ConnectionManager<K, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

/// The pending entry a `get_or_create` call put in the map and must settle.
///
/// Dropped without being settled (the call was cancelled or its `make` panicked), it removes
/// the entry if it is still there and tells the waiters to try again.
struct Claim<'a, K: Hash + Eq + Clone, C, E> {
    map: &'a papaya::HashMap<K, Slot<C, E>>,
    key: K,
    flight: &'a Arc<Flight<C, E>>,
    settled: bool,
}

impl<K: Hash + Eq + Clone, C, E> Claim<'_, K, C, E> {
    fn is_ours(&self, slot: &Slot<C, E>) -> bool {
        matches!(slot, Slot::Pending(flight) if Arc::ptr_eq(flight, self.flight))
    }

    /// Replaces the pending entry with the ready connection; `false` if the entry is no longer
    /// ours (it was removed, and possibly claimed again by a later call).
    fn install(mut self, conn: &Arc<C>, stamp: u64) -> bool {
        self.settled = true;
        let map = self.map.pin();
        let outcome = map.compute(self.key.clone(), |entry| match entry {
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
        let _ = map.remove_if(&self.key, |_, slot| self.is_ours(slot));
    }
}

impl<K: Hash + Eq + Clone, C, E> Drop for Claim<'_, K, C, E> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.remove_if_ours();
        self.flight.finish(FlightState::Abandoned);
    }
}

/// Closes connections one after another, in the caller's task; returns how many.
async fn close_each<C: Close>(conns: Vec<Arc<C>>, why: CloseReason) -> usize {
    let count = conns.len();
    for conn in conns {
        conn.close(why).await;
    }
    count
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
