//! The status listener: `/health` and `/metrics` over plain HTTP on an address of its own (a
//! loopback port or a unix socket), so that scrapers need no tunnel credential.
//!
//! On the shared TLS port the same pages need a client certificate, which is also a tunnel
//! credential; a monitoring system should not hold one. The status listener has the HTTPS
//! API's limits ([`ApiSettings`]: timeouts, request size, connection count) and serves no
//! agent API.
//!
//! ```no_run
//! # async fn example(metrics: std::sync::Arc<streamproxy_proxy::metrics::Metrics>) -> Result<(), Box<dyn std::error::Error>> {
//! use streamproxy_proxy::api::ApiSettings;
//! use streamproxy_proxy::status::{StatusAddr, StatusListener};
//!
//! let listener = StatusListener::bind(&"127.0.0.1:9090".parse::<StatusAddr>()?).await?;
//! listener
//!     .run(metrics, ApiSettings::default(), async { let _ = tokio::signal::ctrl_c().await; })
//!     .await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{ApiEnd, ApiSettings, Exposition, serve_status};

/// Where the status listener listens: `HOST:PORT`, or `unix:PATH` for a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAddr {
    /// A TCP address (port 0 picks one).
    Tcp(SocketAddr),
    /// A unix socket path; a stale socket file there is replaced.
    Unix(PathBuf),
}

/// A status address that is neither `HOST:PORT` nor `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a status address: give IP:PORT (e.g. 127.0.0.1:9090) or unix:PATH")]
pub struct StatusAddrError(String);

impl FromStr for StatusAddr {
    type Err = StatusAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(StatusAddrError(s.to_owned()));
            }
            return Ok(StatusAddr::Unix(path.into()));
        }
        s.parse()
            .map(StatusAddr::Tcp)
            .map_err(|_| StatusAddrError(s.to_owned()))
    }
}

impl fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusAddr::Tcp(addr) => addr.fmt(f),
            StatusAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound status listener.
#[derive(Debug)]
pub struct StatusListener {
    listener: Listener,
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// The status listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for status requests on {addr}")]
pub struct StatusBindError {
    addr: StatusAddr,
    #[source]
    source: std::io::Error,
}

impl StatusListener {
    /// Binds `addr`. A unix socket file left by an earlier run is removed first.
    pub async fn bind(addr: &StatusAddr) -> Result<StatusListener, StatusBindError> {
        let error = |source| StatusBindError {
            addr: addr.clone(),
            source,
        };
        let listener = match addr {
            StatusAddr::Tcp(a) => Listener::Tcp(TcpListener::bind(a).await.map_err(error)?),
            StatusAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(path);
                }
                Listener::Unix(UnixListener::bind(path).map_err(error)?, path.clone())
            }
        };
        Ok(StatusListener { listener })
    }

    /// The address it listens on (with the port the system picked).
    pub fn local_addr(&self) -> std::io::Result<StatusAddr> {
        Ok(match &self.listener {
            Listener::Tcp(l) => StatusAddr::Tcp(l.local_addr()?),
            Listener::Unix(_, path) => StatusAddr::Unix(path.clone()),
        })
    }

    /// Serves `/health` and `/metrics` (from `metrics`) until `shutdown` completes; then closes
    /// idle connections at once and lets busy ones finish their response.
    pub async fn run<M: Exposition>(
        self,
        metrics: Arc<M>,
        settings: ApiSettings,
        shutdown: impl Future<Output = ()>,
    ) {
        let metrics: Arc<dyn Exposition> = metrics;
        let settings = Arc::new(settings);
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        let stopping = CancellationToken::new();
        let tasks = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let stream: Box<dyn Stream> = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&self.listener) => match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %crate::explain::ErrorChain(&e), "status listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                tracing::debug!(
                    limit = settings.max_connections,
                    "too many status connections; connection closed"
                );
                continue;
            };
            let (metrics, settings, stopping) = (
                Arc::clone(&metrics),
                Arc::clone(&settings),
                stopping.clone(),
            );
            tasks.spawn(async move {
                if let ApiEnd::Error(e) = serve_status(stream, metrics, &settings, stopping).await {
                    tracing::debug!(error = %crate::explain::ErrorChain(&e), "status connection ended with an error");
                }
                drop(permit);
            });
        }
        stopping.cancel();
        tasks.close();
        tasks.wait().await;
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A byte stream of either listener kind.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Tcp(l) => Box::new(l.accept().await?.0),
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_tcp_or_unix() {
        assert_eq!(
            "127.0.0.1:9090".parse::<StatusAddr>(),
            Ok(StatusAddr::Tcp("127.0.0.1:9090".parse().expect("addr")))
        );
        assert_eq!(
            "unix:/run/streamproxy.sock".parse::<StatusAddr>(),
            Ok(StatusAddr::Unix("/run/streamproxy.sock".into()))
        );
        assert!("unix:".parse::<StatusAddr>().is_err());
        assert!("localhost:9090".parse::<StatusAddr>().is_err());
    }
}
