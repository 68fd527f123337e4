//! What every connection of a server shares: the dialer, the settings, the metrics, and the
//! [`LivePolicy`] a reload replaces.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::dial::{Dialer, DnsResolver, LookupLimits, Resolve, SystemResolver};
use crate::identity::Access;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::settings::Settings;

/// What a reload may change while the server runs: who may reach what, and the timeouts
/// read per tunnel. Each tunnel takes one snapshot when it is admitted and keeps it to its
/// end, so a reload applies to new tunnels only.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LivePolicy {
    /// The destination policy, the identity rules and the PROXY protocol setting.
    pub access: Access,
    /// How long a client has to send its header.
    pub header_timeout: Duration,
    /// How long resolving and connecting to a destination may take.
    pub dial_timeout: Duration,
}

impl LivePolicy {
    /// `access` with the timeouts of `settings`.
    pub fn new(access: Access, settings: &Settings) -> LivePolicy {
        LivePolicy {
            access,
            header_timeout: settings.header_timeout,
            dial_timeout: settings.dial_timeout,
        }
    }
}

/// The dialer, settings and metrics of one server, shared by its TCP and UDP sides.
#[derive(Debug, Clone)]
pub struct ServerContext {
    /// How destinations are resolved and reached. Its policy is the one the server started
    /// with; tunnels are checked against the policy their [`LivePolicy`] grants them.
    pub dialer: Dialer,
    /// Who may reach what, replaced as a whole by a reload.
    pub live: Arc<ArcSwap<LivePolicy>>,
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
        let live = LivePolicy::new(Access::new(policy), &settings);
        ServerContext {
            dialer: Dialer {
                policy: Arc::new(live.access.policy().clone()),
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
            live: Arc::new(ArcSwap::from_pointee(live)),
            settings,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The same context with `access` (identity rules, PROXY protocol) in force.
    pub fn with_access(mut self, access: Access) -> ServerContext {
        let live = LivePolicy::new(access, &self.settings);
        self.live = Arc::new(ArcSwap::from_pointee(live));
        self
    }

    /// The same context with another resolver.
    pub fn with_resolver(mut self, resolver: impl Resolve) -> ServerContext {
        self.dialer.resolver = Arc::new(resolver);
        self
    }
}
