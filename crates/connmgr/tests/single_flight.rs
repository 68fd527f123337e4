//! Concurrent callers for one key share a single call of one `make`.

mod support;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;

use support::{client, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_callers_get_one_make_call_and_one_handle() {
    const CALLERS: usize = 64;
    let (manager, factory) = manager(|_| 100, |_| false);
    let barrier = Arc::new(Barrier::new(CALLERS));
    let now = Instant::now();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let manager = Arc::clone(&manager);
            let barrier = Arc::clone(&barrier);
            let factory = Arc::clone(&factory);
            tokio::spawn(async move {
                barrier.wait().await;
                manager
                    .get_or_create(client(1), now, factory.make(client(1)))
                    .await
            })
        })
        .collect();
    let mut handles = Vec::with_capacity(CALLERS);
    for task in tasks {
        handles.push(task.await.unwrap().unwrap());
    }

    assert_eq!(factory.calls(), 1);
    assert_eq!(handles.len(), CALLERS);
    assert!(handles.iter().all(|h| Arc::ptr_eq(h, &handles[0])));
    assert_eq!(manager.len(), 1);
}

#[tokio::test]
async fn distinct_clients_get_distinct_connections() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    let a = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    let b = manager
        .get_or_create(client(2), now, factory.make(client(2)))
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!((a.key, b.key), (client(1), client(2)));
    assert_eq!(factory.calls(), 2);

    let again = manager.get(&client(1), now).unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    assert_eq!(factory.calls(), 2);
}

#[tokio::test]
async fn lookup_without_creation_finds_only_ready_connections() {
    let (manager, factory) = manager(|_| 0, |_| false);
    let now = Instant::now();
    assert!(manager.get(&client(1), now).is_none());
    assert!(!manager.touch(&client(1), now));
    manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    assert!(manager.get(&client(1), now).is_some());
    assert!(manager.touch(&client(1), now));
    assert!(manager.contains(&client(1)));
}
