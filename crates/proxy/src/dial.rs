//! Reaching a destination: policy check by name, resolution, policy check of the addresses,
//! then a TCP connect or a connected UDP socket, all under the dial timeout.
//!
//! Only the addresses that passed the policy are dialed, in the canonical form the policy
//! decided on (IPv4-mapped IPv6 as IPv4): a name is resolved once, so a DNS answer that
//! changes between check and dial cannot slip past the policy.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};

use crate::destination::Destination;
use crate::policy::{Policy, Refusal, canonical, parse_ip_literal};

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The policy refused the destination.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The name did not resolve.
    #[error("cannot resolve {host:?}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("{host:?} resolves to no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// Every address refused the connection or failed.
    #[error("cannot connect to {destination}")]
    Connect {
        /// The destination.
        destination: Destination,
        /// The error of the last address tried.
        #[source]
        source: io::Error,
    },
    /// Resolution and connection did not finish within the dial timeout.
    #[error("connecting to {destination} timed out after {after:?}")]
    Timeout {
        /// The destination.
        destination: Destination,
        /// The dial timeout.
        after: Duration,
    },
}

impl DialError {
    /// Whether the policy refused the destination (as opposed to a network failure).
    pub fn is_refusal(&self) -> bool {
        matches!(self, DialError::Refused(_))
    }
}

/// A boxed future, as the resolver returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns destination names into addresses. IP literals never reach a resolver.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// An asynchronous DNS resolver (hickory-resolver): `/etc/hosts` first, then the name servers
/// of `/etc/resolv.conf`, with a cache that honours TTLs. Lookups are futures, cancelled when
/// dropped: a name server that never answers costs a timer, never a thread.
#[derive(Clone)]
pub struct DnsResolver {
    inner: hickory_resolver::TokioResolver,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

/// Why the system's resolver configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the resolver configuration (/etc/resolv.conf)")]
pub struct ResolverConfigError(#[source] hickory_resolver::ResolveError);

impl DnsResolver {
    /// The system's configuration: `/etc/resolv.conf` and `/etc/hosts`. Each query to a name
    /// server waits at most `query_timeout`.
    pub fn from_system(query_timeout: Duration) -> Result<DnsResolver, ResolverConfigError> {
        let mut builder =
            hickory_resolver::TokioResolver::builder_tokio().map_err(ResolverConfigError)?;
        Self::tune(builder.options_mut(), query_timeout);
        Ok(DnsResolver {
            inner: builder.build(),
        })
    }

    /// These name servers (over UDP, then TCP for truncated answers) and `/etc/hosts`.
    pub fn with_name_servers(servers: &[SocketAddr], query_timeout: Duration) -> DnsResolver {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[server.ip()],
                server.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let mut builder = hickory_resolver::Resolver::builder_with_config(
            config,
            hickory_resolver::name_server::TokioConnectionProvider::default(),
        );
        Self::tune(builder.options_mut(), query_timeout);
        DnsResolver {
            inner: builder.build(),
        }
    }

    fn tune(opts: &mut hickory_resolver::config::ResolverOpts, query_timeout: Duration) {
        opts.timeout = query_timeout.min(opts.timeout);
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Always;
        opts.cache_size = opts.cache_size.max(1024);
    }
}

impl Resolve for DnsResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let found = self.inner.lookup_ip(host).await.map_err(io::Error::other)?;
            Ok(found.iter().collect())
        })
    }
}

/// Bounds on name lookups in flight: a global number, and a share of it per client address,
/// so that a client whose names never resolve waits only for its own lookups.
#[derive(Debug)]
pub struct LookupLimits {
    global: std::sync::Arc<tokio::sync::Semaphore>,
    global_max: usize,
    per_client: usize,
    clients: std::sync::Mutex<HashMap<IpAddr, std::sync::Arc<tokio::sync::Semaphore>>>,
    /// The longest one lookup may take (within the dial timeout).
    timeout: Duration,
}

