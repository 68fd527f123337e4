//! Reaching a destination: policy check by name, resolution, policy check of the addresses,
//! then a TCP connect or a connected UDP socket, all under the dial timeout.
//!
//! Only the addresses that passed the policy are dialed: a name is resolved once, so a DNS
//! answer that changes between check and dial cannot slip past the policy.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};

use crate::policy::{Policy, Refusal, parse_ip_literal};
use crate::request::Request;

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The policy refused the destination.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// Every address refused the connection or failed.
    #[error("cannot connect to {destination}: {source}")]
    Connect {
        /// `host:port`.
        destination: String,
        /// The error of the last address tried.
        #[source]
        source: io::Error,
    },
    /// Resolution and connection did not finish within the dial timeout.
    #[error("connecting to {destination} timed out after {after:?}")]
    Timeout {
        /// `host:port`.
        destination: String,
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

/// Resolves the request's destination and checks it against the policy.
pub async fn resolve_checked(req: &Request, policy: &Policy) -> Result<Vec<SocketAddr>, DialError> {
    policy.check_name(&req.host, req.port)?;
    let addrs: Vec<SocketAddr> = match parse_ip_literal(&req.host) {
        Some(ip) => vec![SocketAddr::new(ip, req.port)],
        None => tokio::net::lookup_host((req.host.as_str(), req.port))
            .await
            .map_err(|source| DialError::Resolve {
                host: req.host.clone(),
                source,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(DialError::NoAddress {
            host: req.host.clone(),
        });
    }
    let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    policy.check(&req.host, req.port, &ips)?;
    Ok(addrs)
}

/// Connects to the request's destination over TCP, with `TCP_NODELAY` set.
pub async fn dial_tcp(
    req: &Request,
    policy: &Policy,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let attempt = async {
        let addrs = resolve_checked(req, policy).await?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Latency matters more than segment count for a relay.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect {
            destination: req.destination(),
            source: last.unwrap_or_else(|| io::Error::other("no address to connect to")),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                destination: req.destination(),
                after: timeout,
            })
        })
}

/// Opens a UDP socket connected to the request's destination (the first allowed address).
pub async fn dial_udp(
    req: &Request,
    policy: &Policy,
    timeout: Duration,
) -> Result<UdpSocket, DialError> {
    let attempt = async {
        let addrs = resolve_checked(req, policy).await?;
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
            match socket.connect(addr).await {
                Ok(()) => return Ok(socket),
                Err(e) => last = Some(e),
            }
        }
        Err(DialError::Connect {
            destination: req.destination(),
            source: last.unwrap_or_else(|| io::Error::other("no address to connect to")),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(DialError::Timeout {
                destination: req.destination(),
                after: timeout,
            })
        })
}
