//! `cargo xtask interop`: the wire-compatibility matrix against independent peers: a Go peer
//! built on crypto/tls and pion/dtls (as the original is), OpenSSL's command line and curl.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use test_support::payload;

use crate::cmd::{self, cargo, project_root};
use crate::procs::{Proc, find_port};
use crate::system;

const READY: Duration = Duration::from_secs(30);
const TCP_BYTES: usize = 16 << 20;
const DATAGRAMS: usize = 10_000;
const DATAGRAM_SIZE: usize = 1200;

/// Paths of one set of certificates written by `streamproxy certs`.
#[derive(Clone)]
pub(crate) struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--ca --cert --key` for a client.
    fn client_args(&self) -> Vec<String> {
        self.args("client")
    }

    pub(crate) fn args(&self, who: &str) -> Vec<String> {
        vec![
            "--ca".into(),
            self.path("ca.pem").display().to_string(),
            "--cert".into(),
            self.path(&format!("{who}.pem")).display().to_string(),
            "--key".into(),
            self.path(&format!("{who}-key.pem")).display().to_string(),
        ]
    }

    /// `-ca -cert -key` for the Go peer.
    pub(crate) fn go_args(&self, who: &str) -> Vec<String> {
        vec![
            "-ca".into(),
            self.path("ca.pem").display().to_string(),
            "-cert".into(),
            self.path(&format!("{who}.pem")).display().to_string(),
            "-key".into(),
            self.path(&format!("{who}-key.pem")).display().to_string(),
        ]
    }
}

/// The tools of a run: the streamproxy binary, the Go peer and certificates.
pub(crate) struct Tools {
    pub(crate) streamproxy: PathBuf,
    pub(crate) go_peer: PathBuf,
    pub(crate) certs: Certs,
    pub(crate) other_certs: Certs,
}

impl Tools {
    /// Installs what is missing, builds the binary (`release` or debug) and the Go peer, and
    /// writes two sets of certificates under `target/<dir>`.
    pub(crate) fn prepare(dir: &str, release: bool) -> Result<Tools> {
        system::ensure_interop_deps()?;
        let root = project_root();
        let mut build = cargo();
        build.args(["build", "-p", "streamproxy-cli"]);
        if release {
            build.arg("--release");
        }
        cmd::run(&mut build)?;
        let profile = if release { "release" } else { "debug" };
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let streamproxy = target.join(profile).join("streamproxy");
        let work = target.join(dir);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let go_peer = build_go_peer(&work)?;
        let certs = write_certs(&streamproxy, &work.join("certs"))?;
        let other_certs = write_certs(&streamproxy, &work.join("other-certs"))?;
        Ok(Tools {
            streamproxy,
            go_peer,
            certs,
            other_certs,
        })
    }

    pub(crate) fn go(&self) -> Command {
        Command::new(&self.go_peer)
    }

    pub(crate) fn streamproxy(&self) -> Command {
        let mut cmd = Command::new(&self.streamproxy);
        cmd.env("RUST_LOG", "info");
        cmd
    }

    /// Starts a streamproxy server allowing every destination; returns it and its port.
    pub(crate) fn start_server(&self) -> Result<(Proc, u16)> {
        let mut cmd = self.streamproxy();
        cmd.args(["server", "--listen", "127.0.0.1:0", "--allow-all"])
            .args(self.certs.args("server"));
        let mut proc = Proc::start("streamproxy server", &mut cmd)?;
        let port = proc.wait_for_line(READY, |l| find_port(l, "127.0.0.1"))?;
        Ok((proc, port))
    }

    /// Starts the Go peer's server; returns it and its port.
    pub(crate) fn start_go_server(&self) -> Result<(Proc, u16)> {
        self.start_go_server_with(&[])
    }

    /// Starts the Go peer's server with extra flags (e.g. `-accept-only 0.1.0`).
    pub(crate) fn start_go_server_with(&self, extra: &[&str]) -> Result<(Proc, u16)> {
        let mut cmd = self.go();
        cmd.args(["server", "-listen", "127.0.0.1:0"])
            .args(extra)
            .args(self.certs.go_args("server"));
        let mut proc = Proc::start("Go server", &mut cmd)?;
        let port = proc.wait_for_line(READY, |l| {
            l.starts_with("listening")
                .then(|| find_port(l, "127.0.0.1"))
                .flatten()
        })?;
        Ok((proc, port))
    }

    /// Starts the Go echo destinations; returns them and the TCP and UDP ports.
    pub(crate) fn start_echo(&self) -> Result<(Proc, u16, u16)> {
        let mut cmd = self.go();
        cmd.args(["echo", "-tcp", "127.0.0.1:0", "-udp", "127.0.0.1:0"]);
        let mut proc = Proc::start("echo", &mut cmd)?;
        let tcp = proc.wait_for_line(READY, |l| {
            l.starts_with("echo tcp=")
                .then(|| find_port(l, "127.0.0.1"))
                .flatten()
        })?;
        let udp = proc.wait_for_line(READY, |l| {
            l.starts_with("echo udp=")
                .then(|| find_port(l, "127.0.0.1"))
                .flatten()
        })?;
        Ok((proc, tcp, udp))
    }
}

fn build_go_peer(work: &Path) -> Result<PathBuf> {
    let out = work.join("goPeer");
    let gopath = work.join("gopath");
    std::fs::create_dir_all(&gopath)?;
    cmd::run(
        Command::new("go")
            .current_dir(project_root().join("xtask/peers/go"))
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("/usr/share/gocode:{}", gopath.display()))
            .env("GOCACHE", work.join("gocache"))
            .args(["build", "-o"])
            .arg(&out)
            .arg("."),
    )
    .context("building the Go peer")?;
    Ok(out)
}

fn write_certs(streamproxy: &Path, dir: &Path) -> Result<Certs> {
    cmd::run(
        Command::new(streamproxy)
            .args(["certs", "--out"])
            .arg(dir)
            .arg("--force"),
    )?;
    Ok(Certs {
        dir: dir.to_owned(),
    })
}

struct Row {
    name: String,
    result: Result<String>,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask interop` takes no arguments, got `{arg}`");
    }
    let tools = Tools::prepare("interop", false)?;
    let mut rows = Vec::new();
    let mut row = |name: &str, result: Result<String>| {
        let ok = result.is_ok();
        eprintln!("interop: {} {name}", if ok { "PASS" } else { "FAIL" });
        rows.push(Row {
            name: name.to_owned(),
            result,
        });
    };

    let (_echo, echo_tcp, echo_udp) = tools.start_echo()?;

    // Go client → streamproxy server.
    {
        let (_server, port) = tools.start_server()?;
        let server = format!("127.0.0.1:{port}");
        for version in ["0.1.0.0", "0.1.0"] {
            row(
                &format!("Go client → streamproxy server, TCP, {version}, 16 MiB"),
                go_check(&tools, &tools.certs, &server, "tcp", echo_tcp, version, &[]),
            );
            row(
                &format!("Go client → streamproxy server, UDP, {version}, 10,000 × 1200 B"),
                go_check(&tools, &tools.certs, &server, "udp", echo_udp, version, &[]),
            );
        }
        for transport in ["tcp", "udp"] {
            row(
                &format!("Go health check → streamproxy server, {transport}"),
                go_health(&tools, &server, transport),
            );
            // The client trusts our CA, so the refusal is the server's, but presents a
            // certificate from another CA (later Go flags override earlier ones).
            let stranger = tools.other_certs.go_args("client");
            let stranger = ["-cert", stranger[3].as_str(), "-key", stranger[5].as_str()];
            row(
                &format!("Go client with another CA's certificate refused, {transport}"),
                expect_refused(go_check(
                    &tools,
                    &tools.certs,
                    &server,
                    transport,
                    if transport == "tcp" {
                        echo_tcp
                    } else {
                        echo_udp
                    },
                    "0.1.0.0",
                    &stranger,
                )),
            );
            row(
                &format!("Go client without a certificate refused, {transport}"),
                expect_refused(go_check(
                    &tools,
                    &tools.certs,
                    &server,
                    transport,
                    if transport == "tcp" {
                        echo_tcp
                    } else {
                        echo_udp
                    },
                    "0.1.0.0",
                    &["-nocert"],
                )),
            );
        }
        row(
            "curl /health and /metrics on the shared port during a Go TCP tunnel",
            curl_during_tunnel(&tools, &server, echo_tcp),
        );
        for version in [proto::Version::V0_1_0_0, proto::Version::V0_1_0] {
            row(
                &format!("openssl s_client (TLS) with a hand-built {version} header"),
                s_client(&tools, port, echo_tcp, false, version),
            );
            row(
                &format!("openssl s_client (DTLS 1.2) with a hand-built {version} header"),
                s_client(&tools, port, echo_udp, true, version),
            );
        }
    }

    // streamproxy client → Go server.
    {
        let (_go_server, port) = tools.start_go_server()?;
        let server = format!("127.0.0.1:{port}");
        for version in ["0.1.0.0", "0.1.0"] {
            let client = start_client(&tools, &server, Some(version), echo_tcp, echo_udp);
            match client {
                Ok((_client, tcp, udp)) => {
                    row(
                        &format!("streamproxy client → Go server, TCP, {version}, 16 MiB"),
                        tcp_check(tcp, TCP_BYTES),
                    );
                    row(
                        &format!("streamproxy client → Go server, UDP, {version}, 10,000 × 1200 B"),
                        udp_check(udp, DATAGRAMS, DATAGRAM_SIZE),
                    );
                }
                Err(e) => row(
                    &format!("streamproxy client → Go server, {version}"),
                    Err(e),
                ),
            }
        }
        for udp in [false, true] {
            row(
                &format!(
                    "streamproxy probe → Go server, {}",
                    if udp { "udp" } else { "tcp" }
                ),
                probe(&tools, &server, udp),
            );
        }
    }

    // streamproxy client → a Go server that, like every released GoDoxy, accepts only 0.1.0.
    {
        let (_go_server, port) = tools.start_go_server_with(&["-accept-only", "0.1.0"])?;
        let server = format!("127.0.0.1:{port}");
        match start_client(&tools, &server, None, echo_tcp, echo_udp) {
            Ok((_client, tcp, udp)) => {
                row(
                    "streamproxy client (default header) → Go server accepting only 0.1.0, TCP",
                    tcp_check(tcp, 1 << 20),
                );
                row(
                    "streamproxy client (default header) → Go server accepting only 0.1.0, UDP",
                    udp_check(udp, 1000, DATAGRAM_SIZE),
                );
            }
            Err(e) => row(
                "streamproxy client (default header) → Go server accepting only 0.1.0",
                Err(e),
            ),
        }
        // The refusal is real: the 0.1.0.0 layout gets nothing through that server.
        match start_client(&tools, &server, Some("0.1.0.0"), echo_tcp, echo_udp) {
            Ok((_client, tcp, _udp)) => row(
                "streamproxy client with 0.1.0.0 → Go server accepting only 0.1.0 refused",
                expect_refused(tcp_check(tcp, 1024)),
            ),
            Err(e) => row(
                "streamproxy client with 0.1.0.0 → Go server accepting only 0.1.0 refused",
                Err(e),
            ),
        }
    }
    row(
        "openssl s_server (TLS) receives a valid header",
        s_server(&tools, false),
    );
    row(
        "openssl s_server (DTLS 1.2) receives a valid header",
        s_server(&tools, true),
    );
    row(
        "header bytes equal the Go peer's (both versions, health check)",
        same_header_bytes(&tools),
    );

    println!("\n| case | result |\n|---|---|");
    let mut failed = 0;
    for r in &rows {
        match &r.result {
            Ok(detail) => println!("| {} | pass{} |", r.name, detail_suffix(detail)),
            Err(e) => {
                failed += 1;
                println!("| {} | **FAIL**: {} |", r.name, one_line(&format!("{e:#}")));
            }
        }
    }
    if failed > 0 {
        bail!("interop: {failed} of {} cases failed", rows.len());
    }
    println!("\ninterop: {} passed, 0 failed", rows.len());
    Ok(())
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(300).collect()
}

