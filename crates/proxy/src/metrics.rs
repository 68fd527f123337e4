//! Prometheus metrics of a server: tunnels, bytes, and every kind of refusal and failure.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;

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
    Up,
    /// From the destination to the client.
    Down,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(
            encoder,
            match self {
                Direction::Up => "up",
                Direction::Down => "down",
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    transport: Transport,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A histogram of durations in seconds, from 1 ms to about 4.4 hours.
type Seconds = Family<TransportLabels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

/// The reasons a handshake failure is counted under (`handshake_failures_total{reason}`).
pub const HANDSHAKE_FAILURE_REASONS: [&str; 6] =
    ["timeout", "io", "alert", "tls", "certificate", "dtls"];

/// The server's metrics, shared by every tunnel (cheap atomic counters).
///
/// Every series a scraper alerts on exists from the start (zero until its first event):
/// tunnels, bytes, refusals, handshake failures by reason, the duration histograms, reloads,
/// and `streamproxy_build_info`. Bytes are counted as they are relayed, not when a tunnel
/// closes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tunnels_active: Family<TransportLabels, Gauge>,
    tunnels_total: Family<TransportLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    header_errors: Family<KindLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    policy_refusals: Family<TransportLabels, Counter>,
    dial_failures: Family<TransportLabels, Counter>,
    health_checks: Family<TransportLabels, Counter>,
    limit_refusals: Family<TransportLabels, Counter>,
    dropped_datagrams: Family<KindLabels, Counter>,
    api_refusals: Counter,
    handshake_refusals: Family<KindLabels, Counter>,
    udp_socket_drops: Counter,
    handshake_seconds: Seconds,
    header_seconds: Seconds,
    dial_seconds: Seconds,
    tunnel_seconds: Seconds,
    not_after: Family<RoleLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
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
        let histogram = || Seconds::new_with_constructor(seconds as fn() -> Histogram);
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
            handshake_seconds: histogram(),
            header_seconds: histogram(),
            dial_seconds: histogram(),
            tunnel_seconds: histogram(),
            not_after: Family::default(),
            reloads: Family::default(),
            drops_source: std::sync::Mutex::new(None),
            udp_listener: std::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        m.create_every_series();
        Metrics {
            registry: m.registry(),
            ..m
        }
    }

    /// The registry of every metric, with its name and help text.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("streamproxy");
        r.register(
            "tunnels_active",
            "Tunnels open now",
            self.tunnels_active.clone(),
        );
        r.register("tunnels", "Tunnels opened", self.tunnels_total.clone());
        r.register(
            "bytes",
            "Bytes relayed, counted as they move (direction up: toward the destination)",
            self.bytes.clone(),
        );
        r.register(
            "header_errors",
            "Invalid or missing request headers, by kind",
            self.header_errors.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS or DTLS handshakes that failed or timed out, by reason (DTLS: reason dtls)",
            self.handshake_failures.clone(),
        );
        r.register(
            "policy_refusals",
            "Requests refused by the destination policy or the identity rules",
            self.policy_refusals.clone(),
        );
        r.register(
            "dial_failures",
            "Destinations that could not be reached",
            self.dial_failures.clone(),
        );
        r.register(
            "health_checks",
            "Health-check requests answered",
            self.health_checks.clone(),
        );
        r.register(
            "limit_refusals",
            "Connections refused because a limit was reached",
            self.limit_refusals.clone(),
        );
        r.register(
            "dropped_datagrams",
            "Datagrams dropped, by reason",
            self.dropped_datagrams.clone(),
        );
        r.register(
            "api_refusals",
            "HTTPS API connections closed because max_connections were open",
            self.api_refusals.clone(),
        );
        r.register("handshake_refusals", "Connections closed for another's handshake or refused at their source's share, by reason (per_source, silent, oldest)", self.handshake_refusals.clone());
        r.register(
            "udp_socket_drops",
            "Datagrams the kernel dropped because the DTLS listener's receive buffer was full",
            self.udp_socket_drops.clone(),
        );
        self.register_durations(&mut r);
        r
    }

    /// The histograms, the certificate expiry, reloads and the build.
    fn register_durations(&self, r: &mut Registry) {
        r.register_with_unit(
            "handshake",
            "TLS and DTLS handshake durations (TLS from the first byte; DTLS from the first flight the server answers)",
            Unit::Seconds,
            self.handshake_seconds.clone(),
        );
        r.register_with_unit(
            "header",
            "Time from a secured connection to its whole header",
            Unit::Seconds,
            self.header_seconds.clone(),
        );
        r.register_with_unit(
            "dial",
            "Time to resolve, check and reach a destination (successful dials)",
            Unit::Seconds,
            self.dial_seconds.clone(),
        );
        r.register_with_unit(
            "tunnel",
            "Tunnel lifetimes",
            Unit::Seconds,
            self.tunnel_seconds.clone(),
        );
        r.register_with_unit(
            "certificate_not_after",
            "When the certificate in force expires, in seconds since the Unix epoch, by role",
            Unit::Seconds,
            self.not_after.clone(),
        );
        r.register(
            "reloads",
            "Reloads of the certificates and configuration, by result (success, failure)",
            self.reloads.clone(),
        );
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        r.register("build", "The running build", Info::new(version.to_vec()));
    }

    /// Series that exist from the start read as 0 rather than missing.
    fn create_every_series(&self) {
        for transport in [Transport::Tcp, Transport::Udp] {
            let labels = TransportLabels { transport };
            let _ = self.tunnels_active.get_or_create(&labels);
            let _ = self.tunnels_total.get_or_create(&labels);
            let _ = self.policy_refusals.get_or_create(&labels);
            let _ = self.dial_failures.get_or_create(&labels);
            let _ = self.health_checks.get_or_create(&labels);
            let _ = self.limit_refusals.get_or_create(&labels);
            for h in [
                &self.handshake_seconds,
                &self.header_seconds,
                &self.dial_seconds,
                &self.tunnel_seconds,
            ] {
                let _ = h.get_or_create(&labels);
            }
            for kind in ["per_source", "silent", "oldest"] {
                let _ = self
                    .handshake_refusals
                    .get_or_create(&KindLabels { transport, kind });
            }
            for kind in ["timeout", "truncated", "io", "first_record_not_header"] {
                let _ = self
                    .header_errors
                    .get_or_create(&KindLabels { transport, kind });
            }
            for reason in HANDSHAKE_FAILURE_REASONS {
                if (reason == "dtls") == (transport == Transport::Udp) {
                    let _ = self
                        .handshake_failures
                        .get_or_create(&ReasonLabels { transport, reason });
                }
            }
            self.add_bytes(transport, 0, 0);
        }
        for result in ["success", "failure"] {
            let _ = self.reloads.get_or_create(&ResultLabels { result });
        }
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
            let reason = ReasonLabels {
                transport: Transport::Udp,
                reason: "dtls",
            };
            self.handshake_failures
                .get_or_create(&reason)
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

    pub(crate) fn tunnel_closed(&self, t: Transport, lifetime: std::time::Duration) {
        let labels = TransportLabels { transport: t };
        self.tunnels_active.get_or_create(&labels).dec();
        self.tunnel_seconds
            .get_or_create(&labels)
            .observe(lifetime.as_secs_f64());
    }

    pub(crate) fn add_bytes(&self, t: Transport, up: u64, down: u64) {
        self.bytes
            .get_or_create(&ByteLabels {
                transport: t,
                direction: Direction::Up,
            })
            .inc_by(up);
        self.bytes
            .get_or_create(&ByteLabels {
                transport: t,
                direction: Direction::Down,
            })
            .inc_by(down);
    }

    pub(crate) fn header_error(&self, t: Transport, kind: &'static str) {
        self.header_errors
            .get_or_create(&KindLabels { transport: t, kind })
            .inc();
    }

    pub(crate) fn handshake_failed(&self, t: Transport, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                transport: t,
                reason,
            })
            .inc();
    }

    /// The counters of bytes relayed on `t`, up and down: cheap handles to add to as bytes
    /// move.
    pub(crate) fn byte_counters(&self, t: Transport) -> (Counter, Counter) {
        let get = |direction| {
            self.bytes
                .get_or_create(&ByteLabels {
                    transport: t,
                    direction,
                })
                .clone()
        };
        (get(Direction::Up), get(Direction::Down))
    }

    pub(crate) fn handshake_took(&self, t: Transport, d: std::time::Duration) {
        self.handshake_seconds
            .get_or_create(&TransportLabels { transport: t })
            .observe(d.as_secs_f64());
    }

    pub(crate) fn header_took(&self, t: Transport, d: std::time::Duration) {
        self.header_seconds
            .get_or_create(&TransportLabels { transport: t })
            .observe(d.as_secs_f64());
    }

    pub(crate) fn dial_took(&self, t: Transport, d: std::time::Duration) {
        self.dial_seconds
            .get_or_create(&TransportLabels { transport: t })
            .observe(d.as_secs_f64());
    }

    /// Records the expiry (`notAfter`, seconds since the Unix epoch) of the certificate in
    /// force for `role` (`"server"`).
    pub fn set_certificate_not_after(&self, role: &'static str, unix_seconds: i64) {
        self.not_after
            .get_or_create(&RoleLabels { role })
            .set(unix_seconds);
    }

    /// Counts a reload of the certificates and configuration.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
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

