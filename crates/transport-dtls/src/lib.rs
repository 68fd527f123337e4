//! DTLS 1.2 over UDP for the stream proxy protocol, on OpenSSL.
//!
//! What it is: a [`connect`]ing client and a [`DtlsListener`] that serves many peers on one UDP
//! socket, both mutually authenticated (ECDSA certificates checked against a CA, the server
//! name checked by the client, extended master secret required), producing a [`DtlsSession`]
//! with datagram semantics: one [`send`](DtlsSession::send) is one record in one datagram, one
//! [`recv`](DtlsSession::recv) is one record. It interoperates with GoDoxy's pion/dtls peer
//! (DTLS 1.2, `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, server name `godoxy.agent`).
//!
//! How: OpenSSL through the `openssl` crate, driven by `tokio_openssl::SslStream` over an
//! adapter whose reads receive one datagram and whose writes send one. The handshake is polled
//! together with OpenSSL's DTLS retransmission timer; each session's stream sits behind a
//! mutex of its own, taken only for one non-blocking poll, so a session's sending and
//! receiving halves work from two tasks at once.
//!
//! Sessions resume (`DtlsConnector` offers its last session; the listener keeps sessions in
//! its OpenSSL context's cache, which a reload replaces), and key exchange prefers X25519 (then
//! P-256; [`DtlsSession::key_exchange_group`] tells which).
//!
//! The listener keeps no state for an address until it returns a stateless cookie, and at most
//! [`max_half_open`](ServerConfig::max_half_open) handshakes past that point: at the limit, a
//! newcomer with a valid cookie evicts the oldest handshake in progress, so peers that stall
//! after the cookie exchange cannot lock others out.
//!
//! What it does not do: read the stream proxy header (that is the proxy's job), fragment
//! payloads (anything over [`MaxPayload`] is refused, never split), keep
//! sessions alive (an idle timeout belongs to the application), or provide flow control.
//!
//! ```no_run
//! # async fn demo(
//! #     id: streamproxy_dtls::Identity,
//! #     ca: streamproxy_dtls::CaCerts,
//! #     server_id: streamproxy_dtls::Identity,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use streamproxy_dtls::{ClientConfig, DtlsListener, ServerConfig, connect};
//!
//! let mut listener =
//!     DtlsListener::bind("127.0.0.1:0".parse()?, ServerConfig::new(server_id, ca.clone())).await?;
//! let addr = listener.local_addr();
//! let client = tokio::spawn(async move {
//!     let session = connect(addr, &ClientConfig::new(id, ca)).await?;
//!     session.send(b"ping").await?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! });
//! let mut session = listener.accept().await?;
//! let mut buf = vec![0; session.max_payload()];
//! let n = session.recv(&mut buf).await?.expect("not closed");
//! assert_eq!(&buf[..n], b"ping");
//! # client.await?.map_err(|e| e.to_string())?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod batch;
mod buffers;
mod client;
mod config;
mod cookie;
mod demux;
mod driver;
mod error;
mod ffi;
mod handshake;
mod io;
mod listener;
mod record;
mod session;
mod shared;

pub use buffers::{UdpBuffers, kernel_drops, kernel_drops_by_inode, socket_inode};
pub use client::{DtlsConnector, connect};
pub use config::{
    CaCerts, ClientConfig, DEFAULT_CIPHER_LIST, DEFAULT_HANDSHAKE_TIMEOUT, Identity, MaxPayload,
    Mtu, ServerConfig,
};
pub use error::{
    AcceptError, ConfigError, ConnectError, HandshakeError, ListenError, LoadError, RecvError,
    SendError,
};
pub use listener::{DtlsListener, ListenerHandle, ListenerStats, PreparedReload};
pub use session::{DtlsSession, RecvHalf, SendHalf, SentMany};

/// Re-exported so callers can build identities from parsed certificates and keys.
pub use openssl;
/// The server name a client verifies: the same type as `streamproxy-tls` re-exports.
pub use rustls_pki_types::ServerName;
