//! Decoding arbitrary bytes never panics, and whatever decodes re-encodes to the same bytes
//! (padding included, since the checksum covers it only when it is what we write).
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamproxy_proto::{Header, Version};

fuzz_target!(|data: &[u8]| {
    let _ = Version::detect(data);
    if let Ok(header) = Header::decode(data) {
        let again = header.to_bytes().expect("a decoded header encodes");
        let decoded = Header::decode(&again).expect("an encoded header decodes");
        assert_eq!(decoded, header);
        if padding(&header).all(|i| data[i] == 0) {
            assert_eq!(&*again, data);
        }
    }
});

/// Offsets of the padding after the host and after the port.
fn padding(header: &Header<'_>) -> impl Iterator<Item = usize> {
    use streamproxy_proto::field::{HOST, PORT};
    (HOST.start + header.host().len()..HOST.end).chain(PORT.start + header.port_str().len()..PORT.end)
}
