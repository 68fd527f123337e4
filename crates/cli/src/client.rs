//! `streamproxy client`: local TCP and UDP ports forwarded through tunnels to a server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use std::num::NonZeroUsize;
use std::sync::Arc;

use streamproxy::proxy::api::ApiSettings;
use streamproxy::proxy::dial::SystemResolver;
use streamproxy::proxy::status::{StatusAddr, StatusListener};

use streamproxy::proxy::forward::{
    ForwardMetrics, ForwardSettings, LiveConfig, ServerAddr, TcpForwarder, UdpForwarder,
};
use streamproxy::{dtls, proto, tls};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::{ClientArgs, Forward, HeaderVersion, ServerConnection};
use crate::config::{ClientConfig, ConfigFile, all_present, status_addr};
use crate::signals::Stop;

/// How to reach and trust the server, parsed and loaded.
pub(crate) struct Connection {
    pub(crate) server: ServerAddr,
    pub(crate) tls: tls::ClientConfig,
    pub(crate) dtls: dtls::ClientConfig,
    /// When the client certificate expires (Unix seconds), if it could be read.
    pub(crate) not_after: Option<i64>,
}

/// Parses the server's address and loads the client certificate, flags first, then the file.
pub(crate) async fn connection(
    args: ServerConnection,
    file: &ClientConfig,
) -> anyhow::Result<Connection> {
    let server = args.server.or_else(|| file.server.clone());
    let ca: Option<PathBuf> = args.files.ca.or_else(|| file.ca.clone());
    let cert: Option<PathBuf> = args.files.cert.or_else(|| file.cert.clone());
    let key: Option<PathBuf> = args.files.key.or_else(|| file.key.clone());
    all_present(&[
        (server.is_some(), "--server ADDR (the server's HOST:PORT)"),
        (
            ca.is_some(),
            "--ca FILE (the CA that signed the server certificate)",
        ),
        (cert.is_some(), "--cert FILE (the client certificate)"),
        (key.is_some(), "--key FILE (the client's private key)"),
    ])?;
    let (Some(server), Some(ca), Some(cert), Some(key)) = (server, ca, cert, key) else {
        bail!("missing a required option");
    };
    let name = args
        .server_name
        .or_else(|| file.server_name.clone())
        .unwrap_or_else(|| proto::DEFAULT_SERVER_NAME.to_owned());
    let server: ServerAddr = server.parse()?;
    let server_name = tls::ServerName::try_from(name.clone()).map_err(|_| {
        anyhow::anyhow!("--server-name `{name}` is neither a DNS name nor an IP address")
    })?;
    let tls = tls::ClientConfig::builder(
        &tls::CaCerts::from_pem_file(&ca)?,
        &tls::Identity::from_pem_files(&cert, &key)?,
    )
    .server_name(server_name.clone())
    .build()?;
    let mut dtls = dtls::ClientConfig::new(
        dtls::Identity::from_pem_files(&cert, &key)?,
        dtls::CaCerts::from_pem_file(&ca)?,
    )
    .server_name(server_name);
    if let Some(n) = file.udp_buffer_bytes {
        dtls = dtls.socket_buffers((n > 0).then(|| dtls::UdpBuffers::both(n)));
    }
    let not_after = streamproxy::proxy::metrics::certificate_not_after(&cert);
    Ok(Connection {
        server,
        tls,
        dtls,
        not_after,
    })
}

/// The `[client]` table's timeouts and limits over the defaults of [`ForwardSettings`].
fn forward_settings(file: &ClientConfig) -> anyhow::Result<ForwardSettings> {
    let mut s = ForwardSettings::default().keepalive(file.keepalive().settings()?);
    let positive = |n: usize, key: &str| {
        NonZeroUsize::new(n).ok_or_else(|| {
            anyhow::anyhow!("{key} = 0 in the config file would refuse every tunnel")
        })
    };
    if let Some(d) = file.connect_timeout {
        s = s.connect_timeout(d);
    }
    if let Some(d) = file.drain_period {
        s = s.drain_period(d);
    }
    if let Some(d) = file.udp_idle_timeout {
        s = s.udp_idle_timeout(d);
    }
    if let Some(d) = file.udp_reply_timeout {
        s = s.udp_reply_timeout(d);
    }
    if let Some(n) = file.max_tunnels {
        s = s.max_tunnels(positive(n, "max_tunnels")?);
    }
    if let Some(n) = file.max_pending {
        s = s.max_pending(positive(n, "max_pending")?);
    }
    if let Some(n) = file.udp_buffer_bytes {
        s = s.udp_buffers((n > 0).then(|| streamproxy::dtls::UdpBuffers::both(n)));
    }
    Ok(s)
}

