//! Shared pieces of the integration tests that need this crate's types: the PKI's TLS
//! material, an echo server behind an `Acceptor`, raw rustls clients. The PKI itself comes from
//! `test_support`.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use streamproxy_tls::{
    AcceptError, Acceptor, AlpnPolicy, CaCerts, ClientConfig, ClientConfigBuilder, Identity,
    PeerInfo, ServerConfigBuilder, ServerCredentials, ServerPaths,
};
use test_support::CertFiles;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// [`test_support::Pki`] (a CA with a server certificate and a client certificate `agent-1`)
/// with its material loaded by this crate.
pub struct Pki(test_support::Pki);

impl Deref for Pki {
    type Target = test_support::Pki;

    fn deref(&self) -> &test_support::Pki {
        &self.0
    }
}

impl Pki {
    pub fn new(name: &str) -> Self {
        Self(test_support::Pki::named(name))
    }

    pub fn server_paths(&self) -> ServerPaths {
        ServerPaths::new(&self.server.cert, &self.server.key, self.ca.ca_path())
    }

    pub fn credentials(&self) -> ServerCredentials {
        ServerCredentials::load(self.server_paths()).expect("server credentials")
    }

    pub fn ca_certs(&self) -> CaCerts {
        CaCerts::from_pem_file(self.ca.ca_path()).expect("CA certificates")
    }

    pub fn client_identity(&self) -> Identity {
        Identity::from_pem_files(&self.client.cert, &self.client.key).expect("client identity")
    }

    /// A client builder trusting this CA and presenting `agent-1`.
    pub fn client_builder(&self) -> ClientConfigBuilder {
        ClientConfigBuilder::new(&self.ca_certs(), &self.client_identity())
    }

    pub fn client_config(&self) -> ClientConfig {
        self.client_builder().build().expect("client config")
    }
}

/// An echo server: every accepted connection's handshake result is reported on `results`, and
/// a successful connection echoes what it reads until EOF.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub results: mpsc::UnboundedReceiver<Result<PeerInfo, AcceptError>>,
}

impl EchoServer {
    pub async fn start(acceptor: Acceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp, peer).await {
                        Ok(accepted) => {
                            let _ = tx.send(Ok(accepted.peer));
                            let (mut r, mut w) = tokio::io::split(accepted.stream);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            }
        });
        Self { addr, results }
    }

    /// A stream-only echo server on `credentials`.
    pub async fn stream_only(credentials: &ServerCredentials) -> Self {
        Self::with_alpn(credentials, AlpnPolicy::StreamOnly).await
    }

    pub async fn with_alpn(credentials: &ServerCredentials, alpn: AlpnPolicy) -> Self {
        let config = ServerConfigBuilder::new(credentials)
            .alpn(alpn)
            .build()
            .expect("server config");
        Self::start(Acceptor::new(&config)).await
    }

    /// The handshake result of the next connection.
    pub async fn next(&mut self) -> Result<PeerInfo, AcceptError> {
        self.results.recv().await.expect("server task alive")
    }
}

/// Writes a message and expects it echoed back.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> io::Result<()> {
    stream.write_all(message).await?;
    stream.flush().await?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await?;
    if back != message {
        return Err(io::Error::other("echo differs"));
    }
    Ok(())
}

/// A raw rustls client trusting `ca`, with the given client certificate (or none) and ALPN.
pub fn raw_client(
    ca: &CaCerts,
    identity: Option<&CertFiles>,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca.certificates() {
        roots.add(cert.clone()).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(streamproxy_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => {
            use rustls::pki_types::pem::PemObject;
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
                .expect("cert file")
                .collect::<Result<Vec<_>, _>>()
                .expect("certs");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects a raw rustls client to `addr` as `godoxy.agent`.
pub async fn raw_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(proto::DEFAULT_SERVER_NAME).expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The rustls error inside an `io::Error` from tokio-rustls.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}
