//! The request header of the stream proxy protocol, as a sans-I/O codec.
//!
//! A client that wants a tunnel to `(host, port)` sends exactly one fixed-size header right
//! after the TLS or DTLS handshake. This crate encodes that header into a caller's buffer and
//! decodes and validates it from bytes. It does no I/O, reads no clock, never allocates and
//! has no dependency but `crc`; reading a header from a socket belongs to the proxy layer.
//!
//! Two versions of the header are supported, both first-class:
//!
//! | version   | size | notes                                                          |
//! |-----------|------|----------------------------------------------------------------|
//! | `0.1.0`   | 275  | what GoDoxy speaks; a flag byte, bit 0 asks for a health-check close; the default for everything we send |
//! | `0.1.0.0` | 274  | the layout of the original package documentation; no flags       |
//!
//! # Example
//!
//! ```
//! use streamproxy_proto::{Header, Version, MAX_HEADER_LEN};
//!
//! // Client side: encode a request for example.com:443.
//! let header = Header::new("example.com", "443")?;
//! let mut buf = [0u8; MAX_HEADER_LEN];
//! let len = header.encode(&mut buf)?;
//! assert_eq!(len, Version::V0_1_0.header_len());
//!
//! // Server side: learn the total length from the first 8 bytes, then decode exactly that.
//! let version = Version::detect(&buf[..8])?;
//! let decoded = Header::decode(&buf[..version.header_len()])?;
//! assert_eq!((decoded.host(), decoded.port()), ("example.com", 443));
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```
//!
//! A stream reader reads [`VERSION_LEN`] bytes, calls [`Version::detect`], then reads exactly
//! `header_len() - VERSION_LEN` more bytes, so it never consumes a byte of the payload that
//! follows. A datagram reader passes the whole record to [`Header::decode`], which rejects a
//! record whose length is not exactly the header's.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod checksum;
mod consts;
mod error;
pub mod field;
mod header;
mod version;

pub use consts::{
    DEFAULT_SERVER_NAME, DIAL_TIMEOUT, HEADER_LEN_V0_1_0, HEADER_LEN_V0_1_0_0, MAX_HEADER_LEN,
    MAX_HOST_LEN, MAX_PORT_LEN, STREAM_ALPN, UDP_READ_DEADLINE, VERSION_LEN,
};
pub use error::{EncodeError, HeaderError, HostError, PortError};
pub use header::{Flags, Header, HeaderBytes};
pub use version::Version;
