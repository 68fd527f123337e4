//! The stream proxy protocol: authenticated TCP-over-TLS and UDP-over-DTLS tunnels.
//!
//! This facade re-exports the layers behind cargo features, so a user can depend on one crate
//! or pick single layers:
//!
//! | feature   | module      | crate                  |
//! |-----------|-------------|------------------------|
//! | `proto`   | [`proto`]   | `streamproxy-proto`    |
//! | `tls`     | [`tls`]     | `streamproxy-tls`      |
//! | `dtls`    | [`dtls`]    | `streamproxy-dtls`     |
//! | `connmgr` | [`connmgr`] | `streamproxy-connmgr`  |
//! | `proxy`   | [`proxy`]   | `streamproxy-proxy`    |
#![deny(missing_docs)]

#[cfg(feature = "connmgr")]
pub use connmgr;
#[cfg(feature = "dtls")]
pub use dtls;
#[cfg(feature = "proto")]
pub use proto;
#[cfg(feature = "proxy")]
pub use proxy;
#[cfg(feature = "tls")]
pub use tls;
