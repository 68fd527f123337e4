//! The contenders of the side-by-side benchmarks and how each one is started: a client side
//! that listens on a local port and a server side that forwards to a destination.
//!
//! - streamproxy: `streamproxy client --tcp|--udp LOCAL=TARGET` and `streamproxy server`.
//! - Go: the Go peer's `forward` role (goroutines + io.Copy, one tunnel per connection or
//!   UDP source) and its `server` role, crypto/tls and pion/dtls.
//! - stunnel: stunnel4 in client mode and in server mode, mutual TLS (TCP only).
//! - haproxy mTLS: Debian's haproxy as client side and as server side, mutual TLS, one thread
//!   each, logging off (TCP only).
//! - haproxy splice: the same two haproxy processes in plain `mode tcp` with kernel splicing,
//!   no crypto: the ceiling of the three-hop topology (TCP only).
//! - plain UDP relay: two of the Go peer's `relay` role in a row, no header and no crypto, one
//!   socket per source address on each hop: the ceiling of the two-hop topology (UDP only).
//! - loopback: no tunnel; the load generator connects to the destination itself.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::interop::Tools;
use crate::procs::{Proc, find_port, free_port};

const READY: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Contender {
    Streamproxy,
    Go,
    Stunnel,
    HaproxyTls,
    HaproxySplice,
    UdpRelay,
    Loopback,
}

impl Contender {
    pub(crate) const ALL: [Contender; 7] = [
        Contender::Streamproxy,
        Contender::Go,
        Contender::Stunnel,
        Contender::HaproxyTls,
        Contender::HaproxySplice,
        Contender::UdpRelay,
        Contender::Loopback,
    ];

    /// The key in the JSON output.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Contender::Streamproxy => "streamproxy",
            Contender::Go => "go",
            Contender::Stunnel => "stunnel",
            Contender::HaproxyTls => "haproxy_tls",
            Contender::HaproxySplice => "haproxy_splice",
            Contender::UdpRelay => "udp_relay",
            Contender::Loopback => "loopback",
        }
    }

    /// The column heading in the table.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Contender::Streamproxy => "streamproxy",
            Contender::Go => "Go peer",
            Contender::Stunnel => "stunnel",
            Contender::HaproxyTls => "haproxy mTLS",
            Contender::HaproxySplice => "haproxy splice",
            Contender::UdpRelay => "plain UDP relay",
            Contender::Loopback => "loopback",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Udp,
}

/// One contender's processes for one measurement; stopped when dropped.
pub(crate) struct Stack {
    /// Where the load generator connects (or sends).
    pub(crate) port: u16,
    /// The server side's process, whose memory scenario 5 reads.
    pub(crate) server_pid: Option<u32>,
    procs: Vec<Proc>,
}

impl Stack {
    /// CPU time (user + system) the contender's processes have used so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        Ok(self.cpu_time()?.total())
    }

    /// CPU time the contender's processes have used so far, in user space and in the kernel.
    pub(crate) fn cpu_time(&self) -> Result<CpuTime> {
        let mut sum = CpuTime::default();
        for proc in &self.procs {
            let t = cpu_time(proc.pid())?;
            sum.user += t.user;
            sum.system += t.system;
        }
        Ok(sum)
    }

    /// Sessions the server side refused so far, from its log: streamproxy's `rejected
    /// session`, `rejected header`, `no header in time` and `tunnel refused` lines, the Go
    /// peer's `rejected session` lines. `None` for contenders without such a log.
    pub(crate) fn refused_sessions(&self) -> Option<usize> {
        let pid = self.server_pid?;
        let server = self.procs.iter().find(|p| p.pid() == pid)?;
        let output = server.output();
        Some(
            output
                .lines()
                .filter(|l| {
                    [
                        "rejected session",
                        "rejected header",
                        "no header in time",
                        "tunnel refused",
                    ]
                    .iter()
                    .any(|what| l.contains(what))
                })
                .count(),
        )
    }

    /// The kernel's drop counters (`/proc/net/udp`, last column) of every UDP socket the
    /// contender's processes hold now, by socket inode.
    pub(crate) fn udp_drops(&self) -> HashMap<u64, u64> {
        let pids: Vec<u32> = self.procs.iter().map(Proc::pid).collect();
        udp_drops(&pids)
    }

    /// Starts counting the system calls of the contender's processes (all their threads,
    /// those started later included) with `perf stat`; `None` when there are no processes or
    /// perf cannot count here.
    pub(crate) fn count_syscalls(&self) -> Option<SyscallCount> {
        if self.procs.is_empty() {
            return None;
        }
        let pids: Vec<String> = self.procs.iter().map(|p| p.pid().to_string()).collect();
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pids.join(","));
        let proc = Proc::start("perf stat", &mut cmd).ok()?;
        // perf attaches within a few milliseconds; a call it misses is noise at these sizes.
        std::thread::sleep(Duration::from_millis(100));
        Some(SyscallCount { proc })
    }
}

