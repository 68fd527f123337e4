//! The full server: TLS on a TCP port and DTLS on the UDP port of the same number, built from
//! certificate files and a policy, with live reload of the certificates and of the
//! [`LivePolicy`] (policy, identity rules, PROXY protocol, header and dial timeouts).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::context::{LivePolicy, ServerContext};
use crate::identity::{Access, IdentityRule};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy_protocol::ProxyProtocol;
use crate::settings::Settings;
use crate::tcp::{StreamHandler, TcpServer};
use crate::udp::UdpServer;

/// The server's certificate material, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA that client certificates must chain to.
    pub ca: PathBuf,
}

impl CertPaths {
    /// The three files.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        CertPaths {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS material could not be loaded.
    #[error("the TLS certificate, key or CA could not be loaded")]
    TlsLoad(#[from] tls::LoadError),
    /// The TLS configuration was refused.
    #[error("the TLS configuration was refused")]
    TlsConfig(#[from] tls::ConfigError),
    /// The DTLS material could not be loaded.
    #[error("the DTLS certificate, key or CA could not be loaded")]
    DtlsLoad(#[from] dtls::LoadError),
    /// The DTLS configuration was refused.
    #[error("the DTLS configuration was refused")]
    DtlsConfig(#[from] dtls::ConfigError),
    /// The DTLS listener could not start.
    #[error("the DTLS listener could not start")]
    DtlsListen(#[from] dtls::ListenError),
    /// A socket could not be bound.
    #[error("cannot listen on {transport} {addr}")]
    Bind {
        /// `"tcp"` or `"udp"`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why a certificate reload was rejected (the old material stays in force).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The TLS material could not be loaded.
    #[error("the new TLS certificate, key or CA was refused")]
    Tls(#[from] tls::LoadError),
    /// The DTLS material could not be loaded.
    #[error("the new DTLS certificate, key or CA was refused")]
    DtlsLoad(#[from] dtls::LoadError),
    /// OpenSSL refused the DTLS material.
    #[error("the new DTLS certificate, key or CA was refused")]
    Dtls(#[from] dtls::ConfigError),
}

/// Builds a [`Server`]. The policy and the certificates are required up front: there is no
/// server without mutual TLS or without a destination policy.
#[derive(Clone)]
pub struct ServerBuilder {
    policy: Policy,
    identities: Vec<IdentityRule>,
    proxy_protocol: ProxyProtocol,
    certs: CertPaths,
    settings: Settings,
    resolver: Option<Arc<dyn crate::dial::Resolve>>,
    udp: bool,
    api: Option<crate::api::ApiSettings>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("policy", &self.policy)
            .field("identities", &self.identities)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("certs", &self.certs)
            .field("settings", &self.settings)
            .field("udp", &self.udp)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Resolves destination names with `resolver` instead of the system's.
    pub fn resolver(mut self, resolver: impl crate::dial::Resolve) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Identity rules (default: none). With any, each client reaches only what the first rule
    /// matching its certificate allows, and a client no rule matches is refused; see
    /// [`crate::identity`].
    pub fn identities(mut self, rules: impl IntoIterator<Item = IdentityRule>) -> Self {
        self.identities = rules.into_iter().collect();
        self
    }

    /// Whether tunnels send a PROXY protocol header to their destination, unless their
    /// identity rule says otherwise (default: off).
    pub fn proxy_protocol(mut self, mode: ProxyProtocol) -> Self {
        self.proxy_protocol = mode;
        self
    }

    /// Timeouts and limits (default: [`Settings::default`]).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Whether to serve UDP over DTLS on the same port number (default: yes).
    pub fn udp(mut self, enabled: bool) -> Self {
        self.udp = enabled;
        self
    }

    /// Whether to serve the HTTPS API ([`crate::api`]) on the TLS port to connections that
    /// negotiate `http/1.1` or no ALPN protocol (default: yes).
    pub fn api(mut self, enabled: bool) -> Self {
        self.api = match (enabled, self.api) {
            (false, _) => None,
            (true, Some(settings)) => Some(settings),
            (true, None) => Some(crate::api::ApiSettings::default()),
        };
        self
    }

    /// Serves the HTTPS API with `settings` (its limits and the agent name GoDoxy sees).
    pub fn api_settings(mut self, settings: crate::api::ApiSettings) -> Self {
        self.api = Some(settings);
        self
    }

    /// Loads the certificates and binds TCP (and UDP on the same port number) at `addr`.
    ///
    /// With port 0, the UDP socket takes the port the system gave the TCP listener (retrying
    /// with another port if that UDP port is taken).
    pub async fn bind(self, addr: SocketAddr) -> Result<Server, ServerError> {
        let credentials = tls::ServerCredentials::load(tls::ServerPaths::new(
            &self.certs.cert,
            &self.certs.key,
            &self.certs.ca,
        ))?;
        let alpn = if self.api.is_some() {
            tls::AlpnPolicy::SharedWithHttp11
        } else {
            tls::AlpnPolicy::StreamOnly
        };
        let tls_config = tls::ServerConfig::builder(&credentials)
            .alpn(alpn)
            .handshake_timeout(self.settings.handshake_timeout)
            .resumption(self.settings.resumption)
            .build()?;
        let acceptor = tls::Acceptor::new(&tls_config);
        let dtls_config = if self.udp {
            Some(
                dtls::ServerConfig::new(
                    dtls::Identity::from_pem_files(&self.certs.cert, &self.certs.key)?,
                    dtls::CaCerts::from_pem_file(&self.certs.ca)?,
                )
                .handshake_timeout(self.settings.handshake_timeout)
                .max_half_open(self.settings.max_handshakes)
                .max_half_open_per_source(self.settings.max_handshakes_per_source)
                .resumption(self.settings.resumption),
            )
        } else {
            None
        };
        let (tcp, udp) = bind_pair(addr, self.udp).await?;
        let access = Access::new(self.policy)
            .identities(self.identities)
            .proxy_protocol(self.proxy_protocol);
        let mut ctx =
            ServerContext::new(access.policy().clone(), self.settings).with_access(access);
        if let Some(resolver) = self.resolver {
            ctx.dialer.resolver = resolver;
        }
        let udp = match (udp, dtls_config) {
            (Some(socket), Some(config)) => Some(udp_listener(socket, config, &ctx)?),
            _ => None,
        };
        let dtls_handle = udp.as_ref().map(dtls::DtlsListener::handle);
        record_not_after(&ctx.metrics, &self.certs.cert);
        Ok(Server {
            tcp: TcpServer::new(tcp, acceptor, StreamHandler::new(ctx.clone()))
                .with_api_settings(self.api),
            udp: udp.map(|listener| UdpServer::new(listener, ctx.clone())),
            reloader: Reloader {
                credentials,
                dtls: dtls_handle,
                certs: self.certs,
                live: Arc::clone(&ctx.live),
                metrics: Arc::clone(&ctx.metrics),
            },
            ctx,
        })
    }
}

/// The DTLS listener on `socket`, with the buffers the settings ask for (a warning when the
/// kernel grants less) and its kernel drops in the metrics.
fn udp_listener(
    socket: UdpSocket,
    config: dtls::ServerConfig,
    ctx: &ServerContext,
) -> Result<dtls::DtlsListener, ServerError> {
    let wanted = ctx.settings.udp_buffers;
    let granted = wanted.apply(&socket);
    if granted.short_of(wanted) {
        tracing::warn!(
            requested = wanted.recv,
            granted_recv = granted.recv,
            granted_send = granted.send,
            "the UDP listener got smaller buffers than asked (raise net.core.rmem_max and wmem_max, or give the process CAP_NET_ADMIN); bursts may be dropped"
        );
    }
    if let Ok(inode) = dtls::socket_inode(&socket) {
        ctx.metrics
            .watch_udp_socket_drops(move || dtls::kernel_drops_by_inode(inode).ok());
    }
    Ok(dtls::DtlsListener::from_socket(socket, config)?)
}

/// Binds a TCP listener and, if asked, a UDP socket on the same port number.
async fn bind_pair(
    addr: SocketAddr,
    udp: bool,
) -> Result<(TcpListener, Option<UdpSocket>), ServerError> {
    const ATTEMPTS: usize = 16;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                transport: "tcp",
                addr,
                source,
            })?;
        if !udp {
            return Ok((tcp, None));
        }
        let tcp_addr = tcp.local_addr().map_err(|source| ServerError::Bind {
            transport: "tcp",
            addr,
            source,
        })?;
        match UdpSocket::bind(tcp_addr).await {
            Ok(socket) => return Ok((tcp, Some(socket))),
            // Only a port the system picked may be traded for another.
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(ServerError::Bind {
                    transport: "udp",
                    addr: tcp_addr,
                    source,
                });
            }
        }
    }
    Err(ServerError::Bind {
        transport: "udp",
        addr,
        source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)),
    })
}

/// Replaces the certificate, key and CA of a running server, and its [`LivePolicy`]. Cloning
/// is cheap.
#[derive(Clone)]
pub struct Reloader {
    credentials: tls::ServerCredentials,
    dtls: Option<dtls::ListenerHandle>,
    certs: CertPaths,
    live: Arc<arc_swap::ArcSwap<LivePolicy>>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Re-reads the certificate files. New handshakes (TLS and DTLS) use the new material at
    /// once; live tunnels are not touched. All or nothing: the material is checked for every
    /// transport served (rustls for TLS, an OpenSSL context for DTLS) before either changes,
    /// so on error both keep the material in force.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reload_with(None)
    }

    /// The policy, identity rules and timeouts in force.
    pub fn live_policy(&self) -> Arc<LivePolicy> {
        self.live.load_full()
    }

    /// Re-reads the certificate files as [`reload`](Self::reload) does and, if they are good,
    /// puts `live` (already validated by its construction) in force in the same step. On error
    /// nothing changes: neither the certificates nor the policy. Tunnels already admitted keep
    /// the policy that admitted them; new ones get `live`.
    pub fn reload_with(&self, live: Option<LivePolicy>) -> Result<(), ReloadError> {
        let outcome = self.swap(live);
        self.metrics.reloaded(outcome.is_ok());
        if outcome.is_ok() {
            record_not_after(&self.metrics, &self.certs.cert);
        }
        outcome
    }

    /// Counts a reload refused before it reached the certificates (a configuration that does
    /// not validate), in `streamproxy_reloads_total{result="failure"}`.
    pub fn refused(&self) {
        self.metrics.reloaded(false);
    }

    fn swap(&self, live: Option<LivePolicy>) -> Result<(), ReloadError> {
        let dtls = match &self.dtls {
            Some(handle) => Some((
                handle,
                handle.prepare(
                    dtls::Identity::from_pem_files(&self.certs.cert, &self.certs.key)?,
                    dtls::CaCerts::from_pem_file(&self.certs.ca)?,
                )?,
            )),
            None => None,
        };
        let tls = self.credentials.prepare()?;
        self.credentials.commit(tls);
        if let Some((handle, prepared)) = dtls {
            handle.commit(prepared);
        }
        if let Some(live) = live {
            self.live.store(Arc::new(live));
        }
        Ok(())
    }
}

/// A bound server: TLS and the HTTPS API on a TCP port, DTLS on the same UDP port number.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use streamproxy_proxy::policy::Policy;
/// use streamproxy_proxy::server::{CertPaths, Server};
///
/// let policy = Policy::new(["10.0.0.0/8".parse()?], [])?;
/// let certs = CertPaths::new("server.pem", "server-key.pem", "ca.pem");
/// let server = Server::builder(policy, certs).bind("0.0.0.0:8890".parse()?).await?;
/// println!("listening on {}", server.tcp_addr());
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct Server {
    tcp: TcpServer,
    udp: Option<UdpServer>,
    reloader: Reloader,
    ctx: ServerContext,
}

impl Server {
    /// A builder for a server with this policy and these certificates.
    pub fn builder(policy: Policy, certs: CertPaths) -> ServerBuilder {
        ServerBuilder {
            policy,
            identities: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
            certs,
            settings: Settings::default(),
            resolver: None,
            udp: true,
            api: Some(crate::api::ApiSettings::default()),
        }
    }

    /// The TCP (TLS) address.
    pub fn tcp_addr(&self) -> SocketAddr {
        // Bound listeners always have an address.
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The UDP (DTLS) address, when UDP is served.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(UdpServer::local_addr)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.ctx.metrics)
    }

    /// A handle to reload the certificates while the server runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then drains both transports.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let tcp = tokio::spawn(self.tcp.run(stop.clone().cancelled_owned()));
        let udp = self
            .udp
            .map(|udp| tokio::spawn(udp.run(stop.clone().cancelled_owned())));
        shutdown.await;
        stop.cancel();
        let _ = tcp.await;
        if let Some(udp) = udp {
            let _ = udp.await;
        }
    }
}

/// Puts the expiry of the certificate in `path` in the metrics, as
/// `streamproxy_certificate_not_after_seconds{role="server"}`; leaves it as it was when the file
/// cannot be read as a certificate (the loaders report that).
fn record_not_after(metrics: &Metrics, path: &std::path::Path) {
    if let Some(not_after) = crate::metrics::certificate_not_after(path) {
        metrics.set_certificate_not_after("server", not_after);
    }
}
