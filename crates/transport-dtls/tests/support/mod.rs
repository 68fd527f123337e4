//! Shared test support that needs this crate's types: the PKI's files as DTLS material, an
//! echo server, a lossy relay, hand-made ClientHellos. Certificates, payloads and polling come
//! from `test_support`.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use streamproxy_dtls::{
    CaCerts, ClientConfig, DtlsConnector, DtlsListener, DtlsSession, Identity, ListenerHandle,
    ServerConfig,
};
use test_support::{CertFiles, LeafSpec, TestCa, Usage, Validity};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// A generated PKI: one CA with a server (`server`) and a client (`client`, common name
/// `agent-client`), and another CA with a client (`other-client`, `intruder`) and a server of
/// its own (`other-server`), from `test_support`.
pub struct Pki {
    ca: TestCa,
    other: TestCa,
    leaves: HashMap<String, CertFiles>,
}

impl Pki {
    /// The file a test names: `ca.pem` and `other-ca.pem` are the CAs, `<leaf>.pem` and
    /// `<leaf>.key` a certificate and its key; any other name is a file in the CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        match name {
            "ca.pem" => return self.ca.ca_path().to_owned(),
            "other-ca.pem" => return self.other.ca_path().to_owned(),
            _ => {}
        }
        let leaf = |ext: &str| self.leaves.get(name.strip_suffix(ext)?);
        if let Some(files) = leaf(".pem") {
            files.cert.clone()
        } else if let Some(files) = leaf(".key") {
            files.key.clone()
        } else {
            self.ca.dir().join(name)
        }
    }

    pub fn identity(&self, name: &str) -> Identity {
        Identity::from_pem_files(
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
        .unwrap()
    }

    pub fn ca(&self, name: &str) -> CaCerts {
        CaCerts::from_pem_file(self.path(&format!("{name}.pem"))).unwrap()
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig::new(self.identity("server"), self.ca("ca"))
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.identity("client"), self.ca("ca"))
    }
}

/// Generates the PKI into fresh temporary directories.
pub fn pki() -> Pki {
    pki_with_client_until(None)
}

/// The PKI, with a client certificate that expires at `not_after`.
pub fn pki_with_client_until(not_after: Option<time::OffsetDateTime>) -> Pki {
    let ca = TestCa::new("streamproxy-dtls");
    let other = TestCa::new("some other CA");
    let mut client = LeafSpec::new("client", "agent-client", Usage::Client);
    if let Some(end) = not_after {
        client = client.validity(Validity::Until(end));
    }
    let leaves = HashMap::from([
        ("server".to_owned(), ca.server("server")),
        ("client".to_owned(), ca.issue(&client)),
        (
            "other-client".to_owned(),
            other.client("other-client", "intruder"),
        ),
        ("other-server".to_owned(), other.server("other-server")),
    ]);
    Pki { ca, other, leaves }
}

/// Echoes every record back until the peer closes; then closes too.
pub async fn echo(mut session: DtlsSession) {
    let mut buf = vec![0u8; session.max_payload()];
    while let Ok(Some(n)) = session.recv(&mut buf).await {
        if session.send(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = session.shutdown().await;
}

/// A listener whose accepted sessions are echoed, each in its own task.
pub async fn echo_server(config: ServerConfig) -> (SocketAddr, ListenerHandle) {
    let mut listener = DtlsListener::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let handle = listener.handle();
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            tokio::spawn(echo(session));
        }
    });
    (addr, handle)
}

/// Impairments applied by [`Relay`], per direction.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

impl Impairment {
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };
}