/// Checks the server once at start (a health check over TCP, or DTLS when the client forwards
/// UDP only) and warns when it is unreachable or refuses us, so that a wrong setup shows at
/// once rather than at the first connection. Runs beside the forwarders: never delays them,
/// never stops the client.
async fn check_server(
    server: ServerAddr,
    tls: tls::ClientConfig,
    dtls: dtls::ClientConfig,
    udp: bool,
) {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let addrs = match server.resolve(&SystemResolver).await {
        Ok(addrs) => addrs,
        // check_resolves reports it.
        Err(_) => return,
    };
    // Every address in turn, as the forwarders do.
    let mut result = Err(None);
    for &addr in &addrs {
        let checked = if udp {
            streamproxy::proxy::udp::health_check(addr, &dtls, TIMEOUT).await
        } else {
            streamproxy::proxy::tcp::health_check(addr, &tls, TIMEOUT).await
        };
        match checked {
            Ok(()) => {
                result = Ok(());
                break;
            }
            Err(e) => result = Err(Some(e)),
        }
    }
    match result {
        Ok(()) => tracing::info!(server = %server, "the server answered a health check"),
        Err(Some(e)) => tracing::warn!(
            server = %server,
            reason = %streamproxy::proxy::explain::reason(&e),
            "the server does not answer a health check; tunnels will fail until it does"
        ),
        Err(None) => {}
    }
}

/// Resolves the server once at start, to report a name that does not resolve early; each
/// tunnel resolves it again, so a failure here is a warning: the name may resolve later. Runs
/// beside the forwarders, so that a slow resolver does not hold back the local ports.
async fn check_resolves(server: ServerAddr) {
    if server.socket_addr().is_some() {
        return;
    }
    match server.resolve(&SystemResolver).await {
        Ok(addrs) => {
            tracing::info!(server = %server, addresses = ?addrs, "server name resolved; every tunnel resolves it again")
        }
        Err(e) => {
            tracing::warn!(server = %server, error = %crate::one_line(&e), "the server name does not resolve now; tunnels fail until it does")
        }
    }
}

fn forwards(flags: Vec<Forward>, file: &[String], key: &str) -> anyhow::Result<Vec<Forward>> {
    if !flags.is_empty() {
        return Ok(flags);
    }
    file.iter()
        .map(|f| {
            f.parse::<Forward>()
                .map_err(|e| anyhow::anyhow!("{key} in the config file: {e}"))
        })
        .collect()
}

pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<()> {
    // Registered first: a SIGHUP at any time reloads (or is ignored), never kills the client.
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let config_path = args.config.clone();
    let file = ConfigFile::load(args.config.as_deref())?.client;
    let version = header_version(args.header_version, &file)?;
    let tcp = forwards(args.tcp, &file.tcp, "tcp")?;
    let udp = forwards(args.udp, &file.udp, "udp")?;
    if tcp.is_empty() && udp.is_empty() {
        bail!(
            "nothing to forward: give --tcp LOCAL=TARGET and/or --udp LOCAL=TARGET (e.g. --tcp 127.0.0.1:2222=10.0.0.7:22)"
        );
    }
    let tcp_forwarding = !tcp.is_empty();
    let conn_args = args.conn.clone();
    let conn = connection(args.conn, &file).await?;
    let live = (
        LiveConfig::new(conn.tls.clone()),
        LiveConfig::new(conn.dtls.clone()),
    );
    let settings = forward_settings(&file)?;
    let mut stop = Stop::register()?;
    tokio::spawn(check_resolves(conn.server.clone()));
    let status = status_addr(args.status_listen, file.status_listen.as_deref())?;
    let metrics = Arc::new(ForwardMetrics::new());
    if let Some(not_after) = conn.not_after {
        metrics.set_certificate_not_after(not_after);
    }
    let shutdown = CancellationToken::new();
    let plan = Plan {
        conn: &conn,
        live: &live,
        settings: &settings,
        version,
        metrics: &metrics,
    };
    let mut tasks = plan.spawn(tcp, udp, &shutdown).await?;
    let status_stop = CancellationToken::new();
    let status_task = match &status {
        Some(addr) => Some(start_status(addr, &metrics, &status_stop).await?),
        None => None,
    };
    tokio::spawn(check_server(
        conn.server.clone(),
        conn.tls.clone(),
        conn.dtls.clone(),
        !tcp_forwarding,
    ));
    crate::notify::ready();
    let name = loop {
        tokio::select! {
            name = stop.wait() => break name,
            _ = hangup.recv() => reload(config_path.as_deref(), &conn_args, &live, &metrics).await,
        }
    };
    crate::notify::stopping();
    tracing::info!(signal = name, drain = ?settings.drain_period, "shutting down: draining live tunnels (a second signal exits at once)");
    stop.exit_on_next();
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    status_stop.cancel();
    if let Some(task) = status_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The header version: the flag, else the file's `header_version`, else the default.
fn header_version(
    flag: Option<HeaderVersion>,
    file: &ClientConfig,
) -> anyhow::Result<proto::Version> {
    Ok(match (flag, &file.header_version) {
        (Some(HeaderVersion(v)), _) => v,
        (None, Some(text)) => {
            text.parse::<HeaderVersion>()
                .map_err(|e| anyhow::anyhow!("header_version in the config file: {e}"))?
                .0
        }
        (None, None) => proto::Version::default(),
    })
}

/// The live client configurations of both transports, replaced on reload.
type Live = (
    LiveConfig<tls::ClientConfig>,
    LiveConfig<dtls::ClientConfig>,
);

/// What every forwarder is built from.
struct Plan<'a> {
    conn: &'a Connection,
    live: &'a Live,
    settings: &'a ForwardSettings,
    version: proto::Version,
    metrics: &'a Arc<ForwardMetrics>,
}