/// A running `perf stat` over a contender's processes.
pub(crate) struct SyscallCount {
    proc: Proc,
}

impl SyscallCount {
    /// Stops counting; the number of system calls made since the start.
    pub(crate) fn stop(self) -> Result<f64> {
        let pid = self.proc.pid().to_string();
        Command::new("kill").args(["-INT", &pid]).status()?;
        let (_, output) = self.proc.finish(Duration::from_secs(10))?;
        // CSV: "count,unit,event,..." ("<not counted>" or "<not supported>" when it failed).
        output
            .lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("no count from perf stat:\n{output}"))
    }
}

/// The drop counters of the UDP sockets held by `pids`, by socket inode.
pub(crate) fn udp_drops(pids: &[u32]) -> HashMap<u64, u64> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let mut drops = HashMap::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let (Some(inode), Some(dropped)) = (
                fields.get(9).and_then(|f| f.parse::<u64>().ok()),
                fields.last().and_then(|f| f.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if inodes.contains(&inode) {
                drops.insert(inode, dropped);
            }
        }
    }
    drops
}

/// Datagrams dropped between two readings of [`udp_drops`] (sockets opened in between count
/// from zero; sockets closed in between are not seen).
pub(crate) fn drops_since(before: &HashMap<u64, u64>, after: &HashMap<u64, u64>) -> u64 {
    after
        .iter()
        .map(|(inode, n)| n.saturating_sub(before.get(inode).copied().unwrap_or(0)))
        .sum()
}

/// CPU time of a process (all its threads), in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuTime {
    /// In user space.
    pub(crate) user: f64,
    /// In the kernel on the process's behalf: system calls, and the network stack's work
    /// that runs in their context (on loopback, the receiving side's softirq processing).
    pub(crate) system: f64,
}

impl CpuTime {
    pub(crate) fn total(self) -> f64 {
        self.user + self.system
    }
}

/// User + system CPU time of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(cpu_time(pid)?.total())
}

/// User and system CPU time of a process, from /proc/PID/stat (fields 14 and 15, in clock
/// ticks of 1/100 s, which is what Linux reports to user space on every architecture).
pub(crate) fn cpu_time(pid: u32) -> Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // After the paren, field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    Ok(CpuTime {
        user: ticks(11)? / 100.0,
        system: ticks(12)? / 100.0,
    })
}

