//! TCP over TLS: the stream handler, the server and the client.

mod handler;

pub use handler::{Served, StreamError, StreamHandler};
