//! The server configuration: mutual TLS is not optional.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::NoServerSessionStorage;

use crate::error::ConfigError;
use crate::{AlpnPolicy, ServerCredentials, TlsVersions};

/// How long a handshake may take unless configured otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`ServerConfig`].
///
/// The only way to start one is from [`ServerCredentials`], which always carry a client CA:
/// a server built here requires a client certificate and verifies it against that CA, and no
/// setter turns this off.
#[derive(Clone, Debug)]
pub struct ServerConfigBuilder {
    credentials: ServerCredentials,
    alpn: AlpnPolicy,
    versions: TlsVersions,
    resumption: bool,
    handshake_timeout: Duration,
}

impl ServerConfigBuilder {
    /// A builder for a stream-only listener allowing TLS 1.2 and 1.3, with session resumption
    /// and the [default handshake timeout](DEFAULT_HANDSHAKE_TIMEOUT).
    pub fn new(credentials: &ServerCredentials) -> Self {
        Self {
            credentials: credentials.clone(),
            alpn: AlpnPolicy::default(),
            versions: TlsVersions::default(),
            resumption: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// How long a server handshake may take (default [`DEFAULT_HANDSHAKE_TIMEOUT`]); an
    /// [`Acceptor`](crate::Acceptor) built from the configuration enforces it.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether clients may resume sessions with tickets (default: yes).
    ///
    /// A resumed handshake skips both certificate signatures and verifications: it costs a
    /// fraction of a full one. The tickets are sealed with keys that belong to the credentials
    /// loaded at the time (see [`ServerCredentials`]): a reload makes every client authenticate
    /// against the new material again, and a ticket is refused after its lifetime (at most
    /// 12 hours, keys rotating every 6). Turn it off to have every connection verify the
    /// client's certificate chain at its own handshake.
    pub fn resumption(mut self, enabled: bool) -> Self {
        self.resumption = enabled;
        self
    }

    /// The application protocols to offer.
    pub fn alpn(mut self, alpn: AlpnPolicy) -> Self {
        self.alpn = alpn;
        self
    }

    /// The TLS versions to allow.
    pub fn versions(mut self, versions: TlsVersions) -> Self {
        self.versions = versions;
        self
    }

    /// Builds the configuration.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.credentials.provider())
            .with_protocol_versions(self.versions.rustls())
            .map_err(ConfigError::ProtocolVersions)?
            .with_client_cert_verifier(self.credentials.verifier())
            .with_cert_resolver(self.credentials.resolver());
        config.alpn_protocols = self.alpn.wire();
        // No server-side session cache: resumption, when on, is by tickets only, so that a
        // reload (new ticket keys) ends it.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        if self.resumption {
            config.ticketer = self.credentials.ticketer();
            // One ticket per connection: a client uses each once, and takes a new one.
            config.send_tls13_tickets = 1;
        } else {
            config.send_tls13_tickets = 0;
        }
        Ok(ServerConfig {
            inner: Arc::new(config),
            alpn: self.alpn,
            versions: self.versions,
            resumption: self.resumption,
            handshake_timeout: self.handshake_timeout,
        })
    }
}

/// A server configuration that requires and verifies client certificates.
///
/// It follows reloads of the [`ServerCredentials`] it was built from. Cloning is cheap.
#[derive(Clone)]
pub struct ServerConfig {
    inner: Arc<rustls::ServerConfig>,
    alpn: AlpnPolicy,
    versions: TlsVersions,
    resumption: bool,
    handshake_timeout: Duration,
}

impl ServerConfig {
    /// Starts a builder; the same as [`ServerConfigBuilder::new`].
    pub fn builder(credentials: &ServerCredentials) -> ServerConfigBuilder {
        ServerConfigBuilder::new(credentials)
    }

    /// The rustls configuration, for a server that drives rustls itself (for example the
    /// HTTPS API on a shared port).
    pub fn rustls(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.inner)
    }

    /// The application protocols offered.
    pub fn alpn(&self) -> AlpnPolicy {
        self.alpn
    }

    /// The TLS versions allowed.
    pub fn versions(&self) -> TlsVersions {
        self.versions
    }

    /// Whether clients may resume sessions with tickets.
    pub fn resumption(&self) -> bool {
        self.resumption
    }

    /// How long a server handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("alpn", &self.alpn)
            .field("versions", &self.versions)
            .field("resumption", &self.resumption)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}
