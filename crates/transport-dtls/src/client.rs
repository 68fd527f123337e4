//! The client: a DTLS session over a UDP socket connected to the server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext};
use rustls_pki_types::ServerName;
use tokio::net::UdpSocket;

use crate::buffers::{self, UdpBuffers};
use crate::config::{ClientConfig, Common};
use crate::error::{ConfigError, ConnectError, HandshakeError};
use crate::ffi::{self, ResumableSession};
use crate::io::DatagramIo;
use crate::session::{self, DtlsSession, Stream};

/// Connects to `server` with a fresh ephemeral UDP socket and completes the handshake.
///
/// Builds the OpenSSL context on each call; to connect repeatedly with one configuration,
/// build a [`DtlsConnector`] once.
pub async fn connect(
    server: SocketAddr,
    config: &ClientConfig,
) -> Result<DtlsSession, ConnectError> {
    DtlsConnector::new(config)?.connect(server).await
}

/// A client configuration turned into an OpenSSL context, ready for many connections.
///
/// It keeps the session of its last full handshake and offers it in the next ones, so that
/// they resume (unless [`ClientConfig::resumption`] is off); clones share it.
#[derive(Clone)]
pub struct DtlsConnector {
    ctx: SslContext,
    server_name: ServerName<'static>,
    common: Common,
    socket_buffers: Option<UdpBuffers>,
    /// The session to offer (from a handshake on `ctx`).
    session: Arc<Mutex<Option<Arc<ResumableSession>>>>,
}

impl std::fmt::Debug for DtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl DtlsConnector {
    /// Builds the context; fails on bad certificates, cipher list or server name.
    pub fn new(config: &ClientConfig) -> Result<Self, ConfigError> {
        let connector = Self {
            ctx: config.context()?,
            server_name: config.server_name.clone(),
            common: config.common.clone(),
            socket_buffers: config.socket_buffers,
            session: Arc::new(Mutex::new(None)),
        };
        connector.ssl()?;
        Ok(connector)
    }

    fn ssl(&self) -> Result<Ssl, ConfigError> {
        let name = self.server_name.to_str();
        let name_error = |source| ConfigError::ServerName {
            name: name.clone().into_owned(),
            source,
        };
        let mut ssl = Ssl::new(&self.ctx).map_err(ConfigError::Context)?;
        // An IP address is verified against the certificate's IP SANs and never sent as SNI
        // (RFC 6066), as rustls does for TLS; a name against its DNS SANs.
        match &self.server_name {
            ServerName::IpAddress(ip) => ssl
                .param_mut()
                .set_ip(IpAddr::from(*ip))
                .map_err(name_error)?,
            _ => {
                ssl.set_hostname(&name).map_err(name_error)?;
                ssl.param_mut().set_host(&name).map_err(name_error)?;
            }
        }
        ssl.set_mtu(self.common.mtu.get())
            .map_err(ConfigError::Context)?;
        ffi::set_retransmit_schedule(&mut ssl);
        if let Some(session) = self
            .common
            .resumption
            .then(|| self.last_session())
            .flatten()
        {
            // A refused offer only means a full handshake.
            session.offer(&mut ssl);
        }
        ssl.set_connect_state();
        Ok(ssl)
    }

    /// Connects from a fresh ephemeral socket of the server's address family.
    pub async fn connect(&self, server: SocketAddr) -> Result<DtlsSession, ConnectError> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(ConnectError::Socket)?;
        if let Some(buffers) = self.socket_buffers {
            let granted = buffers.apply(&socket);
            buffers::warn_once_if_short(granted, buffers, "DTLS client");
        }
        self.connect_with(socket, server).await
    }

    /// Connects from an already bound socket (for example one reusing a known local port).
    pub async fn connect_with(
        &self,
        socket: UdpSocket,
        server: SocketAddr,
    ) -> Result<DtlsSession, ConnectError> {
        socket.connect(server).await.map_err(ConnectError::Socket)?;
        // A freshly registered socket is not known to be writable until the reactor has seen it;
        // without this, the first ClientHello could be dropped (see `io`) and cost a timeout.
        socket.writable().await.map_err(ConnectError::Socket)?;
        let io = DatagramIo::connected(
            Arc::new(socket),
            self.common.mtu.get() as usize,
            self.common.max_payload.get(),
        );
        let mut stream = Stream::new(self.ssl()?, io).map_err(ConfigError::Context)?;
        let timeout = self.common.handshake_timeout;
        let done = tokio::time::timeout(timeout, session::handshake(&mut stream)).await;
        match done {
            Ok(r) => r?,
            Err(_) => return Err(HandshakeError::Timeout(timeout).into()),
        }
        if self.common.resumption && !stream.ssl().session_reused() {
            if let Some(session) = ResumableSession::of(stream.ssl()) {
                *self.sessions() = Some(Arc::new(session));
            }
        }
        Ok(DtlsSession::new(
            stream,
            server,
            self.common.max_payload.get(),
            None,
            None,
        ))
    }

    fn last_session(&self) -> Option<Arc<ResumableSession>> {
        self.sessions().clone()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Option<Arc<ResumableSession>>> {
        // The guarded value is replaced whole: a panic elsewhere cannot leave it half-written.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handshake timeout in effect.
    pub fn handshake_timeout(&self) -> Duration {
        self.common.handshake_timeout
    }
}
