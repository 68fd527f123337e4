//! A connection type that counts its closes, and a factory that records what it created.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use streamproxy_connmgr::{Close, ConnectionManager, CreateRequest};

/// A connection that counts how many times it was closed.
#[derive(Debug)]
pub struct TestConn {
    pub client: SocketAddr,
    pub closes: AtomicUsize,
}

impl Close for TestConn {
    async fn close(self: Arc<Self>) {
        // Give other tasks a chance to run mid-close, like a real async close would.
        tokio::task::yield_now().await;
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

/// The factory's error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("destination refused")]
pub struct Refused;

/// Every connection a factory created, and how many times it was called.
#[derive(Default)]
pub struct Created {
    pub conns: Mutex<Vec<Arc<TestConn>>>,
    pub calls: AtomicUsize,
}

impl Created {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<Arc<TestConn>> {
        self.conns.lock().unwrap().clone()
    }

    /// Asserts every connection created so far was closed exactly once.
    pub fn assert_each_closed_once(&self) {
        for conn in self.all() {
            assert_eq!(
                conn.closes.load(Ordering::SeqCst),
                1,
                "connection for {} closed a wrong number of times",
                conn.client
            );
        }
    }
}

/// A manager whose factory yields `yields(call)` times, then fails if `fail(call)`, else
/// creates a [`TestConn`]. `call` counts from 0.
pub fn manager<Y, F>(
    yields: Y,
    fail: F,
) -> (Arc<ConnectionManager<TestConn, Refused>>, Arc<Created>)
where
    Y: Fn(usize) -> usize + Send + Sync + 'static,
    F: Fn(usize) -> bool + Send + Sync + 'static,
{
    let created = Arc::new(Created::default());
    let record = Arc::clone(&created);
    let manager = ConnectionManager::new(move |request: CreateRequest| {
        let call = record.calls.fetch_add(1, Ordering::SeqCst);
        let yields = yields(call);
        let fails = fail(call);
        let record = Arc::clone(&record);
        create(record, request, yields, fails)
    });
    (Arc::new(manager), created)
}

async fn create(
    record: Arc<Created>,
    request: CreateRequest,
    yields: usize,
    fails: bool,
) -> Result<Arc<TestConn>, Refused> {
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    if fails {
        return Err(Refused);
    }
    let conn = Arc::new(TestConn {
        client: request.client,
        closes: AtomicUsize::new(0),
    });
    record.conns.lock().unwrap().push(Arc::clone(&conn));
    Ok(conn)
}

/// The address of test client `n`.
pub fn client(n: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40_000 + n))
}
