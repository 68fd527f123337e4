//! System packages: what the build and the tests need, installed with apt-get when missing.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{have_program, run};

/// One thing the project needs from the system, and the Debian package that provides it.
struct Need {
    what: &'static str,
    present: fn() -> bool,
    package: &'static str,
}

const BUILD_AND_TEST: &[Need] = &[
    Need {
        what: "a C compiler (cc)",
        present: || have_program("cc"),
        package: "build-essential",
    },
    Need {
        what: "pkg-config",
        present: || have_program("pkg-config"),
        package: "pkg-config",
    },
    Need {
        what: "OpenSSL headers (openssl/ssl.h)",
        present: || Path::new("/usr/include/openssl/ssl.h").exists(),
        package: "libssl-dev",
    },
    Need {
        what: "the openssl command line (interop tests)",
        present: || have_program("openssl"),
        package: "openssl",
    },
    Need {
        what: "curl (shared-port tests)",
        present: || have_program("curl"),
        package: "curl",
    },
    Need {
        what: "ip from iproute2 (network-namespace tests)",
        present: || have_program("ip"),
        package: "iproute2",
    },
    Need {
        what: "systemd-analyze (checks of the systemd units in contrib/)",
        present: || have_program("systemd-analyze"),
        package: "systemd",
    },
    Need {
        what: "haproxy (the PROXY protocol interop test)",
        present: || have_program("haproxy"),
        package: "haproxy",
    },
];

const INTEROP: &[Need] = &[
    Need {
        what: "Go (the interop peer)",
        present: || have_program("go"),
        package: "golang-go",
    },
    Need {
        what: "pion/dtls v2 (the interop peer's DTLS)",
        present: || Path::new("/usr/share/gocode/src/github.com/pion/dtls/v2").exists(),
        package: "golang-github-pion-dtls.v2-dev",
    },
];

const BENCH: &[Need] = &[
    Need {
        what: "stunnel4 (a side-by-side benchmark contender)",
        present: || have_program("stunnel4"),
        package: "stunnel4",
    },
    Need {
        what: "haproxy (a side-by-side benchmark contender)",
        present: || have_program("haproxy"),
        package: "haproxy",
    },
    Need {
        what: "perf (system calls per MiB in the side-by-side benchmarks)",
        present: || have_program("perf"),
        package: "linux-perf",
    },
];

/// Makes sure the side-by-side benchmarks' contenders are installed (the Go peer's toolchain
/// comes with the interop dependencies).
pub(crate) fn ensure_bench_deps() -> Result<()> {
    ensure(BUILD_AND_TEST)?;
    ensure(INTEROP)?;
    ensure(BENCH)
}

/// Makes sure the Go peer's toolchain and libraries are installed (and what the tests need).
pub(crate) fn ensure_interop_deps() -> Result<()> {
    ensure(BUILD_AND_TEST)?;
    ensure(INTEROP)
}

/// Makes sure everything the workspace build and `cargo test` need is installed.
pub(crate) fn ensure_build_and_test_deps() -> Result<()> {
    ensure(BUILD_AND_TEST)
}

fn ensure(needs: &[Need]) -> Result<()> {
    let missing: Vec<&Need> = needs.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    for need in &missing {
        eprintln!("missing: {} (Debian package {})", need.what, need.package);
    }
    apt_install(&packages)?;
    let still: Vec<&str> = missing
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.what)
        .collect();
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join(", "));
    }
    Ok(())
}

/// Installs Debian packages with apt-get when running as root on Debian; otherwise fails with
/// the exact command to run.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    let command = format!("apt-get install -y {}", packages.join(" "));
    if !have_program("apt-get") {
        bail!(
            "cannot install {}: no apt-get here; install them with your package manager",
            packages.join(" ")
        );
    }
    if !is_root() {
        bail!("cannot install packages without root; run: sudo {command}");
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
    .map_err(|e| anyhow::anyhow!("{e}\ninstall failed; run: {command}"))
}

/// What a cold `cargo xtask ci` writes under `target/`, with some room to spare.
const CI_DISK_NEED_GIB: u64 = 8;

/// Warns when the filesystem holding `target/` has less free space than a CI run writes: a
/// full disk shows up much later as a linker or archiver crash deep inside some dependency's
/// build, far from its cause.
pub(crate) fn check_disk_space(target: &Path) {
    let dir = target
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    let output = match Command::new("df").args(["-Pk"]).arg(dir).output() {
        Ok(o) if o.status.success() => o,
        _ => return,
    };
    let text = String::from_utf8_lossy(&output.stdout);
    // POSIX format: a header line, then "fs blocks used available capacity mountpoint".
    let Some(free_kib) = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let free_gib = free_kib / (1024 * 1024);
    if free_gib < CI_DISK_NEED_GIB {
        eprintln!(
            "warning: {free_gib} GiB free on the filesystem of {}; a cold CI run writes up to \
             {CI_DISK_NEED_GIB} GiB there, and a full disk fails the build in the linker or in ar",
            dir.display()
        );
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
