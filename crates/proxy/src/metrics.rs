//! Prometheus metrics of a server: tunnels, bytes, and every kind of refusal and failure.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The transport a tunnel runs over.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    /// TCP over TLS.
    Tcp,
    /// UDP over DTLS.
    Udp,
}

impl Transport {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The direction bytes flow in.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the destination.
    Upstream,
    /// From the destination to the client.
    Downstream,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(
            encoder,
            match self {
                Direction::Upstream => "upstream",
                Direction::Downstream => "downstream",
            },
        )
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: Transport,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    transport: Transport,
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    transport: Transport,
    kind: &'static str,
}

/// The server's metrics, shared by every tunnel (cheap atomic counters).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tunnels_active: Family<TransportLabels, Gauge>,
    tunnels_total: Family<TransportLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    header_errors: Family<KindLabels, Counter>,
    handshake_failures: Family<TransportLabels, Counter>,
    policy_refusals: Family<TransportLabels, Counter>,
    dial_failures: Family<TransportLabels, Counter>,
    health_checks: Family<TransportLabels, Counter>,
    limit_refusals: Family<TransportLabels, Counter>,
    dropped_datagrams: Family<KindLabels, Counter>,
    api_refusals: Counter,
    handshake_refusals: Family<KindLabels, Counter>,
    udp_socket_drops: Counter,
    /// Reads the kernel's drop count of the DTLS listener's socket at scrape time.
    drops_source: std::sync::Mutex<Option<DropsSource>>,
    /// Reads the DTLS listener's handshake counters at scrape time.
    udp_listener: std::sync::Mutex<Option<ListenerSource>>,
}

/// The DTLS listener whose counters are added at scrape time, and what was added so far.
struct ListenerSource {
    handle: dtls::ListenerHandle,
    seen_failures: u64,
    seen_evictions: u64,
}

impl fmt::Debug for ListenerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerSource")
            .field("seen_failures", &self.seen_failures)
            .field("seen_evictions", &self.seen_evictions)
            .finish_non_exhaustive()
    }
}

/// A function that reads a kernel drop counter, and the value it read last.
struct DropsSource {
    read: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    last: u64,
}

