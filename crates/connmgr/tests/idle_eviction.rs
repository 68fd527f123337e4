//! Eviction closes the entries idle for long enough, and only those.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{client, manager};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn evicts_only_entries_idle_for_the_given_time() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let t0 = Instant::now();
    let a = manager
        .get_or_create(client(1), t0, factory.make(client(1)))
        .await
        .unwrap();
    let b = manager
        .get_or_create(client(2), t0, factory.make(client(2)))
        .await
        .unwrap();
    let c = manager
        .get_or_create(client(3), t0 + 5 * SECOND, factory.make(client(3)))
        .await
        .unwrap();
    // `a` is used again at 7 s, by a lookup; `b` by an explicit touch at 8 s.
    assert!(manager.get(&client(1), t0 + 7 * SECOND).is_some());
    assert!(manager.touch(&client(2), t0 + 8 * SECOND));

    // At 10 s, with a 4 s limit: only `c` (last used at 5 s) is idle.
    assert_eq!(manager.evict_idle(t0 + 10 * SECOND, 4 * SECOND).await, 1);
    assert_eq!(c.closes(), 1);
    assert_eq!(a.closes(), 0);
    assert_eq!(b.closes(), 0);
    assert!(manager.get(&client(3), t0 + 10 * SECOND).is_none());
    assert_eq!(manager.len(), 2);

    // At 12 s: `a` (7 s) has been idle 5 s; `b` (8 s) exactly 4 s, which counts as idle.
    assert_eq!(manager.evict_idle(t0 + 12 * SECOND, 4 * SECOND).await, 2);
    assert_eq!(a.closes(), 1);
    assert_eq!(b.closes(), 1);
    assert!(manager.is_empty());
}

#[tokio::test]
async fn nothing_is_evicted_before_its_time() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let t0 = Instant::now();
    let conn = manager
        .get_or_create(client(1), t0, factory.make(client(1)))
        .await
        .unwrap();
    assert_eq!(manager.evict_idle(t0 + 29 * SECOND, 30 * SECOND).await, 0);
    // A zero limit evicts even an entry used at `now`.
    assert_eq!(manager.evict_idle(t0, Duration::ZERO).await, 1);
    assert_eq!(conn.closes(), 1);
}

#[tokio::test]
async fn last_used_time_never_moves_backwards() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let t0 = Instant::now();
    manager
        .get_or_create(client(1), t0 + 10 * SECOND, factory.make(client(1)))
        .await
        .unwrap();
    // An older `now` (a datagram stamped before the last use) leaves the time as it was.
    manager.get(&client(1), t0 + 2 * SECOND).unwrap();
    assert_eq!(manager.evict_idle(t0 + 13 * SECOND, 4 * SECOND).await, 0);
    assert_eq!(manager.evict_idle(t0 + 14 * SECOND, 4 * SECOND).await, 1);
}

#[tokio::test]
async fn creations_in_flight_are_never_evicted() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let manager = Arc::new(support::Manager::new());
    let t0 = Instant::now();
    let creating = tokio::spawn({
        let manager = Arc::clone(&manager);
        let gate = Arc::clone(&gate);
        let make = move || async move {
            let _permit = gate.acquire().await;
            Ok(Arc::new(support::TestConn::new(client(1))))
        };
        async move { manager.get_or_create(client(1), t0, make).await }
    });
    while !manager.contains(&client(1)) {
        tokio::task::yield_now().await;
    }

    assert_eq!(manager.evict_idle(t0 + 3600 * SECOND, SECOND).await, 0);
    assert!(manager.contains(&client(1)));
    gate.add_permits(1);
    let conn = creating.await.unwrap().unwrap();
    assert_eq!(conn.closes(), 0);
    assert_eq!(manager.len(), 1);
}

#[tokio::test]
async fn snapshot_lists_ready_connections_with_their_last_use() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let t0 = Instant::now();
    manager
        .get_or_create(client(1), t0, factory.make(client(1)))
        .await
        .unwrap();
    manager
        .get_or_create(client(2), t0 + 3 * SECOND, factory.make(client(2)))
        .await
        .unwrap();

    let mut snapshot = manager.snapshot();
    snapshot.sort_by_key(|info| info.key);
    let clients: Vec<_> = snapshot.iter().map(|info| info.key).collect();
    assert_eq!(clients, [client(1), client(2)]);
    // Millisecond resolution: within 1 ms of the time given.
    let gap = snapshot[1].last_used - snapshot[0].last_used;
    assert!(
        gap.abs_diff(3 * SECOND) <= Duration::from_millis(1),
        "{gap:?}"
    );
    assert!(Arc::ptr_eq(
        &snapshot[0].connection,
        &manager.get(&client(1), t0).unwrap()
    ));
}
