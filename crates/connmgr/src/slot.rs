//! What the map holds for one key: a creation in flight or a ready connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::GetError;

/// The value stored under a key.
pub(crate) enum Slot<C, E> {
    /// The leader's `make` is running; other callers subscribe to the flight and wait.
    Pending(Arc<Flight<C, E>>),
    /// The connection exists.
    Ready(Ready<C>),
}

/// A cached connection and the time it was last used.
pub(crate) struct Ready<C> {
    pub(crate) conn: Arc<C>,
    /// Milliseconds since the manager's epoch; only ever moves forward.
    last_used: AtomicU64,
}

impl<C> Ready<C> {
    pub(crate) fn new(conn: Arc<C>, stamp: u64) -> Self {
        Ready {
            conn,
            last_used: AtomicU64::new(stamp),
        }
    }

    /// Records a use at `stamp`. Writes only when the millisecond changes, so concurrent
    /// lookups of one entry mostly share its cache line read-only.
    #[inline]
    pub(crate) fn touch(&self, stamp: u64) {
        if stamp > self.last_used.load(Ordering::Relaxed) {
            self.last_used.fetch_max(stamp, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}

/// One creation, shared by the caller that runs its `make` and the callers that wait.
pub(crate) struct Flight<C, E> {
    state: watch::Sender<FlightState<C, E>>,
}

/// The progress of a [`Flight`].
pub(crate) enum FlightState<C, E> {
    /// The leader's `make` is still running.
    Running,
    /// The creation finished (successfully or not); waiters return this.
    Done(Result<Arc<C>, GetError<E>>),
    /// The caller running `make` was cancelled; waiters try again.
    Abandoned,
}

impl<C, E> Flight<C, E> {
    pub(crate) fn new() -> Self {
        let (state, _) = watch::channel(FlightState::Running);
        Flight { state }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FlightState<C, E>> {
        self.state.subscribe()
    }

    /// Publishes the outcome to every current and future waiter.
    pub(crate) fn finish(&self, state: FlightState<C, E>) {
        self.state.send_replace(state);
    }

    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        self.state.receiver_count()
    }
}

impl<C, E> FlightState<C, E> {
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, FlightState::Running)
    }
}
