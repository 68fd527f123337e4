//! `remove`, `close_all` and `evict_idle` racing `get_or_create`: every connection a `make`
//! created is closed exactly once, and none is left behind.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamproxy_connmgr::GetError;
use tokio::task::JoinSet;

use support::{Factory, Manager, client, manager};

const ITERATIONS: usize = 300;
const KEYS: u16 = 3;

async fn yield_times(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Spawns callers of `get_or_create` over a few keys (their results may be `Removed`), some of
/// which then remove their own entry with `remove_if_same`.
fn spawn_getters(
    tasks: &mut JoinSet<()>,
    manager: &Arc<Manager>,
    factory: &Arc<Factory>,
    iteration: usize,
    now: Instant,
) {
    for n in 0..6 {
        let manager = Arc::clone(manager);
        let factory = Arc::clone(factory);
        tasks.spawn(async move {
            for round in 0..3u16 {
                let key = client((n + round) % KEYS);
                match manager.get_or_create(key, now, factory.make(key)).await {
                    Ok(conn) => {
                        assert_eq!(conn.key, key);
                        // Some sessions end on their own and remove their own entry.
                        if (iteration + usize::from(round)) % 2 == 0 {
                            manager.remove_if_same(&key, &conn).await;
                        }
                    }
                    Err(GetError::Removed) => {}
                    Err(other) => panic!("unexpected error {other:?}"),
                }
                yield_times((iteration + usize::from(n)) % 3).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_racing_creation_closes_every_connection_exactly_once() {
    for iteration in 0..ITERATIONS {
        let (manager, factory) = manager(move |call| (call + iteration) % 4, |_| false);
        let now = Instant::now();
        let mut tasks = JoinSet::new();
        spawn_getters(&mut tasks, &manager, &factory, iteration, now);
        for n in 0..2 {
            let manager = Arc::clone(&manager);
            tasks.spawn(async move {
                for round in 0..KEYS {
                    yield_times((iteration + round as usize) % 5).await;
                    manager.remove(&client((n + round) % KEYS)).await;
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }

        manager.close_all().await;
        assert!(manager.is_empty());
        assert!(factory.calls() >= 1);
        factory.assert_each_closed_once();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_all_racing_creation_closes_every_connection_exactly_once() {
    for iteration in 0..ITERATIONS {
        let (manager, factory) = manager(move |call| (call + iteration) % 4, |_| false);
        let now = Instant::now();
        let mut tasks = JoinSet::new();
        spawn_getters(&mut tasks, &manager, &factory, iteration, now);
        for n in 0..2 {
            let manager = Arc::clone(&manager);
            tasks.spawn(async move {
                yield_times((iteration + n) % 6).await;
                manager.close_all().await;
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }

        manager.close_all().await;
        assert!(manager.is_empty());
        factory.assert_each_closed_once();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_racing_lookups_closes_every_connection_exactly_once() {
    for iteration in 0..ITERATIONS {
        let (manager, factory) = manager(move |call| (call + iteration) % 4, |_| false);
        let now = Instant::now();
        let mut tasks = JoinSet::new();
        spawn_getters(&mut tasks, &manager, &factory, iteration, now);
        for n in 0..2 {
            let manager = Arc::clone(&manager);
            tasks.spawn(async move {
                yield_times((iteration + n) % 6).await;
                // Everything is idle at a time far ahead of `now`.
                manager
                    .evict_idle(now + Duration::from_secs(3600), Duration::from_secs(60))
                    .await;
                manager.remove(&client(0)).await;
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }

        manager.close_all().await;
        assert!(manager.is_empty());
        factory.assert_each_closed_once();
    }
}

#[tokio::test]
async fn removing_a_ready_connection_closes_it_once() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    let conn = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();

    assert!(manager.remove(&client(1)).await);
    assert!(!manager.remove(&client(1)).await);
    assert_eq!(manager.close_all().await, 0);
    assert!(manager.get(&client(1), now).is_none());
    assert_eq!(conn.closes(), 1);
    factory.assert_each_closed_once();
}

#[tokio::test]
async fn close_all_closes_every_ready_connection() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    for n in 0..10 {
        manager
            .get_or_create(client(n), now, factory.make(client(n)))
            .await
            .unwrap();
    }
    assert_eq!(manager.len(), 10);
    assert_eq!(manager.close_all().await, 10);
    assert!(manager.is_empty());
    factory.assert_each_closed_once();

    // The manager stays usable.
    manager
        .get_or_create(client(0), now, factory.make(client(0)))
        .await
        .unwrap();
    assert_eq!(manager.len(), 1);
}

#[tokio::test]
async fn remove_if_same_leaves_a_replacement_in_place() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    let first = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    assert!(manager.remove(&client(1)).await);
    let second = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();

    // The first session ends late: it must not remove (or close) its replacement.
    assert!(!manager.remove_if_same(&client(1), &first).await);
    assert!(Arc::ptr_eq(&manager.get(&client(1), now).unwrap(), &second));
    assert_eq!(second.closes(), 0);

    assert!(manager.remove_if_same(&client(1), &second).await);
    assert!(!manager.remove_if_same(&client(1), &second).await);
    assert!(manager.is_empty());
    factory.assert_each_closed_once();
}