/// The expiry (`notAfter`, seconds since the Unix epoch) of the first certificate in the PEM
/// file at `path`; `None` when it cannot be read or parsed.
pub fn certificate_not_after(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text_with_labels() {
        let m = Metrics::new();
        m.tunnel_opened(Transport::Tcp);
        m.add_bytes(Transport::Tcp, 10, 20);
        m.tunnel_closed(Transport::Tcp, std::time::Duration::from_millis(5));
        m.header_error(Transport::Udp, "checksum");
        let text = m.encode();
        assert!(
            text.contains("streamproxy_tunnels_total{transport=\"tcp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("streamproxy_bytes_total{transport=\"tcp\",direction=\"down\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("streamproxy_header_errors_total{transport=\"udp\",kind=\"checksum\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_series_an_operator_alerts_on_exists_from_the_start() {
        let text = Metrics::new().encode();
        for series in [
            "streamproxy_build_info{version=",
            "streamproxy_handshake_failures_total{transport=\"tcp\",reason=\"certificate\"} 0",
            "streamproxy_handshake_failures_total{transport=\"udp\",reason=\"dtls\"} 0",
            "streamproxy_handshake_seconds_count{transport=\"tcp\"} 0",
            "streamproxy_header_seconds_count{transport=\"udp\"} 0",
            "streamproxy_dial_seconds_count{transport=\"tcp\"} 0",
            "streamproxy_tunnel_seconds_count{transport=\"udp\"} 0",
            "streamproxy_reloads_total{result=\"success\"} 0",
            "streamproxy_reloads_total{result=\"failure\"} 0",
            "streamproxy_header_errors_total{transport=\"udp\",kind=\"first_record_not_header\"} 0",
            "streamproxy_bytes_total{transport=\"udp\",direction=\"up\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn durations_land_in_their_histograms_and_expiry_in_its_gauge() {
        let m = Metrics::new();
        m.dial_took(Transport::Tcp, std::time::Duration::from_millis(3));
        m.tunnel_opened(Transport::Udp);
        m.tunnel_closed(Transport::Udp, std::time::Duration::from_secs(2));
        m.set_certificate_not_after("server", 1_900_000_000);
        m.reloaded(false);
        let text = m.encode();
        for series in [
            "streamproxy_dial_seconds_count{transport=\"tcp\"} 1",
            "streamproxy_tunnel_seconds_count{transport=\"udp\"} 1",
            "streamproxy_tunnels_active{transport=\"udp\"} 0",
            "streamproxy_certificate_not_after_seconds{role=\"server\"} 1900000000",
            "streamproxy_reloads_total{result=\"failure\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn byte_counters_are_the_series_themselves() {
        let m = Metrics::new();
        let (up, down) = m.byte_counters(Transport::Tcp);
        up.inc_by(5);
        down.inc_by(7);
        let text = m.encode();
        assert!(
            text.contains("streamproxy_bytes_total{transport=\"tcp\",direction=\"up\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("streamproxy_bytes_total{transport=\"tcp\",direction=\"down\"} 7"),
            "{text}"
        );
    }
}
