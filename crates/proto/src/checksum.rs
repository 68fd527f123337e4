//! The header checksum: CRC-32/IEEE (the one Go's `crc32.ChecksumIEEE` computes).

/// Slice-by-16 tables: the header is hashed once per tunnel, on the server's accept path.
const CRC32: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32/IEEE of `bytes`.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_standard_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC over "123456789".
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
    }
}
