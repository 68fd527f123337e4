//! A failing `make` fails every caller waiting on it and leaves nothing behind.

mod support;

use std::sync::Arc;
use std::time::Instant;

use streamproxy_connmgr::GetError;
use tokio::sync::Barrier;

use support::{Refused, client, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_make_fails_every_caller_and_caches_nothing() {
    const CALLERS: usize = 16;
    // The first call fails after a while; later calls succeed.
    let (manager, factory) = manager(|_| 100, |call| call == 0);
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
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Err(GetError::Create(error)) => failures.push(error),
            // A caller that arrived after the failure ran its own `make`.
            Ok(_) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(!failures.is_empty());
    assert!(failures.iter().all(|e| **e == Refused));
    // Every caller that saw the failure saw the same shared error.
    assert!(failures.iter().all(|e| Arc::ptr_eq(e, &failures[0])));
    assert!(factory.calls() <= 2);

    let conn = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&conn, &manager.get(&client(1), now).unwrap()));
}

#[tokio::test]
async fn next_call_after_a_failure_runs_its_own_make() {
    let (manager, factory) = manager(|_| 0, |call| call < 2);
    let now = Instant::now();

    for expected_calls in 1..=2 {
        let error = manager
            .get_or_create(client(1), now, factory.make(client(1)))
            .await
            .unwrap_err();
        assert!(matches!(error, GetError::Create(ref e) if **e == Refused));
        assert_eq!(factory.calls(), expected_calls);
        assert!(manager.is_empty());
        assert!(manager.get(&client(1), now).is_none());
    }

    let conn = manager
        .get_or_create(client(1), now, factory.make(client(1)))
        .await
        .unwrap();
    assert_eq!(factory.calls(), 3);
    assert_eq!(manager.len(), 1);
    assert!(Arc::ptr_eq(&conn, &manager.get(&client(1), now).unwrap()));
}

#[test]
fn create_error_keeps_the_error_of_make_as_its_source() {
    let error: GetError<Refused> = GetError::Create(Arc::new(Refused));
    let source = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("destination refused"));
    assert_eq!(error.to_string(), "creating the connection failed");
}