fn expect_refused(r: Result<String>) -> Result<String> {
    match r {
        Ok(_) => bail!("the tunnel was served"),
        Err(e) => Ok(format!(
            "refused: {}",
            one_line(&format!("{e:#}"))
                .chars()
                .take(80)
                .collect::<String>()
        )),
    }
}

fn go_check(
    tools: &Tools,
    certs: &Certs,
    server: &str,
    transport: &str,
    target_port: u16,
    version: &str,
    extra: &[&str],
) -> Result<String> {
    let started = Instant::now();
    let mut cmd = tools.go();
    cmd.args(["check", "-server", server, "-transport", transport])
        .args([
            "-target",
            &format!("127.0.0.1:{target_port}"),
            "-version",
            version,
        ])
        .args(["-bytes", &TCP_BYTES.to_string()])
        .args([
            "-datagrams",
            &DATAGRAMS.to_string(),
            "-size",
            &DATAGRAM_SIZE.to_string(),
        ])
        .args(certs.go_args("client"))
        .args(extra);
    let (ok, out) = Proc::start("Go client", &mut cmd)?.finish(Duration::from_secs(120))?;
    if !ok {
        bail!("{}", one_line(&out));
    }
    Ok(format!("{:.1} s", started.elapsed().as_secs_f64()))
}

