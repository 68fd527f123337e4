//! `cargo xtask soak --minutes N [--seed S]`: the soak run of the end-to-end harness (mixed TCP
//! and UDP load with the byte and datagram checker, seeded random faults, a summary).

use anyhow::{Context, Result, bail};

use crate::cmd::{self, cargo};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut minutes = String::from("1");
    let mut seed = String::from("1");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--minutes" => {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|m| *m > 0.0)
                    .with_context(|| format!("--minutes: `{value}` is not a positive number"))?;
                minutes.clone_from(value);
            }
            "--seed" => {
                value
                    .parse::<u64>()
                    .with_context(|| format!("--seed: `{value}` is not a number"))?;
                seed.clone_from(value);
            }
            other => bail!("`cargo xtask soak` takes --minutes N and --seed S, got `{other}`"),
        }
    }
    // The dev profile: CI has just built it for `cargo test`.
    cmd::run(cargo().args([
        "run",
        "-p",
        "streamproxy-e2e",
        "--bin",
        "soak",
        "--",
        "--minutes",
        &minutes,
        "--seed",
        &seed,
    ]))
}
