//! The crypto provider the whole workspace uses.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every configuration of this crate is built with: rustls' aws-lc-rs
/// provider (chosen by measurement, see `docs/benchmarks.md`).
///
/// It is passed explicitly to every rustls builder, so nothing depends on a process-wide
/// default provider being installed.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}
