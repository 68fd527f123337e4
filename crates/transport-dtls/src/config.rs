//! Configuration: certificates and keys, bounds as types, and the OpenSSL contexts built from
//! them. A [`ClientConfig`] cannot exist without a client identity and the CA that verifies the
//! server; a [`ServerConfig`] cannot exist without a server identity and the CA that verifies
//! clients: mutual TLS is not optional.

use std::path::Path;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use rustls_pki_types::{DnsName, ServerName};

use crate::buffers::UdpBuffers;
use crate::cookie;
use crate::error::{ConfigError, LoadError};
use crate::ffi;

/// Sessions a listener keeps for resumption (OpenSSL evicts the oldest beyond it). Each holds
/// the client's certificate, about 10 KiB in all; a client that forwards through one
/// `DtlsConnector` needs one entry however many sessions it opens.
const SESSION_CACHE_SIZE: i32 = 256;

/// The cipher list offered by default: the only suite GoDoxy's pion/dtls peer accepts.
pub const DEFAULT_CIPHER_LIST: &str = "ECDHE-ECDSA-AES128-GCM-SHA256";
/// Default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, SEC1 or PKCS#1),
    /// and checks that the key belongs to the leaf certificate. Errors name the file.
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let chain = read_certs(cert_path)?;
        let pem = read(key_path)?;
        let key = PKey::private_key_from_pem(&pem).map_err(|source| LoadError::Pem {
            path: key_path.to_owned(),
            what: "private key",
            source,
        })?;
        // `read_certs` returns at least one certificate.
        if let Some(leaf) = chain.first() {
            let leaf_key = leaf
                .public_key()
                .map_err(|source| LoadError::UnusableCertificate {
                    path: cert_path.to_owned(),
                    source,
                })?;
            if !leaf_key.public_eq(&key) {
                return Err(LoadError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
        }
        Ok(Self { chain, key })
    }

    /// An identity from parsed parts; checks that the key belongs to the leaf certificate.
    pub fn new(chain: Vec<X509>, key: PKey<Private>) -> Result<Self, ConfigError> {
        let leaf = chain.first().ok_or(ConfigError::NoCertificate)?;
        let leaf_key = leaf.public_key().map_err(ConfigError::Certificates)?;
        if !leaf_key.public_eq(&key) {
            return Err(ConfigError::KeyMismatch);
        }
        Ok(Self { chain, key })
    }

    fn install(&self, b: &mut SslContextBuilder) -> Result<(), ConfigError> {
        let (leaf, rest) = self.chain.split_first().ok_or(ConfigError::NoCertificate)?;
        b.set_certificate(leaf).map_err(ConfigError::Certificates)?;
        for cert in rest {
            b.add_extra_chain_cert(cert.clone())
                .map_err(ConfigError::Certificates)?;
        }
        b.set_private_key(&self.key)
            .map_err(ConfigError::Certificates)?;
        b.check_private_key().map_err(|_| ConfigError::KeyMismatch)
    }
}

/// The CA certificates that verify the peer.
#[derive(Clone, Debug)]
pub struct CaCerts {
    certs: Vec<X509>,
}

