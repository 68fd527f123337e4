//! Concurrent callers for one client share a single factory call.

mod support;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;

use support::{client, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_callers_get_one_factory_call_and_one_handle() {
    const CALLERS: usize = 64;
    let (manager, created) = manager(|_| 100, |_| false);
    let barrier = Arc::new(Barrier::new(CALLERS));
    let now = Instant::now();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                manager.get_or_create(client(1), "10.0.0.7", 53, now).await
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(CALLERS);
    for task in tasks {
        handles.push(task.await.unwrap().unwrap());
    }

    assert_eq!(created.calls(), 1);
    assert_eq!(handles.len(), CALLERS);
    assert!(handles.iter().all(|h| Arc::ptr_eq(h, &handles[0])));
    assert_eq!(manager.len(), 1);
}

#[tokio::test]
async fn distinct_clients_get_distinct_connections() {
    let (manager, created) = manager(|_| 0, |_| false);
    let now = Instant::now();
    let a = manager.get_or_create(client(1), "h", 1, now).await.unwrap();
    let b = manager.get_or_create(client(2), "h", 1, now).await.unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!((a.client, b.client), (client(1), client(2)));
    assert_eq!(created.calls(), 2);

    let again = manager.get(&client(1), now).unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    assert_eq!(created.calls(), 2);
}

#[tokio::test]
async fn lookup_without_creation_finds_only_ready_connections() {
    let (manager, _) = manager(|_| 0, |_| false);
    let now = Instant::now();
    assert!(manager.get(&client(1), now).is_none());
    assert!(!manager.touch(&client(1), now));
    manager.get_or_create(client(1), "h", 1, now).await.unwrap();
    assert!(manager.get(&client(1), now).is_some());
    assert!(manager.touch(&client(1), now));
    assert!(manager.contains(&client(1)));
}
