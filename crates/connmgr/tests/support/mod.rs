//! A connection type that records its closes, and a `make` maker that records what it created.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use streamproxy_connmgr::{Close, CloseReason, ConnectionManager};

/// The manager under test.
pub type Manager = ConnectionManager<SocketAddr, TestConn, Refused>;

/// A connection that records every close and its reason.
#[derive(Debug)]
pub struct TestConn {
    pub key: SocketAddr,
    pub reasons: Mutex<Vec<CloseReason>>,
}

impl TestConn {
    pub fn new(key: SocketAddr) -> Self {
        TestConn {
            key,
            reasons: Mutex::new(Vec::new()),
        }
    }

    /// How many times it was closed.
    pub fn closes(&self) -> usize {
        self.reasons().len()
    }

    /// The reason of each close, in order.
    pub fn reasons(&self) -> Vec<CloseReason> {
        self.reasons.lock().unwrap().clone()
    }
}

impl Close for TestConn {
    async fn close(self: Arc<Self>, why: CloseReason) {
        // Give other tasks a chance to run mid-close, like a real async close would.
        tokio::task::yield_now().await;
        self.reasons.lock().unwrap().push(why);
    }
}

/// The error of a failing `make`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("destination refused")]
pub struct Refused;

type Plan = Box<dyn Fn(usize) -> usize + Send + Sync>;
type Failure = Box<dyn Fn(usize) -> bool + Send + Sync>;

/// Hands out `make` functions for `get_or_create`, and records every connection they created
/// and how many of them were called.
pub struct Factory {
    conns: Mutex<Vec<Arc<TestConn>>>,
    calls: AtomicUsize,
    yields: Plan,
    fail: Failure,
}

impl Factory {
    /// How many `make` functions were called (not merely handed out).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<Arc<TestConn>> {
        self.conns.lock().unwrap().clone()
    }

    /// A `make` for `key`: when called (call number `call`, from 0), it yields `yields(call)`
    /// times, then fails if `fail(call)`, else creates a [`TestConn`].
    pub fn make(
        self: &Arc<Self>,
        key: SocketAddr,
    ) -> impl FnOnce() -> Fut + Send + 'static + use<> {
        let factory = Arc::clone(self);
        move || {
            let call = factory.calls.fetch_add(1, Ordering::SeqCst);
            let yields = (factory.yields)(call);
            let fails = (factory.fail)(call);
            Box::pin(create(factory, key, yields, fails))
        }
    }

    /// Asserts every connection created so far was closed exactly once.
    pub fn assert_each_closed_once(&self) {
        for conn in self.all() {
            assert_eq!(
                conn.closes(),
                1,
                "connection for {} closed a wrong number of times",
                conn.key
            );
        }
    }
}

/// The future of a [`Factory::make`].
pub type Fut = std::pin::Pin<Box<dyn Future<Output = Result<Arc<TestConn>, Refused>> + Send>>;

async fn create(
    factory: Arc<Factory>,
    key: SocketAddr,
    yields: usize,
    fails: bool,
) -> Result<Arc<TestConn>, Refused> {
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    if fails {
        return Err(Refused);
    }
    let conn = Arc::new(TestConn::new(key));
    factory.conns.lock().unwrap().push(Arc::clone(&conn));
    Ok(conn)
}

/// An empty manager, and a factory whose `make` number `call` yields `yields(call)` times,
/// then fails if `fail(call)`.
pub fn manager<Y, F>(yields: Y, fail: F) -> (Arc<Manager>, Arc<Factory>)
where
    Y: Fn(usize) -> usize + Send + Sync + 'static,
    F: Fn(usize) -> bool + Send + Sync + 'static,
{
    let factory = Factory {
        conns: Mutex::new(Vec::new()),
        calls: AtomicUsize::new(0),
        yields: Box::new(yields),
        fail: Box::new(fail),
    };
    (Arc::new(Manager::new()), Arc::new(factory))
}

/// The address of test client `n`.
pub fn client(n: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40_000 + n))
}
