//! Waiting for a condition under a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `cond` (state that other tasks set, such as a counter or a metric) every 10 ms until
/// it holds, and returns how long that took; panics naming `what` once `limit` has passed.
///
/// It reads tokio's clock, so under paused time it advances with the test's clock.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let deadline = start + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_once_another_task_sets_the_condition() {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = Arc::clone(&flag);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            setter.store(true, Ordering::SeqCst);
        });
        let took = wait_until("the flag", Duration::from_secs(5), || {
            flag.load(Ordering::SeqCst)
        })
        .await;
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn fails_at_the_deadline_naming_what_it_waited_for() {
        let waited = tokio::spawn(wait_until("never", Duration::from_secs(1), || false)).await;
        let panic = waited
            .expect_err("a condition that never holds fails")
            .into_panic();
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.starts_with("never: not reached within 1s"),
            "{message}"
        );
    }
}
