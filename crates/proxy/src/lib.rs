//! Stream proxy protocol servers, clients and relay.
//!
//! This crate will hold the TCP-over-TLS and UDP-over-DTLS servers and clients, the byte
//! relay, health checks, the destination policy, limits and the ALPN-shared HTTPS API.
#![deny(missing_docs)]