impl CaCerts {
    /// Loads one or more PEM certificates. Errors name the file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Ok(Self {
            certs: read_certs(path.as_ref())?,
        })
    }

    /// CA certificates from parsed certificates (at least one).
    pub fn new(certs: Vec<X509>) -> Result<Self, ConfigError> {
        if certs.is_empty() {
            return Err(ConfigError::NoCertificate);
        }
        Ok(Self { certs })
    }

    fn install(&self, b: &mut SslContextBuilder, name_in_request: bool) -> Result<(), ConfigError> {
        let mut store = X509StoreBuilder::new().map_err(ConfigError::Context)?;
        for cert in &self.certs {
            store
                .add_cert(cert.clone())
                .map_err(ConfigError::Certificates)?;
            if name_in_request {
                b.add_client_ca(cert).map_err(ConfigError::Certificates)?;
            }
        }
        b.set_verify_cert_store(store.build())
            .map_err(ConfigError::Context)?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<X509>, LoadError> {
    let pem = read(path)?;
    let certs = X509::stack_from_pem(&pem).map_err(|source| LoadError::Pem {
        path: path.to_owned(),
        what: "certificate",
        source,
    })?;
    if certs.is_empty() {
        return Err(LoadError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The path MTU handshake flights are packed for, in bytes (256..=65507).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu(u32);

impl Mtu {
    /// Suitable for the Internet (IPv6 minimum 1280 minus headers, with margin).
    pub const DEFAULT: Mtu = Mtu(1200);
    const MIN: usize = 256;
    const MAX: usize = 65507;

    /// Checks the bounds.
    pub fn new(bytes: usize) -> Result<Self, ConfigError> {
        match u32::try_from(bytes) {
            Ok(v) if (Self::MIN..=Self::MAX).contains(&bytes) => Ok(Mtu(v)),
            _ => Err(ConfigError::OutOfRange {
                what: "MTU",
                min: Self::MIN,
                max: Self::MAX,
                got: bytes,
            }),
        }
    }

    /// The value in bytes.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Mtu {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The largest application payload one record may carry (1..=16384).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPayload(usize);

impl MaxPayload {
    /// 8155 bytes: what pion/dtls can receive (its 8192-byte buffer minus 37 bytes of
    /// AES-128-GCM record overhead).
    pub const DEFAULT: MaxPayload = MaxPayload(8155);
    /// The DTLS plaintext limit.
    pub const MAX: usize = 16384;

    /// Checks the bounds.
    pub fn new(bytes: usize) -> Result<Self, ConfigError> {
        if (1..=Self::MAX).contains(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(ConfigError::OutOfRange {
                what: "maximum payload",
                min: 1,
                max: Self::MAX,
                got: bytes,
            })
        }
    }

    /// The value in bytes.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for MaxPayload {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Settings shared by both sides.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) cipher_list: String,
    pub(crate) handshake_timeout: Duration,
    pub(crate) mtu: Mtu,
    pub(crate) max_payload: MaxPayload,
    pub(crate) resumption: bool,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            cipher_list: DEFAULT_CIPHER_LIST.to_owned(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: Mtu::DEFAULT,
            max_payload: MaxPayload::DEFAULT,
            resumption: true,
        }
    }
}

impl Common {
    fn context_builder(&self) -> Result<SslContextBuilder, ConfigError> {
        let mut b = SslContext::builder(SslMethod::dtls()).map_err(ConfigError::Context)?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(ConfigError::Context)?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(ConfigError::Context)?;
        b.set_cipher_list(&self.cipher_list)
            .map_err(|source| ConfigError::CipherList {
                list: self.cipher_list.clone(),
                source,
            })?;
        // X25519 first (a fraction of the cost of P-256 ECDH, no public-key check), P-256 for
        // peers without it; pion and OpenSSL offer both.
        b.set_groups_list("X25519:P-256")
            .map_err(ConfigError::Context)?;
        // NO_QUERY_MTU: the MTU set per connection holds (the BIO would answer 0 otherwise).
        // NO_RENEGOTIATION: after the handshake only the reading side ever reads the socket.
        b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION);
        b.set_mode(SslMode::AUTO_RETRY);
        Ok(b)
    }
}

/// Client configuration: the identity to present and the CA that verifies the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) identity: Identity,
    pub(crate) ca: CaCerts,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) common: Common,
    pub(crate) socket_buffers: Option<UdpBuffers>,
}

impl ClientConfig {
    /// Defaults: server name [`proto::DEFAULT_SERVER_NAME`], cipher list
    /// [`DEFAULT_CIPHER_LIST`], 10 s handshake timeout, [`Mtu::DEFAULT`],
    /// [`MaxPayload::DEFAULT`].
    pub fn new(identity: Identity, ca: CaCerts) -> Self {
        Self {
            identity,
            ca,
            server_name: default_server_name(),
            common: Common::default(),
            socket_buffers: Some(UdpBuffers::default()),
        }
    }

    /// The buffers [`connect`](crate::DtlsConnector::connect) asks for on the socket it opens
    /// (default [`UdpBuffers::default`](crate::UdpBuffers), 4 MiB each way, so a burst of
    /// replies is not dropped in the kernel); `None` keeps the system's default.
    pub fn socket_buffers(mut self, buffers: Option<UdpBuffers>) -> Self {
        self.socket_buffers = buffers;
        self
    }

    /// The name the server certificate must be valid for: a DNS name (also sent as SNI) or an
    /// IP address (checked against the certificate's IP SANs, never sent as SNI), the same type
    /// as `streamproxy-tls` takes (`ServerName::try_from("10.0.0.2")`).
    pub fn server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = name;
        self
    }

    /// The OpenSSL cipher list to offer.
    pub fn cipher_list(mut self, list: impl Into<String>) -> Self {
        self.common.cipher_list = list.into();
        self
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.common.handshake_timeout = timeout;
        self
    }

    /// The MTU handshake flights are packed for.
    pub fn mtu(mut self, mtu: Mtu) -> Self {
        self.common.mtu = mtu;
        self
    }

    /// The largest payload [`send`](crate::DtlsSession::send) accepts.
    pub fn max_payload(mut self, max: MaxPayload) -> Self {
        self.common.max_payload = max;
        self
    }

    /// Whether a connector offers the session of its last handshake for resumption
    /// (default: yes).
    ///
    /// A resumed handshake skips certificates, signatures and verification on both ends. A
    /// session is only resumed by the server that issued it, while it keeps the credentials
    /// it had then.
    pub fn resumption(mut self, enabled: bool) -> Self {
        self.common.resumption = enabled;
        self
    }

    pub(crate) fn context(&self) -> Result<SslContext, ConfigError> {
        let mut b = self.common.context_builder()?;
        self.identity.install(&mut b)?;
        self.ca.install(&mut b, false)?;
        b.set_verify(SslVerifyMode::PEER);
        Ok(b.build())
    }
}

