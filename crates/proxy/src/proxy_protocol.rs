//! The PROXY protocol version 2 header the server may send to a destination, so that it
//! learns the client's address and certificate name (HAProxy's `accept-proxy`, nginx's
//! `proxy_protocol`, Envoy's listener filter).
//!
//! A pure encoder: [`ProxyHeader`] in, bytes out; no I/O. On TCP the header goes once,
//! before the first byte of the stream; on UDP it starts every datagram (the specification's
//! `DGRAM` transport), so the server encodes it once per session and writes it in front of
//! each datagram without allocating.
//!
//! Layout (the specification, section 2.2): the 12-byte signature, `0x21` (version 2,
//! command PROXY), the family and transport (`0x11` TCP over IPv4, `0x12` UDP over IPv4,
//! `0x21`/`0x22` over IPv6), the length of the rest (big-endian), the addresses and ports
//! (source first), then TLVs: `PP2_TYPE_ALPN` (`0x01`) with the negotiated protocol, and
//! `PP2_TYPE_SSL` (`0x20`): a client byte (`PP2_CLIENT_SSL`, `PP2_CLIENT_CERT_CONN`), a
//! 32-bit verify result (0: the certificate was verified) and the sub-TLVs
//! `PP2_SUBTYPE_SSL_VERSION` (`0x21`) and `PP2_SUBTYPE_SSL_CN` (`0x22`).
//!
//! ```
//! use streamproxy_proxy::proxy_protocol::{ProxyHeader, Ssl, Transport};
//!
//! let header = ProxyHeader {
//!     transport: Transport::Stream,
//!     source: "192.0.2.10:40000".parse()?,
//!     destination: "198.51.100.1:8890".parse()?,
//!     alpn: Some(b"godoxy-agent-stream/1"),
//!     ssl: Some(Ssl { version: Some("TLSv1.3"), common_name: Some("ci-runner") }),
//! };
//! let bytes = header.to_vec()?;
//! assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
//! assert_eq!(bytes[12..14], [0x21, 0x11]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Named offsets and values of the specification.
pub mod field {
    use std::ops::Range;

    /// The signature every version 2 header starts with.
    pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
    /// Where the signature is.
    pub const SIGNATURE_AT: Range<usize> = 0..12;
    /// Version (high nibble) and command (low nibble).
    pub const VER_CMD: usize = SIGNATURE_AT.end;
    /// Address family (high nibble) and transport (low nibble).
    pub const FAMILY: usize = VER_CMD + 1;
    /// Length of what follows the fixed part, big-endian.
    pub const LEN: Range<usize> = FAMILY + 1..FAMILY + 3;
    /// The fixed part's length: addresses start here.
    pub const FIXED_LEN: usize = LEN.end;
    /// Version 2, command PROXY.
    pub const V2_PROXY: u8 = 0x21;
    /// `AF_INET`.
    pub const AF_INET: u8 = 0x10;
    /// `AF_INET6`.
    pub const AF_INET6: u8 = 0x20;
    /// `STREAM` (TCP).
    pub const STREAM: u8 = 0x01;
    /// `DGRAM` (UDP).
    pub const DGRAM: u8 = 0x02;
    /// Addresses and ports for IPv4: two addresses of 4 bytes, two ports.
    pub const IPV4_ADDRS_LEN: usize = 12;
    /// Addresses and ports for IPv6: two addresses of 16 bytes, two ports.
    pub const IPV6_ADDRS_LEN: usize = 36;
    /// `PP2_TYPE_ALPN`.
    pub const TYPE_ALPN: u8 = 0x01;
    /// `PP2_TYPE_SSL`.
    pub const TYPE_SSL: u8 = 0x20;
    /// `PP2_SUBTYPE_SSL_VERSION`.
    pub const SUBTYPE_SSL_VERSION: u8 = 0x21;
    /// `PP2_SUBTYPE_SSL_CN`.
    pub const SUBTYPE_SSL_CN: u8 = 0x22;
    /// `PP2_CLIENT_SSL`: the client connected over SSL/TLS.
    pub const CLIENT_SSL: u8 = 0x01;
    /// `PP2_CLIENT_CERT_CONN`: the client sent a certificate on this connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// A TLV's type and length.
    pub const TLV_HEAD_LEN: usize = 3;
    /// The SSL TLV's client byte and verify word, before its sub-TLVs.
    pub const SSL_HEAD_LEN: usize = 5;

