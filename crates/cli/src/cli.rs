//! The command line: global options and one subcommand per task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use streamproxy::proxy::Destination;
use streamproxy::proxy::policy::Rule;

/// Authenticated TCP-over-TLS and UDP-over-DTLS tunnels (GoDoxy's stream proxy protocol).
#[derive(Debug, Parser)]
#[command(
    name = "streamproxy",
    version = crate::VERSION,
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Logging options, accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub(crate) struct LogArgs {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG`, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Less log output (-q: warnings and errors, -qq: errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) quiet: u8,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make certificates (ECDSA P-256, PEM): a CA, and server and client certificates
    /// issued from it.
    Certs(CertsArgs),
    /// Run a server: TLS on a TCP port and DTLS on the same UDP port number.
    Server(ServerArgs),
    /// Forward local TCP and UDP ports through tunnels to a server.
    Client(ClientArgs),
    /// Check that a server is healthy (exit status 0) or not (1, with the reason).
    Probe(ProbeArgs),
    /// Run a server, echo destinations and a client on loopback, send traffic through every
    /// transport and header version, check every byte and report.
    Demo,
    /// Print a shell completion script (e.g. `streamproxy completions bash >
    /// /etc/bash_completion.d/streamproxy`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (streamproxy.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

impl Command {
    /// The log level when neither `-v`/`-q` nor `RUST_LOG` says otherwise.
    pub(crate) fn default_level(&self) -> &'static str {
        match self {
            // The demo prints its own report; per-tunnel lines would drown it.
            Command::Demo
            | Command::Certs(_)
            | Command::Probe(_)
            | Command::Completions { .. }
            | Command::Man { .. } => "warn",
            Command::Server(_) | Command::Client(_) => "info",
        }
    }

    pub(crate) async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Certs(args) => crate::certs::run(args).map(|()| ExitCode::SUCCESS),
            Command::Server(args) => crate::server::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Client(args) => crate::client::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Probe(args) => crate::probe::run(args).await,
            Command::Demo => crate::demo::run().await,
            Command::Completions { shell } => {
                crate::docs::completions(shell);
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { out } => crate::docs::man_pages(&out).map(|()| ExitCode::SUCCESS),
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct CertsArgs {
    #[command(subcommand)]
    pub(crate) command: Option<CertsCommand>,
    /// Without a subcommand: write a new CA and one server and one client certificate into
    /// DIR (created if missing): ca.pem, server.pem, server-key.pem, client.pem,
    /// client-key.pem, and the CA's key apart in DIR/ca/.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// A further name (DNS name or IP address) for the server certificate, besides
    /// godoxy.agent, localhost, 127.0.0.1 and ::1. Repeatable.
    #[arg(long = "server-name", value_name = "NAME")]
    pub(crate) server_names: Vec<String>,
    /// Validity of the certificates, in days (default 365).
    #[arg(long, value_name = "N", value_parser = days())]
    pub(crate) days: Option<u32>,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
}

fn days() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=36500)
}

/// Certificates from a CA you keep: make it once, issue from it as often as needed.
#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a CA: ca.pem (copy it to every host) and ca-key.pem (keep it here) in DIR.
    Ca {
        /// Directory for ca.pem and ca-key.pem (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's name (default: "streamproxy CA" and a random suffix, unique per CA).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Validity in days (default 3650).
        #[arg(long, value_name = "N", value_parser = days())]
        days: Option<u32>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a server certificate from the CA in --ca-dir: server.pem, server-key.pem and
    /// ca.pem in DIR. It carries godoxy.agent, localhost, 127.0.0.1, ::1 and every
    /// --server-name.
    Server(IssueArgs),
    /// Issue a client certificate named --name from the CA in --ca-dir: client.pem,
    /// client-key.pem and ca.pem in DIR.
    Client(IssueArgs),
}

