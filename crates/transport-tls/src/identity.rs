//! Our own certificate chain and private key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use rustls_pki_types::CertificateDer;

use crate::error::LoadError;
use crate::{load, provider};

/// A certificate chain and the private key of its first certificate, checked to match.
///
/// Used as the server's certificate ([`crate::ServerCredentials`]) or as a client certificate
/// ([`crate::ClientConfigBuilder`]). Cloning is cheap.
#[derive(Clone)]
pub struct Identity {
    cert_path: PathBuf,
    key_path: PathBuf,
    key: Arc<CertifiedKey>,
}

impl Identity {
    /// Reads a certificate chain (leaf first) and its private key from PEM files.
    ///
    /// The key may be PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`); both paths may name the same file. A certificate that is expired or
    /// not yet valid is loaded with a warning.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        Self::load(cert.as_ref(), key.as_ref(), &provider::crypto_provider())
    }

    pub(crate) fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<Self, LoadError> {
        let chain = load::certificates(cert_path)?;
        for (index, der) in chain.iter().enumerate() {
            let cert = load::parse(cert_path, index, der)?;
            let what = if index == 0 { "leaf" } else { "intermediate" };
            load::warn_if_outside_validity(cert_path, what, &cert);
        }
        let key = load::private_key(key_path)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| LoadError::UnsupportedKey {
                path: key_path.to_owned(),
                source,
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // `Unknown`: the provider cannot tell; the handshake will.
            Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(TlsError::InconsistentKeys(_)) => {
                return Err(LoadError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                });
            }
            Err(source) => {
                return Err(LoadError::UnusableCertificate {
                    path: cert_path.to_owned(),
                    source,
                });
            }
        }
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            key: Arc::new(certified),
        })
    }

    /// The end-entity certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        // `load` only builds an identity from a non-empty chain.
        &self.key.cert[0]
    }

    /// The whole chain, end-entity certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}
