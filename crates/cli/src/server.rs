//! `streamproxy server`: TLS and DTLS on one port number, a destination policy and identity
//! rules; SIGHUP reloads the config file and the certificates together, SIGINT/SIGTERM drain
//! and exit.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use streamproxy::proxy::LivePolicy;
use streamproxy::proxy::api::ApiSettings;
use streamproxy::proxy::identity::Access;
use streamproxy::proxy::server::{CertPaths, Reloader, Server};
use streamproxy::proxy::settings::Settings;
use streamproxy::proxy::status::{StatusAddr, StatusListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::access::AccessPlan;
use crate::cli::ServerArgs;
use crate::config::{ConfigFile, ServerConfig, all_present, status_addr};
use crate::signals::Stop;

/// Everything a server needs, flags and file merged.
struct Plan {
    listen: SocketAddr,
    certs: CertPaths,
    /// The policy, identity rules and PROXY protocol setting, with their `--check` lines.
    access: AccessPlan,
    settings: Settings,
    udp: bool,
    api: Option<ApiSettings>,
    status: Option<StatusAddr>,
}

fn plan(args: &ServerArgs) -> anyhow::Result<Plan> {
    let file = ConfigFile::load(args.config.as_deref())?.server;
    let listen_text = args.listen.is_none().then(|| file.listen.clone()).flatten();
    let cert = args.files.cert.clone().or_else(|| file.cert.clone());
    let key = args.files.key.clone().or_else(|| file.key.clone());
    let ca = args.files.ca.clone().or_else(|| file.ca.clone());
    all_present(&[
        (
            args.listen.is_some() || listen_text.is_some(),
            "--listen ADDR (e.g. --listen 0.0.0.0:8890)",
        ),
        (cert.is_some(), "--cert FILE (the server certificate)"),
        (key.is_some(), "--key FILE (the server's private key)"),
        (
            ca.is_some(),
            "--ca FILE (the CA client certificates chain to)",
        ),
    ])?;
    let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
        bail!("missing a required option");
    };
    let listen = match (args.listen, listen_text) {
        (Some(addr), _) => addr,
        (None, Some(text)) => text.parse().map_err(|_| {
            anyhow::anyhow!(
                "listen = `{text}` in the config file is not an address like 0.0.0.0:8890"
            )
        })?,
        (None, None) => bail!("missing --listen ADDR"),
    };
    let certs = CertPaths::new(cert, key, ca);
    Ok(Plan {
        listen,
        certs,
        access: crate::access::plan(args, &file)?,
        settings: settings(&file)?,
        udp: !args.no_udp && file.udp.unwrap_or(true),
        api: (!args.no_api && file.api.unwrap_or(true))
            .then(|| api_settings(args.agent_name.clone(), &file))
            .transpose()?,
        status: status_addr(args.status_listen.clone(), file.status_listen.as_deref())?,
    })
}

fn api_settings(name: Option<String>, file: &ServerConfig) -> anyhow::Result<ApiSettings> {
    let name = match name.or_else(|| file.agent_name.clone()) {
        Some(name) => name,
        None => host_name(),
    };
    if name.trim().is_empty() {
        bail!("agent_name is empty: give the name GoDoxy should show for this agent");
    }
    let mut s = ApiSettings::default().agent_name(name);
    if let Some(d) = file.api_header_timeout {
        s = s.header_timeout(d);
    }
    if let Some(d) = file.api_idle_timeout {
        s = s.idle_timeout(d);
    }
    if let Some(n) = file.api_max_connections {
        if n == 0 {
            bail!(
                "api_max_connections = 0 would refuse every API connection; use api = false to turn the API off"
            );
        }
        s = s.max_connections(n);
    }
    if let Some(n) = file.api_max_request_bytes {
        s = s.max_request_bytes(n);
    }
    Ok(s)
}

/// The host name (the default agent name GoDoxy shows), or `streamproxy` if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "streamproxy".to_owned())
}

