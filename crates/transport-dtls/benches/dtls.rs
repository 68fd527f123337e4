//! Placeholder: the DTLS benchmark.
fn main() {}
