//! The end-to-end harness of the stream proxy: a real server on loopback with throwaway
//! certificates, destinations that echo, misbehave or record, a checker that verifies every
//! relayed byte and datagram, a lossy UDP relay, and the process's file descriptors and memory.
//!
//! The fault, hostile-input and load tests in `tests/` and the soak run (`src/bin/soak.rs`,
//! started by `cargo xtask soak`) share it. Nothing here sends traffic beyond loopback:
//! destination names resolve through a [`StaticResolver`](proxy::dial::StaticResolver).
//!
//! It does not start the `streamproxy` binary: the server runs in-process, driven through the
//! same library calls the binary makes on SIGTERM (shutdown) and SIGHUP (reload).
#![allow(unsafe_code)]

pub mod check;
pub mod fixture;
pub mod lossy;
pub mod process;

pub use streamproxy::{dtls, proto, proxy};
