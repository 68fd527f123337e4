//! The UDP client: a DTLS session to the server that carries datagrams to one destination.

use std::net::SocketAddr;
use std::time::Duration;

use dtls::{ClientConfig, DtlsConnector, DtlsSession};
use proto::Header;

use crate::client::{ClientError, HealthError};

/// Connects to the server, sends `header` as one record, and returns the session: from then
/// on every [`send`](DtlsSession::send) is one datagram to the destination and every
/// [`recv`](DtlsSession::recv) one datagram from it.
///
/// ```no_run
/// # async fn example(config: dtls::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
/// use proto::Header;
/// let server = "192.0.2.1:8890".parse()?;
/// let mut session =
///     streamproxy_proxy::udp::connect(server, &config, &Header::new("10.0.0.53", "53")?).await?;
/// session.send(b"a DNS query").await?;
/// let mut buf = vec![0; session.max_payload()];
/// let n = session.recv(&mut buf).await?;
/// # Ok(()) }
/// ```
pub async fn connect(
    server: SocketAddr,
    config: &ClientConfig,
    header: &Header<'_>,
) -> Result<DtlsSession, ClientError> {
    let connector = DtlsConnector::new(config).map_err(dtls::ConnectError::from)?;
    connect_with(&connector, server, header).await
}

/// [`connect`] with a connector built once: what a client that opens many sessions with one
/// configuration uses, so that each session does not build (and verify) its OpenSSL context
/// anew.
pub async fn connect_with(
    connector: &DtlsConnector,
    server: SocketAddr,
    header: &Header<'_>,
) -> Result<DtlsSession, ClientError> {
    let bytes = header.to_bytes()?;
    let session = connector.connect(server).await?;
    session.send(&bytes).await.map_err(ClientError::DtlsSend)?;
    Ok(session)
}

/// A health check over DTLS: handshake, send the close-flag header, and expect the server to
/// close the session cleanly within `timeout`.
pub async fn health_check(
    server: SocketAddr,
    config: &ClientConfig,
    timeout: Duration,
) -> Result<(), HealthError> {
    let check = async {
        let mut session = connect(server, config, &Header::health_check()).await?;
        let mut buf = vec![0u8; session.max_payload()];
        match session.recv(&mut buf).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(HealthError::NotClosed),
            Err(e) => Err(HealthError::Dtls(e)),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(HealthError::Timeout(timeout)))
}
