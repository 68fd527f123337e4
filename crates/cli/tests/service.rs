//! Running the binary as a service: readiness and state notifications to systemd (through a
//! `NOTIFY_SOCKET` the test owns), the units in `contrib/systemd` (checked with
//! `systemd-analyze verify`, which fails the test under `STREAMPROXY_REQUIRE_SYSTEMD=1` when it
//! is missing), shell completions, man pages and `--version`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{BIN, Proc, certs, client_args, s, streamproxy, tmp};

/// A notification socket like systemd's; returns it and its path.
fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (socket, path)
}

/// The next notification that contains `needle`.
fn next_state(socket: &UnixDatagram, needle: &str) -> String {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.lines().any(|l| l == needle) {
                    return text;
                }
                seen.push(text);
            }
            Err(e) => panic!("no {needle:?} ({e}); saw {seen:?}"),
        }
    }
}

fn spawn_with_notify(args: &[&str], socket: &Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("NOTIFY_SOCKET", socket);
    Proc::spawn_command(cmd)
}

#[test]
fn the_server_tells_systemd_it_is_ready_reloading_and_stopping() {
    let dir = tmp();
    certs(dir.path());
    let (socket, path) = notify_socket(dir.path());
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let mut server = spawn_with_notify(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--ca",
            s(&ca),
            "--cert",
            s(&cert),
            "--key",
            s(&key),
            "--allow",
            "127.0.0.1",
        ],
        &path,
    );
    next_state(&socket, "READY=1");
    // READY comes after the sockets are bound: the ready line is there.
    server.wait_for("listening");
    server.signal("HUP");
    let reloading = next_state(&socket, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    next_state(&socket, "READY=1");
    server.signal("TERM");
    next_state(&socket, "STOPPING=1");
    assert!(server.wait_exit().success());
}

#[test]
fn the_client_tells_systemd_it_is_ready_once_it_forwards() {
    let dir = tmp();
    certs(dir.path());
    let (socket, path) = notify_socket(dir.path());
    let mut args: Vec<String> = vec!["client".into()];
    // No server needs to run: the client forwards from the start and tunnels on demand.
    args.extend(client_args(dir.path(), "127.0.0.1:9"));
    args.extend(["--tcp".into(), "127.0.0.1:0=127.0.0.1:7".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = spawn_with_notify(&refs, &path);
    next_state(&socket, "READY=1");
    client.wait_for("forwarding");
    client.signal("TERM");
    next_state(&socket, "STOPPING=1");
    assert!(client.wait_exit().success());
}

#[test]
fn the_systemd_units_verify() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("STREAMPROXY_REQUIRE_SYSTEMD").is_none(),
            "systemd-analyze is missing but STREAMPROXY_REQUIRE_SYSTEMD is set"
        );
        eprintln!("skipped: systemd-analyze is not installed; `cargo xtask ci` installs it");
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd");
    let dir = tmp();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).expect("contrib/systemd") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // The binary's installed path, replaced by the one just built (verify checks it runs).
        let text = std::fs::read_to_string(&path)
            .expect("unit")
            .replace("/usr/local/bin/streamproxy", BIN);
        std::fs::write(dir.path().join(&name), text).expect("write unit");
        names.push(name.replace("@.service", "@example.service"));
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|n| format!("./{n}")))
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a unit with an unknown setting does not verify.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        format!("[Service]\nType=notify\nExecStart={BIN} server\nNotAKey=1\n"),
    )
    .expect("broken unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "./broken.service"])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze");
    assert!(
        !out.stderr.is_empty(),
        "an unknown key went unnoticed: {out:?}"
    );
}

#[test]
fn completions_cover_every_subcommand_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = streamproxy(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["server", "client", "probe", "certs", "allow-all"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = streamproxy(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_are_written_for_the_command_and_each_subcommand() {
    let dir = tmp();
    let out = streamproxy(&["man", "--out", s(dir.path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "streamproxy.1",
        "streamproxy-server.1",
        "streamproxy-client.1",
        "streamproxy-probe.1",
        "streamproxy-certs.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let server = std::fs::read_to_string(dir.path().join("streamproxy-server.1")).expect("page");
    assert!(server.contains("allow\\-all"), "{server}");
}

#[test]
fn version_names_the_package_version_and_the_commit() {
    let out = streamproxy(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The build script's value, which the binary and this test were built with.
    let built = env!("STREAMPROXY_VERSION");
    assert_eq!(text.trim(), format!("streamproxy {built}"));
    assert!(built.starts_with(env!("CARGO_PKG_VERSION")), "{built}");
    // Built from a git checkout (as CI and developers do), a commit follows.
    let in_git = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        let commit = built
            .split_once(" (")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no commit in {built:?}"));
        assert!(
            commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{built}"
        );
    }
}
