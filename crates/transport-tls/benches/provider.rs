//! Bulk AES-GCM throughput of one TLS 1.3 stream through tokio-rustls over loopback TCP, with
//! each crypto provider rustls offers (aws-lc-rs and ring). This is the measurement behind the
//! workspace's choice of provider; the figures are in `docs/benchmarks.md`.
//!
//! Each iteration writes `CHUNK_BYTES` through an established connection and reads all of it on
//! the other end; one thread drives both ends, so a figure covers encryption, decryption and the
//! loopback copies of one stream (`tls13_bulk`), or of the same stream over an in-memory pipe
//! instead of TCP (`tls13_bulk_memory`), which leaves less besides the cipher. Run with
//! `cargo xtask bench tls`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::crypto::{CryptoProvider, aws_lc_rs, ring};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bytes pushed per iteration.
const CHUNK_BYTES: usize = 16 << 20;
/// Size of one write (and of the read buffer).
const WRITE_BYTES: usize = 64 << 10;

struct Case {
    provider: &'static str,
    suite_name: &'static str,
    make: fn() -> CryptoProvider,
    suite: SupportedCipherSuite,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            provider: "aws-lc-rs",
            suite_name: "aes128gcm",
            make: aws_lc_rs::default_provider,
            suite: aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        },
        Case {
            provider: "aws-lc-rs",
            suite_name: "aes256gcm",
            make: aws_lc_rs::default_provider,
            suite: aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        },
        Case {
            provider: "ring",
            suite_name: "aes128gcm",
            make: ring::default_provider,
            suite: ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        },
        Case {
            provider: "ring",
            suite_name: "aes256gcm",
            make: ring::default_provider,
            suite: ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        },
    ]
}

fn configs(case: &Case) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![case.suite],
        ..(case.make)()
    });
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("suite supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("suite supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

type Client<IO = TcpStream> = tokio_rustls::client::TlsStream<IO>;
type Server<IO = TcpStream> = tokio_rustls::server::TlsStream<IO>;

/// Connects a client and a server over loopback TCP.
async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (Client, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = ServerName::try_from("localhost").expect("name");
    let (client, server) = tokio::join!(
        async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .expect("client handshake")
        },
        async {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .expect("server handshake")
        }
    );
    (client, server)
}

/// Connects a client and a server over an in-memory pipe (no kernel copies: closer to the
/// cost of the cipher itself).
async fn connect_in_memory(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (Client<DuplexStream>, Server<DuplexStream>) {
    let (a, b) = tokio::io::duplex(256 << 10);
    let name = ServerName::try_from("localhost").expect("name");
    let (client, server) = tokio::join!(
        TlsConnector::from(client).connect(name, a),
        TlsAcceptor::from(server).accept(b)
    );
    (
        client.expect("client handshake"),
        server.expect("server handshake"),
    )
}

/// Pushes `CHUNK_BYTES` from the client to the server, both driven by this one task.
async fn push<IO: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<IO>,
    server: &mut Server<IO>,
    out: &[u8],
    into: &mut [u8],
) {
    let write = async {
        let mut left = CHUNK_BYTES;
        while left > 0 {
            let n = left.min(out.len());
            client.write_all(&out[..n]).await.expect("write");
            left -= n;
        }
        client.flush().await.expect("flush");
    };
    let read = async {
        let mut left = CHUNK_BYTES;
        while left > 0 {
            let n = server.read(into).await.expect("read");
            assert!(n > 0, "server saw EOF");
            left = left.saturating_sub(n);
        }
    };
    tokio::join!(write, read);
}

fn bench(c: &mut Criterion) {
    // One thread drives both ends: a figure is the CPU cost of encrypting, decrypting and
    // copying through loopback, which is what differs between providers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = vec![0x5au8; WRITE_BYTES];
    let mut into = vec![0u8; WRITE_BYTES];

    let mut group = c.benchmark_group("tls13_bulk_memory");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    group.sample_size(10);
    for case in cases() {
        let (server, client) = configs(&case);
        let (mut client, mut server) = rt.block_on(connect_in_memory(server, client));
        group.bench_function(format!("{}/{}", case.provider, case.suite_name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        push(&mut client, &mut server, black_box(&out), &mut into).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("tls13_bulk");
    group.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    group.sample_size(10);
    for case in cases() {
        let (server, client) = configs(&case);
        let (mut client, mut server) = rt.block_on(connect(server, client));
        group.bench_function(format!("{}/{}", case.provider, case.suite_name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        push(&mut client, &mut server, black_box(&out), &mut into).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
