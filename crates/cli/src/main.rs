//! The `streamproxy` command: certificates, server, client, probe and a self-contained demo.
//!
//! Every command is one module; this file parses the command line, sets up logging, runs the
//! command and turns any error into one line on stderr and a non-zero exit status.

mod access;
mod certs;
mod cli;
mod client;
mod config;
mod demo;
mod docs;
mod logging;
mod notify;
mod probe;
mod reload;
mod server;
mod signals;

use std::process::ExitCode;

use clap::Parser;

/// The version `--version` prints: the package version and, when built from a git checkout,
/// the commit (set by `build.rs`).
pub(crate) const VERSION: &str = env!("STREAMPROXY_VERSION");

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::usage_error(&e),
    };
    logging::init(&cli.log, cli.command.default_level());
    // aws-lc sets up its entropy source on the first random draw (about 130 ms here): draw
    // now, so that the first handshake a client waits for does not pay for it.
    let _ = streamproxy::tls::crypto_provider()
        .secure_random
        .fill(&mut [0u8; 1]);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streamproxy: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("streamproxy: error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, leaving out causes whose text an outer message
/// already repeats.
pub(crate) fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