/// Starts `contender` forwarding `transport` traffic to `127.0.0.1:target`.
pub(crate) fn start(
    tools: &Tools,
    work: &Path,
    contender: Contender,
    transport: Transport,
    target: u16,
) -> Result<Stack> {
    let target_addr = format!("127.0.0.1:{target}");
    match contender {
        Contender::Loopback => Ok(Stack {
            port: target,
            server_pid: None,
            procs: Vec::new(),
        }),
        Contender::Streamproxy => {
            // The default limits (4,096 tunnels) are below scenario 5's 5,000 idle tunnels;
            // Go and stunnel have none.
            let config = work.join("streamproxy-bench.toml");
            std::fs::write(
                &config,
                "[server]\nmax_tcp_tunnels = 65536\nmax_udp_sessions = 65536\n\
                 [client]\nmax_tunnels = 65536\n",
            )?;
            let mut cmd = streamproxy(tools);
            cmd.args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--allow-all",
                "--config",
            ])
            .arg(&config)
            .args(tools.certs.args("server"));
            let mut server = Proc::start("streamproxy server", &mut cmd)?;
            let server_port = server.wait_for_line(READY, |l| find_port(l, "127.0.0.1"))?;
            let local = free_port()?;
            let flag = match transport {
                Transport::Tcp => "--tcp",
                Transport::Udp => "--udp",
            };
            let mut cmd = streamproxy(tools);
            cmd.args(["client", "--server", &format!("127.0.0.1:{server_port}")])
                .args([flag, &format!("127.0.0.1:{local}={target_addr}")])
                .arg("--config")
                .arg(&config)
                .args(tools.certs.args("client"));
            let mut client = Proc::start("streamproxy client", &mut cmd)?;
            client.wait_for_line(READY, |l| {
                l.contains(&format!("127.0.0.1:{local}")).then_some(())
            })?;
            Ok(Stack {
                port: local,
                server_pid: Some(server.pid()),
                procs: vec![client, server],
            })
        }
        Contender::Go => {
            let (server, server_port) = tools.start_go_server()?;
            let transport = match transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            };
            let mut cmd = tools.go();
            cmd.args(["forward", "-listen", "127.0.0.1:0", "-transport", transport])
                .args(["-server", &format!("127.0.0.1:{server_port}")])
                .args(["-target", &target_addr])
                .args(tools.certs.go_args("client"));
            let mut client = Proc::start("Go forward", &mut cmd)?;
            let port = client.wait_for_line(READY, |l| {
                l.starts_with("forwarding")
                    .then(|| find_port(l, "127.0.0.1"))
                    .flatten()
            })?;
            Ok(Stack {
                port,
                server_pid: Some(server.pid()),
                procs: vec![client, server],
            })
        }
        Contender::UdpRelay => {
            if transport == Transport::Tcp {
                bail!("the plain relay carries UDP only");
            }
            let server = start_relay(tools, "server", &target_addr)?;
            let client = start_relay(tools, "client", &format!("127.0.0.1:{}", server.1))?;
            Ok(Stack {
                port: client.1,
                server_pid: Some(server.0.pid()),
                procs: vec![client.0, server.0],
            })
        }
        Contender::HaproxyTls | Contender::HaproxySplice => {
            if transport == Transport::Udp {
                bail!("haproxy carries TCP only");
            }
            start_haproxy_pair(tools, work, contender, &target_addr)
        }
        Contender::Stunnel => {
            if transport == Transport::Udp {
                bail!("stunnel carries TCP only");
            }
            let server_port = free_port()?;
            let local = free_port()?;
            let common = |who: &str| {
                format!(
                    "foreground = yes\npid =\nsyslog = no\ndebug = warning\n\
                     socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\
                     [bench]\ncert = {cert}\nkey = {key}\nCAfile = {ca}\n\
                     verifyChain = yes\nrequireCert = yes\n",
                    cert = tools.certs.path(&format!("{who}.pem")).display(),
                    key = tools.certs.path(&format!("{who}-key.pem")).display(),
                    ca = tools.certs.path("ca.pem").display(),
                )
            };
            let server_conf = format!(
                "{}accept = 127.0.0.1:{server_port}\nconnect = {target_addr}\n",
                common("server")
            );
            let client_conf = format!(
                "{}client = yes\nsni = godoxy.agent\ncheckHost = godoxy.agent\n\
                 accept = 127.0.0.1:{local}\nconnect = 127.0.0.1:{server_port}\n",
                common("client")
            );
            let server = start_stunnel(work, "server", &server_conf, server_port)?;
            let client = start_stunnel(work, "client", &client_conf, local)?;
            Ok(Stack {
                port: local,
                server_pid: Some(server.pid()),
                procs: vec![client, server],
            })
        }
    }
}

/// The streamproxy command: the release build, or the binary named by
/// `STREAMPROXY_BENCH_BINARY` (to compare another build of the same code in the same run
/// shape, e.g. other runtime settings; the environment is passed on to it).
fn streamproxy(tools: &Tools) -> Command {
    match std::env::var_os("STREAMPROXY_BENCH_BINARY") {
        Some(path) => {
            let mut cmd = Command::new(path);
            cmd.env("RUST_LOG", "info");
            cmd
        }
        None => tools.streamproxy(),
    }
}

