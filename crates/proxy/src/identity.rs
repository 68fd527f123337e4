//! Who a client is, and which destinations that identity may reach.
//!
//! A client's verified certificate becomes a [`PeerCertificate`]: its first subject common
//! name, its DNS and URI subject alternative names (SPIFFE IDs are URIs), and the SHA-256 of
//! its public key ([`SpkiPin`]). An [`IdentityRule`] names the certificates it speaks for
//! with [`ClientMatch`]es (`cn=ci-runner`, `dns=ci.example.internal`,
//! `uri=spiffe://example.org/ci`, `spki=HEX` or base64) and carries its own destination
//! [`Policy`] and PROXY protocol choice.
//!
//! [`Access`] is everything that decides who reaches what, swapped as one value by a reload:
//! the server's policy, the identity rules and the PROXY protocol default. Without identity
//! rules every client gets the server's policy. With identity rules a client gets the policy
//! of the first rule (in order) that one of whose matches fits its certificate, and a client
//! that no rule matches is refused: deny by default.
//!
//! This module decides only; it does no I/O and logs nothing. The admission path asks
//! [`Access::admit`] once per tunnel (and per health check), before any name lookup or dial.
//!
//! ```
//! use std::sync::Arc;
//! use streamproxy_proxy::identity::{Access, IdentityRule, PeerCertificate};
//! use streamproxy_proxy::policy::Policy;
//!
//! let ci = IdentityRule::new(
//!     "ci",
//!     ["cn=ci-runner".parse()?],
//!     Policy::new(["10.0.0.0/8:22".parse()?], [])?,
//! )?;
//! let access = Access::new(Policy::allow_all([])).identities([ci]);
//! let runner = PeerCertificate::for_names(Some("ci-runner"), [], []);
//! assert_eq!(access.admit(Some(&runner))?.rule(), Some("ci"));
//! let other = PeerCertificate::for_names(Some("laptop"), [], []);
//! assert!(access.admit(Some(&other)).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::policy::Policy;
use crate::proxy_protocol::ProxyProtocol;

/// The SHA-256 digest of a certificate's DER `SubjectPublicKeyInfo`: what an `spki=` match
/// pins. Written as 64 hex digits (colons allowed) or in base64 (`sha256//` prefix allowed,
/// as curl and HPKP write it); displayed in hex.
///
/// To compute it from a certificate:
/// `openssl x509 -in client.pem -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// The pin of a DER-encoded `SubjectPublicKeyInfo`.
    pub fn of_spki_der(spki: &[u8]) -> SpkiPin {
        SpkiPin(openssl::sha::sha256(spki))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

impl FromStr for SpkiPin {
    type Err = MatchError;

    fn from_str(text: &str) -> Result<SpkiPin, MatchError> {
        let bad = || MatchError::BadPin {
            text: text.to_owned(),
        };
        let hex: String = text.chars().filter(|&c| c != ':').collect();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut pin = [0u8; 32];
            for (i, byte) in pin.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
            }
            return Ok(SpkiPin(pin));
        }
        let b64 = text.strip_prefix("sha256//").unwrap_or(text);
        let bytes = base64_decode(b64).ok_or_else(bad)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(SpkiPin)
            .map_err(|_| bad())
    }
}

/// Decodes standard base64, padding optional; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    base64::Engine::decode(&STANDARD_ANY_PADDING, text).ok()
}

/// What identifies a client: read from its verified certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    common_name: Option<String>,
    dns_names: Vec<String>,
    uris: Vec<String>,
    spki: Option<SpkiPin>,
}

