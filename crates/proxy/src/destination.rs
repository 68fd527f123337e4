//! Where a tunnel goes: a host and a port, as a header carries them.
//!
//! A [`Destination`] is built once, from a decoded header on the server or from `host:port`
//! text on the client, and travels unchanged to the policy, the resolver and the dialer. It is
//! the one place that parses `host:port` ([`split_host_port`]) and the one place that formats
//! it (IPv6 hosts in brackets).
//!
//! ```
//! use streamproxy_proxy::Destination;
//!
//! let d: Destination = "[2001:db8::7]:53".parse()?;
//! assert_eq!((d.host(), d.port()), ("2001:db8::7", 53));
//! assert_eq!(d.to_string(), "[2001:db8::7]:53");
//! # Ok::<(), streamproxy_proxy::DestinationError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use proto::{EncodeError, Header};

/// A destination host (a name or an IP literal, without brackets) and port. Health checks
/// have none: a destination always has a host and a port in `1..=65535`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    host: Box<str>,
    port: u16,
}

/// Why text is not a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DestinationError {
    /// No `:port` after the host, or an IPv6 host without brackets.
    #[error("`{text}` is not HOST:PORT (IPv6 addresses go in brackets: [2001:db8::7]:53)")]
    MissingPort {
        /// The text as given.
        text: String,
    },
    /// The host or the port cannot be carried by a header.
    #[error("`{text}` cannot be carried in a request header")]
    Invalid {
        /// The text as given.
        text: String,
        /// What the header refuses.
        #[source]
        source: EncodeError,
    },
}

impl Destination {
    /// A destination for `host` and `port`, if a header can carry them.
    pub fn new(host: &str, port: u16) -> Result<Destination, EncodeError> {
        Header::with_port(host, port)?;
        Ok(Destination {
            host: host.into(),
            port,
        })
    }

    /// The destination a decoded header asks for; `None` for a health check, which has none.
    pub fn from_header(header: &Header<'_>) -> Option<Destination> {
        (!header.host().is_empty() && header.port() != 0).then(|| Destination {
            host: header.host().into(),
            port: header.port(),
        })
    }

    /// A destination the header rules did not check, for tests of what lies behind them.
    #[cfg(test)]
    pub(crate) fn unchecked(host: &str, port: u16) -> Destination {
        Destination {
            host: host.into(),
            port,
        }
    }

    /// The host: a name or an IP literal, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request header for this destination.
    ///
    /// # Errors
    ///
    /// None for a destination built by [`Destination::new`], [`FromStr`] or
    /// [`Destination::from_header`]: they checked the same rules. The result is kept for
    /// callers that prefer an error to a promise.
    pub fn header(&self) -> Result<Header<'_>, EncodeError> {
        Header::with_port(&self.host, self.port)
    }
}

/// Splits `host:port` text at its last colon: `name:80`, `192.0.2.7:80`, `[2001:db8::7]:80`
/// (brackets removed). `None` when there is no port, or for an IPv6 host without brackets,
/// whose last group would read as a port.
pub fn split_host_port(text: &str) -> Option<(&str, &str)> {
    let (host, port) = text.rsplit_once(':')?;
    match host.strip_prefix('[') {
        Some(inner) => Some((inner.strip_suffix(']')?, port)),
        None if host.contains(':') || host.contains(']') => None,
        None => Some((host, port)),
    }
}

impl FromStr for Destination {
    type Err = DestinationError;

    /// `host:port`, `192.0.2.7:53` or `[2001:db8::7]:53` (the brackets are not sent).
    fn from_str(text: &str) -> Result<Destination, DestinationError> {
        let (host, port) = split_host_port(text).ok_or_else(|| DestinationError::MissingPort {
            text: text.to_owned(),
        })?;
        let invalid = |source| DestinationError::Invalid {
            text: text.to_owned(),
            source,
        };
        let header = Header::new(host, port).map_err(invalid)?;
        Ok(Destination {
            host: host.into(),
            port: header.port(),
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted and escaped as a string is: a host comes from a peer.
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_addresses_and_bracketed_ipv6() {
        let d: Destination = "echo.internal:7".parse().expect("name");
        assert_eq!((d.host(), d.port()), ("echo.internal", 7));
        let d: Destination = "192.0.2.7:53".parse().expect("ipv4");
        assert_eq!((d.host(), d.port()), ("192.0.2.7", 53));
        let d: Destination = "[2001:db8::7]:53".parse().expect("ipv6");
        assert_eq!((d.host(), d.port()), ("2001:db8::7", 53));
        assert_eq!(d.to_string(), "[2001:db8::7]:53");
        assert_eq!(format!("{d:?}"), "\"[2001:db8::7]:53\"");
        assert_eq!(d.header().expect("encodes").host(), "2001:db8::7");
    }

    #[test]
    fn display_and_parse_round_trip() {
        for text in [
            "a:1",
            "10.0.0.7:22",
            "[::1]:65535",
            "[fe80::1%eth0]:80",
            "x.y.z:443",
        ] {
            let d: Destination = text.parse().expect(text);
            assert_eq!(d.to_string(), text);
            assert_eq!(d.to_string().parse::<Destination>().expect("again"), d);
        }
    }

    #[test]
    fn rejects_what_a_header_cannot_carry() {
        for text in [
            "example.com",
            "2001:db8::7:53",
            "[::1:53",
            "::1]:53",
            "a]:53",
        ] {
            assert!(
                matches!(
                    text.parse::<Destination>(),
                    Err(DestinationError::MissingPort { .. })
                ),
                "{text}"
            );
        }
        for text in ["example.com:99999", ":80", "a:", "a:0", "a:-1", "a:8o"] {
            assert!(
                matches!(
                    text.parse::<Destination>(),
                    Err(DestinationError::Invalid { .. })
                ),
                "{text}"
            );
        }
        assert!(Destination::new("a", 0).is_err());
        assert!(Destination::new("", 80).is_err());
    }

    #[test]
    fn a_health_check_has_no_destination() {
        assert_eq!(Destination::from_header(&Header::health_check()), None);
        let header = Header::with_port("::1", 53).expect("valid");
        let d = Destination::from_header(&header).expect("a destination");
        assert_eq!(d.to_string(), "[::1]:53");
    }
}
