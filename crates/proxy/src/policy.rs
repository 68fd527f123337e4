//! The destination policy: which `host:port` destinations a server may dial.
//!
//! A [`Policy`] holds allow rules and deny rules. There is no silent default: a policy is built
//! either from at least one allow rule ([`Policy::new`]) or explicitly open to every destination
//! ([`Policy::allow_all`], what the original implementation does). Checks happen before any
//! dial and again on the addresses a name resolves to, so a name that resolves into a denied
//! network is refused.
//!
//! # Rules
//!
//! A rule is `HOST` or `HOST:PORTS`, where `HOST` is one of
//!
//! - `*`: every destination;
//! - `example.com`: that name exactly (case-insensitive, a trailing dot ignored);
//! - `*.example.com`: every name under `example.com` (not `example.com` itself);
//! - `10.1.2.3`, `::1`: that address; `10.0.0.0/8`, `fd00::/8`: that network
//!   (IPv6 with ports in brackets: `[fd00::/8]:443`);
//!
//! and `PORTS` is `*` or a comma-separated list of ports and ranges: `443`, `8000-8999`,
//! `53,853`. Without `PORTS` every port matches.
//!
//! # One canonical form
//!
//! Destinations are decided on the addresses that will be dialed, in one form: an IP literal
//! in any spelling the C library accepts (`127.1`, `0x7f000001`, `[::ffff:127.0.0.1]`) is the
//! address it denotes ([`parse_ip_literal`]), and an IPv4-mapped IPv6 address is the IPv4
//! address it maps ([`canonical`]). Rules are normalised the same way: `::ffff:127.0.0.0/104`
//! is `127.0.0.0/8`, and a rule host spelled `0x7f.1` is the address `127.0.0.1`.
//!
//! The unspecified addresses `0.0.0.0` and `::` (and every spelling of them: `0`, `0x0`,
//! `::ffff:0.0.0.0`, or a name resolving to them) are dialed by Linux as this host itself.
//! A destination that is or resolves to one is refused, whatever the other rules say, unless
//! an allow rule names that very address (`0.0.0.0` or `0.0.0.0/32`, `::` or `::/128`);
//! `*`, `0.0.0.0/0` and [`Policy::allow_all`] do not.
//!
//! ```
//! use streamproxy_proxy::policy::{Policy, Rule};
//!
//! let policy = Policy::new(
//!     ["10.0.0.0/8:22,443".parse::<Rule>()?, "*.svc.internal".parse()?],
//!     ["10.0.0.1".parse()?],
//! )?;
//! assert!(policy.check(&"10.2.3.4:443".parse()?, &["10.2.3.4".parse()?]).is_ok());
//! assert!(policy.check(&"10.0.0.1:443".parse()?, &["10.0.0.1".parse()?]).is_err());
//! assert!(policy.check(&"10.2.3.4:80".parse()?, &["10.2.3.4".parse()?]).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::destination::Destination;

