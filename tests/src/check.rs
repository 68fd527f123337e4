//! The checker: tunnels whose every byte and datagram is verified, and the totals of a run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use streamproxy::dtls;
use streamproxy::proto::Header;
use streamproxy::proxy;
use streamproxy::proxy::client::ClientError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{Rng, payload};

/// How a checked tunnel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Opening the tunnel failed.
    #[error("connecting: {0}")]
    Connect(#[from] ClientError),
    /// Reading or writing the TLS stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A byte came back different from the one sent.
    #[error("byte {at} differs from what was sent")]
    Corrupt {
        /// Offset of the first differing byte.
        at: u64,
    },
    /// The stream ended before every byte came back.
    #[error("stream ended after {got} of {want} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes sent.
        want: u64,
    },
    /// A datagram did not come back within the wait.
    #[error("datagram {seq} did not come back within {after:?}")]
    Lost {
        /// Its sequence number.
        seq: u64,
        /// How long we waited.
        after: Duration,
    },
    /// A datagram came back different from the one sent.
    #[error("datagram {seq} came back altered")]
    CorruptDatagram {
        /// Its sequence number.
        seq: u64,
    },
    /// Sending a datagram failed.
    #[error("DTLS send: {0}")]
    Send(#[from] dtls::SendError),
    /// Receiving a datagram failed.
    #[error("DTLS receive: {0}")]
    Recv(#[from] dtls::RecvError),
    /// The session ended while datagrams were outstanding.
    #[error("session closed by the server")]
    Closed,
}

/// Totals of a run, shared by its tasks.
#[derive(Debug, Default)]
pub struct Totals {
    /// Tunnels that ran to a verified end.
    pub tunnels: AtomicU64,
    /// Bytes relayed (both directions, datagram payloads included).
    pub bytes: AtomicU64,
    /// Datagrams sent and verified back.
    pub datagrams: AtomicU64,
    /// Checks that failed.
    pub errors: AtomicU64,
}

impl Totals {
    /// Counts the outcome of one checked tunnel; returns the error for the caller to report.
    pub fn record(&self, outcome: Result<u64, CheckError>) -> Option<CheckError> {
        match outcome {
            Ok(bytes) => {
                self.tunnels.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Some(e)
            }
        }
    }

    /// Tunnels, bytes, datagrams and errors so far.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.tunnels.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.datagrams.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// The header naming `dest`.
pub fn header_for(dest: &str, port: u16) -> Header<'_> {
    Header::with_port(dest, port).expect("a valid destination")
}

/// Opens a TCP tunnel to an echo destination, sends `len` pseudo-random bytes from `seed`,
/// closes its sending side and verifies that exactly those bytes come back. Returns the bytes
/// relayed (both ways).
pub async fn tcp_roundtrip(
    server: SocketAddr,
    config: &tls::ClientConfig,
    echo: SocketAddr,
    len: usize,
    seed: u64,
) -> Result<u64, CheckError> {
    let stream = tcp_open(server, config, echo).await?;
    tcp_exchange(stream, len, seed).await
}

/// Opens a TCP tunnel to `dest`.
pub async fn tcp_open(
    server: SocketAddr,
    config: &tls::ClientConfig,
    dest: SocketAddr,
) -> Result<tls::ClientTlsStream<tokio::net::TcpStream>, CheckError> {
    let host = dest.ip().to_string();
    Ok(proxy::tcp::connect(server, config, &header_for(&host, dest.port())).await?)
}

/// Over an open tunnel to an echo destination, sends `len` pseudo-random bytes from `seed`,
/// closes the sending side and verifies that exactly those bytes come back.
pub async fn tcp_exchange<S>(stream: S, len: usize, seed: u64) -> Result<u64, CheckError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let data = payload(len, seed);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async {
        for chunk in data.chunks(8 * 1024) {
            wr.write_all(chunk).await?;
        }
        wr.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut got: u64 = 0;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let start = got as usize;
            let Some(expected) = data.get(start..start + n) else {
                return Err(CheckError::Corrupt {
                    at: data.len() as u64,
                });
            };
            if let Some(i) = expected.iter().zip(&buf[..n]).position(|(a, b)| a != b) {
                return Err(CheckError::Corrupt { at: got + i as u64 });
            }
            got += n as u64;
        }
        if got != data.len() as u64 {
            return Err(CheckError::Short {
                got,
                want: data.len() as u64,
            });
        }
        Ok(())
    };
    let (w, r) = tokio::join!(write, read);
    r?;
    w?;
    Ok(2 * len as u64)
}

/// Opens a UDP tunnel to an echo destination and sends `count` datagrams one at a time (each
/// waits for its echo: the pace of the round trip), of random sizes up to `max_size`, each
/// carrying its sequence number; every one must come back intact within `wait`. Returns the
/// bytes relayed (both ways).
pub async fn udp_roundtrip(
    server: SocketAddr,
    config: &dtls::ClientConfig,
    echo: SocketAddr,
    count: u64,
    max_size: usize,
    seed: u64,
    wait: Duration,
) -> Result<u64, CheckError> {
    let session = udp_open(server, config, echo).await?;
    udp_exchange(session, count, max_size, seed, wait, None).await
}

/// Opens a UDP tunnel to `dest`.
pub async fn udp_open(
    server: SocketAddr,
    config: &dtls::ClientConfig,
    dest: SocketAddr,
) -> Result<dtls::DtlsSession, CheckError> {
    let host = dest.ip().to_string();
    Ok(proxy::udp::connect(server, config, &header_for(&host, dest.port())).await?)
}

/// Over an open tunnel to an echo destination, sends `count` datagrams one at a time and
/// verifies each comes back intact within `wait`; then closes the session.
///
/// `window`, shared by many sessions, bounds the datagrams in flight across all of them: the
/// pace at which the whole run may send (each round trip holds one permit).
pub async fn udp_exchange(
    mut session: dtls::DtlsSession,
    count: u64,
    max_size: usize,
    seed: u64,
    wait: Duration,
    window: Option<&tokio::sync::Semaphore>,
) -> Result<u64, CheckError> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0u8; max_size.max(8)];
    let mut back = vec![0u8; session.max_payload()];
    let mut bytes = 0;
    for seq in 0..count {
        let size = 8 + rng.below((max_size.max(8) - 7) as u64) as usize;
        let datagram = &mut out[..size];
        datagram[..8].copy_from_slice(&seq.to_be_bytes());
        rng.fill(&mut datagram[8..]);
        let _permit = match window {
            Some(w) => Some(w.acquire().await.map_err(|_| CheckError::Closed)?),
            None => None,
        };
        session.send(datagram).await?;
        let n = match tokio::time::timeout(wait, session.recv(&mut back)).await {
            Err(_) => return Err(CheckError::Lost { seq, after: wait }),
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return Err(CheckError::Closed),
            Ok(Err(e)) => return Err(e.into()),
        };
        if back[..n] != *datagram {
            return Err(CheckError::CorruptDatagram { seq });
        }
        bytes += 2 * size as u64;
    }
    let _ = session.shutdown().await;
    Ok(bytes)
}
