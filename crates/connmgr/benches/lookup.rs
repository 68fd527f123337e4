//! Placeholder until the connection manager lands.
fn main() {}
