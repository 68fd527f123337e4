//! `cargo xtask man`: man pages generated from the command's own clap model (clap_mangen,
//! through the hidden `streamproxy man` subcommand), so they never drift from `--help`.

use anyhow::{Result, bail};

use crate::cmd::{self, cargo};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let root = cmd::project_root();
    let out = match args {
        [] => root.join("target/man"),
        [flag, dir] if flag == "--out" => dir.into(),
        _ => bail!("usage: cargo xtask man [--out DIR]"),
    };
    cmd::run(cargo().args(["build", "--release", "-p", "streamproxy-cli"]))?;
    cmd::run(
        std::process::Command::new(root.join("target/release/streamproxy"))
            .arg("man")
            .arg("--out")
            .arg(&out),
    )?;
    eprintln!("man: pages written to {}", out.display());
    Ok(())
}
