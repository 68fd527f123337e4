//! The client configuration and the connect helpers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::SingleCertAndKey;
use rustls_pki_types::{DnsName, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;

use crate::error::{ConfigError, ConnectError, Failure};
use crate::{
    CaCerts, ClientTlsStream, DEFAULT_HANDSHAKE_TIMEOUT, Identity, ReadAhead, TlsVersions, provider,
};

/// Builds a [`ClientConfig`].
///
/// The only way to start one is with the CA to trust (and nothing else: the system roots are
/// never used) and the client certificate to present.
#[derive(Clone, Debug)]
pub struct ClientConfigBuilder {
    ca: CaCerts,
    identity: Identity,
    server_name: ServerName<'static>,
    versions: TlsVersions,
    timeout: Duration,
}

impl ClientConfigBuilder {
    /// A builder for server name [`proto::DEFAULT_SERVER_NAME`] (`godoxy.agent`), TLS 1.2 and
    /// 1.3, and the [default handshake timeout](DEFAULT_HANDSHAKE_TIMEOUT).
    pub fn new(ca: &CaCerts, identity: &Identity) -> Self {
        Self {
            ca: ca.clone(),
            identity: identity.clone(),
            server_name: default_server_name(),
            versions: TlsVersions::default(),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The name the server certificate must be valid for: a DNS name or an IP address
    /// (`ServerName::try_from("10.0.0.2")`).
    pub fn server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = name;
        self
    }

    /// The TLS versions to allow.
    pub fn versions(mut self, versions: TlsVersions) -> Self {
        self.versions = versions;
        self
    }

    /// How long connecting and the handshake may take together.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the configuration.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider::crypto_provider())
            .with_protocol_versions(self.versions.rustls())
            .map_err(ConfigError::ProtocolVersions)?
            .with_root_certificates(self.ca.roots())
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
                self.identity.certified_key(),
            )));
        config.alpn_protocols = vec![proto::STREAM_ALPN.as_bytes().to_vec()];
        Ok(ClientConfig {
            inner: Arc::new(config),
            server_name: self.server_name,
            timeout: self.timeout,
        })
    }
}

/// A client configuration: trusted CA, client certificate, ALPN `godoxy-agent-stream/1`, the
/// server name to verify and the handshake timeout. Cloning is cheap.
#[derive(Clone)]
pub struct ClientConfig {
    inner: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
}

impl ClientConfig {
    /// Starts a builder; the same as [`ClientConfigBuilder::new`].
    pub fn builder(ca: &CaCerts, identity: &Identity) -> ClientConfigBuilder {
        ClientConfigBuilder::new(ca, identity)
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.inner)
    }

    /// The name the server certificate is verified against.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// How long connecting and the handshake may take together.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Runs the client handshake over an established transport, under the configuration's
/// timeout. The transport is read through a [`ReadAhead`].
pub async fn connect<IO>(io: IO, config: &ClientConfig) -> Result<ClientTlsStream<IO>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(config.timeout, handshake(io, config))
        .await
        .map_err(|_| ConnectError::Timeout(config.timeout))?
}

/// Connects over TCP (with `TCP_NODELAY`, as Go's dialer) and runs the client handshake; the
/// configuration's timeout covers both. The socket is read through a [`ReadAhead`].
pub async fn connect_to<A: ToSocketAddrs>(
    addr: A,
    config: &ClientConfig,
) -> Result<ClientTlsStream<TcpStream>, ConnectError> {
    let connect_and_handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ConnectError::Connect)?;
        tcp.set_nodelay(true).map_err(ConnectError::Connect)?;
        handshake(tcp, config).await
    };
    tokio::time::timeout(config.timeout, connect_and_handshake)
        .await
        .map_err(|_| ConnectError::Timeout(config.timeout))?
}

async fn handshake<IO>(io: IO, config: &ClientConfig) -> Result<ClientTlsStream<IO>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    TlsConnector::from(config.rustls())
        .connect(config.server_name.clone(), ReadAhead::new(io))
        .await
        .map_err(|e| ConnectError::from(Failure::classify(e)))
}

fn default_server_name() -> ServerName<'static> {
    match DnsName::try_from(proto::DEFAULT_SERVER_NAME) {
        Ok(name) => ServerName::DnsName(name),
        // `godoxy.agent` is a valid DNS name; a unit test pins it.
        Err(_) => unreachable!("DEFAULT_SERVER_NAME is a valid DNS name"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_server_name_is_godoxy_agent() {
        assert_eq!(
            super::default_server_name().to_str(),
            proto::DEFAULT_SERVER_NAME
        );
    }
}
