//! The process as an operator runs it: a second stop signal during the drain exits at once
//! (server and client), and the server raises its open-files limit and warns when the tunnel
//! limits cannot fit in it.

mod support;

use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use test_support::blocking::tcp_echo;

fn second_signal_exits_at_once(proc: &mut Proc, signal: &str, code: i32) {
    proc.signal(signal);
    proc.wait_for("draining live tunnels");
    // A live tunnel keeps the drain going (30 s by default).
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        proc.child.try_wait().expect("wait").is_none(),
        "exited before the drain"
    );
    let sent = Instant::now();
    proc.signal(signal);
    proc.wait_for("second stop signal: exiting now");
    let status = proc.wait_exit();
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(code),
        "{status:?} {:?}",
        status.signal()
    );
}

#[test]
fn a_second_sigterm_or_sigint_ends_the_drain_at_once() {
    let dir = tmp();
    certs(dir.path());
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        // The server, with a live tunnel through a client.
        let mut server = server(dir.path(), &["--allow-all"]);
        let (_client, locals) = client(dir.path(), server.tcp, &[("tcp", tcp_echo())], &[]);
        let mut conn = TcpStream::connect(locals[0]).expect("connect");
        tcp_roundtrip(&mut conn, b"live");
        second_signal_exits_at_once(&mut server.proc, signal, code);

        // The client, with a live tunnel through a server that stays up.
        let server = support::server(dir.path(), &["--allow-all"]);
        let (mut client, locals) = client(dir.path(), server.tcp, &[("tcp", tcp_echo())], &[]);
        let mut conn = TcpStream::connect(locals[0]).expect("connect");
        tcp_roundtrip(&mut conn, b"live");
        second_signal_exits_at_once(&mut client, signal, code);
    }
}

/// `streamproxy server` started with the given soft and hard open-files limits (through the
/// shell's `ulimit`), and its limits as the kernel reports them.
fn server_with_limits(dir: &std::path::Path, soft: u64, hard: Option<u64>) -> (Proc, String) {
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    let hard = hard
        .map(|h| format!("; ulimit -Hn {h}"))
        .unwrap_or_default();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("ulimit -Sn {soft}{hard}; exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--allow-all"])
        .args(["--ca", s(&ca), "--cert", s(&cert), "--key", s(&key)]);
    let proc = Proc::spawn_command(cmd);
    // Everything up to the ready line.
    let mut lines = Vec::new();
    loop {
        let line = proc
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no ready line; saw {lines:#?}"));
        let ready = line.contains("listening");
        lines.push(line);
        if ready {
            break;
        }
    }
    let line = lines.join("\n");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", proc.child.id())).expect("limits");
    let open = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line")
        .to_owned();
    (proc, format!("{line}\n{open}"))
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit_and_checked() {
    let dir = tmp();
    certs(dir.path());
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .expect("hard limit");
    let (_server, seen) = server_with_limits(dir.path(), 256, None);
    let fields: Vec<&str> = seen
        .lines()
        .last()
        .expect("limits")
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], hard.to_string(), "soft limit not raised: {seen}");
    assert!(seen.contains("was=256"), "{seen}");

    // A hard limit below what 4096 + 4096 tunnels need: said at start.
    let (_server, seen) = server_with_limits(dir.path(), 256, Some(512));
    assert!(seen.contains("open_files=512"), "{seen}");
    assert!(
        seen.contains("the open files limit is below what the tunnel limits need")
            && seen.contains("needed="),
        "{seen}"
    );
}
