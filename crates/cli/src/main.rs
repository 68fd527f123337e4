//! The `streamproxy` command.

fn main() {
    println!(
        "streamproxy {}: stream proxy protocol over TLS and DTLS (header versions {} and {})",
        env!("CARGO_PKG_VERSION"),
        streamproxy::proto::Version::V0_1_0_0,
        streamproxy::proto::Version::V0_1_0,
    );
    println!("usage: streamproxy <certs|server|client|probe|demo> (commands land with the CLI work)");
}