impl LookupLimits {
    /// At most `global` lookups in flight, `per_client` of them for one client address, each
    /// given up after `timeout`. Zeros are raised to 1.
    pub fn new(global: usize, per_client: usize, timeout: Duration) -> LookupLimits {
        LookupLimits {
            global: std::sync::Arc::new(tokio::sync::Semaphore::new(global.max(1))),
            global_max: global.max(1),
            per_client: per_client.clamp(1, global.max(1)),
            clients: std::sync::Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Lookups in flight now (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.global_max - self.global.available_permits()
    }

    /// Runs one lookup of `host` for `client` under the bounds: waits for a place among the
    /// client's share, then among all, then resolves within the lookup timeout.
    async fn lookup(
        &self,
        resolver: &dyn Resolve,
        host: &str,
        client: Option<IpAddr>,
    ) -> io::Result<Vec<IpAddr>> {
        let closed = |_| io::Error::other("the lookup limits are closed");
        let _client_permit = match client {
            Some(ip) => {
                let share = {
                    let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                    std::sync::Arc::clone(clients.entry(ip).or_insert_with(|| {
                        std::sync::Arc::new(tokio::sync::Semaphore::new(self.per_client))
                    }))
                };
                let permit = share.acquire_owned().await.map_err(closed)?;
                Some(ClientPermit {
                    limits: self,
                    ip,
                    permit: Some(permit),
                })
            }
            None => None,
        };
        let _global = self.global.acquire().await.map_err(closed)?;
        tokio::time::timeout(self.timeout, resolver.resolve(host))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.timeout),
                ))
            })
    }
}

/// A place in one client's share; the client's entry goes when its last place is released.
struct ClientPermit<'a> {
    limits: &'a LookupLimits,
    ip: IpAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for ClientPermit<'_> {
    fn drop(&mut self) {
        let mut clients = self
            .limits
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.permit.take());
        if let Some(share) = clients.get(&self.ip)
            && share.available_permits() == self.limits.per_client
            && std::sync::Arc::strong_count(share) == 1
        {
            clients.remove(&self.ip);
        }
    }
}

/// A fixed table of names: for tests, and for deployments that pin their destinations.
/// Names not in the table do not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds `name` with its addresses (names are matched case-insensitively).
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.names
            .insert(name.to_ascii_lowercase(), addrs.into_iter().collect());
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let found = self.names.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not in the table"))
        })
    }
}

/// How destinations are reached: the policy, the resolver and the dial timeout.
#[derive(Clone)]
pub struct Dialer {
    /// Which destinations may be dialed.
    pub policy: std::sync::Arc<Policy>,
    /// How names become addresses.
    pub resolver: std::sync::Arc<dyn Resolve>,
    /// How long resolving and connecting may take together.
    pub timeout: Duration,
    /// Keepalive for TCP destination connections (`None`: off).
    pub keepalive: Option<crate::keepalive::Keepalive>,
    /// Bounds on name lookups in flight, globally and per client.
    pub lookups: std::sync::Arc<LookupLimits>,
    /// Buffers of UDP destination sockets (a burst of replies must fit); `None` keeps the
    /// system's default.
    pub udp_buffers: Option<dtls::UdpBuffers>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Resolves the request's destination and checks it against the policy.
pub async fn resolve_checked(
    destination: &Destination,
    policy: &Policy,
    resolver: &dyn Resolve,
) -> Result<Vec<SocketAddr>, DialError> {
    let unbounded = LookupLimits::new(usize::MAX >> 4, usize::MAX >> 4, Duration::MAX);
    resolve_bounded(destination, policy, resolver, &unbounded, None).await
}

/// [`resolve_checked`] with the lookup bounded by `limits`, counted against `client`.
async fn resolve_bounded(
    destination: &Destination,
    policy: &Policy,
    resolver: &dyn Resolve,
    limits: &LookupLimits,
    client: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, DialError> {
    policy.check_name(destination)?;
    let (host, port) = (destination.host(), destination.port());
    let addrs: Vec<SocketAddr> = match parse_ip_literal(host) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => limits
            .lookup(resolver, host, client)
            .await
            .map_err(|source| DialError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .into_iter()
            .map(|ip| SocketAddr::new(canonical(ip), port))
            .collect(),
    };
    if addrs.is_empty() {
        return Err(DialError::NoAddress {
            host: host.to_owned(),
        });
    }
    let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    policy.check(destination, &ips)?;
    Ok(addrs)
}

/// Connects to the request's destination over TCP, with `TCP_NODELAY` set, and keepalive
/// when the dialer has it. A name lookup counts against `client`'s share of lookups.
pub async fn dial_tcp(
    destination: &Destination,
    dialer: &Dialer,
    client: Option<IpAddr>,
) -> Result<TcpStream, DialError> {
    let timeout = dialer.timeout;
    let attempt = async {
        let addrs = resolve_bounded(
            destination,
            &dialer.policy,
            &*dialer.resolver,
            &dialer.lookups,
            client,
        )
        .await?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Latency matters more than segment count for a relay.
                    let _ = stream.set_nodelay(true);
                    if let Some(keepalive) = &dialer.keepalive {
                        keepalive.apply(&stream, "destination");
                    }
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect {
            destination: destination.clone(),
            source: last.unwrap_or_else(|| io::Error::other("no address to connect to")),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                destination: destination.clone(),
                after: timeout,
            })
        })
}

