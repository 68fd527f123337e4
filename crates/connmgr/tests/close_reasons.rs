//! Each way out of the registry tells the connection why it was closed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamproxy_connmgr::{CloseReason, GetError};
use tokio::sync::Semaphore;

use support::{Manager, TestConn, client, manager};

#[tokio::test]
async fn evict_idle_closes_with_idle() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let t0 = Instant::now();
    let conn = manager
        .get_or_create(client(1), t0, factory.make(client(1)))
        .await
        .unwrap();
    let later = t0 + Duration::from_secs(60);
    assert_eq!(manager.evict_idle(later, Duration::from_secs(30)).await, 1);
    assert_eq!(conn.reasons(), [CloseReason::Idle]);
}

#[tokio::test]
async fn remove_and_remove_if_same_close_with_removed() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    let removed = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    let ended = manager
        .get_or_create(client(2), now, factory.make(client(2)))
        .await
        .unwrap();

    assert!(manager.remove(&client(1)).await);
    assert!(manager.remove_if_same(&client(2), &ended).await);
    assert_eq!(removed.reasons(), [CloseReason::Removed]);
    assert_eq!(ended.reasons(), [CloseReason::Removed]);
}

#[tokio::test]
async fn close_all_closes_with_shutdown() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    for n in 0..3 {
        manager
            .get_or_create(client(n), now, factory.make(client(n)))
            .await
            .unwrap();
    }
    assert_eq!(manager.close_all().await, 3);
    let conns = factory.all();
    assert_eq!(conns.len(), 3);
    for conn in conns {
        assert_eq!(conn.reasons(), [CloseReason::Shutdown]);
    }
}

type Creation = tokio::task::JoinHandle<Result<Arc<TestConn>, GetError<support::Refused>>>;

/// Starts a creation for `client(1)` whose `make` returns the connection it is given once
/// `gate` opens; returns once the entry is claimed.
async fn start_gated_creation(
    manager: &Arc<Manager>,
    gate: &Arc<Semaphore>,
    conn: &Arc<TestConn>,
    now: Instant,
) -> Creation {
    let creating = tokio::spawn({
        let manager = Arc::clone(manager);
        let gate = Arc::clone(gate);
        let conn = Arc::clone(conn);
        let make = move || async move {
            let _permit = gate.acquire().await;
            Ok(conn)
        };
        async move { manager.get_or_create(client(1), now, make).await }
    });
    while !manager.contains(&client(1)) {
        tokio::task::yield_now().await;
    }
    creating
}

#[tokio::test]
async fn a_creation_that_lost_the_race_with_remove_closes_with_removed() {
    let manager = Arc::new(Manager::new());
    let gate = Arc::new(Semaphore::new(0));
    let conn = Arc::new(TestConn::new(client(1)));
    let creating = start_gated_creation(&manager, &gate, &conn, Instant::now()).await;

    assert!(manager.remove(&client(1)).await);
    assert!(conn.reasons().is_empty());
    gate.add_permits(1);
    assert!(matches!(creating.await.unwrap(), Err(GetError::Removed)));
    assert_eq!(conn.reasons(), [CloseReason::Removed]);
    assert!(manager.is_empty());
}

#[tokio::test]
async fn a_creation_that_lost_the_race_with_close_all_closes_with_removed() {
    let manager = Arc::new(Manager::new());
    let gate = Arc::new(Semaphore::new(0));
    let conn = Arc::new(TestConn::new(client(1)));
    let creating = start_gated_creation(&manager, &gate, &conn, Instant::now()).await;

    // A creation in flight is not counted among the connections `close_all` closed.
    assert_eq!(manager.close_all().await, 0);
    gate.add_permits(1);
    assert!(matches!(creating.await.unwrap(), Err(GetError::Removed)));
    assert_eq!(conn.reasons(), [CloseReason::Removed]);
    assert!(manager.is_empty());
}