impl fmt::Debug for DropsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropsSource")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A new set of metrics, all zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("streamproxy");
        let m = Metrics {
            tunnels_active: Family::default(),
            tunnels_total: Family::default(),
            bytes: Family::default(),
            header_errors: Family::default(),
            handshake_failures: Family::default(),
            policy_refusals: Family::default(),
            dial_failures: Family::default(),
            health_checks: Family::default(),
            limit_refusals: Family::default(),
            dropped_datagrams: Family::default(),
            api_refusals: Counter::default(),
            handshake_refusals: Family::default(),
            udp_socket_drops: Counter::default(),
            drops_source: std::sync::Mutex::new(None),
            udp_listener: std::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "tunnels_active",
            "Tunnels open now",
            m.tunnels_active.clone(),
        );
        registry.register("tunnels", "Tunnels opened", m.tunnels_total.clone());
        registry.register("bytes", "Bytes relayed", m.bytes.clone());
        registry.register(
            "header_errors",
            "Invalid or missing request headers, by kind",
            m.header_errors.clone(),
        );
        registry.register(
            "handshake_failures",
            "TLS or DTLS handshakes that failed or timed out",
            m.handshake_failures.clone(),
        );
        registry.register(
            "policy_refusals",
            "Requests refused by the destination policy",
            m.policy_refusals.clone(),
        );
        registry.register(
            "dial_failures",
            "Destinations that could not be reached",
            m.dial_failures.clone(),
        );
        registry.register(
            "health_checks",
            "Health-check requests answered",
            m.health_checks.clone(),
        );
        registry.register(
            "limit_refusals",
            "Connections refused because a limit was reached",
            m.limit_refusals.clone(),
        );
        registry.register(
            "dropped_datagrams",
            "Datagrams dropped, by reason",
            m.dropped_datagrams.clone(),
        );
        registry.register(
            "api_refusals",
            "HTTPS API connections closed because max_connections were open",
            m.api_refusals.clone(),
        );
        registry.register(
            "handshake_refusals",
            "Connections closed for another's handshake or refused at their source's share, by reason (per_source, silent, oldest)",
            m.handshake_refusals.clone(),
        );
        registry.register(
            "udp_socket_drops",
            "Datagrams the kernel dropped because the DTLS listener's receive buffer was full",
            m.udp_socket_drops.clone(),
        );
        // Series that exist from the start read as 0 rather than missing.
        for transport in [Transport::Tcp, Transport::Udp] {
            let labels = TransportLabels { transport };
            let _ = m.tunnels_active.get_or_create(&labels);
            let _ = m.tunnels_total.get_or_create(&labels);
            let _ = m.handshake_failures.get_or_create(&labels);
            let _ = m.policy_refusals.get_or_create(&labels);
            let _ = m.dial_failures.get_or_create(&labels);
            let _ = m.health_checks.get_or_create(&labels);
            let _ = m.limit_refusals.get_or_create(&labels);
            for kind in ["per_source", "silent", "oldest"] {
                let _ = m
                    .handshake_refusals
                    .get_or_create(&KindLabels { transport, kind });
            }
            m.add_bytes(transport, 0, 0);
        }
        Metrics { registry, ..m }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.refresh_drops();
        self.refresh_listener();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Makes `read` (the kernel's drop count of the UDP listener socket) the source of
    /// `streamproxy_udp_socket_drops_total`, read at every scrape.
    pub fn watch_udp_socket_drops(&self, read: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        let mut source = self
            .drops_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = read().unwrap_or(0);
        *source = Some(DropsSource {
            read: Box::new(read),
            last,
        });
    }

    /// Makes the DTLS listener behind `handle` the source of its handshake counters, read at
    /// every scrape: failed handshakes count in `handshake_failures_total{transport="udp"}`,
    /// handshakes evicted at the limit in `limit_refusals_total{transport="udp"}` (as on TCP).
    pub fn watch_udp_listener(&self, handle: dtls::ListenerHandle) {
        let mut source = self
            .udp_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *source = Some(ListenerSource {
            handle,
            seen_failures: 0,
            seen_evictions: 0,
        });
    }

    fn refresh_listener(&self) {
        let mut source = self
            .udp_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(source) = source.as_mut() {
            let stats = source.handle.stats();
            let labels = TransportLabels {
                transport: Transport::Udp,
            };
            let failed = stats.handshakes_failed.saturating_sub(source.seen_failures);
            self.handshake_failures
                .get_or_create(&labels)
                .inc_by(failed);
            let evicted = stats
                .handshakes_evicted
                .saturating_sub(source.seen_evictions);
            self.limit_refusals.get_or_create(&labels).inc_by(evicted);
            source.seen_failures = source.seen_failures.max(stats.handshakes_failed);
            source.seen_evictions = source.seen_evictions.max(stats.handshakes_evicted);
        }
    }

    fn refresh_drops(&self) {
        let mut source = self
            .drops_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(source) = source.as_mut() {
            if let Some(now) = (source.read)() {
                self.udp_socket_drops
                    .inc_by(now.saturating_sub(source.last));
                source.last = source.last.max(now);
            }
        }
    }

    pub(crate) fn tunnel_opened(&self, t: Transport) {
        let labels = TransportLabels { transport: t };
        self.tunnels_total.get_or_create(&labels).inc();
        self.tunnels_active.get_or_create(&labels).inc();
    }

    pub(crate) fn tunnel_closed(&self, t: Transport, upstream: u64, downstream: u64) {
        self.tunnels_active
            .get_or_create(&TransportLabels { transport: t })
            .dec();
        self.add_bytes(t, upstream, downstream);
    }

    pub(crate) fn add_bytes(&self, t: Transport, upstream: u64, downstream: u64) {
        self.bytes
            .get_or_create(&ByteLabels {
                transport: t,
                direction: Direction::Upstream,
            })
            .inc_by(upstream);
        self.bytes
            .get_or_create(&ByteLabels {
                transport: t,
                direction: Direction::Downstream,
            })
            .inc_by(downstream);
    }

    pub(crate) fn header_error(&self, t: Transport, kind: &'static str) {
        self.header_errors
            .get_or_create(&KindLabels { transport: t, kind })
            .inc();
    }

    pub(crate) fn handshake_failed(&self, t: Transport) {
        self.handshake_failures
            .get_or_create(&TransportLabels { transport: t })
            .inc();
    }

    pub(crate) fn policy_refused(&self, t: Transport) {
        self.policy_refusals
            .get_or_create(&TransportLabels { transport: t })
            .inc();
    }

    pub(crate) fn dial_failed(&self, t: Transport) {
        self.dial_failures
            .get_or_create(&TransportLabels { transport: t })
            .inc();
    }

    pub(crate) fn health_check(&self, t: Transport) {
        self.health_checks
            .get_or_create(&TransportLabels { transport: t })
            .inc();
    }

    pub(crate) fn limit_refused(&self, t: Transport) {
        self.limit_refusals
            .get_or_create(&TransportLabels { transport: t })
            .inc();
    }

    pub(crate) fn handshake_refused(&self, t: Transport, kind: &'static str) {
        self.handshake_refusals
            .get_or_create(&KindLabels { transport: t, kind })
            .inc();
    }

    pub(crate) fn api_refused(&self) {
        self.api_refusals.inc();
    }

    pub(crate) fn datagram_dropped(&self, t: Transport, kind: &'static str) {
        self.dropped_datagrams
            .get_or_create(&KindLabels { transport: t, kind })
            .inc();
    }

    /// Tunnels open now on `t` (for tests and status output).
    pub fn active_tunnels(&self, t: Transport) -> i64 {
        self.tunnels_active
            .get_or_create(&TransportLabels { transport: t })
            .get()
    }

    /// Tunnels opened so far on `t`.
    pub fn total_tunnels(&self, t: Transport) -> u64 {
        self.tunnels_total
            .get_or_create(&TransportLabels { transport: t })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text_with_labels() {
        let m = Metrics::new();
        m.tunnel_opened(Transport::Tcp);
        m.tunnel_closed(Transport::Tcp, 10, 20);
        m.header_error(Transport::Udp, "checksum");
        let text = m.encode();
        assert!(
            text.contains("streamproxy_tunnels_total{transport=\"tcp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("streamproxy_bytes_total{transport=\"tcp\",direction=\"downstream\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("streamproxy_header_errors_total{transport=\"udp\",kind=\"checksum\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