fn settings(file: &ServerConfig) -> anyhow::Result<Settings> {
    let s = limits(timeouts(Settings::default(), file), file)?;
    let s = lookups(s, file);
    refuse_unusable(&s)?;
    Ok(s.tcp_keepalive(file.keepalive().settings()?))
}

/// The file's timeouts and drain period over `s`.
fn timeouts(mut s: Settings, file: &ServerConfig) -> Settings {
    if let Some(d) = file.header_timeout {
        s = s.header_timeout(d);
    }
    if let Some(d) = file.dial_timeout {
        s = s.dial_timeout(d);
    }
    if let Some(d) = file.handshake_timeout {
        s = s.handshake_timeout(d);
    }
    if let Some(d) = file.udp_idle_timeout {
        s = s.udp_idle_timeout(d);
    }
    if let Some(d) = file.udp_client_silence_timeout {
        s = s.udp_client_silence_timeout(d);
    }
    if let Some(d) = file.drain_period {
        s = s.drain_period(d);
    }
    s
}

/// The file's limits, resumption and UDP buffer sizes over `s`.
fn limits(mut s: Settings, file: &ServerConfig) -> anyhow::Result<Settings> {
    if let Some(n) = file.max_tcp_tunnels {
        s = s.max_tcp_tunnels(n);
    }
    if let Some(n) = file.max_udp_sessions {
        s = s.max_udp_sessions(n);
    }
    if let Some(n) = file.max_handshakes {
        s = s.max_handshakes(n);
    }
    if let Some(n) = file.max_handshakes_per_source {
        if n == 0 {
            bail!(
                "max_handshakes_per_source = 0 in the config file would refuse every connection: give 1 or more"
            );
        }
        s = s.max_handshakes_per_source(n);
    }
    if let Some(on) = file.resumption {
        s = s.resumption(on);
    }
    if let Some(n) = file.udp_buffer_bytes {
        s = s.udp_buffers(streamproxy::dtls::UdpBuffers::both(n));
    }
    Ok(s)
}

/// The file's name lookup limits and timeout over `s`.
fn lookups(mut s: Settings, file: &ServerConfig) -> Settings {
    let (global, per_client) = (
        file.max_lookups.unwrap_or(s.max_lookups),
        file.max_lookups_per_client
            .unwrap_or(s.max_lookups_per_client),
    );
    s = s.max_lookups(global, per_client);
    if let Some(d) = file.lookup_timeout {
        s = s.lookup_timeout(d);
    }
    s
}

/// Refuses settings that would refuse every connection, or lookup limits that contradict
/// each other.
fn refuse_unusable(s: &Settings) -> anyhow::Result<()> {
    // A limit of zero refuses every connection: refused here rather than serving nothing.
    for (key, value) in [
        ("max_tcp_tunnels", s.max_tcp_tunnels),
        ("max_udp_sessions", s.max_udp_sessions),
        ("max_handshakes", s.max_handshakes),
        ("max_lookups", s.max_lookups),
        ("max_lookups_per_client", s.max_lookups_per_client),
    ] {
        if value == 0 {
            anyhow::bail!(
                "{key} = 0 in the config file would refuse every connection; give at least 1"
            );
        }
    }
    for (key, value) in [
        ("header_timeout", s.header_timeout),
        ("dial_timeout", s.dial_timeout),
        ("handshake_timeout", s.handshake_timeout),
        ("lookup_timeout", s.lookup_timeout),
    ] {
        if value.is_zero() {
            anyhow::bail!(
                "{key} = 0 in the config file would refuse every connection; give a positive duration"
            );
        }
    }
    if s.max_lookups_per_client > s.max_lookups {
        anyhow::bail!(
            "max_lookups_per_client ({}) is larger than max_lookups ({}) in the config file",
            s.max_lookups_per_client,
            s.max_lookups
        );
    }
    Ok(())
}

