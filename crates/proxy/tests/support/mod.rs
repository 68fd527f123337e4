//! Shared test fixtures: certificates, echo destinations and a running server.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use streamproxy_proxy::metrics::Metrics;
use streamproxy_proxy::policy::Policy;
use streamproxy_proxy::server::{CertPaths, Reloader, Server};
use streamproxy_proxy::settings::Settings;
use tls::testutil::{CertFiles, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A CA with a server certificate and a client certificate.
pub struct Pki {
    pub ca: TestCa,
    pub server: CertFiles,
    pub client: CertFiles,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = TestCa::new("proxy-test");
        let server = ca.server("server");
        let client = ca.client("client", "agent-1");
        Pki { ca, server, client }
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
    init_logs();
    let server = builder
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server binds");
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

/// A TCP echo server; returns its address. Each connection echoes until EOF, then closes.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
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

/// A UDP echo server; returns its address.
pub async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn allow_all() -> Policy {
    Policy::allow_all([])
}

/// Polls a condition on the server's state (set by its tasks after the client has seen the
/// outcome), for at most five seconds.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