/// Why a client certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the client certificate")]
pub struct CertificateError(#[source] x509_parser::error::X509Error);

impl PeerCertificate {
    /// Reads a DER certificate: the first subject common name, the DNS and URI subject
    /// alternative names, and the SPKI pin.
    pub fn from_der(der: &[u8]) -> Result<PeerCertificate, CertificateError> {
        let summary = tls::CertificateSummary::from_der(&der.into()).map_err(CertificateError)?;
        let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
        for name in summary.sans {
            match name {
                tls::SubjectAltName::Dns(n) => dns_names.push(n),
                tls::SubjectAltName::Uri(u) => uris.push(u),
                _ => {}
            }
        }
        Ok(PeerCertificate {
            common_name: summary.common_name,
            dns_names,
            uris,
            spki: Some(SpkiPin::of_spki_der(&summary.public_key_info)),
        })
    }

    /// An identity from names alone (no key pin), for tests and embedding.
    pub fn for_names<'a>(
        common_name: Option<&str>,
        dns_names: impl IntoIterator<Item = &'a str>,
        uris: impl IntoIterator<Item = &'a str>,
    ) -> PeerCertificate {
        PeerCertificate {
            common_name: common_name.map(str::to_owned),
            dns_names: dns_names.into_iter().map(str::to_owned).collect(),
            uris: uris.into_iter().map(str::to_owned).collect(),
            spki: None,
        }
    }

    /// The same identity with this key pin.
    pub fn with_spki(mut self, pin: SpkiPin) -> PeerCertificate {
        self.spki = Some(pin);
        self
    }

    /// The first common name of the subject.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The DNS subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The URI subject alternative names.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The SHA-256 of the public key, when known.
    pub fn spki(&self) -> Option<SpkiPin> {
        self.spki
    }
}

impl fmt::Display for PeerCertificate {
    /// `cn=NAME dns=NAME uri=URI spki=HEX`, each part only when present: the keys a rule
    /// would match on, so that an operator can copy one into a rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(cn) = &self.common_name {
            write!(f, "cn={cn}")?;
            sep = " ";
        }
        for dns in &self.dns_names {
            write!(f, "{sep}dns={dns}")?;
            sep = " ";
        }
        for uri in &self.uris {
            write!(f, "{sep}uri={uri}")?;
            sep = " ";
        }
        if let Some(pin) = &self.spki {
            write!(f, "{sep}spki={pin}")?;
            sep = " ";
        }
        if sep.is_empty() {
            f.write_str("(no names)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// One way a rule recognises a client certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientMatch {
    /// `cn=NAME`: the subject's first common name, exactly (case-sensitive).
    CommonName(String),
    /// `dns=NAME`: a DNS subject alternative name (case-insensitive, a trailing dot ignored).
    DnsName(String),
    /// `uri=URI`: a URI subject alternative name, exactly (a SPIFFE ID such as
    /// `spiffe://example.org/ns/ci/sa/runner`).
    Uri(String),
    /// `spki=PIN`: the SHA-256 of the certificate's public key.
    Spki(SpkiPin),
}

/// Why text is not a [`ClientMatch`] or a rule cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// No `KIND=` before the value.
    #[error("`{text}` is not KIND=VALUE (cn=NAME, dns=NAME, uri=URI or spki=SHA256)")]
    MissingKind {
        /// The text as given.
        text: String,
    },
    /// A kind other than `cn`, `dns`, `uri` and `spki`.
    #[error("`{kind}` in `{text}` is not one of cn, dns, uri, spki")]
    UnknownKind {
        /// The kind as given.
        kind: String,
        /// The text as given.
        text: String,
    },
    /// Nothing after the `=`.
    #[error("`{text}` has an empty value")]
    Empty {
        /// The text as given.
        text: String,
    },
    /// The `spki` value is not a SHA-256 digest.
    #[error("`{text}` is not a SHA-256 digest (64 hex digits, or 44 characters of base64)")]
    BadPin {
        /// The text as given.
        text: String,
    },
    /// A rule without any match would never apply.
    #[error("identity rule `{name}` has no cn, dns, uri or spki to match")]
    NoMatch {
        /// The rule's name.
        name: String,
    },
    /// A rule without a name cannot be named in logs.
    #[error("an identity rule has an empty name")]
    NoName,
}

