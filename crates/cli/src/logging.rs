//! Log output: text or JSON lines on stderr, the level from `-v`/`-q` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

/// Our own log targets: `-v` and `-q` move these; libraries stay at warnings.
const OUR_TARGETS: [&str; 6] = [
    "streamproxy",
    "streamproxy_proxy",
    "streamproxy_tls",
    "streamproxy_dtls",
    "streamproxy_connmgr",
    "streamproxy_proto",
];

/// The filter for `level` on our targets; other crates (rustls, hyper, ...) log warnings and
/// errors only, unless the level is quieter still.
fn directives(level: &str) -> String {
    let others = if level == "error" { "error" } else { "warn" };
    let mut spec = others.to_owned();
    for target in OUR_TARGETS {
        spec.push_str(&format!(",{target}={level}"));
    }
    spec
}

/// Installs the global subscriber. `RUST_LOG`, when set, decides the filter; otherwise
/// `-v`/`-q` move our own targets' level up or down from `default`.
pub(crate) fn init(args: &LogArgs, default: &str) {
    let levels = ["error", "warn", "info", "debug", "trace"];
    let base = levels.iter().position(|l| *l == default).unwrap_or(2) as i32;
    let index = (base + i32::from(args.verbose) - i32::from(args.quiet)).clamp(0, 4) as usize;
    let level = levels[index];
    let ours = || EnvFilter::new(directives(level));
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("streamproxy: warning: ignoring RUST_LOG={spec:?}: {e}");
            ours()
        }),
        _ => ours(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