/// Opens a UDP socket connected to the request's destination (the first allowed address).
/// A name lookup counts against `client`'s share of lookups.
pub async fn dial_udp(
    destination: &Destination,
    dialer: &Dialer,
    client: Option<IpAddr>,
) -> Result<UdpSocket, DialError> {
    let timeout = dialer.timeout;
    let attempt = async {
        let addrs = resolve_bounded(
            destination,
            &dialer.policy,
            &*dialer.resolver,
            &dialer.lookups,
            client,
        )
        .await?;
        let mut last = None;
        for addr in addrs {
            let local: SocketAddr = match addr {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = match UdpSocket::bind(local).await {
                Ok(s) => s,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Some(buffers) = dialer.udp_buffers {
                buffers.apply(&socket);
            }
            match socket.connect(addr).await {
                Ok(()) => return Ok(socket),
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect {
            destination: destination.clone(),
            source: last.unwrap_or_else(|| io::Error::other("no address to connect to")),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                destination: destination.clone(),
                after: timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keepalive::Keepalive;
    use crate::policy::Rule;

    fn dialer(keepalive: Option<Keepalive>) -> Dialer {
        Dialer {
            policy: Arc::new(Policy::allow_all([])),
            resolver: Arc::new(StaticResolver::new()),
            timeout: Duration::from_secs(5),
            keepalive,
            lookups: Arc::new(LookupLimits::new(8, 2, Duration::from_secs(5))),
            udp_buffers: None,
        }
    }

    fn request(port: u16) -> Destination {
        Destination::unchecked("127.0.0.1", port)
    }

    #[tokio::test]
    async fn dial_tcp_sets_the_dialers_keepalive_on_the_destination_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keepalive = Keepalive {
            idle: Duration::from_secs(11),
            interval: Duration::from_secs(2),
            retries: 5,
        };
        let stream = dial_tcp(&request(port), &dialer(Some(keepalive)), None)
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 5);
        assert!(sock.tcp_nodelay().unwrap());
    }

    /// Every spelling of `ip` that the header parser must read as that address.
    fn spellings(ip: IpAddr) -> Vec<String> {
        let mut out = vec![ip.to_string()];
        match ip {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                let [a, b, c, d] = v4.octets();
                out.extend([
                    n.to_string(),
                    format!("{n:#x}"),
                    format!("{n:#X}").replacen("0X", "0x", 1),
                    format!("0{n:o}"),
                    format!("{a:#x}.{b:#x}.{c:#x}.{d:#x}"),
                    format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
                    format!("{a}.{}", n & 0xff_ffff),
                    format!("{a}.{b}.{}", n & 0xffff),
                    format!("::ffff:{v4}"),
                    format!("[::ffff:{v4}]"),
                    format!("::FFFF:{:x}:{:x}", n >> 16, n & 0xffff),
                    format!("0:0:0:0:0:ffff:{v4}"),
                    format!(
                        "[0000:0000:0000:0000:0000:FFFF:{:04X}:{:04x}]",
                        n >> 16,
                        n & 0xffff
                    ),
                ]);
            }
            IpAddr::V6(v6) => {
                let g = v6.segments();
                let full = g.map(|x| format!("{x:x}")).join(":");
                out.extend([
                    format!("[{v6}]"),
                    full.clone(),
                    g.map(|x| format!("{x:04X}")).join(":"),
                    format!("[{full}]"),
                ]);
            }
        }
        out
    }

    /// The outcome of a decision, without the host text the errors repeat.
    fn outcome(result: Result<Vec<SocketAddr>, DialError>) -> String {
        match result {
            Ok(addrs) => format!("dial {addrs:?}"),
            Err(DialError::Refused(Refusal::Denied { rule, .. })) => format!("denied by {rule}"),
            Err(DialError::Refused(Refusal::NotAllowed { .. })) => "not allowed".into(),
            Err(DialError::Refused(Refusal::Unspecified { addr, .. })) => {
                format!("unspecified {addr}")
            }
            Err(e) => format!("other: {e}"),
        }
    }

    fn an_address() -> impl proptest::strategy::Strategy<Value = IpAddr> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::from(Ipv4Addr::from(n))),
            (0u32..4).prop_map(|n| IpAddr::from(Ipv4Addr::from(n))),
            (0u32..1 << 8).prop_map(|n| IpAddr::from(Ipv4Addr::from(0x7f00_0000 | n << 4))),
            any::<u128>().prop_map(|n| IpAddr::from(Ipv6Addr::from(n))),
            (0u128..3).prop_map(|n| IpAddr::from(Ipv6Addr::from(n))),
            any::<u16>().prop_map(|n| IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n))),
        ]
    }

    /// A network rule around an address, spelled plainly or (IPv4) in the mapped form.
    fn a_rule() -> impl proptest::strategy::Strategy<Value = Rule> {
        use proptest::prelude::*;
        (
            an_address(),
            any::<u8>(),
            any::<bool>(),
            prop::option::of(1u16..4),
        )
            .prop_map(|(addr, bits, mapped, port)| {
                let text = match addr {
                    IpAddr::V4(v4) if mapped => format!("[::ffff:{v4}/{}]", 96 + bits % 33),
                    IpAddr::V4(v4) => format!("{v4}/{}", bits % 33),
                    IpAddr::V6(v6) => format!("[{v6}/{}]", bits % 129),
                };
                let text = match port {
                    Some(p) => format!("{text}:{p}"),
                    None => text.trim_matches(['[', ']']).to_owned(),
                };
                text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Every spelling of an address is decided, and dialed, as its canonical form, for
        /// allow and deny rules alike.
        #[test]
        fn every_spelling_is_decided_as_its_canonical_form(
            addr in an_address(),
            port in 1u16..4,
            allow in proptest::collection::vec(a_rule(), 1..4),
            deny in proptest::collection::vec(a_rule(), 0..4),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let resolver = StaticResolver::new();
            let canonical_host = canonical(addr).to_string();
            for policy in [
                Policy::new(allow.clone(), deny.clone()).expect("rules"),
                Policy::allow_all(deny.clone()),
            ] {
                let decide = |host: &str| {
                    let req = Destination::unchecked(host, port);
                    outcome(rt.block_on(resolve_checked(&req, &policy, &resolver)))
                };
                let want = decide(&canonical_host);
                proptest::prop_assert!(!want.starts_with("other"), "{want}");
                for spelling in spellings(addr) {
                    proptest::prop_assert_eq!(&decide(&spelling), &want, "{}", spelling);
                }
            }
        }
    }

    #[tokio::test]
    async fn names_resolving_to_the_unspecified_address_are_refused_and_dialed_canonically() {
        let resolver = StaticResolver::new()
            .with("zero4.test", [IpAddr::from(Ipv4Addr::UNSPECIFIED)])
            .with("zero6.test", [IpAddr::from(Ipv6Addr::UNSPECIFIED)])
            .with("zero-mapped.test", ["::ffff:0.0.0.0".parse().unwrap()])
            .with("mapped.test", ["::ffff:192.0.2.7".parse().unwrap()]);
        let policy = Policy::allow_all(["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        for name in ["zero4.test", "zero6.test", "zero-mapped.test"] {
            let req = Destination::unchecked(name, 80);
            let got = resolve_checked(&req, &policy, &resolver).await;
            assert!(
                matches!(got, Err(DialError::Refused(Refusal::Unspecified { .. }))),
                "{name}: {got:?}"
            );
        }
        let req = Destination::unchecked("mapped.test", 80);
        let addrs = resolve_checked(&req, &policy, &resolver).await.unwrap();
        assert_eq!(addrs, vec!["192.0.2.7:80".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn dial_tcp_without_keepalive_leaves_it_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = dial_tcp(&request(port), &dialer(None), None).await.unwrap();
        assert!(!socket2::SockRef::from(&stream).keepalive().unwrap());
    }
}