fn go_health(tools: &Tools, server: &str, transport: &str) -> Result<String> {
    let mut cmd = tools.go();
    cmd.args(["health", "-server", server, "-transport", transport])
        .args(tools.certs.go_args("client"));
    let (ok, out) = Proc::start("Go health", &mut cmd)?.finish(Duration::from_secs(30))?;
    if !ok {
        bail!("{}", one_line(&out));
    }
    Ok(String::new())
}

fn curl_during_tunnel(tools: &Tools, server: &str, echo_tcp: u16) -> Result<String> {
    let mut cmd = tools.go();
    cmd.args(["check", "-server", server, "-transport", "tcp"])
        .args(["-target", &format!("127.0.0.1:{echo_tcp}")])
        .args(["-bytes", &(256usize << 20).to_string()])
        .args(tools.certs.go_args("client"));
    let tunnel = Proc::start("Go client", &mut cmd)?;
    let port = server.rsplit(':').next().unwrap_or("0");
    let curl = |path: &str| -> Result<String> {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "20",
                "--http1.1",
            ])
            .arg("--cert")
            .arg(tools.certs.path("client.pem"))
            .arg("--key")
            .arg(tools.certs.path("client-key.pem"))
            .arg("--cacert")
            .arg(tools.certs.path("ca.pem"))
            .args(["--resolve", &format!("godoxy.agent:{port}:127.0.0.1")])
            .arg(format!("https://godoxy.agent:{port}{path}"))
            .output()?;
        if !out.status.success() {
            bail!(
                "curl {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let health = curl("/health")?;
    let metrics = curl("/metrics")?;
    if health != "ok" {
        bail!("/health answered {health:?}");
    }
    if !metrics.contains("streamproxy_tunnels_active{transport=\"tcp\"} 1") {
        bail!(
            "/metrics does not show the live tunnel: {}",
            one_line(&metrics)
        );
    }
    let (ok, out) = tunnel.finish(Duration::from_secs(120))?;
    if !ok {
        bail!("the Go tunnel failed: {}", one_line(&out));
    }
    Ok("tunnel active during the requests".into())
}

/// `openssl s_client` sends a hand-built header and a line; the echo comes back.
fn s_client(
    tools: &Tools,
    port: u16,
    echo_port: u16,
    dtls: bool,
    version: proto::Version,
) -> Result<String> {
    let header = proto::Header::with_port("127.0.0.1", echo_port)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_version(version)
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client");
    if dtls {
        cmd.args(["-dtls1_2", "-mtu", "1200"]);
    } else {
        cmd.args(["-alpn", "godoxy-agent-stream/1"]);
    }
    cmd.args([
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "godoxy.agent",
    ])
    .args(["-verify_return_error", "-quiet"])
    .arg("-cert")
    .arg(tools.certs.path("client.pem"))
    .arg("-key")
    .arg(tools.certs.path("client-key.pem"))
    .arg("-CAfile")
    .arg(tools.certs.path("ca.pem"));
    let (mut proc, mut stdin) = Proc::start_with_stdin("openssl s_client", &mut cmd)?;
    // The header must be its own record (a DTLS record is exactly one header): give s_client
    // time to send it before the payload.
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(&header)?;
    stdin.flush()?;
    std::thread::sleep(Duration::from_millis(300));
    let line = b"hello through s_client\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        stdin.write_all(line)?;
        stdin.flush()?;
        let seen = proc.wait_for(Duration::from_secs(1), |out| {
            out.windows(line.len()).any(|w| w == line).then_some(())
        });
        if seen.is_ok() {
            return Ok(String::new());
        }
        if Instant::now() > deadline {
            bail!("no echo; output: {}", one_line(&proc.output()));
        }
    }
}

