//! The client's metrics: the counters of every forwarder, in the Prometheus text format.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ForwardCounts, ForwardStats};
use crate::api::Exposition;

/// The counters of a client's forwarders, for a status listener. Every series exists from the
/// moment a forwarder is added.
///
/// | metric | labels |
/// |---|---|
/// | `streamproxy_client_tunnels_opened_total`, `_failed_total`, `_refused_total`, `_unanswered_total` | `transport`, `local` |
/// | `streamproxy_client_tunnels_active` | `transport`, `local` |
/// | `streamproxy_client_bytes_total`, `streamproxy_client_datagrams_total` | and `direction` (`up`, `down`) |
/// | `streamproxy_client_dropped_datagrams_total` | and `reason` (`too_large`, `other`, `kernel`) |
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    forwarders: Mutex<Vec<(&'static str, String, ForwardStats)>>,
    /// `notAfter` of the client certificate in force (Unix seconds), when known.
    not_after: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    transport: &'static str,
    local: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    transport: &'static str,
    local: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    transport: &'static str,
    local: String,
    reason: &'static str,
}

impl ForwardMetrics {
    /// No forwarders yet.
    pub fn new() -> ForwardMetrics {
        ForwardMetrics::default()
    }

    /// Records the expiry (`notAfter`, seconds since the Unix epoch) of the client certificate
    /// in force: `streamproxy_client_certificate_not_after_seconds`.
    pub fn set_certificate_not_after(&self, unix_seconds: i64) {
        self.not_after
            .store(unix_seconds, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds a forwarder's counters under `transport` (`"tcp"`, `"udp"`) and its local address.
    pub fn add(&self, transport: &'static str, local: impl ToString, stats: ForwardStats) {
        self.forwarders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((transport, local.to_string(), stats));
    }
}

impl Exposition for ForwardMetrics {
    fn encode(&self) -> String {
        let families = Families::default();
        let forwarders = self
            .forwarders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (transport, local, stats) in forwarders {
            families.record(transport, &local, &stats.snapshot());
        }
        let mut registry = families.registry();
        let not_after = self.not_after.load(std::sync::atomic::Ordering::Relaxed);
        if not_after != 0 {
            let gauge = Gauge::<i64>::default();
            gauge.set(not_after);
            registry.register_with_unit(
                "certificate_not_after",
                "When the client certificate in force expires, in seconds since the Unix epoch",
                prometheus_client::registry::Unit::Seconds,
                gauge,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One scrape's series, filled from the forwarders' counters.
#[derive(Default)]
struct Families {
    opened: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    unanswered: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    bytes: Family<DirectionLabels, Counter>,
    datagrams: Family<DirectionLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
}

impl Families {
    fn record(&self, transport: &'static str, local: &str, c: &ForwardCounts) {
        let l = Labels {
            transport,
            local: local.to_owned(),
        };
        self.opened.get_or_create(&l).inc_by(c.tunnels_opened);
        self.failed.get_or_create(&l).inc_by(c.tunnels_failed);
        self.refused.get_or_create(&l).inc_by(c.tunnels_refused);
        self.unanswered
            .get_or_create(&l)
            .inc_by(c.tunnels_unanswered);
        let open = c.tunnels_opened.saturating_sub(c.tunnels_closed);
        self.active
            .get_or_create(&l)
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        for (direction, b, d) in [
            ("up", c.bytes_up, c.datagrams_up),
            ("down", c.bytes_down, c.datagrams_down),
        ] {
            let dl = DirectionLabels {
                transport,
                local: local.to_owned(),
                direction,
            };
            self.bytes.get_or_create(&dl).inc_by(b);
            self.datagrams.get_or_create(&dl).inc_by(d);
        }
        for (reason, n) in [
            ("too_large", c.dropped_too_large),
            ("other", c.dropped_other),
            ("kernel", c.dropped_by_kernel),
        ] {
            let rl = ReasonLabels {
                transport,
                local: local.to_owned(),
                reason,
            };
            self.dropped.get_or_create(&rl).inc_by(n);
        }
    }

    fn registry(self) -> Registry {
        let mut registry = Registry::with_prefix("streamproxy_client");
        registry.register(
            "tunnels_opened",
            "Tunnels opened to the server",
            self.opened,
        );
        registry.register(
            "tunnels_failed",
            "Tunnels that could not be opened",
            self.failed,
        );
        registry.register(
            "tunnels_refused",
            "Local connections or sources refused at the tunnel limit",
            self.refused,
        );
        registry.register(
            "tunnels_unanswered",
            "UDP tunnels replaced because the server stopped answering",
            self.unanswered,
        );
        registry.register("tunnels_active", "Tunnels open now", self.active);
        registry.register("bytes", "Bytes relayed", self.bytes);
        registry.register("datagrams", "Datagrams relayed (UDP)", self.datagrams);
        registry.register(
            "dropped_datagrams",
            "Datagrams dropped, by reason",
            self.dropped,
        );
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forwarder_has_its_series_from_the_start() {
        let metrics = ForwardMetrics::new();
        metrics.add("tcp", "127.0.0.1:2222", ForwardStats::default());
        metrics.add("udp", "127.0.0.1:5353", ForwardStats::default());
        let text = metrics.encode();
        for line in [
            "streamproxy_client_tunnels_opened_total{transport=\"tcp\",local=\"127.0.0.1:2222\"} 0",
            "streamproxy_client_tunnels_active{transport=\"udp\",local=\"127.0.0.1:5353\"} 0",
            "streamproxy_client_bytes_total{transport=\"tcp\",local=\"127.0.0.1:2222\",direction=\"up\"} 0",
            "streamproxy_client_dropped_datagrams_total{transport=\"udp\",local=\"127.0.0.1:5353\",reason=\"kernel\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn the_client_certificates_expiry_is_a_gauge() {
        let metrics = ForwardMetrics::new();
        assert!(!metrics.encode().contains("certificate_not_after"));
        metrics.set_certificate_not_after(1_900_000_000);
        let text = metrics.encode();
        assert!(
            text.contains("streamproxy_client_certificate_not_after_seconds 1900000000"),
            "{text}"
        );
    }
}
