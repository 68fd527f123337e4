//! Puts the commit into `--version` when the source is a git checkout (`STREAMPROXY_VERSION`).

use std::path::Path;
use std::process::Command;

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let full = match commit {
        Some(commit) => format!("{version} ({commit})"),
        None => version.to_owned(),
    };
    println!("cargo:rustc-env=STREAMPROXY_VERSION={full}");
    // Rebuild when HEAD moves (a commit, a checkout).
    if let Ok(git_dir) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        let dir = String::from_utf8_lossy(&git_dir.stdout).trim().to_owned();
        if !dir.is_empty() {
            let head = Path::new(&dir).join("HEAD");
            println!("cargo:rerun-if-changed={}", head.display());
            if let Ok(text) = std::fs::read_to_string(&head) {
                if let Some(reference) = text.strip_prefix("ref: ") {
                    let reference = Path::new(&dir).join(reference.trim());
                    println!("cargo:rerun-if-changed={}", reference.display());
                }
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
