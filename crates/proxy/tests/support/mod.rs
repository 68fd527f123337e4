//! Shared test fixtures that need this crate's types: the PKI's server and client
//! configurations and a running server. Payloads, echo destinations, polling and the PKI itself
//! come from `test_support`.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use streamproxy_proxy::metrics::Metrics;
use streamproxy_proxy::policy::Policy;
use streamproxy_proxy::server::{CertPaths, Reloader, Server};
use streamproxy_proxy::settings::Settings;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// [`test_support::Pki`] (a CA with a server certificate and a client certificate `agent-1`)
/// with the server's paths and the clients' configurations.
pub struct Pki(test_support::Pki);

impl Deref for Pki {
    type Target = test_support::Pki;

    fn deref(&self) -> &test_support::Pki {
        &self.0
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki(test_support::Pki::named("proxy-test"))
    }

    pub fn cert_paths(&self) -> CertPaths {
        CertPaths::new(&self.server.cert, &self.server.key, self.ca.ca_path())
    }

    pub fn tls_client(&self) -> tls::ClientConfig {
        let ca = tls::CaCerts::from_pem_file(self.ca.ca_path()).expect("ca");
        let id = tls::Identity::from_pem_files(&self.client.cert, &self.client.key)
            .expect("client identity");
        tls::ClientConfig::builder(&ca, &id)
            .build()
            .expect("client config")
    }

    pub fn dtls_client(&self) -> dtls::ClientConfig {
        dtls::ClientConfig::new(
            dtls::Identity::from_pem_files(&self.client.cert, &self.client.key)
                .expect("client identity"),
            dtls::CaCerts::from_pem_file(self.ca.ca_path()).expect("ca"),
        )
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A running server, stopped when `stop` is called or the value dropped.
pub struct Running {
    pub tcp: SocketAddr,
    pub udp: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts shutdown and waits for the server (drain included) to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// Starts shutdown without waiting; returns the server task.
    pub fn begin_stop(mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub async fn start(pki: &Pki, policy: Policy, settings: Settings) -> Running {
    start_with(Server::builder(policy, pki.cert_paths()).settings(settings)).await
}

pub async fn start_with(builder: streamproxy_proxy::server::ServerBuilder) -> Running {
    start_on(builder, "127.0.0.1:0".parse().expect("addr")).await
}

/// [`start_with`] on `addr` (port 0: one the system picks).
pub async fn start_on(
    builder: streamproxy_proxy::server::ServerBuilder,
    addr: SocketAddr,
) -> Running {
    init_logs();
    let server = builder.bind(addr).await.expect("server binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let tcp = server.tcp_addr();
    let udp = server.udp_addr();
    let metrics = server.metrics();
    let reloader = server.reloader();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        tcp,
        udp,
        metrics,
        reloader,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A TCP destination that records everything it receives and reports it when the
/// connection ends.
pub async fn tcp_sink() -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got).await;
                let _ = tx.send(got).await;
            });
        }
    });
    (addr, rx)
}

pub fn allow_all() -> Policy {
    Policy::allow_all([])
}