/// `openssl s_server` accepts our client's handshake and receives a valid header.
fn s_server(tools: &Tools, dtls: bool) -> Result<String> {
    let port = crate::procs::free_port()?;
    let mut cmd = Command::new("openssl");
    cmd.arg("s_server");
    if dtls {
        cmd.args(["-dtls1_2", "-mtu", "1200"]);
    } else {
        cmd.args(["-alpn", "godoxy-agent-stream/1"]);
    }
    cmd.args([
        "-accept",
        &port.to_string(),
        "-Verify",
        "1",
        "-verify_return_error",
    ])
    .arg("-cert")
    .arg(tools.certs.path("server.pem"))
    .arg("-key")
    .arg(tools.certs.path("server-key.pem"))
    .arg("-CAfile")
    .arg(tools.certs.path("ca.pem"));
    let (mut server, _stdin) = Proc::start_with_stdin("openssl s_server", &mut cmd)?;
    server.wait_for_line(READY, |l| l.contains("ACCEPT").then_some(()))?;
    let local = crate::procs::free_port()?;
    let forward = format!("127.0.0.1:{local}=127.0.0.1:9");
    let mut client = tools.streamproxy();
    client
        .args(["client", "--server", &format!("127.0.0.1:{port}")])
        .args([if dtls { "--udp" } else { "--tcp" }, &forward])
        .args(tools.certs.client_args());
    let mut client = Proc::start("streamproxy client", &mut client)?;
    client.wait_for_line(READY, |l| {
        l.contains(&format!("127.0.0.1:{local}")).then_some(())
    })?;
    let _conn = if dtls {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.send_to(b"datagram after the header", ("127.0.0.1", local))?;
        None
    } else {
        let mut conn = TcpStream::connect(("127.0.0.1", local))?;
        conn.write_all(b"bytes after the header")?;
        Some(conn)
    };
    let header = server.wait_for(Duration::from_secs(15), |out| {
        // The client sends the default version (0.1.0, what GoDoxy speaks).
        let version = proto::Version::default();
        let tag = version.tag();
        let start = out.windows(tag.len()).position(|w| w == tag)?;
        let bytes = out.get(start..start + version.header_len())?;
        Some(
            proto::Header::decode(bytes)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string()),
        )
    })?;
    match header {
        Ok(h) => Ok(format!("header for {h}")),
        Err(e) => bail!("s_server received an invalid header: {e}"),
    }
}

