//! TCP over TLS: the stream handler, the server and the client.

mod client;
mod handler;
pub(crate) mod handshakes;
mod server;

pub use client::{connect, health_check};
pub use handler::{Served, StreamError, StreamHandler};
pub use server::TcpServer;
