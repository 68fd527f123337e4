//! Where a forwarder's server is: an address, or a name looked up again for every tunnel.
//!
//! A server behind dynamic DNS, or moved to a new address, is followed without restarting
//! the client: each new tunnel resolves the name anew, the way `ssh -L` or the Go original's
//! `net.Dial` do. An address literal never reaches a resolver.
//!
//! ```
//! use streamproxy_proxy::forward::ServerAddr;
//!
//! let fixed: ServerAddr = "192.0.2.1:8890".parse()?;
//! assert_eq!(fixed.socket_addr(), Some("192.0.2.1:8890".parse()?));
//! let named: ServerAddr = "agent.example:8890".parse()?;
//! assert_eq!(named.socket_addr(), None);
//! assert_eq!(named.to_string(), "agent.example:8890");
//! assert!("agent.example".parse::<ServerAddr>().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::client::ResolveError;
use crate::dial::Resolve;

/// The server a forwarder opens its tunnels to: a socket address, or `host:port` resolved
/// for every tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr(Repr);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    Addr(SocketAddr),
    Name { host: Arc<str>, port: u16 },
}

/// Why a server address cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server `{text}`: expected HOST:PORT with a port from 1 to 65535")]
pub struct ServerAddrError {
    text: String,
}

impl ServerAddr {
    /// The address, when the server was given as one (no resolution ever happens then).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Repr::Addr(addr) => Some(*addr),
            Repr::Name { .. } => None,
        }
    }

    /// The server's addresses, in the resolver's order: the address itself, or what
    /// `resolver` answers for the name now.
    pub async fn resolve(&self, resolver: &dyn Resolve) -> Result<Vec<SocketAddr>, ResolveError> {
        let (host, port) = match &self.0 {
            Repr::Addr(addr) => return Ok(vec![*addr]),
            Repr::Name { host, port } => (host, *port),
        };
        let ips = resolver
            .resolve(host)
            .await
            .map_err(|source| ResolveError::Failed {
                server: self.to_string(),
                source,
            })?;
        if ips.is_empty() {
            return Err(ResolveError::NoAddress {
                server: self.to_string(),
            });
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> ServerAddr {
        ServerAddr(Repr::Addr(addr))
    }
}

impl FromStr for ServerAddr {
    type Err = ServerAddrError;

    /// `192.0.2.1:8890`, `[2001:db8::1]:8890` or `agent.example:8890`.
    fn from_str(s: &str) -> Result<ServerAddr, ServerAddrError> {
        let invalid = || ServerAddrError { text: s.to_owned() };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return match addr.port() {
                0 => Err(invalid()),
                _ => Ok(ServerAddr(Repr::Addr(addr))),
            };
        }
        // Brackets are for IPv6 literals, which parsed above.
        let (host, port) = crate::destination::split_host_port(s)
            .filter(|_| !s.starts_with('['))
            .ok_or_else(invalid)?;
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(invalid()),
            Ok(port) => port,
        };
        let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(name_like) {
            return Err(invalid());
        }
        Ok(ServerAddr(Repr::Name {
            host: host.into(),
            port,
        }))
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Addr(addr) => addr.fmt(f),
            Repr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A forwarder's server with its resolver and the addresses of the last lookup that worked,
/// shared by the forwarder's tunnels: when the resolver fails (DNS down), tunnels go on to the
/// last known addresses instead of failing.
pub(crate) struct ServerLookup {
    server: ServerAddr,
    resolver: Arc<dyn Resolve>,
    last_good: Mutex<Option<Vec<SocketAddr>>>,
}

impl ServerLookup {
    pub(crate) fn new(server: ServerAddr, resolver: Arc<dyn Resolve>) -> ServerLookup {
        ServerLookup {
            server,
            resolver,
            last_good: Mutex::new(None),
        }
    }

    pub(crate) fn server(&self) -> &ServerAddr {
        &self.server
    }

    /// The server's addresses now, or the last known ones when the resolver fails.
    pub(crate) async fn addrs(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(addr) = self.server.socket_addr() {
            return Ok(vec![addr]);
        }
        let resolved = self.server.resolve(&*self.resolver).await;
        // A poisoned lock only means another tunnel panicked mid-update: the value is whole.
        let mut last = self.last_good.lock().unwrap_or_else(|e| e.into_inner());
        match resolved {
            Ok(addrs) => {
                *last = Some(addrs.clone());
                Ok(addrs)
            }
            Err(e) => match &*last {
                Some(addrs) => {
                    tracing::warn!(server = %self.server, error = %crate::explain::ErrorChain(&e), addresses = ?addrs, "cannot resolve the server; using its last known addresses");
                    Ok(addrs.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::dial::StaticResolver;

    #[test]
    fn addresses_and_names_parse_and_print_as_given() {
        for text in [
            "127.0.0.1:8890",
            "[::1]:8890",
            "agent.example:8890",
            "a-b_c.d.:1",
        ] {
            let server: ServerAddr = text.parse().unwrap();
            assert_eq!(server.to_string(), text);
        }
        assert_eq!(
            "[::1]:8890".parse::<ServerAddr>().unwrap().socket_addr(),
            Some("[::1]:8890".parse().unwrap())
        );
    }

    #[test]
    fn malformed_servers_are_refused() {
        for text in [
            "",
            "agent.example",
            ":8890",
            "agent.example:",
            "agent.example:0",
            "agent.example:65536",
            "agent.example:http",
            "127.0.0.1:0",
            "::1:8890",
            "[agent.example]:8890",
            "agent example:8890",
            "agent.example:8890/path",
        ] {
            let err = text.parse::<ServerAddr>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_with_the_port() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let resolver = StaticResolver::new().with("agent.example", [a, b]);
        let server: ServerAddr = "agent.example:8890".parse().unwrap();
        assert_eq!(
            server.resolve(&resolver).await.unwrap(),
            [SocketAddr::new(a, 8890), SocketAddr::new(b, 8890)]
        );
    }

    #[tokio::test]
    async fn resolution_failures_name_the_server() {
        let resolver = StaticResolver::new().with("empty.example", []);
        let unknown: ServerAddr = "unknown.example:1".parse().unwrap();
        let err = unknown.resolve(&resolver).await.unwrap_err();
        assert!(matches!(err, ResolveError::Failed { .. }), "{err:?}");
        assert!(err.to_string().contains("unknown.example:1"), "{err}");
        let empty: ServerAddr = "empty.example:1".parse().unwrap();
        let err = empty.resolve(&resolver).await.unwrap_err();
        assert!(matches!(err, ResolveError::NoAddress { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn addresses_never_reach_the_resolver() {
        // The empty table resolves nothing: an address must not ask it.
        let server: ServerAddr = "192.0.2.1:8890".parse().unwrap();
        assert_eq!(
            server.resolve(&StaticResolver::new()).await.unwrap(),
            ["192.0.2.1:8890".parse::<SocketAddr>().unwrap()]
        );
    }
}
