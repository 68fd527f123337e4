//! DTLS 1.2 over UDP for the stream proxy protocol, on OpenSSL and tokio-openssl.
//!
//! This crate will hold the DTLS client, a demultiplexing listener (one UDP socket, many
//! mutually authenticated sessions, cookie exchange, bounded resources) and a datagram session
//! type with `send`/`recv` of whole records.
#![deny(missing_docs)]
