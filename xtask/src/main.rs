//! Project automation, run as `cargo xtask <task>`.
//!
//! Each task lives in its own module. Tasks shell out to cargo and to system tools; they
//! install missing Debian packages when run as root, and otherwise say what to install.

mod bench;
mod ci;
mod circles;
mod cmd;
mod fuzz;
mod interop;
mod man;
mod procs;
mod soak;
mod system;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci                              format, lint and test everything (the CI entry point)
  bench [CRATE|tunnels] [--quick] criterion benchmarks of one crate (proto, connmgr, tls,
                                  dtls), or the side-by-side tunnel benchmarks against the Go
                                  peer, stunnel and loopback (tunnels), or all of them
  fuzz TARGET [--seconds N]       run a cargo-fuzz target (needs a nightly toolchain);
                                  targets: proto, proxy-header
  soak [--minutes N] [--seed S]   mixed TCP/UDP load with verified bytes and seeded faults
  interop                         the wire-compatibility matrix against a Go peer
                                  (crypto/tls, pion/dtls), OpenSSL's command line and curl
  deps                            install the system packages the build and tests need
  man [--out DIR]                 write the man pages of the streamproxy command (default
                                  target/man)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match task.as_str() {
        "ci" => ci::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "interop" => interop::run(rest),
        "soak" => soak::run(rest),
        "deps" => system::ensure_build_and_test_deps(),
        "man" => man::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}