/// One hop of the plain UDP relay (the Go peer's `relay` role); the process and its port.
fn start_relay(tools: &Tools, side: &str, target: &str) -> Result<(Proc, u16)> {
    let mut cmd = tools.go();
    cmd.args(["relay", "-listen", "127.0.0.1:0", "-target", target]);
    let mut proc = Proc::start(&format!("plain UDP relay ({side})"), &mut cmd)?;
    let port = proc.wait_for_line(READY, |l| {
        l.starts_with("relaying")
            .then(|| find_port(l, "127.0.0.1"))
            .flatten()
    })?;
    Ok((proc, port))
}

/// haproxy's settings for both sides: one thread, no logging, room for scenario 5's 5,000
/// idle tunnels (two descriptors each, and splice pipes, under a 20,000 descriptor limit),
/// long timeouts.
const HAPROXY_COMMON: &str = "global\n  nbthread 1\n  maxconn 7000\n\
     defaults\n  mode tcp\n  timeout connect 10s\n  timeout client 1h\n  timeout server 1h\n";

fn start_haproxy_pair(
    tools: &Tools,
    work: &Path,
    contender: Contender,
    target_addr: &str,
) -> Result<Stack> {
    let server_port = free_port()?;
    let local = free_port()?;
    let (server_bind, client_server, extra) = if contender == Contender::HaproxyTls {
        // haproxy wants certificate and key in one file.
        let mut bundles = Vec::new();
        for who in ["server", "client"] {
            let mut pem = std::fs::read_to_string(tools.certs.path(&format!("{who}.pem")))?;
            pem.push_str(&std::fs::read_to_string(
                tools.certs.path(&format!("{who}-key.pem")),
            )?);
            let path = work.join(format!("haproxy-{who}.pem"));
            std::fs::write(&path, pem)?;
            bundles.push(path);
        }
        let ca = tools.certs.path("ca.pem");
        (
            format!(
                " ssl crt {} ca-file {} verify required",
                bundles[0].display(),
                ca.display()
            ),
            format!(
                " ssl crt {} ca-file {} verify required sni str(godoxy.agent) verifyhost godoxy.agent",
                bundles[1].display(),
                ca.display()
            ),
            "",
        )
    } else {
        (String::new(), String::new(), "  option splice-auto\n")
    };
    let server_conf = format!(
        "{HAPROXY_COMMON}{extra}frontend in\n  bind 127.0.0.1:{server_port}{server_bind}\n  \
         default_backend out\nbackend out\n  server dest {target_addr}\n"
    );
    let client_conf = format!(
        "{HAPROXY_COMMON}{extra}frontend in\n  bind 127.0.0.1:{local}\n  \
         default_backend out\nbackend out\n  server tunnel 127.0.0.1:{server_port}{client_server}\n"
    );
    let server = start_haproxy(work, "server", &server_conf, server_port)?;
    let client = start_haproxy(work, "client", &client_conf, local)?;
    Ok(Stack {
        port: local,
        server_pid: Some(server.pid()),
        procs: vec![client, server],
    })
}

fn start_haproxy(work: &Path, side: &str, conf: &str, port: u16) -> Result<Proc> {
    let path: PathBuf = work.join(format!("haproxy-{side}.cfg"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    // -db: stay in the foreground; no master process, so the pid is the one doing the work.
    let mut proc = Proc::start(
        &format!("haproxy ({side})"),
        Command::new("haproxy").arg("-db").arg("-f").arg(&path),
    )?;
    wait_listening(&mut proc, &format!("haproxy ({side})"), port)?;
    Ok(proc)
}

fn wait_listening(proc: &mut Proc, what: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + READY;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || proc.exited() {
            bail!("{what} not listening:\n{}", proc.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_stunnel(work: &Path, side: &str, conf: &str, port: u16) -> Result<Proc> {
    let path: PathBuf = work.join(format!("stunnel-{side}.conf"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut proc = Proc::start(
        &format!("stunnel ({side})"),
        Command::new("stunnel4").arg(&path),
    )?;
    // Ready when it accepts; stunnel logs nothing at this level when it starts.
    wait_listening(&mut proc, &format!("stunnel ({side})"), port)?;
    Ok(proc)
}
