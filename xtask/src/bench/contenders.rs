//! The contenders of the side-by-side benchmarks and how each one is started: a client side
//! that listens on a local port and a server side that forwards to a destination.
//!
//! - streamproxy: `streamproxy client --tcp|--udp LOCAL=TARGET` and `streamproxy server`.
//! - Go: the Go peer's `forward` role (goroutines + io.Copy, one tunnel per connection or
//!   UDP source) and its `server` role, crypto/tls and pion/dtls.
//! - stunnel: stunnel4 in client mode and in server mode, mutual TLS (TCP only).
//! - loopback: no tunnel; the load generator connects to the destination itself.

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
    Loopback,
}

impl Contender {
    pub(crate) const ALL: [Contender; 4] = [
        Contender::Streamproxy,
        Contender::Go,
        Contender::Stunnel,
        Contender::Loopback,
    ];

    /// The key in the JSON output.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Contender::Streamproxy => "streamproxy",
            Contender::Go => "go",
            Contender::Stunnel => "stunnel",
            Contender::Loopback => "loopback",
        }
    }

    /// The column heading in the table.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Contender::Streamproxy => "streamproxy",
            Contender::Go => "Go peer",
            Contender::Stunnel => "stunnel",
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
        let mut total = 0.0;
        for proc in &self.procs {
            total += cpu_seconds(proc.pid())?;
        }
        Ok(total)
    }
}

/// User + system CPU time of a process, from /proc/PID/stat (fields 14 and 15, in clock
/// ticks of 1/100 s, which is what Linux reports to user space on every architecture).
fn cpu_seconds(pid: u32) -> Result<f64> {
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
    Ok((ticks(11)? + ticks(12)?) / 100.0)
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
            let mut cmd = tools.streamproxy();
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
            let mut cmd = tools.streamproxy();
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

fn start_stunnel(work: &Path, side: &str, conf: &str, port: u16) -> Result<Proc> {
    let path: PathBuf = work.join(format!("stunnel-{side}.conf"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let proc = Proc::start(
        &format!("stunnel ({side})"),
        Command::new("stunnel4").arg(&path),
    )?;
    // Ready when it accepts; stunnel logs nothing at this level when it starts.
    let deadline = Instant::now() + READY;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("stunnel ({side}) not listening:\n{}", proc.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}
