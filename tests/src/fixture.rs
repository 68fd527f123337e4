//! A running server with test certificates, and destinations on loopback.
//!
//! The certificates, payloads, echo destinations and `wait_until` come from `test_support`
//! (re-exported here); what needs the server's types is here.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use streamproxy::proxy::metrics::Metrics;
use streamproxy::proxy::policy::Policy;
use streamproxy::proxy::server::{CertPaths, Reloader, Server, ServerBuilder};
use streamproxy::proxy::settings::Settings;
use test_support::CertFiles;
pub use test_support::{payload, tcp_echo, udp_echo, wait_until};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// [`test_support::Pki`] (a CA, a server certificate and a client certificate `agent-1`) with
/// the server's and the clients' configurations built from it.
#[derive(Default)]
pub struct Pki(test_support::Pki);

impl Deref for Pki {
    type Target = test_support::Pki;

    fn deref(&self) -> &test_support::Pki {
        &self.0
    }
}

impl Pki {
    /// A fresh CA, server and client.
    pub fn new() -> Pki {
        Pki(test_support::Pki::named("e2e"))
    }

    /// The server's files, for the builder.
    pub fn cert_paths(&self) -> CertPaths {
        CertPaths::new(&self.server.cert, &self.server.key, self.ca.ca_path())
    }

    /// Writes a new server key and certificate over the old files (a rotation); returns them.
    pub fn rotate_server(&self) -> CertFiles {
        self.ca.server("server")
    }

    /// A TLS client configuration with the client certificate.
    pub fn tls_client(&self) -> tls::ClientConfig {
        let ca = tls::CaCerts::from_pem_file(self.ca.ca_path()).expect("ca");
        let id = tls::Identity::from_pem_files(&self.client.cert, &self.client.key)
            .expect("client identity");
        tls::ClientConfig::builder(&ca, &id)
            .build()
            .expect("client config")
    }

    /// A DTLS client configuration with the client certificate.
    pub fn dtls_client(&self) -> streamproxy::dtls::ClientConfig {
        streamproxy::dtls::ClientConfig::new(
            streamproxy::dtls::Identity::from_pem_files(&self.client.cert, &self.client.key)
                .expect("client identity"),
            streamproxy::dtls::CaCerts::from_pem_file(self.ca.ca_path()).expect("ca"),
        )
    }

    /// A builder for a server with these certificates.
    pub fn builder(&self, policy: Policy, settings: Settings) -> ServerBuilder {
        Server::builder(policy, self.cert_paths()).settings(settings)
    }
}

/// A policy that allows every destination.
pub fn allow_all() -> Policy {
    Policy::allow_all([])
}

/// A running server; aborted when dropped.
pub struct Running {
    /// The TLS address.
    pub tcp: SocketAddr,
    /// The DTLS address.
    pub udp: SocketAddr,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Reloads the certificates (what SIGHUP does in the binary).
    pub reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts shutdown (what SIGTERM does in the binary) and returns the server's task, which
    /// ends when the drain is over.
    pub fn begin_stop(mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    /// Shuts down and waits for the drain to end.
    pub async fn stop(self) {
        self.begin_stop().await.expect("server task");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds the server on an ephemeral loopback port and runs it.
pub async fn start(builder: ServerBuilder) -> Running {
    let server = builder
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let tcp = server.tcp_addr();
    let udp = server.udp_addr().expect("udp enabled");
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

/// A TCP listener that counts the connections it accepts (and closes them), and a UDP socket
/// on another port that counts the datagrams it receives: a destination that must see nothing.
pub struct Witness {
    /// The TCP address.
    pub tcp: SocketAddr,
    /// The UDP address.
    pub udp: SocketAddr,
    connections: Arc<AtomicUsize>,
    datagrams: Arc<AtomicUsize>,
}

impl Witness {
    /// Starts both sockets.
    pub async fn start() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (tcp, udp) = (
            listener.local_addr().expect("addr"),
            socket.local_addr().expect("addr"),
        );
        let connections = Arc::new(AtomicUsize::new(0));
        let datagrams = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        let d = Arc::clone(&datagrams);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while socket.recv_from(&mut buf).await.is_ok() {
                d.fetch_add(1, Ordering::SeqCst);
            }
        });
        Witness {
            tcp,
            udp,
            connections,
            datagrams,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams.load(Ordering::SeqCst)
    }
}

/// A small seeded random number generator (xorshift64*), for faults and payload sizes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The value of a metric from the server's text exposition: the sum over the series named
/// `name` whose labels contain every one of `labels` (such as `kind="checksum"`).
pub fn metric(metrics: &Metrics, name: &str, labels: &[&str]) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n == name || n.strip_suffix("_total") == Some(name))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A v0.1.0.0 header with exactly these host and port fields (lengths taken from the slices,
/// or forced by `host_len`/`port_len`), and a correct checksum: for headers that no encoder
/// would produce.
pub fn craft_header(
    host: &[u8],
    port: &[u8],
    host_len: Option<u8>,
    port_len: Option<u8>,
) -> Vec<u8> {
    use streamproxy::proto::field;
    let mut out = vec![0u8; streamproxy::proto::HEADER_LEN_V0_1_0_0];
    out[field::VERSION].copy_from_slice(b"0.1.0.0\0");
    out[field::HOST_LEN] = host_len.unwrap_or(host.len() as u8);
    out[field::HOST][..host.len()].copy_from_slice(host);
    out[field::PORT_LEN] = port_len.unwrap_or(port.len() as u8);
    out[field::PORT][..port.len()].copy_from_slice(port);
    let sum = field::v0_1_0_0::CHECKSUM;
    let crc = crc32(&out[..sum.start]);
    out[sum].copy_from_slice(&crc.to_be_bytes());
    out
}

/// CRC-32/IEEE, bit by bit: an implementation independent of the codec's.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Sets `SO_LINGER` to zero, so that closing `conn` sends a reset instead of a FIN.
pub fn reset_on_close(conn: &tokio::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (borrowed from a live stream) and the option value is a
    // `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Tests that measure the whole process (sockets, memory) take this first: one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
