//! The header checksum: CRC-32/IEEE (the one Go's `crc32.ChecksumIEEE` computes).
//!
//! Most of a header is the NUL padding of the host field, so the checksum is computed as
//! `crc(head)`, then a jump over the run of zero bytes, then `crc(tail)`. CRC is linear: feeding
//! `k` zero bytes into the CRC register is a fixed linear map `Z^k` on its 32 bits, which is
//! tabulated here at compile time for every `k` a header can have (0..=255). Applying one
//! such map costs 32 conditional XORs instead of `k` table steps, which halves the cost of
//! checking a typical header. Callers must only use the jump over bytes that are zero.

use crate::consts::MAX_HOST_LEN;

/// Slice-by-16 tables for the non-zero parts.
static CRC32: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// The reflected CRC-32/IEEE polynomial.
const POLY: u32 = 0xEDB8_8320;

/// The register's value before the first byte and the final XOR, for CRC-32/IEEE.
const XOROUT: u32 = 0xFFFF_FFFF;

/// One step of the reflected CRC register over a zero byte.
const fn step_zero_byte(mut reg: u32) -> u32 {
    let mut bit = 0;
    while bit < 8 {
        reg = if reg & 1 == 1 {
            (reg >> 1) ^ POLY
        } else {
            reg >> 1
        };
        bit += 1;
    }
    reg
}

/// `ZEROS[k][i]` is the register after feeding `k` zero bytes into a register holding only
/// bit `i`: the columns of the linear map `Z^k`.
static ZEROS: [[u32; 32]; MAX_HOST_LEN + 1] = {
    let mut maps = [[0u32; 32]; MAX_HOST_LEN + 1];
    let mut i = 0;
    while i < 32 {
        maps[0][i] = 1 << i;
        i += 1;
    }
    let mut k = 1;
    while k <= MAX_HOST_LEN {
        let mut i = 0;
        while i < 32 {
            maps[k][i] = step_zero_byte(maps[k - 1][i]);
            i += 1;
        }
        k += 1;
    }
    maps
};

/// The register after feeding `zeros` zero bytes, `zeros <= 255`.
fn skip_zeros(reg: u32, zeros: usize) -> u32 {
    let Some(map) = ZEROS.get(zeros) else {
        // Not reachable from this crate (the host field is 255 bytes); stay correct anyway.
        let mut reg = reg;
        for _ in 0..zeros {
            reg = step_zero_byte(reg);
        }
        return reg;
    };
    let mut out = 0u32;
    for (i, column) in map.iter().enumerate() {
        out ^= column & 0u32.wrapping_sub((reg >> i) & 1);
    }
    out
}

/// CRC-32/IEEE of `bytes`.
#[cfg(test)]
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

/// CRC-32/IEEE of `head`, followed by `zeros` zero bytes (at most 255), followed by `tail`.
pub(crate) fn crc32_with_zero_run(head: &[u8], zeros: usize, tail: &[u8]) -> u32 {
    let mut digest = CRC32.digest();
    digest.update(head);
    let reg = skip_zeros(digest.finalize() ^ XOROUT, zeros);
    // `digest_with_initial` reflects the initial value it is given; reflect it back.
    let mut digest = CRC32.digest_with_initial(reg.reverse_bits());
    digest.update(tail);
    digest.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC over "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn zero_run_jump_equals_feeding_the_zeros() {
        let head: [u8; 40] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        let tail: [u8; 7] = [9, 8, 0, 0, 255, 1, 3];
        for h in [0usize, 1, 9, 40] {
            for zeros in 0..=MAX_HOST_LEN {
                let mut whole = [0u8; 40 + MAX_HOST_LEN + 7];
                whole[..h].copy_from_slice(&head[..h]);
                whole[h + zeros..h + zeros + 7].copy_from_slice(&tail);
                let expected = crc32(&whole[..h + zeros + 7]);
                assert_eq!(
                    crc32_with_zero_run(&head[..h], zeros, &tail),
                    expected,
                    "head {h}, zeros {zeros}"
                );
            }
        }
    }

    #[test]
    fn skip_zeros_beyond_the_table_still_steps() {
        let reg = 0xdead_beef;
        let mut by_steps = reg;
        for _ in 0..300 {
            by_steps = step_zero_byte(by_steps);
        }
        assert_eq!(skip_zeros(reg, 300), by_steps);
    }
}
