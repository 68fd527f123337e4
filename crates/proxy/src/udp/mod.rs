//! UDP over DTLS: the server and the client.

mod client;
mod server;
pub(crate) mod session;

pub use client::{connect, connect_with, health_check};
pub use server::UdpServer;