/// `server --check`: loads everything the server would (certificates, key, CA, the DTLS
/// context) by starting it on a loopback port of its own, then prints the effective
/// configuration. The real address is not bound, so a port in use is not detected.
async fn check(plan: Plan) -> anyhow::Result<()> {
    let probe_addr = match plan.listen {
        SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    };
    bind(&plan, probe_addr).await?;
    print!("{}", describe(&plan));
    Ok(())
}

/// Starts the server the plan describes on `addr`.
async fn bind(plan: &Plan, addr: SocketAddr) -> anyhow::Result<Server> {
    let mut builder = builder(plan);
    if let Some(settings) = plan.api.clone() {
        builder = builder.api_settings(settings);
    }
    Ok(builder
        .settings(plan.settings.clone())
        .udp(plan.udp)
        .api(plan.api.is_some())
        .bind(addr)
        .await?)
}

/// SIGHUP: reads the flags and the config file again and reloads the certificates; puts the
/// new policy, identity rules, PROXY protocol setting and header and dial timeouts in force
/// together with them, or nothing at all when anything is wrong. Logs one line: what
/// changed, or why nothing did. `in_force` is the description of what is in force.
fn reload(args: &ServerArgs, reloader: &Reloader, in_force: &mut String) {
    let outcome = match plan(args) {
        Ok(plan) => {
            let live = LivePolicy::new(plan.access.access.clone(), &plan.settings);
            reloader
                .reload_with(Some(live))
                .map(|()| plan)
                .map_err(anyhow::Error::from)
        }
        Err(e) => {
            reloader.refused();
            Err(e)
        }
    };
    match outcome {
        Ok(plan) => {
            let now = describe(&plan);
            let changes = crate::reload::changes(in_force, &now);
            *in_force = now;
            tracing::info!(
                signal = "SIGHUP",
                changed = %changes.applied(),
                needs_restart = %changes.needs_restart(),
                "reloaded the configuration and the certificate, key and CA"
            );
        }
        Err(e) => tracing::error!(
            signal = "SIGHUP",
            error = %crate::one_line(e.as_ref()),
            "reload failed; nothing changed: the previous configuration and certificates stay in force"
        ),
    }
}

/// Descriptors a server may need at its limits: two per TCP tunnel (client and destination),
/// two per UDP session (the destination socket and headroom for the DTLS state), one per
/// handshake and API connection in flight, and a margin for listeners, logs and the resolver.
fn descriptors_needed(plan: &Plan) -> u64 {
    let s = &plan.settings;
    let api = plan.api.as_ref().map_or(0, |a| a.max_connections);
    let n = 2 * s.max_tcp_tunnels + 2 * s.max_udp_sessions + s.max_handshakes + api + 64;
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Raises the soft limit on open files to the hard limit (the default soft limit, often 1024,
/// is far below what the tunnel limits need), logs what it got, and warns when the tunnel
/// limits cannot fit in it: past it, accepting and dialing fail with "too many open files".
fn raise_open_files_limit(plan: &Plan) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let needed = descriptors_needed(plan);
    tracing::info!(open_files = limit, was = soft, hard, "open files limit");
    if limit < needed {
        tracing::warn!(
            open_files = limit,
            needed,
            max_tcp_tunnels = plan.settings.max_tcp_tunnels,
            max_udp_sessions = plan.settings.max_udp_sessions,
            "the open files limit is below what the tunnel limits need: raise it (LimitNOFILE= in systemd, ulimit -Hn) or lower max_tcp_tunnels and max_udp_sessions"
        );
    }
}

/// The effective configuration, one `key  value` line each.
fn describe(plan: &Plan) -> String {
    let mut lines = place_lines(plan);
    lines.extend(api_lines(plan.api.as_ref()));
    lines.extend(plan.access.lines.iter().cloned());
    lines.extend(settings_lines(&plan.settings));
    let mut out = String::from("configuration is valid\n");
    for (key, value) in lines {
        out.push_str(&format!("{key:<22} {value}\n"));
    }
    out
}

/// Where the server listens, on what, with which certificates.
fn place_lines(plan: &Plan) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("listen", plan.listen.to_string()),
        (
            "transports",
            if plan.udp {
                "tcp (TLS), udp (DTLS)"
            } else {
                "tcp (TLS)"
            }
            .into(),
        ),
        ("cert", plan.certs.cert.display().to_string()),
        ("key", plan.certs.key.display().to_string()),
        ("ca", plan.certs.ca.display().to_string()),
    ];
    if let Some(addr) = &plan.status {
        lines.push(("status_listen", addr.to_string()));
    }
    lines
}

