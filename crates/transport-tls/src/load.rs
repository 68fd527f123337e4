//! Reading PEM files: certificates and private keys, with the checks every loader shares.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::error::LoadError;

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// All `CERTIFICATE` blocks of a PEM file, in order; at least one.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|source| LoadError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(LoadError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key block (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => LoadError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => LoadError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// Parses certificate `index` of `path` with x509-parser.
pub(crate) fn parse<'a>(
    path: &Path,
    index: usize,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, LoadError> {
    parse_der(der).map_err(|source| LoadError::BadCertificate {
        path: path.to_owned(),
        index,
        source,
    })
}

/// Parses a DER certificate, flattening nom's error wrapper.
pub(crate) fn parse_der<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, X509Error> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, cert)) => Ok(cert),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => Err(e),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(X509Error::InvalidCertificate),
    }
}

/// Logs a warning when `cert` is expired or not yet valid. Loading goes on: the peer decides
/// whether it accepts the certificate, and an operator may be about to replace it.
pub(crate) fn warn_if_outside_validity(path: &Path, what: &str, cert: &X509Certificate<'_>) {
    let validity = cert.validity();
    let now = ASN1Time::now();
    let state = if now < validity.not_before {
        "not yet valid"
    } else if now > validity.not_after {
        "expired"
    } else {
        return;
    };
    tracing::warn!(
        path = %path.display(),
        subject = %cert.subject(),
        not_before = %validity.not_before,
        not_after = %validity.not_after,
        "{what} certificate is {state}"
    );
}
