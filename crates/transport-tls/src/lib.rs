//! Mutual TLS for the stream proxy protocol, on rustls and tokio-rustls.
//!
//! This crate is the TLS layer under the stream proxy. It holds:
//!
//! - **PEM loading**: a CA certificate or bundle ([`CaCerts`]), a certificate chain with its
//!   private key in PKCS#8, SEC1 or PKCS#1 ([`Identity`]). Errors ([`LoadError`]) name the file
//!   and the problem; a certificate outside its validity period loads with a warning.
//! - **The server configuration** ([`ServerConfigBuilder`]): TLS 1.2 and 1.3, a client
//!   certificate is *required* and verified against the CA, ALPN `godoxy-agent-stream/1` alone or
//!   shared with `http/1.1` ([`AlpnPolicy`]). A server configuration can only be built from
//!   [`ServerCredentials`], which always hold a client CA: there is no way to build one without
//!   client verification.
//! - **Live reload**: [`ServerCredentials::reload`] re-reads the certificate, key and CA; new
//!   handshakes use them at once, established connections are not touched, and a failed reload
//!   leaves the old material in force.
//! - **The acceptor** ([`Acceptor`]): the server handshake under the configuration's timeout
//!   ([`ServerConfigBuilder::handshake_timeout`], 10 s by default),
//!   returning the stream with the negotiated ALPN, the peer address and the client
//!   certificate's subject and SANs ([`PeerInfo`]).
//! - **The client side** ([`ClientConfigBuilder`], [`connect`], [`connect_to`]): trusts only the
//!   given CA, presents the client certificate, offers `godoxy-agent-stream/1`, verifies the
//!   server name `godoxy.agent` unless told otherwise (a DNS name or an IP address).
//! - **Reading ahead** ([`ReadAhead`]): the TLS streams both sides build read from their
//!   transport through a buffer borrowed from a bounded pool ([`BufferPool`]) while it holds
//!   bytes, so one system call brings in many TLS records and an idle connection holds no
//!   buffer.
//! - **The crypto provider** ([`crypto_provider`]): rustls' aws-lc-rs provider, chosen for the
//!   whole workspace by measurement and passed explicitly to every builder, so no process-wide
//!   default needs installing.
//!
//! It does **not** read or write the stream request header (that is `proto`, and reading it from
//! a socket is `proxy`), listen or dial destinations, route by ALPN (it reports the protocol;
//! `proxy` routes), do DTLS (`dtls`), or check revocation (no CRL or OCSP). Sessions resume
//! with tickets sealed by keys of the credentials in force (see [`ServerCredentials`]), so a
//! reload makes every client authenticate again.
//!
//! # Example
//!
//! ```no_run
//! use streamproxy_tls::{
//!     Acceptor, AlpnPolicy, CaCerts, ClientConfigBuilder, Identity, ServerConfigBuilder,
//!     ServerCredentials, ServerPaths,
//! };
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Server: certificate, key and the CA client certificates must chain to.
//! let credentials = ServerCredentials::load(ServerPaths::new("server.crt", "server.key", "ca.crt"))?;
//! let server = ServerConfigBuilder::new(&credentials)
//!     .alpn(AlpnPolicy::StreamOnly)
//!     .build()?;
//! let acceptor = Acceptor::new(&server);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! let (tcp, addr) = listener.accept().await?;
//! let accepted = acceptor.accept(tcp, addr).await?;
//! println!("{} connected as {}", accepted.peer.addr, accepted.peer.certificate.subject);
//! // Later, on SIGHUP: new handshakes use the new files, live connections carry on.
//! credentials.reload()?;
//!
//! // Client: the CA to trust and the client certificate to present.
//! let ca = CaCerts::from_pem_file("ca.crt")?;
//! let identity = Identity::from_pem_files("client.crt", "client.key")?;
//! let client = ClientConfigBuilder::new(&ca, &identity).build()?; // server name godoxy.agent
//! let stream = streamproxy_tls::connect_to("agent.example:8443", &client).await?;
//! # drop(stream);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod acceptor;
mod alpn;
mod ca;
mod client;
mod credentials;
mod error;
mod identity;
mod load;
mod peer;
mod pool;
mod provider;
mod read_ahead;
mod server;
mod versions;

pub use acceptor::{Accepted, Acceptor};
pub use alpn::{AlpnPolicy, AppProtocol, HTTP11_ALPN};
pub use ca::CaCerts;
pub use client::{ClientConfig, ClientConfigBuilder, connect, connect_to};
pub use credentials::{PreparedReload, ServerCredentials, ServerPaths};
pub use error::{AcceptError, ConfigError, ConnectError, LoadError};
pub use identity::Identity;
pub use peer::{CertificateSummary, PeerInfo, SubjectAltName};
pub use pool::{BufferPool, LentBuffer};
pub use provider::crypto_provider;
pub use read_ahead::{READ_AHEAD_BUFFER, ReadAhead};
pub use server::{DEFAULT_HANDSHAKE_TIMEOUT, ServerConfig, ServerConfigBuilder};
pub use versions::TlsVersions;

/// The rustls and pki-types items that appear in this crate's API.
pub use rustls::{AlertDescription, ProtocolVersion};
pub use rustls_pki_types::{CertificateDer, ServerName};
/// The TLS stream the connect helpers return: rustls over the transport, which reads ahead
/// through a [`ReadAhead`].
pub type ClientTlsStream<IO = tokio::net::TcpStream> =
    tokio_rustls::client::TlsStream<ReadAhead<IO>>;
/// The TLS stream the acceptor returns: rustls over the transport, which reads ahead through
/// a [`ReadAhead`].
pub type ServerTlsStream<IO = tokio::net::TcpStream> =
    tokio_rustls::server::TlsStream<ReadAhead<IO>>;