/// A UDP relay between one client and a server: the client talks to `addr()`, the relay talks
/// to the server from its own upstream socket. Each direction has its own seeded RNG.
pub struct Relay {
    pub addr: SocketAddr,
    pub upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    server: SocketAddr,
    /// Every datagram the client sent, as received by the relay (before impairment).
    pub from_client: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(server: SocketAddr, seed: u64, up: Impairment, down: Impairment) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        upstream.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let from_client: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (front, upstream, client, log, stop) = (
                front.clone(),
                upstream.clone(),
                client.clone(),
                from_client.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut held: Option<Vec<u8>> = None;
                let mut buf = vec![0u8; 65536];
                while let Ok((n, src)) = front.recv_from(&mut buf).await {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    *client.lock().await = Some(src);
                    log.lock().await.push(buf[..n].to_vec());
                    forward(&mut rng, up, &buf[..n], &mut held, |d| {
                        let _ = upstream.try_send(d);
                    });
                }
            });
        }
        {
            let (front, upstream, client, stop) = (
                front.clone(),
                upstream.clone(),
                client.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
                let mut held: Option<Vec<u8>> = None;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = upstream.recv(&mut buf).await {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(to) = *client.lock().await else {
                        continue;
                    };

                    forward(&mut rng, down, &buf[..n], &mut held, |d| {
                        let _ = front.try_send_to(d, to);
                    });
                }
            });
        }
        Relay {
            addr,
            upstream,
            front,
            client,
            server,
            from_client,
            stop,
        }
    }

    /// Sends a datagram to the server from the relay's upstream address (the address the
    /// server knows the client by).
    pub async fn inject(&self, datagram: &[u8]) {
        self.upstream.send(datagram).await.unwrap();
    }

    /// Sends a datagram to the client from the relay's address (the address the client's
    /// socket is connected to).
    pub async fn inject_to_client(&self, datagram: &[u8]) {
        let to = self
            .client
            .lock()
            .await
            .expect("the client has sent something");
        self.front.send_to(datagram, to).await.unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn forward(
    rng: &mut StdRng,
    imp: Impairment,
    d: &[u8],
    held: &mut Option<Vec<u8>>,
    mut send: impl FnMut(&[u8]),
) {
    if rng.random_bool(imp.loss) {
        return;
    }
    if rng.random_bool(imp.reorder) && held.is_none() {
        // Delivered after the next datagram.
        *held = Some(d.to_vec());
        return;
    }
    send(d);
    if rng.random_bool(imp.duplicate) {
        send(d);
    }
    if let Some(h) = held.take() {
        send(&h);
    }
}

/// Random bytes from a seeded RNG.
pub fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A minimal blocking DTLS client built directly on OpenSSL, for peers our own client refuses
/// to be (no certificate at all). Returns the handshake result.
pub fn raw_openssl_handshake(
    server: SocketAddr,
    ctx: &openssl::ssl::SslContext,
) -> Result<(), openssl::ssl::Error> {
    use std::io::{Read, Write};

    struct Conn(std::net::UdpSocket);
    impl Read for Conn {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
    }
    impl Write for Conn {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.send(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ssl = openssl::ssl::Ssl::new(ctx).unwrap();
    ssl.set_hostname(proto::DEFAULT_SERVER_NAME).unwrap();
    ssl.set_mtu(1200).unwrap();
    ssl.set_connect_state();
    let mut stream = openssl::ssl::SslStream::new(ssl, Conn(sock)).unwrap();
    stream.do_handshake()?;
    stream.ssl_write(b"hello").map(|_| ())
}

/// `hello` (a cookieless ClientHello in one record) with `cookie` inserted, message sequence 1
/// and record sequence `seq`.
pub fn with_cookie(hello: &[u8], cookie: &[u8], seq: u8) -> Vec<u8> {
    let sid_len = usize::from(hello[13 + 12 + 34]);
    let cookie_at = 13 + 12 + 34 + 1 + sid_len;
    assert_eq!(hello[cookie_at], 0, "expected a cookieless ClientHello");
    let mut out = hello[..cookie_at].to_vec();
    out.push(cookie.len() as u8);
    out.extend_from_slice(cookie);
    out.extend_from_slice(&hello[cookie_at + 1..]);
    let body = out.len() - 13;
    out[11..13].copy_from_slice(&(body as u16).to_be_bytes());
    let msg = (body - 12) as u32;
    out[13 + 1..13 + 4].copy_from_slice(&msg.to_be_bytes()[1..]);
    out[13 + 9..13 + 12].copy_from_slice(&msg.to_be_bytes()[1..]);
    out[13 + 4..13 + 6].copy_from_slice(&[0, 1]);
    out[10] = seq;
    out
}

/// The first ClientHello (no cookie yet) a client with `config` sends, captured by a socket
/// that never answers.
pub async fn cookieless_hello(config: &ClientConfig) -> Vec<u8> {
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sink.local_addr().unwrap();
    let connector = DtlsConnector::new(config).unwrap();
    let client = tokio::spawn(async move {
        let _ = connector.connect(addr).await;
    });
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), sink.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    client.abort();
    buf.truncate(n);
    buf
}

/// A peer that completes the cookie exchange with `server` using `hello` (from
/// [`cookieless_hello`]) and then goes silent: the listener starts a handshake for it that
/// never finishes. Keep the socket to keep the address.
pub async fn stalled_peer(server: SocketAddr, hello: &[u8]) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(hello, server).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // A HelloVerifyRequest ends with the cookie.
    let cookie = &buf[n - 32..n];
    socket
        .send_to(&with_cookie(hello, cookie, 1), server)
        .await
        .unwrap();
    socket
}
