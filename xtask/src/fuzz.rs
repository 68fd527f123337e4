//! `cargo xtask fuzz TARGET --seconds N`: cargo-fuzz runs on a nightly toolchain.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, cargo, project_root};

/// Fuzz targets: the name given on the command line, the fuzz directory and the target.
const TARGETS: &[(&str, &str, &str)] = &[
    ("proto", "crates/proto/fuzz", "decode_header"),
    ("proxy-header", "crates/proxy/fuzz", "read_header"),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut selected = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = iter.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds: `{value}` is not a number of seconds"))?;
            }
            name => match TARGETS.iter().find(|(n, _, _)| *n == name) {
                Some(entry) => selected.push(*entry),
                None => bail!(
                    "unknown fuzz target `{name}`; known: {}",
                    TARGETS
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
    if selected.is_empty() {
        selected.extend_from_slice(TARGETS);
    }
    if !have_nightly() {
        eprintln!(
            "fuzz: skipped: no nightly toolchain (cargo-fuzz needs one: rustup toolchain install nightly)"
        );
        return Ok(());
    }
    if !Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        cmd::run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for (_, dir, target) in selected {
        let fuzz_dir = project_root().join(dir);
        cmd::run(
            Command::new("cargo")
                .current_dir(project_root())
                .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
        )?;
    }
    Ok(())
}

fn have_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