/// What issuing a leaf takes.
#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The CA's directory (ca.pem and ca-key.pem, from `certs ca`).
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_dir: PathBuf,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// The certificate's common name (required for a client; a server's defaults to
    /// godoxy.agent).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// A further name (DNS name or IP address) for a server certificate. Repeatable.
    #[arg(long = "server-name", value_name = "NAME")]
    pub(crate) server_names: Vec<String>,
    /// Validity in days (default 365).
    #[arg(long, value_name = "N", value_parser = days())]
    pub(crate) days: Option<u32>,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The server's certificate files and their CA.
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsFiles {
    /// The CA certificate that peer certificates must chain to (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// This side's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// This side's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on, TCP and UDP (e.g. 0.0.0.0:8890). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) files: TlsFiles,
    /// Do not serve UDP over DTLS.
    #[arg(long)]
    pub(crate) no_udp: bool,
    /// Do not serve the HTTPS API (/health, /metrics, /godoxy/agent/info) on the TLS port.
    #[arg(long)]
    pub(crate) no_api: bool,
    /// The agent name a GoDoxy server shows for this server (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub(crate) agent_name: Option<String>,
    /// Serve /health and /metrics over plain HTTP on ADDR (IP:PORT, or unix:PATH), for
    /// scrapers without a client certificate.
    #[arg(long, value_name = "ADDR")]
    pub(crate) status_listen: Option<streamproxy::proxy::status::StatusAddr>,
    /// Allow destinations matching RULE (HOST or HOST:PORTS; e.g. 10.0.0.0/8:22,443,
    /// *.svc.internal, db.internal:5432). Repeatable.
    #[arg(long, value_name = "RULE", conflicts_with = "allow_all")]
    pub(crate) allow: Vec<Rule>,
    /// Allow every destination not denied (what GoDoxy does).
    #[arg(long)]
    pub(crate) allow_all: bool,
    /// Deny destinations matching RULE, even when an allow rule matches. Repeatable.
    #[arg(long, value_name = "RULE")]
    pub(crate) deny: Vec<Rule>,
    /// Admit only clients whose certificate matches: cn=NAME (subject common name),
    /// dns=NAME or uri=URI (subject alternative names; SPIFFE IDs are URIs) or spki=SHA256
    /// (the public key's digest, hex or base64). Repeatable; any one match admits, to the
    /// --allow/--deny destinations. Rules with their own destinations live in the config
    /// file as [[server.identity]] tables.
    #[arg(long, value_name = "MATCH")]
    pub(crate) allow_client: Vec<streamproxy::proxy::identity::ClientMatch>,
    /// Send a PROXY protocol header to destinations: "v2" (once per TCP stream, in front of
    /// every UDP datagram) or "off" (the default).
    #[arg(long, value_name = "VERSION")]
    pub(crate) proxy_protocol: Option<streamproxy::proxy::proxy_protocol::ProxyProtocol>,
    /// A TOML file with the same settings plus timeouts and limits; flags override it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Validate the whole configuration (flags, file, certificates and key), print the
    /// effective settings and rules, and exit: 0 when it would start, 1 with the reason.
    #[arg(long)]
    pub(crate) check: bool,
}

/// One `LOCAL=TARGET` forward.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub(crate) local: SocketAddr,
    pub(crate) target: Destination,
}

impl FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Forward, String> {
        let (local, target) = s.split_once('=').ok_or_else(|| {
            format!("`{s}`: expected LOCAL=TARGET, e.g. 127.0.0.1:2222=10.0.0.7:22")
        })?;
        let local = local
            .parse()
            .map_err(|_| format!("`{local}` is not a local address like 127.0.0.1:2222"))?;
        let target = target.parse().map_err(|e| format!("{e}"))?;
        Ok(Forward { local, target })
    }
}

/// A header version, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderVersion(pub(crate) streamproxy::proto::Version);

impl FromStr for HeaderVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<HeaderVersion, String> {
        streamproxy::proto::Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .map(HeaderVersion)
            .ok_or_else(|| format!("`{s}` is not a header version (0.1.0 or 0.1.0.0)"))
    }
}

/// How to reach and trust a server.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerConnection {
    /// The server's address, HOST:PORT (the same port for TCP and UDP); a name is resolved
    /// again for every new tunnel.
    #[arg(long, value_name = "ADDR")]
    pub(crate) server: Option<String>,
    #[command(flatten)]
    pub(crate) files: TlsFiles,
    /// The name to verify in the server's certificate (default godoxy.agent).
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) conn: ServerConnection,
    /// Header version to send (0.1.0, the default and what GoDoxy speaks, or 0.1.0.0).
    #[arg(long, value_name = "VERSION")]
    pub(crate) header_version: Option<HeaderVersion>,
    /// Forward TCP connections to LOCAL through the server to TARGET (HOST:PORT). Repeatable.
    #[arg(long, value_name = "LOCAL=TARGET")]
    pub(crate) tcp: Vec<Forward>,
    /// Forward UDP datagrams to LOCAL through the server to TARGET (HOST:PORT). Repeatable.
    #[arg(long, value_name = "LOCAL=TARGET")]
    pub(crate) udp: Vec<Forward>,
    /// Serve /health and /metrics (the forwarders' counters) over plain HTTP on ADDR
    /// (IP:PORT, or unix:PATH).
    #[arg(long, value_name = "ADDR")]
    pub(crate) status_listen: Option<streamproxy::proxy::status::StatusAddr>,
    /// A TOML file with the same settings plus timeouts and limits; flags override it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    pub(crate) conn: ServerConnection,
    /// Probe over UDP (DTLS) instead of TCP (TLS).
    #[arg(long)]
    pub(crate) udp: bool,
    /// How long the whole check may take (e.g. 500ms, 5s, 1m; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration_arg)]
    pub(crate) timeout: std::time::Duration,
}

/// A duration flag, in the same syntax as the file's durations.
fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    let d = crate::config::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("`{text}` is zero; give a positive duration"));
    }
    Ok(d)
}

/// Prints a command-line error as one line (help and version as they are) and gives the exit
/// status clap uses.
pub(crate) fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let mut lines = rendered.lines();
            let line = lines.next().unwrap_or("invalid command line");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("streamproxy: error: {line} (see --help)");
            // clap's suggestions ("tip: a similar argument exists: '--allow-all'").
            for tip in lines.map(str::trim).filter(|l| l.starts_with("tip:")) {
                eprintln!("streamproxy: {tip}");
            }
            ExitCode::from(2)
        }
    }
}
