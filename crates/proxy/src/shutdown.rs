//! Graceful shutdown: stop accepting, let tasks finish for a drain period, then cancel them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of one server: spawned through it, drained together.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    force: CancellationToken,
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns a task that is cancelled (dropped) if it is still running when the drain
    /// period ends.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let force = self.force.clone();
        // Boxed: `select!` moves its futures into a tuple of its own, so a task held by value
        // here would be stored twice in the spawned future (a TCP tunnel's is about 6 KiB).
        let task = Box::pin(task);
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = force.cancelled() => {}
            }
        });
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Stops taking tasks and waits for every task to finish, for at most `drain`; `true` if
    /// they all did.
    pub(crate) async fn wait(&self, drain: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Waits for every task to finish, for at most `drain`; then cancels the rest and waits
    /// for them to unwind. Returns how many were cancelled.
    pub(crate) async fn drain(&self, drain: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let cancelled = self.tracker.len();
        self.force.cancel();
        self.tracker.wait().await;
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_quick_tasks_and_cancels_slow_ones() {
        let tasks = Tasks::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = done_tx.send(());
        });
        tasks.spawn(std::future::pending());
        assert_eq!(tasks.drain(Duration::from_secs(5)).await, 1);
        assert!(done_rx.await.is_ok(), "the quick task finished");
        assert_eq!(tasks.len(), 0);
    }
}