impl ClientMatch {
    /// A match of `kind` (`cn`, `dns`, `uri` or `spki`) for `value`, as a config file gives
    /// them apart.
    pub fn new(kind: &str, value: &str) -> Result<ClientMatch, MatchError> {
        let text = format!("{kind}={value}");
        if value.trim().is_empty() {
            return Err(MatchError::Empty { text });
        }
        match kind.trim().to_ascii_lowercase().as_str() {
            "cn" => Ok(ClientMatch::CommonName(value.to_owned())),
            "dns" => Ok(ClientMatch::DnsName(dns_form(value))),
            "uri" => Ok(ClientMatch::Uri(value.to_owned())),
            "spki" => value.trim().parse().map(ClientMatch::Spki),
            _ => Err(MatchError::UnknownKind {
                kind: kind.to_owned(),
                text,
            }),
        }
    }

    /// Whether `cert` fits this match.
    pub fn matches(&self, cert: &PeerCertificate) -> bool {
        match self {
            ClientMatch::CommonName(cn) => cert.common_name.as_deref() == Some(cn.as_str()),
            ClientMatch::DnsName(name) => cert.dns_names.iter().any(|n| dns_form(n) == *name),
            ClientMatch::Uri(uri) => cert.uris.iter().any(|u| u == uri),
            ClientMatch::Spki(pin) => cert.spki.as_ref() == Some(pin),
        }
    }
}

fn dns_form(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl FromStr for ClientMatch {
    type Err = MatchError;

    /// `cn=NAME`, `dns=NAME`, `uri=URI` or `spki=PIN`.
    fn from_str(text: &str) -> Result<ClientMatch, MatchError> {
        let (kind, value) = text
            .split_once('=')
            .ok_or_else(|| MatchError::MissingKind {
                text: text.to_owned(),
            })?;
        ClientMatch::new(kind, value)
    }
}

impl fmt::Display for ClientMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientMatch::CommonName(cn) => write!(f, "cn={cn}"),
            ClientMatch::DnsName(name) => write!(f, "dns={name}"),
            ClientMatch::Uri(uri) => write!(f, "uri={uri}"),
            ClientMatch::Spki(pin) => write!(f, "spki={pin}"),
        }
    }
}

impl fmt::Debug for ClientMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// A named set of client certificates and the destinations they may reach.
#[derive(Debug, Clone)]
pub struct IdentityRule {
    name: Arc<str>,
    matches: Vec<ClientMatch>,
    policy: Arc<Policy>,
    proxy_protocol: Option<ProxyProtocol>,
}

impl IdentityRule {
    /// A rule named `name` (for logs) for the certificates that fit any of `matches`,
    /// allowed the destinations `policy` allows. Fails without a name or without a match.
    pub fn new(
        name: &str,
        matches: impl IntoIterator<Item = ClientMatch>,
        policy: Policy,
    ) -> Result<IdentityRule, MatchError> {
        if name.trim().is_empty() {
            return Err(MatchError::NoName);
        }
        let matches: Vec<ClientMatch> = matches.into_iter().collect();
        if matches.is_empty() {
            return Err(MatchError::NoMatch {
                name: name.to_owned(),
            });
        }
        Ok(IdentityRule {
            name: name.into(),
            matches,
            policy: Arc::new(policy),
            proxy_protocol: None,
        })
    }

    /// Whether this rule's tunnels send a PROXY protocol header; `None` (the default) follows
    /// the server's setting.
    pub fn proxy_protocol(mut self, mode: Option<ProxyProtocol>) -> IdentityRule {
        self.proxy_protocol = mode;
        self
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matches, any of which selects this rule.
    pub fn matches(&self) -> &[ClientMatch] {
        &self.matches
    }

    /// The destinations this rule allows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether `cert` fits any of the rule's matches.
    pub fn applies_to(&self, cert: &PeerCertificate) -> bool {
        self.matches.iter().any(|m| m.matches(cert))
    }
}

/// Who may reach what: the server's policy, the identity rules and the PROXY protocol
/// default. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Access {
    policy: Arc<Policy>,
    identities: Vec<IdentityRule>,
    proxy_protocol: ProxyProtocol,
}

