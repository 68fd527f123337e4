//! The TCP client: a TLS connection to the server that carries one tunnel.

use std::net::SocketAddr;
use std::time::Duration;

use proto::Header;
use tls::{ClientConfig, ClientTlsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{ClientError, HealthError};

/// Connects to the server, sends `header`, and returns the stream: from then on it carries the
/// destination's bytes both ways.
///
/// The header goes out in its own write; the server reads exactly the header, so what the
/// caller writes next reaches the destination even if it arrives in the same segment.
///
/// ```no_run
/// # async fn example(config: tls::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
/// use proto::Header;
/// use tokio::io::AsyncWriteExt;
/// let server = "192.0.2.1:8890".parse()?;
/// let mut stream =
///     streamproxy_proxy::tcp::connect(server, &config, &Header::new("10.0.0.7", "22")?).await?;
/// stream.write_all(b"SSH-2.0-example\r\n").await?;
/// # Ok(()) }
/// ```
pub async fn connect(
    server: SocketAddr,
    config: &ClientConfig,
    header: &Header<'_>,
) -> Result<ClientTlsStream<TcpStream>, ClientError> {
    let bytes = header.to_bytes()?;
    let mut stream = tls::connect_to(server, config).await?;
    stream.write_all(&bytes).await.map_err(ClientError::Io)?;
    stream.flush().await.map_err(ClientError::Io)?;
    Ok(stream)
}

/// A health check over TLS: handshake, send the close-flag header, and expect the server to
/// close the connection cleanly (close_notify, no data) within `timeout`.
pub async fn health_check(
    server: SocketAddr,
    config: &ClientConfig,
    timeout: Duration,
) -> Result<(), HealthError> {
    let check = async {
        let mut stream = connect(server, config, &Header::health_check()).await?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(HealthError::NotClosed),
            Err(e) => Err(HealthError::Io(e)),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(HealthError::Timeout(timeout)))
}
