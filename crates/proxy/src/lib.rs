//! Stream proxy protocol servers, clients and relay.
//!
//! This crate is the product's core. It reads request headers from TLS streams and DTLS
//! sessions, checks destinations against a [`Policy`](policy::Policy), dials them and relays
//! bytes or datagrams; it also holds the matching clients. Transports come from the layers
//! below: `streamproxy-tls`, `streamproxy-dtls`, and `streamproxy-connmgr` for per-client UDP
//! sessions. It does not parse command lines or configuration files.
//!
//! # Start here
//!
//! | to... | use |
//! |---|---|
//! | run a server (TLS and DTLS on one port, the HTTPS API, reload) | [`server::Server`] with a [`policy::Policy`] and [`settings::Settings`] |
//! | forward local ports through a server (the client side) | [`forward::TcpForwarder`], [`forward::UdpForwarder`], [`forward::ForwardSettings`] |
//! | open one tunnel yourself | [`tcp::connect`], [`udp::connect`]; health checks: [`tcp::health_check`], [`udp::health_check`] |
//! | decide which destinations are allowed | [`policy::Policy`], [`policy::Rule`] |
//! | give client identities their own destinations | [`identity::Access`], [`identity::IdentityRule`]; reload with [`server::Reloader::reload_with`] |
//! | tell destinations who the client is | [`proxy_protocol`] (PROXY protocol v2) |
//! | tell an operator why a tunnel failed | [`explain::explain`] |
//! | read the counters | [`metrics::Metrics`] (the server's), [`forward::ForwardStats`] |
//!
//! The other modules are the parts these are built from (the relay, header reading, the
//! tunnel log lines, the HTTPS API), public for tests and for embedding in other servers.
//!
//! # Example
//!
//! A client forwarding local port 2222 to `10.0.0.7:22` through a server; new tunnels pick up
//! a reloaded certificate through [`forward::LiveConfig`]:
//!
//! ```no_run
//! # use ::tls as streamproxy_tls;
//! use streamproxy_proxy::forward::{ForwardSettings, TcpForwarder};
//! use streamproxy_tls::{CaCerts, ClientConfig, Identity};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = CaCerts::from_pem_file("ca.pem")?;
//! let identity = Identity::from_pem_files("client.pem", "client-key.pem")?;
//! let config = ClientConfig::builder(&ca, &identity).build()?;
//! let forwarder = TcpForwarder::bind(
//!     "127.0.0.1:2222".parse()?,
//!     "proxy.example:8890".parse::<streamproxy_proxy::forward::ServerAddr>()?,
//!     config,
//!     "10.0.0.7:22".parse()?,
//! )
//! .await?
//! .settings(&ForwardSettings::default());
//! let reload = forwarder.live_config(); // reload.replace(new_config) on SIGHUP
//! forwarder.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # drop(reload);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod admission;
pub mod api;
pub mod client;
mod context;
pub mod destination;
pub mod dial;
pub mod explain;
pub mod forward;
pub mod identity;
pub mod keepalive;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod relay;
pub mod request;
pub mod server;
pub mod settings;
mod shutdown;
pub mod status;
pub mod tcp;
pub mod tunnel;
pub mod udp;

pub use admission::Refusal;
pub use context::{LivePolicy, ServerContext};
pub use destination::{Destination, DestinationError};
