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
//! ```
//! use streamproxy_proxy::policy::{Policy, Rule};
//!
//! let policy = Policy::new(
//!     ["10.0.0.0/8:22,443".parse::<Rule>()?, "*.svc.internal".parse()?],
//!     ["10.0.0.1".parse()?],
//! )?;
//! assert!(policy.check("10.2.3.4", 443, &["10.2.3.4".parse()?]).is_ok());
//! assert!(policy.check("10.0.0.1", 443, &["10.0.0.1".parse()?]).is_err());
//! assert!(policy.check("10.2.3.4", 80, &["10.2.3.4".parse()?]).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

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
    #[error("destination {host}:{port} is denied by rule `{rule}`")]
    Denied {
        /// The destination host.
        host: String,
        /// The destination port.
        port: u16,
        /// The deny rule that matched.
        rule: String,
    },
    /// No allow rule matches the destination's name, nor all of its addresses.
    #[error("destination {host}:{port} is not allowed by any rule")]
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

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let text = rule.trim();
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
        return Ok(HostPattern::Net(net.trunc()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Net(IpNet::from(canonical(ip))));
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

/// An IP literal as a header may carry it (IPv6 with or without brackets).
pub(crate) fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses are checked as the IPv4 addresses they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
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
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Refusal> {
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
    /// dialed). Refused if a deny rule matches the name or any address; allowed if an allow
    /// rule matches the name, or every address is matched by some allow rule.
    pub fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), Refusal> {
        self.check_name(host, port)?;
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
        assert!(p.check("db.local", 5432, &[ip("192.0.2.1")]).is_ok());
        assert!(p.check("DB.Local.", 5432, &[ip("192.0.2.1")]).is_ok());
        assert!(p.check("db.local", 5433, &[ip("192.0.2.1")]).is_err());
        assert!(p.check("a.svc.internal", 1, &[ip("192.0.2.1")]).is_ok());
        assert!(p.check("a.b.svc.internal", 1, &[ip("192.0.2.1")]).is_ok());
        assert!(p.check("svc.internal", 1, &[ip("192.0.2.1")]).is_err());
        assert!(p.check("evilsvc.internal", 1, &[ip("192.0.2.1")]).is_err());
    }

    #[test]
    fn a_name_that_resolves_into_a_denied_network_is_refused() {
        let p = Policy::allow_all([rule("127.0.0.0/8"), rule("169.254.0.0/16")]);
        assert!(matches!(
            p.check(
                "innocent.example",
                80,
                &[ip("93.184.216.34"), ip("127.0.0.1")]
            ),
            Err(Refusal::Denied { .. })
        ));
        assert!(
            p.check("innocent.example", 80, &[ip("93.184.216.34")])
                .is_ok()
        );
        // IPv4-mapped IPv6 is the IPv4 address it maps.
        assert!(p.check("x", 80, &[ip("::ffff:127.0.0.1")]).is_err());
        assert!(p.check("[::ffff:127.0.0.1]", 80, &[]).is_err());
        assert!(p.check_name("127.0.0.5", 80).is_err());
    }

    #[test]
    fn addresses_are_allowed_only_when_every_one_is() {
        let p = Policy::new([rule("10.0.0.0/8")], []).expect("rules");
        assert!(p.check("n", 80, &[ip("10.1.1.1"), ip("10.2.2.2")]).is_ok());
        assert!(p.check("n", 80, &[ip("10.1.1.1"), ip("11.0.0.1")]).is_err());
        assert!(p.check("n", 80, &[]).is_err());
        assert!(p.check("10.9.9.9", 80, &[ip("10.9.9.9")]).is_ok());
    }

    #[test]
    fn deny_wins_over_allow_and_ports_narrow_rules() {
        let p = Policy::new([rule("*")], [rule("*:22"), rule("[fd00::/8]:443")]).expect("rules");
        assert!(p.check("a", 22, &[ip("192.0.2.1")]).is_err());
        assert!(p.check("a", 23, &[ip("192.0.2.1")]).is_ok());
        assert!(p.check("fd00::1", 443, &[ip("fd00::1")]).is_err());
        assert!(p.check("fd00::1", 444, &[ip("fd00::1")]).is_ok());
    }
}
