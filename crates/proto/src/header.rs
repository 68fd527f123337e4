//! The header value: building, encoding, decoding and validation.

use core::fmt;
use core::ops::Deref;

use crate::checksum::crc32_with_zero_run;
use crate::consts::{MAX_HEADER_LEN, MAX_HOST_LEN, MAX_PORT_LEN};
use crate::field;
use crate::{EncodeError, HeaderError, HostError, PortError, Version};

/// The flag byte of a version `0.1.0` header.
///
/// Unknown bits are carried through unchanged so that newer peers are not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Bit 0: a health-check probe. The server validates the header and closes the
    /// connection without dialing the destination.
    pub const CLOSE_IMMEDIATELY: Flags = Flags(1);

    /// Flags from their wire byte.
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits)
    }

    /// The wire byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A stream request header: the destination a client asks to be forwarded to.
///
/// Build one with [`Header::new`] (or [`Header::health_check`]) and [`encode`](Header::encode)
/// it; parse received bytes with [`Header::decode`]. A decoded header borrows its host from
/// the input buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    version: Version,
    host: &'a str,
    port: u16,
    port_text: [u8; MAX_PORT_LEN],
    port_text_len: u8,
    flags: Flags,
}

impl<'a> Header<'a> {
    /// A request for `host:port` in the default version (`0.1.0`, what GoDoxy speaks).
    ///
    /// `port` is decimal text as it will appear on the wire, e.g. `"443"`.
    ///
    /// ```
    /// use streamproxy_proto::{Header, EncodeError, PortError};
    /// assert!(Header::new("10.0.0.7", "8080").is_ok());
    /// assert_eq!(
    ///     Header::new("10.0.0.7", "99999"),
    ///     Err(EncodeError::Port(PortError::OutOfRange { value: 99999 }))
    /// );
    /// ```
    pub fn new(host: &'a str, port: &str) -> Result<Header<'a>, EncodeError> {
        let host = validate_host(host.as_bytes(), false)?;
        let port_num = validate_port(port.as_bytes(), false)?;
        let mut port_text = [0u8; MAX_PORT_LEN];
        port_text[..port.len()].copy_from_slice(port.as_bytes());
        Ok(Header {
            version: Version::default(),
            host,
            port: port_num,
            port_text,
            port_text_len: port.len() as u8, // validated: at most MAX_PORT_LEN
            flags: Flags::NONE,
        })
    }

    /// A request for `host:port` with a numeric port, in the default version.
    pub fn with_port(host: &'a str, port: u16) -> Result<Header<'a>, EncodeError> {
        if port == 0 {
            return Err(PortError::OutOfRange { value: 0 }.into());
        }
        let host = validate_host(host.as_bytes(), false)?;
        let (port_text, port_text_len) = port_to_text(port);
        Ok(Header {
            version: Version::default(),
            host,
            port,
            port_text,
            port_text_len,
            flags: Flags::NONE,
        })
    }

    /// A health-check probe: version `0.1.0`, empty host and port, and the
    /// [`Flags::CLOSE_IMMEDIATELY`] flag.
    pub const fn health_check() -> Header<'static> {
        Header {
            version: Version::V0_1_0,
            host: "",
            port: 0,
            port_text: [0; MAX_PORT_LEN],
            port_text_len: 0,
            flags: Flags::CLOSE_IMMEDIATELY,
        }
    }

    /// The same header in another version.
    pub const fn with_version(mut self, version: Version) -> Header<'a> {
        self.version = version;
        self
    }