/// Why a rule could not be parsed or a policy built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The rule's host part is empty.
    #[error("rule `{rule}`: the host part is empty")]
    EmptyHost {
        /// The rule as given.
        rule: String,
    },
    /// The rule's host part is neither a name, a wildcard, an address nor a network.
    #[error("rule `{rule}`: `{host}` is not a host name, `*.suffix`, IP address or CIDR network")]
    InvalidHost {
        /// The rule as given.
        rule: String,
        /// The host part.
        host: String,
    },
    /// An IPv6 rule without brackets whose last group reads as a port (`::1:443`): it would
    /// mean the address `::1:443` on every port, most likely not what was meant.
    #[error(
        "rule `{rule}`: ambiguous IPv6 rule; write `[{address}]:{port}` for port {port} of {address}, or `[{rule}]` for the address {rule} on every port"
    )]
    AmbiguousIpv6 {
        /// The rule as given.
        rule: String,
        /// The address before the last group.
        address: String,
        /// The last group, read as a port.
        port: String,
    },
    /// The rule's port part is not `*`, a port or a range.
    #[error(
        "rule `{rule}`: `{ports}` is not `*` or a list of ports and ranges like `80,8000-8999`"
    )]
    InvalidPorts {
        /// The rule as given.
        rule: String,
        /// The port part.
        ports: String,
    },
    /// A policy without allow rules that is not explicitly open.
    #[error("no allow rule: give at least one allow rule, or allow every destination explicitly")]
    NoAllowRule,
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A deny rule matches the destination's name or one of its addresses.
    #[error("destination {host:?} port {port} is denied by rule `{rule}`")]
    Denied {
        /// The destination host.
        host: String,
        /// The destination port.
        port: u16,
        /// The deny rule that matched.
        rule: String,
    },
    /// The destination is, or resolves to, the unspecified address (`0.0.0.0` or `::`), which
    /// Linux dials as this host itself, and no allow rule names that address explicitly.
    #[error(
        "destination {host:?} port {port} is the unspecified address {addr} (this host); refused unless a rule names {addr} itself"
    )]
    Unspecified {
        /// The destination host.
        host: String,
        /// The destination port.
        port: u16,
        /// The unspecified address it is or resolves to.
        addr: IpAddr,
    },
    /// No allow rule matches the destination's name, nor all of its addresses.
    #[error("destination {host:?} port {port} is not allowed by any rule")]
    NotAllowed {
        /// The destination host.
        host: String,
        /// The destination port.
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Suffix(String),
    Net(IpNet),
}

/// One allow or deny rule: a host pattern and a set of ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    host: HostPattern,
    /// Inclusive ranges; empty means every port.
    ports: Vec<(u16, u16)>,
}

impl Rule {
    /// The rule as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Whether the rule matches the destination by its name (or IP literal).
    fn matches_name(&self, host: &str, port: u16) -> bool {
        if !self.port_matches(port) {
            return false;
        }
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => normalize(host) == *name,
            HostPattern::Suffix(suffix) => {
                let host = normalize(host);
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            HostPattern::Net(net) => parse_ip_literal(host).is_some_and(|ip| net.contains(&ip)),
        }
    }

    /// Whether the rule matches one resolved address of the destination.
    fn matches_addr(&self, addr: IpAddr, port: u16) -> bool {
        if !self.port_matches(port) {
            return false;
        }
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Net(net) => net.contains(&canonical(addr)),
            HostPattern::Exact(_) | HostPattern::Suffix(_) => false,
        }
    }
}

impl Rule {
    /// Whether the rule names exactly the unspecified address `addr` (`0.0.0.0`, `::`) and
    /// matches `port`: the only way to allow a destination that dials this host that way.
    fn names_unspecified(&self, addr: IpAddr, port: u16) -> bool {
        self.port_matches(port)
            && matches!(&self.host, HostPattern::Net(net)
                if net.prefix_len() == net.max_prefix_len() && net.addr() == addr)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let text = rule.trim();
        refuse_ambiguous_ipv6(text)?;
        let (host, ports) = split_rule(text);
        let host_pattern = parse_host(text, host)?;
        let ports = match ports {
            None => Vec::new(),
            Some(p) => parse_ports(text, p)?,
        };
        Ok(Rule {
            text: text.to_owned(),
            host: host_pattern,
            ports,
        })
    }
}

/// Refuses an unbracketed IPv6 rule whose last group could be a port: `::1:443` and
/// `2001:db8::1:22` would read as the addresses `::1:443` and `2001:db8::1:22` on every port,
/// though `[::1]:443` was most likely meant. `::1`, `fe80::1` and full eight-group addresses
/// are not ambiguous: without their last group they are not an address.
fn refuse_ambiguous_ipv6(text: &str) -> Result<(), PolicyError> {
    if text.starts_with('[') || text.matches(':').count() < 2 || text.contains('/') {
        return Ok(());
    }
    let Some((address, last)) = text.rsplit_once(':') else {
        return Ok(());
    };
    let port_like = !last.is_empty()
        && last.len() <= 5
        && last.bytes().all(|b| b.is_ascii_digit())
        && last.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if port_like && !address.ends_with(':') && address.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(PolicyError::AmbiguousIpv6 {
            rule: text.into(),
            address: address.into(),
            port: last.into(),
        });
    }
    Ok(())
}

