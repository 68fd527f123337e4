//! Shared pieces of the tests of the built binary: running it, waiting for its log lines,
//! certificates from `streamproxy certs`. Echo destinations, payloads and polling come from
//! `test_support`.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_streamproxy");
pub const WAIT: Duration = Duration::from_secs(20);

pub fn streamproxy(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run streamproxy")
}

pub fn certs(dir: &Path) {
    let out = streamproxy(&["certs", "--out", s(dir), "--force"]);
    assert!(
        out.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A running `streamproxy` process whose stderr lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Runs `cmd` (the binary, or a command that runs it, like `ip netns exec`).
    pub fn spawn_command(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streamproxy");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// Open file descriptors of the process (`/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Resident memory of the process in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory of the process in KiB (`VmHWM` of `/proc/PID/status`).
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The next line containing `needle` (panics with the lines seen after `WAIT`).
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {needle:?}; saw: {seen:#?}"),
            }
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a log line.
pub fn field(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .expect("value")
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("bad {key} in {line}"))
}

pub struct Server {
    pub proc: Proc,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
}

pub fn server(dir: &Path, extra: &[&str]) -> Server {
    server_on(dir, "127.0.0.1:0", extra)
}

/// A server listening on `listen` (port 0 for any).
pub fn server_on(dir: &Path, listen: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "server",
        "--listen",
        listen,
        "--ca",
        s(dir),
        "--cert",
        s(dir),
        "--key",
        s(dir),
    ];
    let ca = dir.join("ca.pem");
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    args[4] = s(&ca);
    args[6] = s(&cert);
    args[8] = s(&key);
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args);
    let ready = proc.wait_for("listening");
    Server {
        tcp: field(&ready, "tcp"),
        udp: field(&ready, "udp"),
        proc,
    }
}

/// `--server` (an address or a `host:port` name) and the client certificate files.
pub fn client_args(dir: &Path, server: impl std::fmt::Display) -> Vec<String> {
    vec![
        "--server".into(),
        server.to_string(),
        "--ca".into(),
        s(&dir.join("ca.pem")).into(),
        "--cert".into(),
        s(&dir.join("client.pem")).into(),
        "--key".into(),
        s(&dir.join("client-key.pem")).into(),
    ]
}

/// Starts a client with the given forwards; returns it and the local address of each forward.
pub fn client(
    dir: &Path,
    server: impl std::fmt::Display,
    forwards: &[(&str, SocketAddr)],
    extra: &[&str],
) -> (Proc, Vec<SocketAddr>) {
    let mut args: Vec<String> = vec!["client".into()];
    args.extend(client_args(dir, server));
    for (kind, target) in forwards {
        args.push(format!("--{kind}"));
        args.push(format!("127.0.0.1:0={target}"));
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(&refs);
    let locals = forwards
        .iter()
        .map(|_| field(&proc.wait_for("forwarding"), "local"))
        .collect();
    (proc, locals)
}

pub fn probe(dir: &Path, server: impl std::fmt::Display, udp: bool) -> Output {
    let mut args: Vec<String> = vec!["probe".into()];
    args.extend(client_args(dir, server));
    if udp {
        args.push("--udp".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    streamproxy(&refs)
}

pub fn tcp_roundtrip(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).expect("write");
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).expect("read echo");
    assert!(back == data, "echo differs");
}

pub fn udp_roundtrip(socket: &UdpSocket, data: &[u8]) {
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    // UDP may lose a datagram: send again, at most three times.
    for _ in 0..3 {
        socket.send(data).expect("send");
        if let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], data, "echo differs");
            return;
        }
    }
    panic!("no UDP echo");
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("streamproxy-cli-")
        .tempdir()
        .expect("tempdir")
}