/// The API on the server's port: off, or on and its settings.
fn api_lines(api: Option<&ApiSettings>) -> Vec<(&'static str, String)> {
    match api {
        Some(api) => vec![
            ("api", "on (/health, /metrics, /godoxy/agent/info)".into()),
            ("agent_name", api.agent_name.clone()),
            ("api_header_timeout", secs(api.header_timeout)),
            ("api_idle_timeout", secs(api.idle_timeout)),
            ("api_max_connections", api.max_connections.to_string()),
            ("api_max_request_bytes", api.max_request_bytes.to_string()),
        ],
        None => vec![("api", "off".into())],
    }
}

/// Timeouts, limits and socket settings.
fn settings_lines(s: &Settings) -> Vec<(&'static str, String)> {
    let keepalive = match &s.tcp_keepalive {
        Some(k) => format!(
            "idle {}, interval {}, retries {}",
            secs(k.idle),
            secs(k.interval),
            k.retries
        ),
        None => "off".into(),
    };
    vec![
        ("header_timeout", secs(s.header_timeout)),
        ("dial_timeout", secs(s.dial_timeout)),
        ("handshake_timeout", secs(s.handshake_timeout)),
        ("udp_idle_timeout", secs(s.udp_idle_timeout)),
        (
            "udp_client_silence_timeout",
            secs(s.udp_client_silence_timeout),
        ),
        ("drain_period", secs(s.drain_period)),
        ("max_tcp_tunnels", s.max_tcp_tunnels.to_string()),
        ("max_udp_sessions", s.max_udp_sessions.to_string()),
        ("max_handshakes", s.max_handshakes.to_string()),
        (
            "max_handshakes_per_source",
            s.max_handshakes_per_source.to_string(),
        ),
        ("resumption", s.resumption.to_string()),
        ("udp_buffer_bytes", s.udp_buffers.recv.to_string()),
        ("tcp_keepalive", keepalive),
    ]
}

fn secs(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Warns when the server's private key can be read by its group or by others.
fn warn_if_key_readable(key: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %key.display(), mode = %format!("{mode:04o}"), "the private key is readable by its group or by others; chmod 600 it");
        }
    }
}