/// Splits `HOST[:PORTS]`, with IPv6 hosts either bracketed or without ports.
fn split_rule(text: &str) -> (&str, Option<&str>) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
        return (text, None);
    }
    match text.matches(':').count() {
        1 => {
            let (host, ports) = text.split_once(':').unwrap_or((text, ""));
            (host, Some(ports))
        }
        _ => (text, None),
    }
}

fn parse_host(rule: &str, host: &str) -> Result<HostPattern, PolicyError> {
    if host.is_empty() {
        return Err(PolicyError::EmptyHost { rule: rule.into() });
    }
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Ok(net) = host.parse::<IpNet>() {
        return Ok(HostPattern::Net(canonical_net(net.trunc())));
    }
    if let Some(ip) = parse_ip_literal(host) {
        return Ok(HostPattern::Net(IpNet::from(ip)));
    }
    let invalid = || PolicyError::InvalidHost {
        rule: rule.into(),
        host: host.into(),
    };
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(s) => (true, s),
        None => (false, host),
    };
    let name = normalize(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(invalid());
    }
    Ok(if suffix {
        HostPattern::Suffix(name)
    } else {
        HostPattern::Exact(name)
    })
}

fn parse_ports(rule: &str, ports: &str) -> Result<Vec<(u16, u16)>, PolicyError> {
    let invalid = || PolicyError::InvalidPorts {
        rule: rule.into(),
        ports: ports.into(),
    };
    if ports == "*" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in ports.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().map_err(|_| invalid())?;
        let hi: u16 = hi.parse().map_err(|_| invalid())?;
        if lo == 0 || lo > hi {
            return Err(invalid());
        }
        out.push((lo, hi));
    }
    Ok(out)
}

/// Lower-cases a name and drops one trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// An IP literal as a header may carry it, in its [canonical] form: IPv6 with or
/// without brackets, and IPv4 in every spelling the C library's `inet_aton` accepts (`0`,
/// `127.1`, `0x7f.0.0.1`, `017700000001`, ...), so that such a host is decided, and dialed,
/// as the address it denotes and never handed to a resolver.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    parse_inet_aton(bare).map(IpAddr::V4)
}

/// The legacy IPv4 forms: one to four parts, each decimal, octal (leading `0`) or hex (`0x`);
/// the last part fills the remaining bytes (`a`, `a.b` with 24 bits, `a.b.c` with 16 bits).
fn parse_inet_aton(text: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(u32::from_str_radix(digits, radix).ok()?);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|&v| v > 0xff) {
        return None;
    }
    let last_bits = 32 - 8 * leading.len() as u32;
    if last_bits < 32 && *last >= 1 << last_bits {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &v)| acc | v << (24 - 8 * i as u32));
    Some(std::net::Ipv4Addr::from(high | last))
}

/// The one form in which addresses are decided and dialed: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is the IPv4 address it maps, which is what Linux dials.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A network inside `::ffff:0:0/96` is the IPv4 network it maps (`::ffff:127.0.0.0/104` is
/// `127.0.0.0/8`); written in the mapped form it could never match, as addresses are decided
/// in their canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    net
}

/// Allow and deny rules for destinations. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    allow_all: bool,
}

impl Policy {
    /// A policy from allow and deny rules; fails without at least one allow rule.
    pub fn new(
        allow: impl IntoIterator<Item = Rule>,
        deny: impl IntoIterator<Item = Rule>,
    ) -> Result<Policy, PolicyError> {
        let allow: Vec<Rule> = allow.into_iter().collect();
        if allow.is_empty() {
            return Err(PolicyError::NoAllowRule);
        }
        Ok(Policy {
            allow,
            deny: deny.into_iter().collect(),
            allow_all: false,
        })
    }