/// What a client was granted: the policy its destinations are checked against, and whether
/// its tunnels carry a PROXY protocol header.
#[derive(Debug, Clone)]
pub struct Grant {
    rule: Option<Arc<str>>,
    policy: Arc<Policy>,
    proxy_protocol: ProxyProtocol,
}

impl Grant {
    /// The name of the identity rule that matched; `None` without identity rules.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// The policy the client's destinations are checked against.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Whether the client's tunnels send a PROXY protocol header to the destination.
    pub fn proxy_protocol(&self) -> ProxyProtocol {
        self.proxy_protocol
    }
}

/// Why a client was refused by the identity rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityRefusal {
    /// Identity rules exist and none matches the certificate.
    #[error("no identity rule matches the client certificate ({identity})")]
    NoRule {
        /// The certificate's names and key pin.
        identity: PeerCertificate,
    },
    /// Identity rules exist and the client's certificate could not be read.
    #[error("identity rules exist and the client certificate could not be read")]
    Unreadable,
}

impl Access {
    /// Every client may reach what `policy` allows; no PROXY protocol header.
    pub fn new(policy: Policy) -> Access {
        Access {
            policy: Arc::new(policy),
            identities: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
        }
    }

    /// Replaces the identity rules. With any, a client reaches only what the first rule
    /// matching its certificate allows, and a client no rule matches is refused.
    pub fn identities(mut self, rules: impl IntoIterator<Item = IdentityRule>) -> Access {
        self.identities = rules.into_iter().collect();
        self
    }

    /// Whether tunnels send a PROXY protocol header, unless their identity rule says.
    pub fn proxy_protocol(mut self, mode: ProxyProtocol) -> Access {
        self.proxy_protocol = mode;
        self
    }

    /// The server's policy (for every client when there are no identity rules).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The identity rules, in the order they are tried.
    pub fn identity_rules(&self) -> &[IdentityRule] {
        &self.identities
    }

    /// The server's PROXY protocol setting.
    pub fn default_proxy_protocol(&self) -> ProxyProtocol {
        self.proxy_protocol
    }

