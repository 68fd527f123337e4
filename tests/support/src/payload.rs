//! Deterministic payloads.

/// `len` pseudo-random bytes from `seed` (xorshift64): the same arguments give the same bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes that name themselves: `id` big-endian in the first four (when `len >= 4`), then
/// bytes derived from `id` and their position. For datagrams a receiver must tell apart.
pub fn tagged_payload(id: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(id) as u8)
        .collect();
    if len >= 4 {
        v[..4].copy_from_slice(&id.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_repeat_for_a_seed_and_differ_between_seeds() {
        assert_eq!(payload(1000, 7), payload(1000, 7));
        assert_ne!(payload(1000, 7), payload(1000, 8));
        assert_eq!(payload(10, 7), payload(1000, 7)[..10]);
    }

    #[test]
    fn a_tagged_payload_starts_with_its_id() {
        let p = tagged_payload(0x0102_0304, 700);
        assert_eq!(p.len(), 700);
        assert_eq!(p[..4], [1, 2, 3, 4]);
        assert_ne!(tagged_payload(1, 700), tagged_payload(2, 700));
        assert_eq!(tagged_payload(9, 3).len(), 3);
    }
}