    const _: () = assert!(FIXED_LEN == 16);
}

/// Whether tunnels send a PROXY protocol header to their destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProxyProtocol {
    /// No header (the default): the destination sees the server's address.
    #[default]
    Off,
    /// A version 2 header: once per TCP stream, in front of every UDP datagram.
    V2,
}

/// Text that is neither `v2` nor `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a PROXY protocol setting (\"v2\" or \"off\")")]
pub struct ProxyProtocolError(pub String);

impl FromStr for ProxyProtocol {
    type Err = ProxyProtocolError;

    fn from_str(text: &str) -> Result<ProxyProtocol, ProxyProtocolError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "v2" | "2" => Ok(ProxyProtocol::V2),
            "off" | "none" => Ok(ProxyProtocol::Off),
            _ => Err(ProxyProtocolError(text.to_owned())),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V2 => "v2",
        })
    }
}

/// The transport the header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP stream: the header comes once, first.
    Stream,
    /// UDP: the header starts every datagram.
    Dgram,
}

/// What the `PP2_TYPE_SSL` TLV says: the client connected over TLS or DTLS with a
/// certificate that was verified (the server admits no other client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ssl<'a> {
    /// `PP2_SUBTYPE_SSL_VERSION`, such as `TLSv1.3` or `DTLSv1.2`.
    pub version: Option<&'a str>,
    /// `PP2_SUBTYPE_SSL_CN`: the client certificate's common name.
    pub common_name: Option<&'a str>,
}

/// One PROXY protocol version 2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader<'a> {
    /// TCP or UDP.
    pub transport: Transport,
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client connected to (the server's).
    pub destination: SocketAddr,
    /// `PP2_TYPE_ALPN`: the negotiated application protocol, if any.
    pub alpn: Option<&'a [u8]>,
    /// `PP2_TYPE_SSL`, if the client connected over TLS or DTLS.
    pub ssl: Option<Ssl<'a>>,
}

/// Why a header cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A TLV's value, or the whole header, is longer than a 16-bit length can say.
    #[error("the PROXY header's {what} is too long ({len} bytes)")]
    TooLong {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The output buffer is smaller than the header.
    #[error("the PROXY header needs {needed} bytes, the buffer has {len}")]
    BufferTooSmall {
        /// The header's length.
        needed: usize,
        /// The buffer's length.
        len: usize,
    },
}

/// Both addresses in one family: IPv4 when both are IPv4 (IPv4-mapped IPv6 counts as IPv4),
/// else both as IPv6 (IPv4 mapped).
fn family(source: SocketAddr, destination: SocketAddr) -> (u8, [u8; 16], [u8; 16], usize) {
    let canon = |ip: IpAddr| crate::policy::canonical(ip);
    match (canon(source.ip()), canon(destination.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
            src[..4].copy_from_slice(&s.octets());
            dst[..4].copy_from_slice(&d.octets());
            (field::AF_INET, src, dst, 4)
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (field::AF_INET6, v6(s), v6(d), 16)
        }
    }
}

fn tlv_len(what: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::TooLong { what, len })
}

