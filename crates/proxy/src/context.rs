//! What every connection of a server shares: the dialer, the settings and the metrics.

use std::sync::Arc;

use crate::dial::{Dialer, DnsResolver, LookupLimits, Resolve, SystemResolver};
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
    /// A context with the system's DNS configuration (an asynchronous resolver reading
    /// `/etc/resolv.conf` and `/etc/hosts`; `getaddrinfo` when that file cannot be read) and
    /// fresh metrics. The policy is required: there is no default.
    pub fn new(policy: Policy, settings: Settings) -> ServerContext {
        let lookup_timeout = settings.lookup_timeout.min(settings.dial_timeout);
        let resolver: Arc<dyn Resolve> = match DnsResolver::from_system(lookup_timeout) {
            Ok(resolver) => Arc::new(resolver),
            Err(e) => {
                tracing::warn!(error = %e, cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(), "resolving destination names with getaddrinfo instead");
                Arc::new(SystemResolver)
            }
        };
        ServerContext {
            dialer: Dialer {
                policy: Arc::new(policy),
                resolver,
                timeout: settings.dial_timeout,
                keepalive: settings.tcp_keepalive,
                lookups: Arc::new(LookupLimits::new(
                    settings.max_lookups,
                    settings.max_lookups_per_client,
                    lookup_timeout,
                )),
                udp_buffers: Some(settings.udp_buffers),
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
