//! Mutual TLS for the stream proxy protocol, on rustls and tokio-rustls.
//!
//! This crate will hold PEM loading, the server and client configuration builders (client
//! certificate required, ALPN `godoxy-agent-stream/1`), a handshake-with-timeout acceptor that
//! reports the negotiated ALPN and the peer certificate, and live certificate reload.
#![deny(missing_docs)]
