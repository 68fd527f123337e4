//! `cargo xtask ci`: everything CI checks, in the order that fails fastest.

use anyhow::{Result, bail};

use crate::cmd::{self, cargo};
use crate::system;

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments, got `{arg}`");
    }
    system::check_disk_space(&cmd::project_root().join("target"));
    system::ensure_build_and_test_deps()?;
    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // CI runs as root on Debian: the network-namespace cases must run, not skip.
    cmd::run(
        cargo()
            .args(["test", "--workspace"])
            .env("STREAMPROXY_REQUIRE_NETNS", "1"),
    )?;
    cmd::run(cargo().args(["xtask", "soak", "--minutes", "1"]))?;
    cmd::run(cargo().args(["xtask", "interop"]))?;
    cmd::run(cargo().args(["xtask", "bench", "--quick"]))?;
    eprintln!("ci: all checks passed");
    Ok(())
}