impl ProxyHeader<'_> {
    /// The length of the SSL TLV's value.
    fn ssl_value_len(ssl: &Ssl<'_>) -> usize {
        let sub = |v: Option<&str>| v.map_or(0, |v| field::TLV_HEAD_LEN + v.len());
        field::SSL_HEAD_LEN + sub(ssl.version) + sub(ssl.common_name)
    }

    /// The encoded length of the header.
    pub fn encoded_len(&self) -> usize {
        let (_, _, _, addr_len) = family(self.source, self.destination);
        let addrs = if addr_len == 4 {
            field::IPV4_ADDRS_LEN
        } else {
            field::IPV6_ADDRS_LEN
        };
        let alpn = self.alpn.map_or(0, |a| field::TLV_HEAD_LEN + a.len());
        let ssl = self
            .ssl
            .as_ref()
            .map_or(0, |s| field::TLV_HEAD_LEN + Self::ssl_value_len(s));
        field::FIXED_LEN + addrs + alpn + ssl
    }

    /// Writes the header at the start of `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.encoded_len();
        let rest = tlv_len("total length", needed - field::FIXED_LEN)?;
        if out.len() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                len: out.len(),
            });
        }
        let (af, src, dst, addr_len) = family(self.source, self.destination);
        let transport = match self.transport {
            Transport::Stream => field::STREAM,
            Transport::Dgram => field::DGRAM,
        };
        let mut w = Writer { out, at: 0 };
        w.put(&field::SIGNATURE);
        w.put(&[field::V2_PROXY, af | transport]);
        w.put(&rest.to_be_bytes());
        w.put(&src[..addr_len]);
        w.put(&dst[..addr_len]);
        w.put(&self.source.port().to_be_bytes());
        w.put(&self.destination.port().to_be_bytes());
        if let Some(alpn) = self.alpn {
            w.tlv(field::TYPE_ALPN, tlv_len("ALPN", alpn.len())?, alpn);
        }
        if let Some(ssl) = &self.ssl {
            let len = tlv_len("SSL TLV", Self::ssl_value_len(ssl))?;
            w.put(&[field::TYPE_SSL]);
            w.put(&len.to_be_bytes());
            // Every client of this server sent a certificate that was verified.
            w.put(&[field::CLIENT_SSL | field::CLIENT_CERT_CONN]);
            w.put(&0u32.to_be_bytes());
            if let Some(version) = ssl.version {
                let len = tlv_len("SSL version", version.len())?;
                w.tlv(field::SUBTYPE_SSL_VERSION, len, version.as_bytes());
            }
            if let Some(cn) = ssl.common_name {
                let len = tlv_len("SSL common name", cn.len())?;
                w.tlv(field::SUBTYPE_SSL_CN, len, cn.as_bytes());
            }
        }
        debug_assert_eq!(w.at, needed);
        Ok(w.at)
    }

    /// The header as a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![0u8; self.encoded_len()];
        let n = self.encode(&mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// Writes into a buffer whose length was checked beforehand.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn tlv(&mut self, kind: u8, len: u16, value: &[u8]) {
        self.put(&[kind]);
        self.put(&len.to_be_bytes());
        self.put(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent reading of a header, written from the specification (section 2.2),
    /// not from the encoder.
    #[derive(Debug, PartialEq, Eq)]
    struct Parsed {
        command: u8,
        family: u8,
        protocol: u8,
        source: SocketAddr,
        destination: SocketAddr,
        tlvs: Vec<(u8, Vec<u8>)>,
        len: usize,
    }

    fn parse(b: &[u8]) -> Parsed {
        assert_eq!(
            &b[..12],
            b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
        );
        assert_eq!(b[12] >> 4, 2, "version 2");
        let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
        let body = &b[16..16 + len];
        let (source, destination, rest) = match b[13] >> 4 {
            1 => {
                let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap());
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                (
                    SocketAddr::new(ip(0), port(8)),
                    SocketAddr::new(ip(4), port(10)),
                    &body[12..],
                )
            }
            2 => {
                let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap());
                let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                (
                    SocketAddr::new(ip(0), port(32)),
                    SocketAddr::new(ip(16), port(34)),
                    &body[36..],
                )
            }
            other => panic!("family {other}"),
        };
        Parsed {
            command: b[12] & 0x0f,
            family: b[13] >> 4,
            protocol: b[13] & 0x0f,
            source,
            destination,
            tlvs: parse_tlvs(rest),
            len: 16 + len,
        }
    }

    fn parse_tlvs(mut rest: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut tlvs = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            tlvs.push((rest[0], rest[3..3 + len].to_vec()));
            rest = &rest[3 + len..];
        }
        tlvs
    }

    fn tcp4() -> ProxyHeader<'static> {
        ProxyHeader {
            transport: Transport::Stream,
            source: "192.0.2.10:40000".parse().unwrap(),
            destination: "198.51.100.1:8890".parse().unwrap(),
            alpn: None,
            ssl: None,
        }
    }

    #[test]
    fn test_emit() {
        // TCP over IPv4, no TLVs: byte for byte as the specification lays it out.
        let golden: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes follow
            192, 0, 2, 10, // source address
            198, 51, 100, 1, // destination address
            0x9C, 0x40, // source port 40000
            0x22, 0xBA, // destination port 8890
        ];
        assert_eq!(tcp4().to_vec().unwrap(), golden);
    }

    #[test]
    fn test_emit_with_tlvs() {
        let header = ProxyHeader {
            transport: Transport::Dgram,
            alpn: Some(b"h2"),
            ssl: Some(Ssl {
                version: None,
                common_name: Some("ci"),
            }),
            ..tcp4()
        };
        let golden: Vec<u8> = [
            &b"\r\n\r\n\0\r\nQUIT\n"[..],
            &[0x21, 0x12, 0x00, 12 + 5 + 13],
            &[192, 0, 2, 10, 198, 51, 100, 1, 0x9C, 0x40, 0x22, 0xBA],
            &[0x01, 0x00, 0x02, b'h', b'2'], // PP2_TYPE_ALPN
            &[0x20, 0x00, 10],               // PP2_TYPE_SSL, 10 bytes
            &[0x03],                         // PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN
            &[0, 0, 0, 0],                   // verify: 0, verified
            &[0x22, 0x00, 0x02, b'c', b'i'], // PP2_SUBTYPE_SSL_CN
        ]
        .concat();
        assert_eq!(header.to_vec().unwrap(), golden);
    }

    #[test]
    fn test_parse() {
        let header = ProxyHeader {
            transport: Transport::Stream,
            source: "[2001:db8::10]:40000".parse().unwrap(),
            destination: "[2001:db8::1]:8890".parse().unwrap(),
            alpn: Some(b"godoxy-agent-stream/1"),
            ssl: Some(Ssl {
                version: Some("TLSv1.3"),
                common_name: Some("ci-runner"),
            }),
        };
        let bytes = header.to_vec().unwrap();
        let parsed = parse(&bytes);
        assert_eq!(parsed.len, bytes.len());
        assert_eq!(parsed.len, header.encoded_len());
        assert_eq!((parsed.command, parsed.family, parsed.protocol), (1, 2, 1));
        assert_eq!(parsed.source, header.source);
        assert_eq!(parsed.destination, header.destination);
        assert_eq!(parsed.tlvs.len(), 2);
        assert_eq!(parsed.tlvs[0], (0x01, b"godoxy-agent-stream/1".to_vec()));
        let (kind, ssl) = &parsed.tlvs[1];
        assert_eq!(*kind, 0x20);
        assert_eq!(
            ssl[0],
            0x01 | 0x02,
            "SSL and a certificate on this connection"
        );
        assert_eq!(
            u32::from_be_bytes([ssl[1], ssl[2], ssl[3], ssl[4]]),
            0,
            "verified"
        );
        assert_eq!(
            parse_tlvs(&ssl[5..]),
            vec![(0x21, b"TLSv1.3".to_vec()), (0x22, b"ci-runner".to_vec())]
        );
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6_and_mapped_ipv4_as_ipv4() {
        let header = ProxyHeader {
            source: "192.0.2.10:1".parse().unwrap(),
            destination: "[2001:db8::1]:2".parse().unwrap(),
            ..tcp4()
        };
        let parsed = parse(&header.to_vec().unwrap());
        assert_eq!(parsed.family, 2);
        assert_eq!(parsed.source, "[::ffff:192.0.2.10]:1".parse().unwrap());
        let header = ProxyHeader {
            source: "[::ffff:192.0.2.10]:1".parse().unwrap(),
            destination: "[::ffff:198.51.100.1]:2".parse().unwrap(),
            ..tcp4()
        };
        let parsed = parse(&header.to_vec().unwrap());
        assert_eq!(parsed.family, 1);
        assert_eq!(parsed.source, "192.0.2.10:1".parse().unwrap());
    }

    #[test]
    fn refuses_values_a_length_cannot_carry_and_short_buffers() {
        let cn = "x".repeat(70_000);
        let header = ProxyHeader {
            ssl: Some(Ssl {
                version: None,
                common_name: Some(&cn),
            }),
            ..tcp4()
        };
        assert!(matches!(header.to_vec(), Err(EncodeError::TooLong { .. })));
        let mut short = [0u8; 27];
        assert_eq!(
            tcp4().encode(&mut short),
            Err(EncodeError::BufferTooSmall {
                needed: 28,
                len: 27
            })
        );
    }

    #[test]
    fn settings_read_v2_and_off() {
        assert_eq!("v2".parse::<ProxyProtocol>(), Ok(ProxyProtocol::V2));
        assert_eq!("V2".parse::<ProxyProtocol>(), Ok(ProxyProtocol::V2));
        assert_eq!("off".parse::<ProxyProtocol>(), Ok(ProxyProtocol::Off));
        assert!("v1".parse::<ProxyProtocol>().is_err());
        assert_eq!(ProxyProtocol::default(), ProxyProtocol::Off);
    }
}
