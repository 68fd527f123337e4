//! Keys other than a client's `SocketAddr`: the manager knows nothing about what a key means.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use streamproxy_connmgr::{Close, CloseReason, ConnectionManager};
use tokio::sync::Barrier;

/// A connection that remembers the name it was made for and how it was closed.
#[derive(Debug)]
struct Named {
    name: String,
    closes: AtomicUsize,
}

impl Named {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Named {
            name: name.to_owned(),
            closes: AtomicUsize::new(0),
        })
    }
}

impl Close for Named {
    async fn close(self: Arc<Self>, _: CloseReason) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn string_keys() {
    let manager: ConnectionManager<String, Named> = ConnectionManager::new();
    let t0 = Instant::now();
    let alpha = manager
        .get_or_create("alpha".to_owned(), t0, || async { Ok(Named::new("alpha")) })
        .await
        .unwrap();
    let beta = manager
        .get_or_create("beta".to_owned(), t0 + Duration::from_secs(5), || async {
            Ok(Named::new("beta"))
        })
        .await
        .unwrap();
    assert_eq!((alpha.name.as_str(), beta.name.as_str()), ("alpha", "beta"));

    // A second call for a present key returns the cached handle and never calls its `make`.
    let again = manager
        .get_or_create("alpha".to_owned(), t0, || async {
            panic!("`make` called for a key that is present")
        })
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&alpha, &again));
    assert!(manager.contains(&"beta".to_owned()));

    let mut keys: Vec<_> = manager.snapshot().into_iter().map(|i| i.key).collect();
    keys.sort();
    assert_eq!(keys, ["alpha", "beta"]);

    // At 8 s with a 4 s limit only `alpha` (last used at 0 s) is idle.
    let evicted = manager
        .evict_idle(t0 + Duration::from_secs(8), Duration::from_secs(4))
        .await;
    assert_eq!(evicted, 1);
    assert_eq!(alpha.closes.load(Ordering::SeqCst), 1);
    assert!(manager.get(&"alpha".to_owned(), t0).is_none());
    assert!(manager.remove(&"beta".to_owned()).await);
    assert_eq!(beta.closes.load(Ordering::SeqCst), 1);
    assert!(manager.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_and_port_keys_share_one_creation_per_key() {
    const CALLERS: usize = 16;
    type Key = (IpAddr, u16);
    let manager: Arc<ConnectionManager<Key, Named>> = Arc::new(ConnectionManager::new());
    let v4: Key = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 53);
    let v6: Key = (IpAddr::V6(Ipv6Addr::LOCALHOST), 53);
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let now = Instant::now();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|n| {
            let manager = Arc::clone(&manager);
            let calls = Arc::clone(&calls);
            let barrier = Arc::clone(&barrier);
            let key = if n % 2 == 0 { v4 } else { v6 };
            tokio::spawn(async move {
                barrier.wait().await;
                let make = move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::task::yield_now().await;
                        Ok(Named::new(&format!("{}:{}", key.0, key.1)))
                    }
                };
                (key, manager.get_or_create(key, now, make).await)
            })
        })
        .collect();
    let mut handles = Vec::new();
    for task in tasks {
        let (key, result) = task.await.unwrap();
        handles.push((key, result.unwrap()));
    }

    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(manager.len(), 2);
    for (key, conn) in &handles {
        assert!(Arc::ptr_eq(conn, &manager.get(key, now).unwrap()));
    }
    assert_eq!(manager.get(&v6, now).unwrap().name, "::1:53");
    assert_eq!(manager.close_all().await, 2);
}
