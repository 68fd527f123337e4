//! Property tests: round trips, bit flips, truncation and arbitrary input.

use proptest::prelude::*;
use streamproxy_proto::{Flags, Header, MAX_HEADER_LEN, Version};

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V0_1_0_0), Just(Version::V0_1_0)]
}

/// Hosts the encoder accepts: 1..=255 bytes of UTF-8 without control characters.
fn host() -> impl Strategy<Value = String> {
    "[^\\x00-\\x1f\\x7f]{1,64}"
        .prop_filter("at most 255 bytes", |h| h.len() <= 255)
        .boxed()
        .prop_union(
            "[a-z0-9.-]{200,255}"
                .prop_filter("at most 255 bytes", |h| h.len() <= 255)
                .boxed(),
        )
}

fn valid_header() -> impl Strategy<Value = (Version, String, u16, u8)> {
    (version(), host(), 1u16.., any::<u8>()).prop_map(|(v, h, p, f)| {
        let flags = if v.has_flags() { f & !1 } else { 0 };
        (v, h, p, flags)
    })
}

fn encode(v: Version, host: &str, port: u16, flags: u8) -> Vec<u8> {
    Header::with_port(host, port)
        .expect("valid by construction")
        .with_version(v)
        .with_flags(Flags::from_bits(flags))
        .to_bytes()
        .expect("encodes")
        .to_vec()
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips((v, host, port, flags) in valid_header()) {
        let bytes = encode(v, &host, port, flags);
        prop_assert_eq!(bytes.len(), v.header_len());
        let h = Header::decode(&bytes).expect("decodes");
        prop_assert_eq!(h.version(), v);
        prop_assert_eq!(h.host(), host.as_str());
        prop_assert_eq!(h.port(), port);
        prop_assert_eq!(h.flags().bits(), flags);
        let port_text = port.to_string();
        prop_assert_eq!(h.port_str(), port_text.as_str());
    }

    #[test]
    fn every_single_bit_flip_is_rejected((v, host, port, flags) in valid_header()) {
        let bytes = encode(v, &host, port, flags);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Header::decode(&flipped).is_err(), "bit {} accepted", bit);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected(
        (v, host, port, flags) in valid_header(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = encode(v, &host, port, flags);
        for len in 0..bytes.len() {
            prop_assert!(Header::decode(&bytes[..len]).is_err(), "truncated to {}", len);
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(Header::decode(&longer).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Header::decode(&bytes);
        let _ = Version::detect(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bodies_after_a_valid_tag_never_panics(
        v in version(),
        body in proptest::collection::vec(any::<u8>(), MAX_HEADER_LEN),
    ) {
        let mut bytes = body;
        bytes.truncate(v.header_len());
        bytes[..8].copy_from_slice(v.tag());
        let _ = Header::decode(&bytes);
    }
}
