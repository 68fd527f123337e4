//! The server's certificate, key and client CA, replaceable at runtime.
//!
//! One [`ServerCredentials`] handle owns the material in force behind an `ArcSwap`. Every server
//! configuration built from it reads that material at the start of each handshake, through a
//! certificate resolver and a client-certificate verifier that both load the current value. A
//! reload builds the new material completely (read, parse, check, build the verifier) and only
//! then swaps it in, so a failed reload changes nothing, and a connection never sees half of an
//! update. Established connections hold no reference to the material: they are not touched.
//!
//! Each load also makes its own session-ticket keys. A ticket therefore resumes a session only
//! while the material whose handshake issued it is in force: after a reload, every client makes
//! a full handshake against the new certificate and client CA again.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::error::LoadError;
use crate::{CaCerts, Identity, provider};

/// Where the server's PEM material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPaths {
    /// The server certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA (or bundle) client certificates must chain to.
    pub client_ca: PathBuf,
}

impl ServerPaths {
    /// The three paths.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: client_ca.into(),
        }
    }
}

/// A shared, cloneable handle on the server's certificate, key and client CA.
///
/// Build server configurations from it with [`crate::ServerConfigBuilder`]; call
/// [`reload`](Self::reload) (for example on `SIGHUP`) to re-read the files. New handshakes use
/// the new material at once; established connections keep running; a reload that fails returns
/// the error and leaves the material in force unchanged. Clones share the same material.
///
/// There is no way to hold credentials without a client CA: every server built on them requires
/// and verifies a client certificate.
#[derive(Clone)]
pub struct ServerCredentials {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Material>,
    /// Serializes reloads, so two racing reloads cannot swap in an older read last.
    reloading: Mutex<()>,
    provider: Arc<CryptoProvider>,
}

/// Material read and checked by [`ServerCredentials::prepare`], not yet in force.
pub struct PreparedReload {
    material: Material,
}

impl std::fmt::Debug for PreparedReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedReload")
            .field("cert", &self.material.paths.cert)
            .finish_non_exhaustive()
    }
}

/// The material of one load, swapped as a whole.
struct Material {
    paths: ServerPaths,
    identity: Identity,
    client_ca: CaCerts,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Session-ticket keys of this load only.
    tickets: Arc<dyn ProducesTickets>,
}

impl ServerCredentials {
    /// Reads the server's certificate chain, key and client CA.
    pub fn load(paths: ServerPaths) -> Result<Self, LoadError> {
        let provider = provider::crypto_provider();
        let material = Material::load(paths, &provider)?;
        Ok(Self {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(material),
                reloading: Mutex::new(()),
                provider,
            }),
        })
    }

    /// Re-reads the files the material in force was loaded from, and swaps the new material in.
    ///
    /// On error the material in force stays as it was.
    pub fn reload(&self) -> Result<(), LoadError> {
        let _serial = self.lock();
        let paths = self.shared.current.load().paths.clone();
        self.swap_in(paths)
    }

    /// Reads material from other files and swaps it in; later [`reload`](Self::reload)s read
    /// these files.
    ///
    /// On error the material (and the paths) in force stay as they were.
    pub fn reload_from(&self, paths: ServerPaths) -> Result<(), LoadError> {
        let _serial = self.lock();
        self.swap_in(paths)
    }

    /// Reads and checks the files the material in force was loaded from, without using them
    /// yet: [`commit`](Self::commit) swaps them in. Lets a server check the material of every
    /// transport before any of them changes.
    pub fn prepare(&self) -> Result<PreparedReload, LoadError> {
        let paths = self.shared.current.load().paths.clone();
        Ok(PreparedReload {
            material: Material::load(paths, &self.shared.provider)?,
        })
    }

    /// Swaps in material read by [`prepare`](Self::prepare).
    pub fn commit(&self, prepared: PreparedReload) {
        let _serial = self.lock();
        let material = prepared.material;
        tracing::info!(
            cert = %material.paths.cert.display(),
            client_ca = %material.paths.client_ca.display(),
            "TLS server credentials reloaded"
        );
        self.shared.current.store(Arc::new(material));
    }

    fn swap_in(&self, paths: ServerPaths) -> Result<(), LoadError> {
        let material = Material::load(paths, &self.shared.provider)?;
        tracing::info!(
            cert = %material.paths.cert.display(),
            client_ca = %material.paths.client_ca.display(),
            "TLS server credentials reloaded"
        );
        self.shared.current.store(Arc::new(material));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere cannot leave it inconsistent.
        self.shared
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The paths of the material in force.
    pub fn paths(&self) -> ServerPaths {
        self.shared.current.load().paths.clone()
    }

    /// The server certificate in force (end-entity).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.shared.current.load().identity.certificate().clone()
    }

    /// The client CA in force.
    pub fn client_ca(&self) -> CaCerts {
        self.shared.current.load().client_ca.clone()
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.shared.provider)
    }

    pub(crate) fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver {
            shared: Arc::clone(&self.shared),
        })
    }

    pub(crate) fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Verifier {
            shared: Arc::clone(&self.shared),
        })
    }

    pub(crate) fn ticketer(&self) -> Arc<dyn ProducesTickets> {
        Arc::new(Tickets {
            shared: Arc::clone(&self.shared),
        })
    }
}

