//! A CA certificate or bundle: the trust anchors a peer's certificate must chain to.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::error::LoadError;
use crate::load;

/// The CA certificates read from one PEM file, ready to verify peers against.
///
/// Only certificates with `basicConstraints CA:TRUE` become trust anchors; other certificates in
/// the file are skipped with a warning, and a file with no CA certificate at all is an error.
/// Cloning is cheap.
#[derive(Clone)]
pub struct CaCerts {
    path: PathBuf,
    anchors: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl CaCerts {
    /// Reads the CA certificates of a PEM file.
    ///
    /// A CA certificate that is expired or not yet valid is loaded with a warning.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let certs = load::certificates(path)?;
        let mut anchors = Vec::with_capacity(certs.len());
        let mut roots = RootCertStore::empty();
        for (index, der) in certs.into_iter().enumerate() {
            let cert = load::parse(path, index, &der)?;
            if !cert.is_ca() {
                tracing::warn!(
                    path = %path.display(),
                    index,
                    subject = %cert.subject(),
                    "skipping a certificate that is not a CA certificate in a CA file"
                );
                continue;
            }
            load::warn_if_outside_validity(path, "CA", &cert);
            drop(cert);
            roots
                .add(der.clone())
                .map_err(|source| LoadError::BadTrustAnchor {
                    path: path.to_owned(),
                    source,
                })?;
            anchors.push(der);
        }
        if anchors.is_empty() {
            return Err(LoadError::NoCaCertificate {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            anchors,
            roots: Arc::new(roots),
        })
    }

    /// The file the bundle was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CA certificates in use, in file order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }
}

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCerts")
            .field("path", &self.path)
            .field("anchors", &self.anchors.len())
            .finish()
    }
}
