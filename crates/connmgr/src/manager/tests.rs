//! Unit tests that look inside a flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;

use super::ConnectionManager;
use crate::{Close, CloseReason};

/// A connection labelled with the caller whose `make` created it.
#[derive(Debug)]
struct Conn(&'static str);

impl Close for Conn {
    async fn close(self: Arc<Self>, _: CloseReason) {}
}

type Manager<E = std::io::Error> = ConnectionManager<SocketAddr, Conn, E>;

fn client() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_wait_on_the_running_make() {
    const CALLERS: usize = 64;
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let manager: Arc<Manager> = Arc::new(Manager::new());
    let now = Instant::now();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            let calls = Arc::clone(&calls);
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let make = || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _permit = gate.acquire().await;
                        Ok(Arc::new(Conn("leader")))
                    }
                };
                manager.get_or_create(client(), now, make).await
            })
        })
        .collect();

    // Every caller but the one running its `make` is subscribed to its flight.
    while manager.waiters(&client()) != Some(CALLERS - 1) {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    gate.add_permits(1);

    let mut handles = Vec::new();
    for task in tasks {
        handles.push(task.await.unwrap().unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(handles.iter().all(|h| Arc::ptr_eq(h, &handles[0])));
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_reaches_every_waiter() {
    const CALLERS: usize = 16;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = Arc::new(Manager::<Refused>::new());
    let now = Instant::now();
    // The first `make` to run fails once the gate opens; any later one succeeds.
    let make = {
        let gate = Arc::clone(&gate);
        let calls = Arc::clone(&calls);
        move || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    let _permit = gate.acquire().await;
                    return Err(Refused);
                }
                Ok(Arc::new(Conn("retry")))
            }
        }
    };
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            let make = make.clone();
            tokio::spawn(async move { manager.get_or_create(client(), now, make).await })
        })
        .collect();
    while manager.waiters(&client()) != Some(CALLERS - 1) {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);

    let mut errors = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Err(crate::GetError::Create(error)) => errors.push(error),
            other => panic!("expected the error of `make`, got {other:?}"),
        }
    }
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(manager.is_empty());

    let conn = manager.get_or_create(client(), now, make).await.unwrap();
    assert_eq!(conn.0, "retry");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_creator_hands_the_creation_to_a_waiter_that_runs_its_own_make() {
    let gate = Arc::new(Semaphore::new(0));
    let manager: Arc<Manager> = Arc::new(Manager::new());
    let now = Instant::now();
    let creator = tokio::spawn({
        let manager = Arc::clone(&manager);
        let gate = Arc::clone(&gate);
        async move {
            // This creation never finishes: its caller is cancelled.
            let make = || async move {
                let _permit = gate.acquire().await;
                Ok(Arc::new(Conn("creator")))
            };
            manager.get_or_create(client(), now, make).await
        }
    });
    while manager.waiters(&client()) != Some(0) {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn({
        let manager = Arc::clone(&manager);
        async move {
            let make = || async { Ok(Arc::new(Conn("waiter"))) };
            manager.get_or_create(client(), now, make).await
        }
    });
    while manager.waiters(&client()) != Some(1) {
        tokio::task::yield_now().await;
    }

    creator.abort();
    assert!(creator.await.unwrap_err().is_cancelled());
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(conn.0, "waiter");
    assert!(Arc::ptr_eq(&conn, &manager.get(&client(), now).unwrap()));
}

#[tokio::test]
async fn a_connection_created_after_its_entry_was_removed_is_closed_not_cached() {
    struct Counted(Arc<AtomicUsize>);
    impl Close for Counted {
        async fn close(self: Arc<Self>, why: CloseReason) {
            assert_eq!(why, CloseReason::Removed);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let closes = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let manager = Arc::new(ConnectionManager::<SocketAddr, Counted>::new());
    let now = Instant::now();
    let creator = tokio::spawn({
        let manager = Arc::clone(&manager);
        let gate = Arc::clone(&gate);
        let closes = Arc::clone(&closes);
        async move {
            let make = || async move {
                let _permit = gate.acquire().await;
                Ok(Arc::new(Counted(closes)))
            };
            manager.get_or_create(client(), now, make).await
        }
    });
    while manager.waiters(&client()) != Some(0) {
        tokio::task::yield_now().await;
    }

    assert!(manager.remove(&client()).await);
    assert_eq!(closes.load(Ordering::SeqCst), 0);
    gate.add_permits(1);
    assert!(matches!(
        creator.await.unwrap(),
        Err(crate::GetError::Removed)
    ));
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    assert!(manager.is_empty());
}

#[test]
fn close_reasons_read_as_short_lowercase_text() {
    assert_eq!(CloseReason::Idle.to_string(), "idle");
    assert_eq!(CloseReason::Removed.to_string(), "removed");
    assert_eq!(CloseReason::Shutdown.to_string(), "shut down");
    assert_eq!(CloseReason::Shutdown.as_str(), "shut down");
}

#[test]
fn a_new_manager_is_empty_and_default_is_new() {
    let manager: Manager = Manager::default();
    assert!(manager.is_empty());
    assert_eq!(manager.len(), 0);
    assert!(!manager.contains(&client()));
    assert!(manager.snapshot().is_empty());
}