fn start_client(
    tools: &Tools,
    server: &str,
    version: Option<&str>,
    echo_tcp: u16,
    echo_udp: u16,
) -> Result<(Proc, u16, u16)> {
    let tcp = crate::procs::free_port()?;
    let udp = crate::procs::free_port()?;
    let mut cmd = tools.streamproxy();
    cmd.args(["client", "--server", server]);
    if let Some(version) = version {
        cmd.args(["--header-version", version]);
    }
    cmd.args(["--tcp", &format!("127.0.0.1:{tcp}=127.0.0.1:{echo_tcp}")])
        .args(["--udp", &format!("127.0.0.1:{udp}=127.0.0.1:{echo_udp}")])
        .args(tools.certs.client_args());
    let mut proc = Proc::start("streamproxy client", &mut cmd)?;
    for port in [tcp, udp] {
        proc.wait_for_line(READY, |l| {
            l.contains(&format!("127.0.0.1:{port}")).then_some(())
        })?;
    }
    Ok((proc, tcp, udp))
}

/// Sends `len` bytes through a local TCP forward to an echo destination and checks them.
pub(crate) fn tcp_check(port: u16, len: usize) -> Result<String> {
    let started = Instant::now();
    let data = payload(len, 1);
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let sent = data.clone();
    let write = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut back = Vec::with_capacity(len);
    conn.read_to_end(&mut back)?;
    write
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if back != data {
        bail!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            back.len()
        );
    }
    Ok(format!("{:.1} s", started.elapsed().as_secs_f64()))
}