/// A server builder with the plan's certificates, policy, identity rules and PROXY protocol.
fn builder(plan: &Plan) -> streamproxy::proxy::server::ServerBuilder {
    let access: &Access = &plan.access.access;
    Server::builder(access.policy().clone(), plan.certs.clone())
        .identities(access.identity_rules().iter().cloned())
        .proxy_protocol(access.default_proxy_protocol())
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    if args.check {
        return check(plan).await;
    }
    // Registered before binding, so that a signal right after the ready line is not missed.
    let stop = Stop::register()?;
    let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let server = bind(&plan, plan.listen).await?;
    // After binding, so that a user error (a port in use) stays the only line.
    raise_open_files_limit(&plan);
    // After the material loaded: a file that holds no key gets its error alone.
    warn_if_key_readable(&plan.certs.key);
    log_listening(&server, &plan);
    let reloader = server.reloader();
    let status_stop = tokio_util::sync::CancellationToken::new();
    let status = start_status(&plan, &server, &status_stop).await?;
    crate::notify::ready();
    let in_force = describe(&plan);
    let signals = Signals {
        stop,
        hangup,
        reloader,
        in_force,
    };
    server
        .run(signals.until_stopped(&args, plan.settings.drain_period))
        .await;
    status_stop.cancel();
    if let Some(status) = status {
        let _ = status.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The `listening` line: the bound addresses and what the rules allow.
fn log_listening(server: &Server, plan: &Plan) {
    let api = plan.api.is_some();
    let tcp = server.tcp_addr();
    match server.udp_addr() {
        Some(udp) => {
            tracing::info!(tcp = %tcp, udp = %udp, api, allow_all = plan.access.access.policy().is_allow_all(), identity_rules = plan.access.access.identity_rules().len(), "listening")
        }
        None => {
            tracing::info!(tcp = %tcp, udp = "off", api, allow_all = plan.access.access.policy().is_allow_all(), identity_rules = plan.access.access.identity_rules().len(), "listening")
        }
    }
}

/// Binds the status listener, if the plan has one, and serves it until `stop`.
async fn start_status(
    plan: &Plan,
    server: &Server,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = &plan.status else {
        return Ok(None);
    };
    let listener = StatusListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "status listening (/health, /metrics)");
    let metrics = server.metrics();
    let settings = plan.api.clone().unwrap_or_default();
    Ok(Some(tokio::spawn(listener.run(
        metrics,
        settings,
        stop.clone().cancelled_owned(),
    ))))
}

/// What the running server answers signals with.
struct Signals {
    stop: Stop,
    hangup: tokio::signal::unix::Signal,
    reloader: Reloader,
    /// The description of the configuration in force.
    in_force: String,
}

impl Signals {
    /// Reloads on SIGHUP until SIGINT or SIGTERM, then announces the drain.
    async fn until_stopped(mut self, args: &ServerArgs, drain: std::time::Duration) {
        let name = loop {
            tokio::select! {
                name = self.stop.wait() => break name,
                _ = self.hangup.recv() => {
                    crate::notify::reloading();
                    reload(args, &self.reloader, &mut self.in_force);
                    crate::notify::reloaded();
                }
            }
        };
        crate::notify::stopping();
        tracing::info!(signal = name, drain = ?drain, "shutting down: draining live tunnels (a second signal exits at once)");
        self.stop.exit_on_next();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use streamproxy::proxy::keepalive::Keepalive;

    use super::*;
    use crate::config::parse;

    fn keepalive_of(text: &str) -> Option<Keepalive> {
        settings(&parse(text).expect("valid").server)
            .expect("accepted")
            .tcp_keepalive
    }

    fn refusal(text: &str) -> String {
        settings(&parse(text).expect("valid").server)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn keepalive_is_on_with_the_defaults_when_the_file_says_nothing() {
        assert_eq!(keepalive_of(""), Some(Keepalive::default()));
    }

    #[test]
    fn keepalive_keys_reach_the_settings() {
        let keepalive = keepalive_of(
            "[server]\ntcp_keepalive_idle = \"5s\"\ntcp_keepalive_interval = \"2s\"\n\
             tcp_keepalive_retries = 7\n",
        );
        assert_eq!(
            keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                retries: 7,
            })
        );
    }

    #[test]
    fn keepalive_values_the_kernel_refuses_are_errors_naming_the_key() {
        for (text, key) in [
            (
                "tcp_keepalive_interval = \"500ms\"",
                "tcp_keepalive_interval",
            ),
            ("tcp_keepalive_idle = \"1500ms\"", "tcp_keepalive_idle"),
            ("tcp_keepalive_idle = 0", "tcp_keepalive_idle"),
            ("tcp_keepalive_idle = \"10h\"", "tcp_keepalive_idle"),
            ("tcp_keepalive_retries = 0", "tcp_keepalive_retries"),
            ("tcp_keepalive_retries = 128", "tcp_keepalive_retries"),
        ] {
            let e = refusal(&format!("[server]\n{text}\n"));
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn keepalive_false_turns_it_off() {
        let text = "[server]\ntcp_keepalive = false\ntcp_keepalive_idle = \"5s\"\n";
        assert_eq!(keepalive_of(text), None);
    }
}
