//! What every connection of a server shares: the dialer, the settings and the metrics.

use std::sync::Arc;

use crate::dial::{Dialer, Resolve, SystemResolver};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::settings::Settings;

/// The dialer, settings and metrics of one server, shared by its TCP and UDP sides.
#[derive(Debug, Clone)]
pub struct ServerContext {
    /// How destinations are checked and reached.
    pub dialer: Dialer,
    /// Timeouts and limits.
    pub settings: Settings,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl ServerContext {
    /// A context with the system resolver and fresh metrics. The policy is required: there
    /// is no default.
    pub fn new(policy: Policy, settings: Settings) -> ServerContext {
        ServerContext {
            dialer: Dialer {
                policy: Arc::new(policy),
                resolver: Arc::new(SystemResolver),
                timeout: settings.dial_timeout,
                keepalive: settings.tcp_keepalive,
            },
            settings,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The same context with another resolver.
    pub fn with_resolver(mut self, resolver: impl Resolve) -> ServerContext {
        self.dialer.resolver = Arc::new(resolver);
        self
    }
}