/// Sends `count` datagrams through a local UDP forward to an echo destination, 16 in flight,
/// and checks every one arrives intact exactly once.
pub(crate) fn udp_check(port: u16, count: usize, size: usize) -> Result<String> {
    let started = Instant::now();
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let datagram = |i: usize| {
        let mut d = payload(size, i as u64);
        d[..4].copy_from_slice(&(i as u32).to_be_bytes());
        d
    };
    let mut got = vec![false; count];
    let (mut sent, mut received) = (0, 0);
    while sent < count.min(16) {
        socket.send(&datagram(sent))?;
        sent += 1;
    }
    let mut buf = vec![0u8; 65536];
    while received < count {
        let n = socket
            .recv(&mut buf)
            .with_context(|| format!("after {received} of {count} datagrams"))?;
        let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if i >= count || got[i] || buf[..n] != datagram(i)[..] {
            bail!("datagram {i} corrupt or duplicated");
        }
        got[i] = true;
        received += 1;
        if sent < count {
            socket.send(&datagram(sent))?;
            sent += 1;
        }
    }
    Ok(format!("{:.1} s", started.elapsed().as_secs_f64()))
}

fn probe(tools: &Tools, server: &str, udp: bool) -> Result<String> {
    let mut cmd = tools.streamproxy();
    cmd.args(["probe", "--server", server])
        .args(tools.certs.client_args());
    if udp {
        cmd.arg("--udp");
    }
    let (ok, out) = Proc::start("streamproxy probe", &mut cmd)?.finish(Duration::from_secs(30))?;
    if !ok {
        bail!("{}", one_line(&out));
    }
    Ok(String::new())
}

fn same_header_bytes(tools: &Tools) -> Result<String> {
    let long = "h".repeat(255);
    let cases = [
        ("example.com", "443"),
        ("127.0.0.1", "1"),
        ("2001:db8::1", "53"),
        (long.as_str(), "65535"),
    ];
    let mut compared = 0;
    for version in [proto::Version::V0_1_0_0, proto::Version::V0_1_0] {
        for (host, port) in cases {
            let ours = proto::Header::new(host, port)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_version(version)
                .to_bytes()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let go = go_header(
                tools,
                &["-host", host, "-port", port, "-version", version.as_str()],
            )?;
            if go != hex(&ours) {
                bail!("{version} {host}:{port}: ours {} go {go}", hex(&ours));
            }
            compared += 1;
        }
    }
    let ours = proto::Header::health_check()
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let go = go_header(tools, &["-version", "0.1.0", "-health"])?;
    if go != hex(&ours) {
        bail!("health check: ours {} go {go}", hex(&ours));
    }
    Ok(format!("{} headers", compared + 1))
}

fn go_header(tools: &Tools, args: &[&str]) -> Result<String> {
    let out = tools.go().arg("header").args(args).output()?;
    if !out.status.success() {
        bail!("goPeer header: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