    /// A policy that allows every destination except those matching `deny`: the behaviour
    /// of the original implementation, for drop-in compatibility.
    pub fn allow_all(deny: impl IntoIterator<Item = Rule>) -> Policy {
        Policy {
            allow: Vec::new(),
            deny: deny.into_iter().collect(),
            allow_all: true,
        }
    }

    /// Whether this policy allows every destination not denied.
    pub fn is_allow_all(&self) -> bool {
        self.allow_all
    }

    /// Checks a destination by name only, before resolving it: refuses names and IP literals
    /// that a deny rule matches, so that denied names are never even resolved.
    pub fn check_name(&self, destination: &Destination) -> Result<(), Refusal> {
        let (host, port) = (destination.host(), destination.port());
        match self.deny.iter().find(|r| r.matches_name(host, port)) {
            Some(rule) => Err(Refusal::Denied {
                host: host.into(),
                port,
                rule: rule.text.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks a destination with the addresses it resolved to (the addresses that will be
    /// dialed, in [canonical] form). Refused if a deny rule matches the name or any
    /// address, or if an address is unspecified (`0.0.0.0`, `::`: this host) and no allow rule
    /// names that address exactly; otherwise allowed if an allow rule matches the name, or
    /// every address is matched by some allow rule.
    pub fn check(&self, destination: &Destination, addrs: &[IpAddr]) -> Result<(), Refusal> {
        self.check_name(destination)?;
        let (host, port) = (destination.host(), destination.port());
        let addrs: Vec<IpAddr> = addrs.iter().map(|&a| canonical(a)).collect();
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| addrs.iter().any(|&a| r.matches_addr(a, port)))
        {
            return Err(Refusal::Denied {
                host: host.into(),
                port,
                rule: rule.text.clone(),
            });
        }
        if let Some(&addr) = addrs.iter().find(|a| a.is_unspecified())
            && !self.allow.iter().any(|r| r.names_unspecified(addr, port))
        {
            return Err(Refusal::Unspecified {
                host: host.into(),
                port,
                addr,
            });
        }
        if self.allow_all || self.allow.iter().any(|r| r.matches_name(host, port)) {
            return Ok(());
        }
        let every_addr_allowed = !addrs.is_empty()
            && addrs
                .iter()
                .all(|&a| self.allow.iter().any(|r| r.matches_addr(a, port)));
        if every_addr_allowed {
            Ok(())
        } else {
            Err(Refusal::NotAllowed {
                host: host.into(),
                port,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(host: &str, port: u16) -> Destination {
        Destination::unchecked(host, port)
    }

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_rule_form() {
        for ok in [
            "*",
            "*:443",
            "example.com",
            "Example.COM.:80",
            "*.svc.internal:8000-8999,53",
            "10.0.0.0/8",
            "10.1.2.3:22",
            "::1",
            "fd00::/8",
            "[fd00::/8]:443",
            "[::1]:*",
        ] {
            rule(ok);
        }
        assert!(matches!(
            "".parse::<Rule>(),
            Err(PolicyError::EmptyHost { .. })
        ));
        assert!(matches!(
            ":80".parse::<Rule>(),
            Err(PolicyError::EmptyHost { .. })
        ));
        assert!(matches!(
            "exa mple.com".parse::<Rule>(),
            Err(PolicyError::InvalidHost { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Rule>(),
            Err(PolicyError::InvalidHost { .. })
        ));
        for bad in [
            "a.com:0",
            "a.com:90-80",
            "a.com:http",
            "a.com:70000",
            "a.com:",
        ] {
            assert!(
                matches!(bad.parse::<Rule>(), Err(PolicyError::InvalidPorts { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_to_build_without_allow_rules() {
        assert_eq!(
            Policy::new([], [rule("10.0.0.0/8")]).err(),
            Some(PolicyError::NoAllowRule)
        );
    }

    #[test]
    fn names_match_exactly_or_by_suffix() {
        let p = Policy::new([rule("db.local:5432"), rule("*.svc.internal")], []).expect("rules");
        assert!(p.check(&d("db.local", 5432), &[ip("192.0.2.1")]).is_ok());
        assert!(p.check(&d("DB.Local.", 5432), &[ip("192.0.2.1")]).is_ok());
        assert!(p.check(&d("db.local", 5433), &[ip("192.0.2.1")]).is_err());
        assert!(p.check(&d("a.svc.internal", 1), &[ip("192.0.2.1")]).is_ok());
        assert!(
            p.check(&d("a.b.svc.internal", 1), &[ip("192.0.2.1")])
                .is_ok()
        );
        assert!(p.check(&d("svc.internal", 1), &[ip("192.0.2.1")]).is_err());
        assert!(
            p.check(&d("evilsvc.internal", 1), &[ip("192.0.2.1")])
                .is_err()
        );
    }

    #[test]
    fn a_name_that_resolves_into_a_denied_network_is_refused() {
        let p = Policy::allow_all([rule("127.0.0.0/8"), rule("169.254.0.0/16")]);
        assert!(matches!(
            p.check(
                &d("innocent.example", 80),
                &[ip("93.184.216.34"), ip("127.0.0.1")]
            ),
            Err(Refusal::Denied { .. })
        ));
        assert!(
            p.check(&d("innocent.example", 80), &[ip("93.184.216.34")])
                .is_ok()
        );
        // IPv4-mapped IPv6 is the IPv4 address it maps.
        assert!(p.check(&d("x", 80), &[ip("::ffff:127.0.0.1")]).is_err());
        assert!(p.check(&d("[::ffff:127.0.0.1]", 80), &[]).is_err());
        assert!(p.check_name(&d("127.0.0.5", 80)).is_err());
    }

    #[test]
    fn ip_literals_are_parsed_in_every_libc_spelling() {
        for (text, want) in [
            ("0", "0.0.0.0"),
            ("0.0", "0.0.0.0"),
            ("0x0", "0.0.0.0"),
            ("00", "0.0.0.0"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.01", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7F000001", "127.0.0.1"),
            ("10.65535", "10.0.255.255"),
            ("::", "::"),
            ("[::]", "::"),
            ("::ffff:0.0.0.0", "0.0.0.0"),
            ("::ffff:0:0", "0.0.0.0"),
            ("[::FFFF:7f00:1]", "127.0.0.1"),
            ("0:0:0:0:0:0:0:1", "::1"),
        ] {
            assert_eq!(parse_ip_literal(text), Some(ip(want)), "{text}");
        }
        for not_ip in [
            "",
            ".",
            "1.",
            ".1",
            "1..2",
            "0x",
            "08",
            "1.2.3.4.5",
            "256.1",
            "1.2.3.256",
            "1.16777216",
            "4294967296",
            "example.com",
            "1e3",
            "-1",
            "+1",
            "0x1g",
            "[1.2.3.4]x",
        ] {
            assert_eq!(parse_ip_literal(not_ip), None, "{not_ip}");
        }
    }

    #[test]
    fn the_unspecified_address_is_refused_unless_a_rule_names_it() {
        let open = Policy::allow_all([rule("127.0.0.0/8"), rule("::1")]);
        let star = Policy::new([rule("*"), rule("0.0.0.0/0"), rule("::/0")], []).expect("rules");
        for host in [
            "0",
            "0.0.0.0",
            "0x0",
            "::",
            "[::]",
            "::ffff:0.0.0.0",
            "::ffff:0:0",
        ] {
            let addr = parse_ip_literal(host).expect("a literal");
            for p in [&open, &star] {
                assert!(
                    matches!(
                        p.check(&d(host, 80), &[addr]),
                        Err(Refusal::Unspecified { .. })
                    ),
                    "{host}"
                );
            }
        }
        // A name resolving to it, among other addresses, is refused just the same.
        assert!(matches!(
            open.check(
                &d("zero.example", 80),
                &[ip("192.0.2.1"), ip("::ffff:0.0.0.0")]
            ),
            Err(Refusal::Unspecified { .. })
        ));
        let named = Policy::new([rule("0.0.0.0:80"), rule("[::]:80")], []).expect("rules");
        assert!(named.check(&d("0", 80), &[ip("0.0.0.0")]).is_ok());
        assert!(named.check(&d("::", 80), &[ip("::")]).is_ok());
        assert!(named.check(&d("0", 81), &[ip("0.0.0.0")]).is_err());
        // A deny rule covering it still wins.
        let denied = Policy::new([rule("0.0.0.0")], [rule("0.0.0.0/8")]).expect("rules");
        assert!(matches!(
            denied.check(&d("0", 80), &[ip("0.0.0.0")]),
            Err(Refusal::Denied { .. })
        ));
    }

    #[test]
    fn rules_in_mapped_or_legacy_form_are_normalised() {
        let p = Policy::allow_all([rule("::ffff:127.0.0.0/104"), rule("[::ffff:10.0.0.1]:22")]);
        assert!(p.check(&d("127.0.0.1", 80), &[ip("127.0.0.1")]).is_err());
        assert!(p.check(&d("127.9.9.9", 80), &[ip("127.9.9.9")]).is_err());
        assert!(p.check(&d("10.0.0.1", 22), &[ip("10.0.0.1")]).is_err());
        assert!(p.check(&d("10.0.0.1", 23), &[ip("10.0.0.1")]).is_ok());
        assert!(p.check(&d("128.0.0.1", 80), &[ip("128.0.0.1")]).is_ok());
        assert_eq!(rule("::ffff:127.0.0.0/104").host, rule("127.0.0.0/8").host);
        assert_eq!(rule("::ffff:0:0/96").host, rule("0.0.0.0/0").host);
        assert_eq!(rule("0x7f.1").host, rule("127.0.0.1").host);
        assert_eq!(rule("[::ffff:0.0.0.0]:80").host, rule("0.0.0.0").host);
    }

    #[test]
    fn addresses_are_allowed_only_when_every_one_is() {
        let p = Policy::new([rule("10.0.0.0/8")], []).expect("rules");
        assert!(
            p.check(&d("n", 80), &[ip("10.1.1.1"), ip("10.2.2.2")])
                .is_ok()
        );
        assert!(
            p.check(&d("n", 80), &[ip("10.1.1.1"), ip("11.0.0.1")])
                .is_err()
        );
        assert!(p.check(&d("n", 80), &[]).is_err());
        assert!(p.check(&d("10.9.9.9", 80), &[ip("10.9.9.9")]).is_ok());
    }

    #[test]
    fn deny_wins_over_allow_and_ports_narrow_rules() {
        let p = Policy::new([rule("*")], [rule("*:22"), rule("[fd00::/8]:443")]).expect("rules");
        assert!(p.check(&d("a", 22), &[ip("192.0.2.1")]).is_err());
        assert!(p.check(&d("a", 23), &[ip("192.0.2.1")]).is_ok());
        assert!(p.check(&d("fd00::1", 443), &[ip("fd00::1")]).is_err());
        assert!(p.check(&d("fd00::1", 444), &[ip("fd00::1")]).is_ok());
    }

    #[test]
    fn an_unbracketed_ipv6_rule_ending_in_a_port_like_group_is_refused() {
        for ambiguous in ["::1:443", "2001:db8::1:22", "fe80::2:8080"] {
            let e = ambiguous.parse::<Rule>().expect_err(ambiguous);
            assert!(
                matches!(e, PolicyError::AmbiguousIpv6 { .. }),
                "{ambiguous}: {e}"
            );
            assert!(e.to_string().contains('['), "{e}");
        }
        for fine in [
            "::1",
            "fe80::1",
            "2001:db8::5",
            "[::1]:443",
            "[::1:443]",
            "2001:db8:0:0:0:0:0:22",
            "::/0",
            "fd00::/8",
        ] {
            assert!(fine.parse::<Rule>().is_ok(), "{fine}");
        }
    }
}