fn default_server_name() -> ServerName<'static> {
    match DnsName::try_from(proto::DEFAULT_SERVER_NAME) {
        Ok(name) => ServerName::DnsName(name),
        // `godoxy.agent` is a valid DNS name; a unit test pins it.
        Err(_) => unreachable!("DEFAULT_SERVER_NAME is a valid DNS name"),
    }
}

/// Listener limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_half_open: usize,
    pub(crate) max_half_open_per_source: usize,
    pub(crate) peer_queue: usize,
    pub(crate) accept_backlog: usize,
    pub(crate) cookie_rotation: Duration,
}

/// Server configuration: the identity to present and the CA that verifies clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) identity: Identity,
    pub(crate) client_ca: CaCerts,
    pub(crate) common: Common,
    pub(crate) limits: Limits,
}

impl ServerConfig {
    /// Defaults: cipher list [`DEFAULT_CIPHER_LIST`], 10 s handshake timeout, [`Mtu::DEFAULT`],
    /// [`MaxPayload::DEFAULT`], 256 half-open handshakes, 256 queued datagrams per peer, 64
    /// sessions waiting for `accept`, cookie secret rotated every 60 s.
    pub fn new(identity: Identity, client_ca: CaCerts) -> Self {
        Self {
            identity,
            client_ca,
            common: Common::default(),
            limits: Limits {
                max_half_open: 256,
                max_half_open_per_source: 32,
                peer_queue: 256,
                accept_backlog: 64,
                cookie_rotation: Duration::from_secs(60),
            },
        }
    }

    /// The OpenSSL cipher list to accept.
    pub fn cipher_list(mut self, list: impl Into<String>) -> Self {
        self.common.cipher_list = list.into();
        self
    }

