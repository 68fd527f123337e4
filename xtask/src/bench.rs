//! `cargo xtask bench`: criterion benchmarks of single crates, and the side-by-side tunnel
//! benchmarks against the Go peer, stunnel and plain loopback (`bench/tunnels.rs`).
//!
//! `cargo xtask bench` runs both; `bench CRATE...` only those crates' criterion benchmarks;
//! `bench tunnels` only the side-by-side scenarios. `--quick` makes every part a smoke run;
//! `--only TEXT` runs only the scenarios whose name contains TEXT (e.g. `--only bulk`).

mod contenders;
mod load;
mod report;
mod tunnels;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, cargo};

/// Crates with criterion benchmarks: the name given on the command line and the package.
const CRATES: &[(&str, &str)] = &[
    ("proto", "streamproxy-proto"),
    ("connmgr", "streamproxy-connmgr"),
    ("dtls", "streamproxy-dtls"),
    ("tls", "streamproxy-tls"),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut tunnels = false;
    let mut only = None;
    let mut selected = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                only = Some(args.next().context("--only needs a scenario name")?.clone());
                tunnels = true;
            }
            "tunnels" => tunnels = true,
            name => match CRATES.iter().find(|(n, _)| *n == name) {
                Some(entry) => selected.push(*entry),
                None => bail!(
                    "no benchmarks for `{name}`; known: tunnels, {}",
                    CRATES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
    if selected.is_empty() && !tunnels {
        selected.extend_from_slice(CRATES);
        tunnels = true;
    }
    for (_, package) in selected {
        let mut cmd = cargo();
        // Only the bench targets: a library's unit-test harness rejects criterion's flags.
        cmd.args(["bench", "-p", package, "--bench", "*", "--"]);
        if quick {
            // A smoke run: every benchmark runs and reports, the figures are not meaningful.
            cmd.args(["--warm-up-time", "0.2", "--measurement-time", "0.5"]);
        }
        cmd::run(&mut cmd)?;
    }
    if tunnels {
        tunnels::run(quick, only.as_deref())?;
    }
    Ok(())
}