impl Material {
    fn load(paths: ServerPaths, provider: &Arc<CryptoProvider>) -> Result<Self, LoadError> {
        let identity = Identity::load(&paths.cert, &paths.key, provider)?;
        let client_ca = CaCerts::from_pem_file(&paths.client_ca)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(client_ca.roots(), Arc::clone(provider))
                .build()
                .map_err(|source| LoadError::ClientVerifier {
                    path: paths.client_ca.clone(),
                    source,
                })?;
        let tickets = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(LoadError::Tickets)?;
        Ok(Self {
            paths,
            identity,
            client_ca,
            verifier,
            tickets,
        })
    }
}

impl fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("paths", &self.shared.current.load().paths)
            .finish_non_exhaustive()
    }
}

/// Hands every handshake the certificate in force.
struct Resolver {
    shared: Arc<Shared>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.current.load().identity.certified_key())
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingCertResolver")
    }
}

/// Seals and opens session tickets with the keys of the material in force, so a ticket issued
/// before a reload no longer opens after it.
struct Tickets {
    shared: Arc<Shared>,
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.shared.current.load().tickets.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.shared.current.load().tickets.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.shared.current.load().tickets.decrypt(cipher)
    }
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingTicketer")
    }
}

/// Verifies client certificates against the CA in force.
///
/// It sends no CA names in the CertificateRequest (`certificate_authorities`): the hint must be
/// borrowed from the verifier, and the CA behind it can change at any time. An empty list asks
/// a client to send whatever certificate it has, which GoDoxy's Go agents, rustls and OpenSSL
/// clients do.
struct Verifier {
    shared: Arc<Shared>,
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The client-certificate rules of both transports (docs/operations.md): issued
        // directly by a certificate of the CA file, so intermediates the client sends are not
        // used (webpki does not enforce a CA's path length); webpki refuses a CA certificate
        // as the end entity; a key usage, when present, must allow signing.
        let _ = intermediates;
        let verified =
            self.shared
                .current
                .load()
                .verifier
                .verify_client_cert(end_entity, &[], now)?;
        check_key_usage(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.shared
            .current
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.shared
            .current
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared
            .current
            .load()
            .verifier
            .supported_verify_schemes()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingClientVerifier")
    }
}

/// Refuses a client certificate whose key usage extension, when present, allows neither
/// digital signatures nor key agreement (as OpenSSL does for a TLS client).
fn check_key_usage(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose);
    let cert = crate::load::parse_der(end_entity).map_err(|_| bad())?;
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() && !ku.value.key_agreement() => Err(bad()),
        Ok(_) => Ok(()),
        Err(_) => Err(bad()),
    }
}