    /// How long a handshake may take, from the cookie check to `accept`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.common.handshake_timeout = timeout;
        self
    }

    /// The MTU handshake flights are packed for.
    pub fn mtu(mut self, mtu: Mtu) -> Self {
        self.common.mtu = mtu;
        self
    }

    /// The largest payload [`send`](crate::DtlsSession::send) accepts.
    pub fn max_payload(mut self, max: MaxPayload) -> Self {
        self.common.max_payload = max;
        self
    }

    /// Handshakes in progress at once, past the cookie check (at least 1; default 256). At the
    /// limit, a ClientHello with a valid cookie evicts the oldest handshake in progress (its
    /// task is cancelled and its state freed at once; counted in
    /// [`ListenerStats::handshakes_evicted`](crate::ListenerStats::handshakes_evicted)) and
    /// takes its place: peers that prove their address and then stall cannot keep newcomers
    /// out, they only shorten each other's time. A ClientHello is dropped only when every slot
    /// is held by a finished handshake waiting for [`accept`](crate::DtlsListener::accept).
    pub fn max_half_open(mut self, n: usize) -> Self {
        self.limits.max_half_open = n.max(1);
        self
    }

    /// Handshakes in progress one source (an IPv4 address, or an IPv6 /64) may hold while every
    /// half-open slot is taken (at least 1; default 32). At the limit a verified ClientHello
    /// from a source that holds this many evicts that source's own oldest handshake, and from
    /// any other source it evicts the oldest handshake of the source holding the most: peers
    /// that prove their address and then go silent, all from one place, push out only each
    /// other, never a client elsewhere whose second flight is one round trip away.
    pub fn max_half_open_per_source(mut self, n: usize) -> Self {
        self.limits.max_half_open_per_source = n.max(1);
        self
    }

    /// Datagrams queued per peer before further ones are dropped (at least 1).
    pub fn peer_queue(mut self, n: usize) -> Self {
        self.limits.peer_queue = n.max(1);
        self
    }

    /// Finished sessions waiting for [`accept`](crate::DtlsListener::accept) (at least 1).
    pub fn accept_backlog(mut self, n: usize) -> Self {
        self.limits.accept_backlog = n.max(1);
        self
    }

    /// How often the cookie secret changes (a cookie stays valid for up to two periods).
    pub fn cookie_rotation(mut self, period: Duration) -> Self {
        self.limits.cookie_rotation = period;
        self
    }

    /// Whether clients may resume sessions (default: yes).
    ///
    /// A resumed handshake skips certificates, signatures and verification on both ends. The
    /// listener keeps up to 256 sessions in its OpenSSL context's cache (session IDs, no
    /// tickets), which a reload replaces: a client authenticates against the new material
    /// again after one. Turn it off to have every
    /// session verify the client's certificate chain at its own handshake.
    pub fn resumption(mut self, enabled: bool) -> Self {
        self.common.resumption = enabled;
        self
    }

    /// Replaces the certificate material, keeping every other setting.
    pub fn with_material(mut self, identity: Identity, client_ca: CaCerts) -> Self {
        self.identity = identity;
        self.client_ca = client_ca;
        self
    }

    pub(crate) fn context(&self) -> Result<SslContext, ConfigError> {
        // The cipher suites are ECDSA ones: another server key type would fail every handshake.
        let key_type = self.identity.key.id();
        if key_type != openssl::pkey::Id::EC {
            return Err(ConfigError::ServerKeyType {
                found: match key_type {
                    openssl::pkey::Id::RSA | openssl::pkey::Id::RSA_PSS => "RSA",
                    openssl::pkey::Id::ED25519 => "Ed25519",
                    _ => "neither ECDSA nor RSA",
                },
            });
        }
        let mut b = self.common.context_builder()?;
        self.identity.install(&mut b)?;
        self.client_ca.install(&mut b, true)?;
        // The client-certificate rules of both transports (docs/operations.md): issued
        // directly by a certificate of the CA file (no intermediate CAs), and not a CA itself.
        b.set_verify_depth(0);
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            |ok, ctx| {
                if ok && ctx.error_depth() == 0 && ctx.current_cert().is_some_and(ffi::is_ca) {
                    ctx.set_error(openssl::x509::X509VerifyResult::APPLICATION_VERIFICATION);
                    return false;
                }
                ok
            },
        );
        // Server preference also picks the key-exchange group: X25519 whenever the client
        // offers it, whatever its order.
        // No tickets: a NewSessionTicket is an epoch-0 message in the server's last flight, and
        // when the path reorders that flight so that the ChangeCipherSpec overtakes it, an
        // OpenSSL client drops the ticket as a record of the old epoch and the handshake never
        // finishes. Resumption uses the context's own session cache instead (session IDs);
        // a reload builds a new context, so sessions from before it do not resume.
        b.set_options(
            SslOptions::COOKIE_EXCHANGE
                | SslOptions::CIPHER_SERVER_PREFERENCE
                | SslOptions::NO_TICKET,
        );
        if self.common.resumption {
            b.set_session_cache_mode(SslSessionCacheMode::SERVER);
            b.set_session_cache_size(SESSION_CACHE_SIZE);
            b.set_session_id_context(b"streamproxy-dtls")
                .map_err(ConfigError::Context)?;
        } else {
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
        }
        cookie::install_callbacks(&mut b).map_err(ConfigError::Context)?;
        Ok(b.build())
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
