//! Reading and writing the request header on a stream, and the owned request it carries.

use std::io;

use proto::{Flags, Header, HeaderError, MAX_HEADER_LEN, VERSION_LEN, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::destination::Destination;

/// A validated request: what a client asked for, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The header version the client spoke.
    pub version: Version,
    /// The header's flags.
    pub flags: Flags,
    /// Where the client wants to go; `None` for a health check.
    pub destination: Option<Destination>,
}

impl Request {
    /// Whether the client asked for a health check (close without dialing).
    pub fn is_health_check(&self) -> bool {
        self.flags.contains(Flags::CLOSE_IMMEDIATELY) || self.destination.is_none()
    }

    /// The owned form of a decoded header.
    pub fn from_header(header: &Header<'_>) -> Request {
        Request {
            version: header.version(),
            flags: header.flags(),
            destination: Destination::from_header(header),
        }
    }
}

/// Why a header could not be read from a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadHeaderError {
    /// The peer closed the stream before a whole header arrived.
    #[error("connection closed after {received} of {expected} header bytes")]
    Truncated {
        /// Bytes received.
        received: usize,
        /// Bytes the header needs (8 until the version is known).
        expected: usize,
    },
    /// The bytes are not a valid header.
    #[error(transparent)]
    Invalid(#[from] HeaderError),
    /// Reading failed.
    #[error("reading the header")]
    Io(#[source] io::Error),
}

impl ReadHeaderError {
    /// A short, stable name of the error's kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadHeaderError::Truncated { .. } => "truncated",
            ReadHeaderError::Invalid(e) => e.kind(),
            ReadHeaderError::Io(_) => "io",
        }
    }
}

/// Reads exactly one header from `stream` and validates it.
///
/// Reads the version field first, then exactly the rest of that version's header: never a
/// byte more, so whatever the client sent after the header stays in the stream for the
/// destination. Apply a timeout around it; this function has none.
pub async fn read_header<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
) -> Result<Request, ReadHeaderError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    read_exact(stream, &mut buf[..VERSION_LEN], 0, VERSION_LEN).await?;
    let version = Version::detect(&buf[..VERSION_LEN])?;
    let len = version.header_len();
    read_exact(stream, &mut buf[VERSION_LEN..len], VERSION_LEN, len).await?;
    let header = Header::decode(&buf[..len])?;
    Ok(Request::from_header(&header))
}

async fn read_exact<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
    offset: usize,
    expected: usize,
) -> Result<(), ReadHeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => {
                return Err(ReadHeaderError::Truncated {
                    received: offset + filled,
                    expected,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ReadHeaderError::Truncated {
                    received: offset + filled,
                    expected,
                });
            }
            Err(e) => return Err(ReadHeaderError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_exactly_one_header_and_leaves_the_payload() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let header = Header::new("example.com", "80").expect("valid");
        let mut bytes = header.to_bytes().expect("encodes").to_vec();
        bytes.extend_from_slice(b"payload");
        a.write_all(&bytes).await.expect("write");
        let req = read_header(&mut b).await.expect("header");
        let d = req.destination.expect("a destination");
        assert_eq!((d.host(), d.port()), ("example.com", 80));
        let mut rest = [0u8; 7];
        b.read_exact(&mut rest).await.expect("payload");
        assert_eq!(&rest, b"payload");
    }

    #[tokio::test]
    async fn reads_a_header_split_into_one_byte_writes() {
        let (mut a, mut b) = tokio::io::duplex(1);
        let bytes = Header::health_check().to_bytes().expect("encodes").to_vec();
        let writer = tokio::spawn(async move {
            for byte in bytes {
                a.write_all(&[byte]).await.expect("write");
            }
            a
        });
        let req = read_header(&mut b).await.expect("header");
        assert!(req.is_health_check());
        drop(writer.await);
    }

    #[tokio::test]
    async fn reports_truncation_with_the_count() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let bytes = Header::new("a", "1")
            .expect("valid")
            .to_bytes()
            .expect("encodes");
        a.write_all(&bytes[..100]).await.expect("write");
        drop(a);
        match read_header(&mut b).await {
            Err(ReadHeaderError::Truncated { received, expected }) => {
                assert_eq!((received, expected), (100, 275));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_an_http_request_by_its_first_bytes() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let err = read_header(&mut b).await.expect_err("not a header");
        assert_eq!(err.kind(), "unknown_version");
    }
}
