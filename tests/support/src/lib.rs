//! What the workspace's tests share: payloads, echo destinations, polling with a deadline and
//! test certificates.
//!
//! - [`payload`] and [`tagged_payload`]: deterministic bytes, so a receiver can check what
//!   arrived without a copy of what was sent.
//! - [`tcp_echo`] and [`udp_echo`] (async, feature `tokio`), and their threaded twins in
//!   [`blocking`]: destinations on a loopback port 0 that send back what they get.
//! - [`wait_until`] (and [`blocking::wait_until`]): polls state another task or process sets,
//!   failing after a deadline. A test waits for the condition it needs, never for a fixed time.
//! - [`TestCa`] and [`Pki`] (feature `pki`): a throwaway CA and the server and client
//!   certificates it issues, written as PEM files to a temporary directory.
//!
//! It does not depend on any library crate of the workspace (so a crate's own tests can use it
//! without building that crate twice): helpers that need a workspace type stay in the tests of
//! the crate that has it. Everything binds loopback only, and panics on failure: it only ever
//! runs inside tests.
#![deny(missing_docs)]

pub mod blocking;
#[cfg(feature = "tokio")]
mod echo;
mod payload;
#[cfg(feature = "pki")]
mod pki;
#[cfg(feature = "tokio")]
mod wait;

#[cfg(feature = "tokio")]
pub use echo::{tcp_echo, udp_echo, udp_echo_on};
pub use payload::{payload, tagged_payload};
#[cfg(feature = "pki")]
pub use pki::{CertFiles, KeyFormat, LeafSpec, Pki, SERVER_NAME, TestCa, Usage, Validity};
#[cfg(feature = "tokio")]
pub use wait::wait_until;
