//! Errors of encoding and decoding, one enum per operation.

use core::fmt;

use crate::consts::{MAX_HOST_LEN, MAX_PORT_LEN, VERSION_LEN};

/// Why a host name cannot be carried in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// The host is empty (only a health-check header may have an empty host).
    Empty,
    /// The host is longer than [`MAX_HOST_LEN`] bytes; `len` is its length (or the length a
    /// received header claims).
    TooLong {
        /// The length given or claimed.
        len: usize,
    },
    /// The host contains a NUL or another control byte at `offset`.
    ControlByte {
        /// Offset of the byte within the host.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// The host is not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HostError::Empty => f.write_str("host is empty"),
            HostError::TooLong { len } => {
                write!(f, "host is {len} bytes long, the maximum is {MAX_HOST_LEN}")
            }
            HostError::ControlByte { offset, byte } => {
                write!(f, "host has control byte {byte:#04x} at offset {offset}")
            }
            HostError::NotUtf8 => f.write_str("host is not valid UTF-8"),
        }
    }
}

impl core::error::Error for HostError {}

/// Why a port cannot be carried in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortError {
    /// The port is empty (only a health-check header may have an empty port).
    Empty,
    /// The port text is longer than [`MAX_PORT_LEN`] bytes; `len` is its length (or the
    /// length a received header claims).
    TooLong {
        /// The length given or claimed.
        len: usize,
    },
    /// The port text is not a decimal number.
    NotDecimal,
    /// The port is a decimal number outside `1..=65535`.
    OutOfRange {
        /// The number.
        value: u32,
    },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PortError::Empty => f.write_str("port is empty"),
            PortError::TooLong { len } => {
                write!(f, "port is {len} bytes long, the maximum is {MAX_PORT_LEN}")
            }
            PortError::NotDecimal => f.write_str("port is not a decimal number"),
            PortError::OutOfRange { value } => {
                write!(f, "port {value} is outside 1..=65535")
            }
        }
    }
}

impl core::error::Error for PortError {}

/// Why a header could not be built or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The host cannot be carried.
    Host(HostError),
    /// The port cannot be carried.
    Port(PortError),
    /// Flags were set on a version whose header has no flag byte.
    FlagsUnsupported {
        /// The version asked for.
        version: crate::Version,
    },
    /// The output buffer is shorter than the header.
    BufferTooSmall {
        /// The header's length.
        needed: usize,
        /// The buffer's length.
        available: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Host(e) => write!(f, "cannot encode header: {e}"),
            EncodeError::Port(e) => write!(f, "cannot encode header: {e}"),
            EncodeError::FlagsUnsupported { version } => {
                write!(
                    f,
                    "cannot encode header: version {version} has no flag byte"
                )
            }
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "cannot encode header: it needs {needed} bytes, the buffer has {available}"
            ),
        }
    }
}

/// A leaf error: its `Display` says everything (the field's own error included), so that one
/// line in a log holds it all; `source()` is `None`, so a chain printer does not repeat it.
impl core::error::Error for EncodeError {}

impl From<HostError> for EncodeError {
    fn from(e: HostError) -> Self {
        EncodeError::Host(e)
    }
}

impl From<PortError> for EncodeError {
    fn from(e: PortError) -> Self {
        EncodeError::Port(e)
    }
}

/// Why received bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first [`VERSION_LEN`] bytes name no supported version.
    UnknownVersion {
        /// The bytes found.
        found: [u8; VERSION_LEN],
    },
    /// The input is not exactly one header long: bytes are missing or trailing.
    Length {
        /// The length the header has (or, before the version is known, the bytes needed).
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// The checksum field does not match the checksum of the bytes before it.
    ChecksumMismatch {
        /// The checksum computed over the received bytes.
        expected: u32,
        /// The checksum the header carries.
        found: u32,
    },
    /// The host field is invalid.
    Host(HostError),
    /// The port field is invalid.
    Port(PortError),
}

impl HeaderError {
    /// A short, stable name for the kind of error, for metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            HeaderError::UnknownVersion { .. } => "unknown_version",
            HeaderError::Length { .. } => "length",
            HeaderError::ChecksumMismatch { .. } => "checksum",
            HeaderError::Host(HostError::TooLong { .. }) => "host_too_long",
            HeaderError::Host(_) => "invalid_host",
            HeaderError::Port(PortError::TooLong { .. }) => "port_too_long",
            HeaderError::Port(_) => "invalid_port",
        }
    }
}

/// Writes bytes as text where printable ASCII and as `\xNN` otherwise.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::UnknownVersion { found } => {
                write!(f, "invalid header: unknown version \"{}\"", Escaped(found))
            }
            HeaderError::Length { expected, found } => write!(
                f,
                "invalid header: expected {expected} bytes, received {found}"
            ),
            HeaderError::ChecksumMismatch { expected, found } => write!(
                f,
                "invalid header: checksum mismatch (computed {expected:#010x}, header has {found:#010x})"
            ),
            HeaderError::Host(e) => write!(f, "invalid header: {e}"),
            HeaderError::Port(e) => write!(f, "invalid header: {e}"),
        }
    }
}

/// A leaf error, as [`EncodeError`]: everything is in `Display`, `source()` is `None`.
impl core::error::Error for HeaderError {}

impl From<HostError> for HeaderError {
    fn from(e: HostError) -> Self {
        HeaderError::Host(e)
    }
}

impl From<PortError> for HeaderError {
    fn from(e: PortError) -> Self {
        HeaderError::Port(e)
    }
}
