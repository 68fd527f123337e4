//! Unit tests that look inside a flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;

use super::ConnectionManager;
use crate::Close;

#[derive(Debug)]
struct Conn;

impl Close for Conn {
    async fn close(self: Arc<Self>) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_wait_on_the_running_factory() {
    const CALLERS: usize = 64;
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let manager = Arc::new(ConnectionManager::new({
        let calls = Arc::clone(&calls);
        let gate = Arc::clone(&gate);
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                let _permit = gate.acquire().await;
                Ok::<_, std::io::Error>(Arc::new(Conn))
            }
        }
    }));
    let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let now = Instant::now();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.get_or_create(client, "h", 1, now).await })
        })
        .collect();

    // Every caller but the one running the factory is subscribed to its flight.
    while manager.waiters(&client) != Some(CALLERS - 1) {
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
async fn a_factory_error_reaches_every_waiter() {
    const CALLERS: usize = 16;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = Arc::new(ConnectionManager::new({
        let gate = Arc::clone(&gate);
        let calls = Arc::clone(&calls);
        move |_| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                if call == 0 {
                    let _permit = gate.acquire().await;
                    return Err(Refused);
                }
                Ok(Arc::new(Conn))
            }
        }
    }));
    let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let now = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.get_or_create(client, "h", 1, now).await })
        })
        .collect();
    while manager.waiters(&client) != Some(CALLERS - 1) {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);

    let mut errors = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Err(crate::GetError::Create(error)) => errors.push(error),
            other => panic!("expected the factory's error, got {other:?}"),
        }
    }
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(manager.is_empty());

    manager.get_or_create(client, "h", 1, now).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancelled_creator_hands_the_creation_to_a_waiter() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = Arc::new(ConnectionManager::new({
        let gate = Arc::clone(&gate);
        let calls = Arc::clone(&calls);
        move |_| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                if call == 0 {
                    // The first creation never finishes: its caller is cancelled.
                    let _permit = gate.acquire().await;
                }
                Ok::<_, std::io::Error>(Arc::new(Conn))
            }
        }
    }));
    let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let now = Instant::now();
    let creator = tokio::spawn({
        let manager = Arc::clone(&manager);
        async move { manager.get_or_create(client, "h", 1, now).await }
    });
    while manager.waiters(&client) != Some(0) {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn({
        let manager = Arc::clone(&manager);
        async move { manager.get_or_create(client, "h", 1, now).await }
    });
    while manager.waiters(&client) != Some(1) {
        tokio::task::yield_now().await;
    }

    creator.abort();
    assert!(creator.await.unwrap_err().is_cancelled());
    let conn = waiter.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(Arc::ptr_eq(&conn, &manager.get(&client, now).unwrap()));
}

#[tokio::test]
async fn a_connection_created_after_its_entry_was_removed_is_closed_not_cached() {
    let closes = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Close for Counted {
        async fn close(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let gate = Arc::new(Semaphore::new(0));
    let manager = Arc::new(ConnectionManager::new({
        let gate = Arc::clone(&gate);
        let closes = Arc::clone(&closes);
        move |_| {
            let gate = Arc::clone(&gate);
            let closes = Arc::clone(&closes);
            async move {
                let _permit = gate.acquire().await;
                Ok::<_, std::io::Error>(Arc::new(Counted(closes)))
            }
        }
    }));
    let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let now = Instant::now();
    let creator = tokio::spawn({
        let manager = Arc::clone(&manager);
        async move { manager.get_or_create(client, "h", 1, now).await }
    });
    while manager.waiters(&client) != Some(0) {
        tokio::task::yield_now().await;
    }

    assert!(manager.remove(&client).await);
    assert_eq!(closes.load(Ordering::SeqCst), 0);
    gate.add_permits(1);
    assert!(matches!(
        creator.await.unwrap(),
        Err(crate::GetError::Removed)
    ));
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    assert!(manager.is_empty());
}
