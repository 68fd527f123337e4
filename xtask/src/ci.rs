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
    // What the docs promise: every public item documented, no broken intra-doc links.
    cmd::run(
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    no_std_check()?;
    crate::circles::check(&cmd::project_root())?;
    // CI runs as root on Debian with the packages installed: the network-namespace, systemd,
    // OpenSSL command-line and HAProxy cases must run, not skip.
    cmd::run(
        cargo()
            .args(["test", "--workspace"])
            .env("STREAMPROXY_REQUIRE_NETNS", "1")
            .env("STREAMPROXY_REQUIRE_SYSTEMD", "1")
            .env("STREAMPROXY_REQUIRE_OPENSSL", "1")
            .env("STREAMPROXY_REQUIRE_HAPROXY", "1"),
    )?;
    cmd::run(cargo().args(["xtask", "soak", "--minutes", "1"]))?;
    cmd::run(cargo().args(["xtask", "interop"]))?;
    cmd::run(cargo().args(["xtask", "bench", "--quick"]))?;
    eprintln!("ci: all checks passed");
    Ok(())
}

/// `streamproxy-proto` promises `no_std` without `alloc`: its normal dependency tree is only
/// `crc`, and a `#![no_std]` static library without an allocator links it (see
/// `xtask/no-std-check/Cargo.toml` for why that build would fail otherwise).
fn no_std_check() -> Result<()> {
    let root = cmd::project_root();
    let tree = std::process::Command::new("cargo")
        .current_dir(&root)
        .args([
            "tree",
            "-p",
            "streamproxy-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()?;
    if !tree.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&tree.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&tree.stdout);
    let unexpected: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !matches!(*name, "streamproxy-proto" | "crc" | "crc-catalog"))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "streamproxy-proto gained dependencies ({}); each must be no_std without alloc",
            unexpected.join(", ")
        );
    }
    cmd::run(
        cargo()
            .args(["build", "--manifest-path"])
            .arg(root.join("xtask/no-std-check/Cargo.toml"))
            .env("CARGO_TARGET_DIR", root.join("target/no-std-check")),
    )
}
