//! Stream proxy protocol servers, clients and relay.
//!
//! This crate is the product's core. It reads request headers from TLS streams and DTLS
//! sessions, checks destinations against a [`Policy`](policy::Policy), dials them and relays
//! bytes or datagrams; it also holds the matching clients. Transports come from the layers
//! below: `streamproxy-tls`, `streamproxy-dtls`, and `streamproxy-connmgr` for per-client UDP
//! sessions. It does not parse command lines or configuration files.
#![deny(missing_docs)]

pub mod api;
pub mod client;
mod context;
pub mod dial;
pub mod explain;
pub mod forward;
pub mod keepalive;
pub mod metrics;
pub mod policy;
pub mod relay;
pub mod request;
pub mod server;
pub mod settings;
mod shutdown;
pub mod tcp;
pub mod tunnel;
pub mod udp;

pub use context::ServerContext;