impl Plan<'_> {
    /// Binds every forward and runs it until `shutdown`.
    async fn spawn(
        &self,
        tcp: Vec<Forward>,
        udp: Vec<Forward>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinSet<()>> {
        let (conn, version) = (self.conn, self.version);
        let mut tasks = tokio::task::JoinSet::new();
        for f in tcp {
            let forwarder =
                TcpForwarder::bind(f.local, conn.server.clone(), conn.tls.clone(), f.target)
                    .await?
                    .with_live_config(self.live.0.clone())
                    .settings(self.settings)
                    .header_version(version);
            self.metrics
                .add("tcp", forwarder.local_addr(), forwarder.stats());
            tracing::info!(transport = "tcp", local = %forwarder.local_addr(), server = %conn.server, destination = %forwarder.destination(), version = %version, "forwarding");
            tasks.spawn(forwarder.run(shutdown.clone().cancelled_owned()));
        }
        for f in udp {
            let forwarder =
                UdpForwarder::bind(f.local, conn.server.clone(), conn.dtls.clone(), f.target)
                    .await?
                    .with_live_config(self.live.1.clone())
                    .settings(self.settings)
                    .header_version(version);
            self.metrics
                .add("udp", forwarder.local_addr(), forwarder.stats());
            tracing::info!(transport = "udp", local = %forwarder.local_addr(), server = %conn.server, destination = %forwarder.destination(), version = %version, "forwarding");
            tasks.spawn(forwarder.run(shutdown.clone().cancelled_owned()));
        }
        Ok(tasks)
    }
}

/// The status listener (`/health`, `/metrics`) until `stop`.
async fn start_status(
    addr: &StatusAddr,
    metrics: &Arc<ForwardMetrics>,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = StatusListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "status listening (/health, /metrics)");
    Ok(tokio::spawn(listener.run(
        Arc::clone(metrics),
        ApiSettings::default(),
        stop.clone().cancelled_owned(),
    )))
}

/// SIGHUP: reads the file again (its certificate paths may have changed too) and replaces
/// the certificates for new tunnels, or keeps the previous ones and says why.
async fn reload(
    config: Option<&std::path::Path>,
    args: &ServerConnection,
    live: &Live,
    metrics: &ForwardMetrics,
) {
    crate::notify::reloading();
    let fresh = match ConfigFile::load(config) {
        Ok(f) => connection(args.clone(), &f.client).await,
        Err(e) => Err(e),
    };
    match fresh {
        Ok(fresh) => {
            if let Some(not_after) = fresh.not_after {
                metrics.set_certificate_not_after(not_after);
            }
            live.0.replace(fresh.tls);
            live.1.replace(fresh.dtls);
            tracing::info!(
                signal = "SIGHUP",
                "reloaded the certificate, key and CA; new tunnels use them"
            );
        }
        Err(e) => {
            tracing::error!(signal = "SIGHUP", error = %crate::one_line(e.as_ref()), "reload failed; keeping the previous certificates")
        }
    }
    crate::notify::reloaded();
}
