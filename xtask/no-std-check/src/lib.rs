//! Uses the header codec the way firmware would: encode into a stack buffer, decode it back.
#![no_std]

use streamproxy_proto::{Header, MAX_HEADER_LEN};

/// Encodes a request for `10.0.0.7:8080` and decodes it again; returns the port, or 0.
#[unsafe(no_mangle)]
pub extern "C" fn streamproxy_proto_round_trip() -> u16 {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let Ok(header) = Header::new("10.0.0.7", "8080") else {
        return 0;
    };
    let Ok(len) = header.encode(&mut buf) else {
        return 0;
    };
    match Header::decode(&buf[..len]) {
        Ok(decoded) => decoded.port(),
        Err(_) => 0,
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
