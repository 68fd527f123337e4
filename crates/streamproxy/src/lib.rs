//! The stream proxy protocol: authenticated TCP-over-TLS and UDP-over-DTLS tunnels.
//!
//! A client holding a certificate signed by your CA connects to a server over mutual TLS
//! (TCP) or DTLS 1.2 (UDP), sends one fixed-size header naming a `host:port`, and from then
//! on the server relays raw bytes or datagrams between the client and that destination. The
//! wire format is GoDoxy's (header versions `0.1.0.0` and `0.1.0`, ALPN
//! `godoxy-agent-stream/1`, server name `godoxy.agent`).
//!
//! This facade re-exports the layers behind cargo features, so a user can depend on one crate
//! or pick single layers:
//!
//! | feature   | module      | crate                  | holds |
//! |-----------|-------------|------------------------|-------|
//! | `proto`   | [`proto`]   | `streamproxy-proto`    | the header codec (no I/O) |
//! | `tls`     | [`tls`]     | `streamproxy-tls`      | mutual TLS configs, acceptor, reload |
//! | `dtls`    | [`dtls`]    | `streamproxy-dtls`     | DTLS 1.2 client and listener |
//! | `connmgr` | [`connmgr`] | `streamproxy-connmgr`  | the per-client session registry |
//! | `proxy`   | [`proxy`]   | `streamproxy-proxy`    | server, clients, forwarders, policy |
//!
//! All are on by default. It adds no code of its own, and it does not parse command lines or
//! configuration files: that is the `streamproxy` command (`streamproxy-cli`).
//!
//! # A server and a client
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use streamproxy::proto::{Header, Version};
//! use streamproxy::proxy::forward::TcpForwarder;
//! use streamproxy::proxy::policy::Policy;
//! use streamproxy::proxy::server::{CertPaths, Server};
//! use streamproxy::proxy::settings::Settings;
//! use streamproxy::{dtls, proxy, tls};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // The server: TLS on TCP port 8890, DTLS on UDP port 8890. Only 10.0.0.0/8 on port 22 or
//! // 53 may be reached, and clients must present a certificate signed by ca.pem.
//! let policy = Policy::new(["10.0.0.0/8:22,53".parse()?], [])?;
//! let server = Server::builder(policy, CertPaths::new("server.pem", "server-key.pem", "ca.pem"))
//!     .settings(Settings::default().drain_period(Duration::from_secs(10)))
//!     .bind("0.0.0.0:8890".parse()?)
//!     .await?;
//! let reloader = server.reloader(); // reloader.reload() on SIGHUP
//! let serving = tokio::spawn(server.run(async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }));
//!
//! // A client: one TCP tunnel to 10.0.0.7:22.
//! let ca = tls::CaCerts::from_pem_file("ca.pem")?;
//! let identity = tls::Identity::from_pem_files("client.pem", "client-key.pem")?;
//! let tls_config = tls::ClientConfig::builder(&ca, &identity).build()?; // verifies godoxy.agent
//! let server_addr = "192.0.2.1:8890".parse()?;
//! let header = Header::new("10.0.0.7", "22")?.with_version(Version::V0_1_0);
//! let mut stream = proxy::tcp::connect(server_addr, &tls_config, &header).await?;
//! stream.write_all(b"SSH-2.0-example\r\n").await?;
//! let mut banner = [0u8; 64];
//! let n = stream.read(&mut banner).await?;
//! println!("{}", String::from_utf8_lossy(&banner[..n]));
//!
//! // A UDP tunnel to 10.0.0.53:53: one datagram per record.
//! let dtls_config = dtls::ClientConfig::new(
//!     dtls::Identity::from_pem_files("client.pem", "client-key.pem")?,
//!     dtls::CaCerts::from_pem_file("ca.pem")?,
//! );
//! let mut session =
//!     proxy::udp::connect(server_addr, &dtls_config, &Header::new("10.0.0.53", "53")?).await?;
//! session.send(b"a DNS query").await?;
//! let mut answer = vec![0u8; session.max_payload()];
//! let _n = session.recv(&mut answer).await?;
//!
//! // Or forward a local port: every connection to 127.0.0.1:2222 gets its own tunnel.
//! let forwarder = TcpForwarder::bind(
//!     "127.0.0.1:2222".parse()?,
//!     server_addr,
//!     tls_config.clone(),
//!     "10.0.0.7:22".parse()?,
//! )
//! .await?;
//! tokio::spawn(forwarder.run(std::future::pending::<()>()));
//!
//! // Health check, as `streamproxy probe` does.
//! proxy::tcp::health_check(server_addr, &tls_config, Duration::from_secs(5)).await?;
//! # drop(reloader);
//! serving.await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "connmgr")]
pub use connmgr;
#[cfg(feature = "dtls")]
pub use dtls;
#[cfg(feature = "proto")]
pub use proto;
#[cfg(feature = "proxy")]
pub use proxy;
#[cfg(feature = "tls")]
pub use tls;