    /// What the client with `cert` (`None`: a certificate that could not be read) may reach.
    pub fn admit(&self, cert: Option<&PeerCertificate>) -> Result<Grant, IdentityRefusal> {
        if self.identities.is_empty() {
            return Ok(Grant {
                rule: None,
                policy: Arc::clone(&self.policy),
                proxy_protocol: self.proxy_protocol,
            });
        }
        let cert = cert.ok_or(IdentityRefusal::Unreadable)?;
        match self.identities.iter().find(|rule| rule.applies_to(cert)) {
            Some(rule) => Ok(Grant {
                rule: Some(Arc::clone(&rule.name)),
                policy: Arc::clone(&rule.policy),
                proxy_protocol: rule.proxy_protocol.unwrap_or(self.proxy_protocol),
            }),
            None => Err(IdentityRefusal::NoRule {
                identity: cert.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Destination;

    fn policy(allow: &str) -> Policy {
        Policy::new([allow.parse().expect("rule")], []).expect("policy")
    }

    fn rule(name: &str, matches: &[&str], allow: &str) -> IdentityRule {
        IdentityRule::new(
            name,
            matches.iter().map(|m| m.parse().expect("match")),
            policy(allow),
        )
        .expect("rule")
    }

    const PIN_HEX: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    fn pin() -> SpkiPin {
        PIN_HEX.parse().expect("pin")
    }

    #[test]
    fn parses_each_kind_of_match() {
        assert_eq!(
            "cn=ci-runner".parse::<ClientMatch>().expect("cn"),
            ClientMatch::CommonName("ci-runner".into())
        );
        assert_eq!(
            "dns=CI.Example.Internal."
                .parse::<ClientMatch>()
                .expect("dns"),
            ClientMatch::DnsName("ci.example.internal".into())
        );
        assert_eq!(
            "uri=spiffe://example.org/ns/ci/sa/runner"
                .parse::<ClientMatch>()
                .expect("uri"),
            ClientMatch::Uri("spiffe://example.org/ns/ci/sa/runner".into())
        );
        assert_eq!(
            format!("spki={PIN_HEX}")
                .parse::<ClientMatch>()
                .expect("spki"),
            ClientMatch::Spki(pin())
        );
        // A value may itself contain `=`.
        assert_eq!(
            "cn=a=b".parse::<ClientMatch>().expect("cn"),
            ClientMatch::CommonName("a=b".into())
        );
    }

    #[test]
    fn rejects_matches_that_are_not_kind_equals_value() {
        assert!(matches!(
            "ci-runner".parse::<ClientMatch>(),
            Err(MatchError::MissingKind { .. })
        ));
        assert!(matches!(
            "ou=ops".parse::<ClientMatch>(),
            Err(MatchError::UnknownKind { kind, .. }) if kind == "ou"
        ));
        assert!(matches!(
            "cn=".parse::<ClientMatch>(),
            Err(MatchError::Empty { .. })
        ));
        for bad in ["spki=abc", "spki=zz", &format!("spki={PIN_HEX}00")] {
            assert!(
                matches!(bad.parse::<ClientMatch>(), Err(MatchError::BadPin { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn spki_pins_read_hex_with_colons_and_base64() {
        let with_colons: String = PIN_HEX
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(with_colons.parse::<SpkiPin>().expect("colons"), pin());
        assert_eq!(
            PIN_HEX.to_uppercase().parse::<SpkiPin>().expect("upper"),
            pin()
        );
        // The same 32 bytes in base64, as `openssl dgst -binary | base64` prints them.
        let b64 = "ChssPU5fYHGCk6S1xtfo+QobLD1OX2BxgpOktcbX6Pk=";
        assert_eq!(b64.parse::<SpkiPin>().expect("base64"), pin());
        assert_eq!(
            format!("sha256//{b64}")
                .parse::<SpkiPin>()
                .expect("curl form"),
            pin()
        );
        assert_eq!(pin().to_string(), PIN_HEX);
        // 31 bytes of base64 is no pin.
        assert!(
            "ChssPU5fYHGCk6S1xtfo+QobLD1OX2BxgpOktcbX6A=="
                .parse::<SpkiPin>()
                .is_err()
        );
        // Without its padding it is the same pin; with non-zero bits past the last byte, or
        // characters outside the alphabet, it is none.
        assert_eq!(
            b64.trim_end_matches('=')
                .parse::<SpkiPin>()
                .expect("unpadded"),
            pin()
        );
        for bad in [
            "ChssPU5fYHGCk6S1xtfo+QobLD1OX2BxgpOktcbX6Pl=",
            "ChssPU5fYHGCk6S1xtfo-QobLD1OX2BxgpOktcbX6Pk=",
        ] {
            assert!(bad.parse::<SpkiPin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_kind_matches_only_its_own_part_of_the_certificate() {
        let cert = PeerCertificate::for_names(
            Some("ci-runner"),
            ["runner.ci.internal"],
            ["spiffe://example.org/ci"],
        )
        .with_spki(pin());
        for yes in [
            "cn=ci-runner",
            "dns=runner.ci.internal",
            "dns=RUNNER.ci.internal.",
            "uri=spiffe://example.org/ci",
            &format!("spki={PIN_HEX}"),
        ] {
            assert!(
                yes.parse::<ClientMatch>().expect(yes).matches(&cert),
                "{yes}"
            );
        }
        for no in [
            "cn=CI-RUNNER",
            "cn=runner.ci.internal",
            "dns=ci-runner",
            "dns=ci.internal",
            "uri=spiffe://example.org/ci/",
            "uri=spiffe://example.org",
            "cn=spiffe://example.org/ci",
            "spki=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(!no.parse::<ClientMatch>().expect(no).matches(&cert), "{no}");
        }
    }

    #[test]
    fn without_identity_rules_everyone_gets_the_server_policy() {
        let access = Access::new(policy("10.0.0.0/8")).proxy_protocol(ProxyProtocol::V2);
        let grant = access.admit(None).expect("admitted");
        assert_eq!(grant.rule(), None);
        assert_eq!(grant.proxy_protocol(), ProxyProtocol::V2);
        let d: Destination = "10.1.2.3:22".parse().expect("destination");
        assert!(
            grant
                .policy()
                .check(&d, &["10.1.2.3".parse().expect("ip")])
                .is_ok()
        );
    }

    #[test]
    fn with_identity_rules_the_first_match_decides_and_others_are_refused() {
        let access = Access::new(Policy::allow_all([])).identities([
            rule(
                "ci",
                &["cn=ci-runner", "uri=spiffe://example.org/ci"],
                "10.0.0.0/8:22",
            ),
            rule("ops", &["dns=ops.example.internal"], "*"),
            rule("ci-too", &["cn=ci-runner"], "*"),
        ]);
        let by_cn = PeerCertificate::for_names(Some("ci-runner"), [], []);
        let grant = access.admit(Some(&by_cn)).expect("ci");
        assert_eq!(grant.rule(), Some("ci"));
        let d: Destination = "10.1.2.3:443".parse().expect("destination");
        assert!(
            grant
                .policy()
                .check(&d, &["10.1.2.3".parse().expect("ip")])
                .is_err(),
            "the first matching rule's policy applies, not a later one's"
        );
        let by_uri = PeerCertificate::for_names(None, [], ["spiffe://example.org/ci"]);
        assert_eq!(access.admit(Some(&by_uri)).expect("ci").rule(), Some("ci"));
        let ops = PeerCertificate::for_names(Some("alice"), ["ops.example.internal"], []);
        assert_eq!(access.admit(Some(&ops)).expect("ops").rule(), Some("ops"));
        let stranger = PeerCertificate::for_names(Some("laptop"), ["laptop.lan"], []);
        let refused = access.admit(Some(&stranger)).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "no identity rule matches the client certificate (cn=laptop dns=laptop.lan)"
        );
        assert_eq!(
            access.admit(None).expect_err("refused"),
            IdentityRefusal::Unreadable
        );
    }

    #[test]
    fn a_rule_may_choose_its_own_proxy_protocol() {
        let access = Access::new(Policy::allow_all([]))
            .proxy_protocol(ProxyProtocol::V2)
            .identities([
                rule("plain", &["cn=a"], "*").proxy_protocol(Some(ProxyProtocol::Off)),
                rule("default", &["cn=b"], "*"),
            ]);
        let a = PeerCertificate::for_names(Some("a"), [], []);
        let b = PeerCertificate::for_names(Some("b"), [], []);
        assert_eq!(
            access.admit(Some(&a)).expect("a").proxy_protocol(),
            ProxyProtocol::Off
        );
        assert_eq!(
            access.admit(Some(&b)).expect("b").proxy_protocol(),
            ProxyProtocol::V2
        );
    }

    #[test]
    fn rules_need_a_name_and_a_match() {
        assert_eq!(
            IdentityRule::new("ci", [], policy("*")).expect_err("no match"),
            MatchError::NoMatch { name: "ci".into() }
        );
        assert_eq!(
            IdentityRule::new(" ", [ClientMatch::CommonName("a".into())], policy("*"))
                .expect_err("no name"),
            MatchError::NoName
        );
    }

    #[test]
    fn reads_names_and_key_pin_from_a_real_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["runner.ci.internal".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ci-runner");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ci".try_into().expect("uri"),
        ));
        let cert = params.self_signed(&key).expect("cert");
        let peer = PeerCertificate::from_der(cert.der()).expect("parsed");
        assert_eq!(peer.common_name(), Some("ci-runner"));
        assert_eq!(peer.dns_names(), ["runner.ci.internal"]);
        assert_eq!(peer.uris(), ["spiffe://example.org/ci"]);
        assert_eq!(
            peer.spki(),
            Some(SpkiPin::of_spki_der(
                &rcgen::PublicKeyData::subject_public_key_info(&key)
            ))
        );
        assert!(PeerCertificate::from_der(b"not a certificate").is_err());
    }
}
