//! One test per decoding and encoding failure, each asserting the exact error.

use streamproxy_proto::{
    EncodeError, Flags, Header, HeaderError, HostError, MAX_HEADER_LEN, PortError, Version, field,
};

fn encoded(host: &str, port: &str, version: Version) -> Vec<u8> {
    Header::new(host, port)
        .expect("valid")
        .with_version(version)
        .to_bytes()
        .expect("encodes")
        .to_vec()
}

/// Rewrites the checksum so that a deliberately corrupted field reaches field validation.
fn reseal(bytes: &mut [u8]) {
    let len = bytes.len();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&bytes[..len - 4]);
    bytes[len - 4..].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn rejects_unknown_version() {
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    bytes[..8].copy_from_slice(b"0.2.0.0\0");
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::UnknownVersion {
            found: *b"0.2.0.0\0"
        })
    );
}

#[test]
fn rejects_header_with_bad_checksum() {
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert!(matches!(
        Header::decode(&bytes),
        Err(HeaderError::ChecksumMismatch { .. })
    ));
}

#[test]
fn rejects_missing_and_trailing_bytes() {
    for version in Version::ALL {
        let bytes = encoded("example.com", "80", version);
        let n = bytes.len();
        assert_eq!(
            Header::decode(&bytes[..n - 1]),
            Err(HeaderError::Length {
                expected: n,
                found: n - 1
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Header::decode(&longer),
            Err(HeaderError::Length {
                expected: n,
                found: n + 1
            })
        );
        assert_eq!(
            Header::decode(&bytes[..3]),
            Err(HeaderError::Length {
                expected: 8,
                found: 3
            })
        );
    }
}

#[test]
fn rejects_port_length_over_five() {
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    bytes[field::PORT_LEN] = 200;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::Port(PortError::TooLong { len: 200 }))
    );
}

#[test]
fn rejects_invalid_host_bytes() {
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    bytes[field::HOST.start + 3] = b'\n';
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::Host(HostError::ControlByte {
            offset: 3,
            byte: b'\n'
        }))
    );
    // A host length that reaches into the NUL padding is a NUL in the host.
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    bytes[field::HOST_LEN] = 12;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::Host(HostError::ControlByte {
            offset: 11,
            byte: 0
        }))
    );
    let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
    bytes[field::HOST.start] = 0xff;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::Host(HostError::NotUtf8))
    );
}

#[test]
fn rejects_invalid_port() {
    for (text, err) in [
        (&b"0"[..], PortError::OutOfRange { value: 0 }),
        (b"65536", PortError::OutOfRange { value: 65536 }),
        (b"99999", PortError::OutOfRange { value: 99999 }),
        (b"8a", PortError::NotDecimal),
    ] {
        let mut bytes = encoded("example.com", "80", Version::V0_1_0_0);
        bytes[field::PORT_LEN] = text.len() as u8;
        bytes[field::PORT].fill(0);
        bytes[field::PORT][..text.len()].copy_from_slice(text);
        reseal(&mut bytes);
        assert_eq!(Header::decode(&bytes), Err(HeaderError::Port(err)));
    }
}

#[test]
fn rejects_empty_host_or_port_unless_health_check() {
    let mut bytes = encoded("example.com", "80", Version::V0_1_0);
    bytes[field::HOST_LEN] = 0;
    reseal(&mut bytes);
    assert_eq!(
        Header::decode(&bytes),
        Err(HeaderError::Host(HostError::Empty))
    );
    bytes[field::v0_1_0::FLAGS] = Flags::CLOSE_IMMEDIATELY.bits();
    bytes[field::PORT_LEN] = 0;
    reseal(&mut bytes);
    let header = Header::decode(&bytes).expect("health check may be empty");
    assert!(header.is_health_check());
    assert_eq!((header.host(), header.port()), ("", 0));
}

#[test]
fn encode_rejects_bad_host_and_port() {
    let long = "h".repeat(256);
    assert_eq!(
        Header::new(&long, "80"),
        Err(EncodeError::Host(HostError::TooLong { len: 256 }))
    );
    assert_eq!(
        Header::new("", "80"),
        Err(EncodeError::Host(HostError::Empty))
    );
    assert_eq!(
        Header::new("a\0b", "80"),
        Err(EncodeError::Host(HostError::ControlByte {
            offset: 1,
            byte: 0
        }))
    );
    assert_eq!(
        Header::new("a", "123456"),
        Err(EncodeError::Port(PortError::TooLong { len: 6 }))
    );
    assert_eq!(
        Header::new("a", ""),
        Err(EncodeError::Port(PortError::Empty))
    );
    assert_eq!(
        Header::new("a", "http"),
        Err(EncodeError::Port(PortError::NotDecimal))
    );
    assert_eq!(
        Header::new("a", "0"),
        Err(EncodeError::Port(PortError::OutOfRange { value: 0 }))
    );
    assert_eq!(
        Header::with_port("a", 0),
        Err(EncodeError::Port(PortError::OutOfRange { value: 0 }))
    );
}

#[test]
fn encode_refuses_flags_without_a_flag_byte_and_small_buffers() {
    let header = Header::health_check().with_version(Version::V0_1_0_0);
    assert_eq!(
        header.to_bytes(),
        Err(EncodeError::FlagsUnsupported {
            version: Version::V0_1_0_0
        })
    );
    let header = Header::health_check().with_flags(Flags::NONE);
    assert_eq!(header.to_bytes(), Err(EncodeError::Host(HostError::Empty)));
    let mut small = [0u8; MAX_HEADER_LEN - 2];
    assert_eq!(
        Header::new("a", "1").expect("valid").encode(&mut small),
        Err(EncodeError::BufferTooSmall {
            needed: 275,
            available: 273
        })
    );
    assert_eq!(
        Header::new("a", "1")
            .expect("valid")
            .with_version(Version::V0_1_0_0)
            .encode(&mut small[..273]),
        Err(EncodeError::BufferTooSmall {
            needed: 274,
            available: 273
        })
    );
}

#[test]
fn with_port_matches_text_port() {
    let a = Header::with_port("example.com", 8080).expect("valid");
    let b = Header::new("example.com", "8080").expect("valid");
    assert_eq!(a.to_bytes(), b.to_bytes());
    assert_eq!(a.port_str(), "8080");
}

#[test]
fn errors_read_well_in_a_log_line() {
    let e = HeaderError::ChecksumMismatch {
        expected: 0x1234_5678,
        found: 1,
    };
    assert_eq!(
        e.to_string(),
        "invalid header: checksum mismatch (computed 0x12345678, header has 0x00000001)"
    );
    let e = HeaderError::UnknownVersion {
        found: *b"GET / HT",
    };
    assert_eq!(
        e.to_string(),
        "invalid header: unknown version \"GET / HT\""
    );
    assert_eq!(
        HeaderError::Port(PortError::TooLong { len: 9 }).to_string(),
        "invalid header: port is 9 bytes long, the maximum is 5"
    );
}

#[test]
fn display_brackets_ipv6_hosts() {
    let h = Header::new("::1", "53").expect("valid");
    assert_eq!(h.to_string(), "[::1]:53 (v0.1.0)");
    assert_eq!(
        h.with_version(Version::V0_1_0_0).to_string(),
        "[::1]:53 (v0.1.0.0)"
    );
    assert_eq!(Header::health_check().to_string(), "health check (v0.1.0)");
}
