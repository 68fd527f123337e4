//! Byte offsets of the header fields, as ranges into the header.
//!
//! Both versions share the layout up to and including the port; version `0.1.0` then has
//! one flag byte before the checksum.
//!
//! | offset | length | field                                       |
//! |--------|--------|---------------------------------------------|
//! | 0      | 8      | version, ASCII, NUL padded                  |
//! | 8      | 1      | host length (0..=255)                       |
//! | 9      | 255    | host, NUL padded                            |
//! | 264    | 1      | port length (0..=5)                         |
//! | 265    | 5      | port, ASCII decimal, NUL padded             |
//! | 270    | 1      | flags (`0.1.0` only)                        |
//! | 270/271| 4      | CRC-32/IEEE of every byte before, big-endian|

use core::ops::Range;

/// A field that is one byte long.
pub type Byte = usize;

/// The version tag.
pub const VERSION: Range<usize> = 0..8;
/// The host length byte.
pub const HOST_LEN: Byte = VERSION.end;
/// The NUL-padded host.
pub const HOST: Range<usize> = HOST_LEN + 1..HOST_LEN + 1 + crate::MAX_HOST_LEN;
/// The port length byte.
pub const PORT_LEN: Byte = HOST.end;
/// The NUL-padded port text.
pub const PORT: Range<usize> = PORT_LEN + 1..PORT_LEN + 1 + crate::MAX_PORT_LEN;

/// Fields of the `0.1.0.0` header that differ from the shared prefix.
pub mod v0_1_0_0 {
    use core::ops::Range;

    /// The big-endian CRC-32 of bytes `0..CHECKSUM.start`.
    pub const CHECKSUM: Range<usize> = super::PORT.end..super::PORT.end + 4;
}

/// Fields of the `0.1.0` header that differ from the shared prefix.
pub mod v0_1_0 {
    use core::ops::Range;

    /// The flag byte.
    pub const FLAGS: super::Byte = super::PORT.end;
    /// The big-endian CRC-32 of bytes `0..CHECKSUM.start`.
    pub const CHECKSUM: Range<usize> = FLAGS + 1..FLAGS + 5;
}
