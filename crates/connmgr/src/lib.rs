//! A lock-free registry of live per-client connections.
//!
//! This crate will hold `ConnectionManager`, keyed by the client address, with single-flight
//! creation through an async factory, removal, close-all and idle eviction.
#![deny(missing_docs)]