    /// The same header with other flags (encoded only by versions that have a flag byte).
    pub const fn with_flags(mut self, flags: Flags) -> Header<'a> {
        self.flags = flags;
        self
    }

    /// The header's version.
    pub const fn version(&self) -> Version {
        self.version
    }

    /// The destination host: a name or an IP literal (IPv6 without brackets). Empty only in a
    /// health check.
    pub const fn host(&self) -> &'a str {
        self.host
    }

    /// The destination port; `0` only in a health check, whose port is empty.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The port as the text carried on the wire (e.g. `"443"`).
    pub fn port_str(&self) -> &str {
        let text = &self.port_text[..usize::from(self.port_text_len)];
        // Only ASCII digits are ever stored, so this cannot fail.
        core::str::from_utf8(text).unwrap_or("")
    }

    /// The header's flags (always empty for version `0.1.0.0`).
    pub const fn flags(&self) -> Flags {
        self.flags
    }

    /// Whether this header asks the server to close without dialing (a health check).
    pub const fn is_health_check(&self) -> bool {
        self.flags.contains(Flags::CLOSE_IMMEDIATELY)
    }

    /// Length in bytes of this header once encoded.
    pub const fn encoded_len(&self) -> usize {
        self.version.header_len()
    }

    /// Encodes the header into the start of `out` and returns its length.
    ///
    /// Every byte of the header is written (padding is zeroed); bytes of `out` past the
    /// header are left alone.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let len = self.version.header_len();
        if !self.version.has_flags() && !self.flags.is_empty() {
            return Err(EncodeError::FlagsUnsupported {
                version: self.version,
            });
        }
        if !self.is_health_check() {
            if self.host.is_empty() {
                return Err(HostError::Empty.into());
            }
            if self.port_text_len == 0 {
                return Err(PortError::Empty.into());
            }
        }
        let available = out.len();
        let Some(out) = out.get_mut(..len) else {
            return Err(EncodeError::BufferTooSmall {
                needed: len,
                available,
            });
        };
        out.fill(0);
        out[field::VERSION].copy_from_slice(self.version.tag());
        let host = self.host.as_bytes();
        out[field::HOST_LEN] = host.len() as u8; // validated: at most MAX_HOST_LEN
        out[field::HOST][..host.len()].copy_from_slice(host);
        let port = &self.port_text[..usize::from(self.port_text_len)];
        out[field::PORT_LEN] = self.port_text_len;
        out[field::PORT][..port.len()].copy_from_slice(port);
        let checksum = match self.version {
            Version::V0_1_0_0 => field::v0_1_0_0::CHECKSUM,
            Version::V0_1_0 => {
                out[field::v0_1_0::FLAGS] = self.flags.bits();
                field::v0_1_0::CHECKSUM
            }
        };
        let crc = checksum_of(out, host.len(), checksum.start);
        out[checksum].copy_from_slice(&crc.to_be_bytes());
        Ok(len)
    }

    /// Encodes the header into an owned fixed-size buffer.
    pub fn to_bytes(&self) -> Result<HeaderBytes, EncodeError> {
        let mut bytes = HeaderBytes {
            buf: [0; MAX_HEADER_LEN],
            len: 0,
        };
        bytes.len = self.encode(&mut bytes.buf)?;
        Ok(bytes)
    }

    /// Decodes and validates exactly one header.
    ///
    /// `bytes` must be exactly one header long (a DTLS record, or the bytes a stream reader
    /// read after [`Version::detect`]). Checks, in order: version, length, checksum, host,
    /// port. The host and port may be empty only in a health check.
    pub fn decode(bytes: &'a [u8]) -> Result<Header<'a>, HeaderError> {
        let version = Version::detect(bytes)?;
        let expected = version.header_len();
        if bytes.len() != expected {
            return Err(HeaderError::Length {
                expected,
                found: bytes.len(),
            });
        }
        let (checksum, flags) = match version {
            Version::V0_1_0_0 => (field::v0_1_0_0::CHECKSUM, Flags::NONE),
            Version::V0_1_0 => (
                field::v0_1_0::CHECKSUM,
                Flags::from_bits(bytes[field::v0_1_0::FLAGS]),
            ),
        };
        let host_len = usize::from(bytes[field::HOST_LEN]);
        let computed = checksum_of(bytes, host_len, checksum.start);
        let mut carried = [0u8; 4];
        carried.copy_from_slice(&bytes[checksum]);
        let carried = u32::from_be_bytes(carried);
        if computed != carried {
            return Err(HeaderError::ChecksumMismatch {
                expected: computed,
                found: carried,
            });
        }
        let health_check = flags.contains(Flags::CLOSE_IMMEDIATELY);

        let host = validate_host(&bytes[field::HOST][..host_len], health_check)?;

        let port_len = usize::from(bytes[field::PORT_LEN]);
        let port_field = &bytes[field::PORT];
        let Some(port_text) = port_field.get(..port_len) else {
            return Err(PortError::TooLong { len: port_len }.into());
        };
        let port = validate_port(port_text, health_check)?;
        let mut text = [0u8; MAX_PORT_LEN];
        text[..port_len].copy_from_slice(port_text);

        Ok(Header {
            version,
            host,
            port,
            port_text: text,
            port_text_len: port_len as u8, // at most MAX_PORT_LEN
            flags,
        })
    }
}

impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("version", &self.version)
            .field("host", &self.host)
            .field("port", &self.port_str())
            .field("flags", &self.flags)
            .finish()
    }
}

impl fmt::Display for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_health_check() {
            return write!(f, "health check (v{})", self.version);
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{} (v{})", self.host, self.port_str(), self.version)
        } else {
            write!(f, "{}:{} (v{})", self.host, self.port_str(), self.version)
        }
    }
}

/// An encoded header in a fixed-size buffer; derefs to exactly the header's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HeaderBytes {
    buf: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Deref for HeaderBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsRef<[u8]> for HeaderBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for HeaderBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HeaderBytes").field(&&**self).finish()
    }
}

/// The checksum of `bytes[..end]`, jumping over the host's padding when it is all zero (it is
/// in every header this crate writes; any other padding takes the plain path).
fn checksum_of(bytes: &[u8], host_len: usize, end: usize) -> u32 {
    let padding_start = field::HOST.start + host_len;
    let padding = &bytes[padding_start..field::HOST.end];
    if padding.iter().fold(0u8, |acc, &b| acc | b) == 0 {
        crc32_with_zero_run(
            &bytes[..padding_start],
            padding.len(),
            &bytes[field::HOST.end..end],
        )
    } else {
        crc32_with_zero_run(&bytes[..end], 0, &[])
    }
}

fn validate_host(bytes: &[u8], allow_empty: bool) -> Result<&str, HostError> {
    if bytes.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong { len: bytes.len() });
    }
    if bytes.is_empty() && !allow_empty {
        return Err(HostError::Empty);
    }
    if let Some(offset) = bytes.iter().position(|&b| b < 0x20 || b == 0x7f) {
        return Err(HostError::ControlByte {
            offset,
            byte: bytes[offset],
        });
    }
    core::str::from_utf8(bytes).map_err(|_| HostError::NotUtf8)
}

fn validate_port(bytes: &[u8], allow_empty: bool) -> Result<u16, PortError> {
    if bytes.len() > MAX_PORT_LEN {
        return Err(PortError::TooLong { len: bytes.len() });
    }
    if bytes.is_empty() {
        return if allow_empty {
            Ok(0)
        } else {
            Err(PortError::Empty)
        };
    }
    let mut value: u32 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return Err(PortError::NotDecimal);
        }
        // At most five digits: no overflow.
        value = value * 10 + u32::from(b - b'0');
    }
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(PortError::OutOfRange { value }),
    }
}

fn port_to_text(port: u16) -> ([u8; MAX_PORT_LEN], u8) {
    let mut digits = [0u8; MAX_PORT_LEN];
    let mut n = port;
    let mut len = 0usize;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].reverse();
    (digits, len as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_to_text_writes_decimal() {
        for (port, text) in [(1u16, "1"), (80, "80"), (65535, "65535"), (10000, "10000")] {
            let (buf, len) = port_to_text(port);
            assert_eq!(&buf[..usize::from(len)], text.as_bytes());
        }
    }

    #[test]
    fn rejects_port_with_sign_or_space() {
        for bad in ["+80", "-1", " 80", "8 0", "0x50"] {
            assert!(validate_port(bad.as_bytes(), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_host_with_nul_or_control_bytes() {
        assert_eq!(
            validate_host(b"a\0b", false),
            Err(HostError::ControlByte { offset: 1, byte: 0 })
        );
        assert!(validate_host(b"a\x7fb", false).is_err());
        assert!(validate_host(b"a\nb", false).is_err());
        assert_eq!(validate_host(b"\xff", false), Err(HostError::NotUtf8));
    }
}
