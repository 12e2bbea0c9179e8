//! Stable placement of keys on partitions.
//!
//! The hash is Kafka's murmur2 (the Java client's `Utils.murmur2`, seed `0x9747b28c`) with the sign
//! bit masked, so a key lands on the same partition in Driftless as it would in a Kafka topic with
//! the same partition count. This function is part of the on-disk contract: changing it moves keys
//! between partitions and breaks per-key order for existing topics. Never change it.

/// Kafka-compatible murmur2 hash of `data`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes lengths as a Java int; keys longer than i32::MAX cannot exist in Driftless
    // because record sizes are bounded far below that.
    let len = data.len() as u32;
    let mut h: u32 = SEED ^ len;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` in a topic with `partitions` partitions.
///
/// # Panics
/// If `partitions` is zero: a topic always has at least one partition, so a zero here is a bug in
/// the caller, not bad input.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from librdkafka's `unittest_murmur2`, which checks them against the Java
    /// client's `Utils.murmur2`. They cover aligned and unaligned tails of every length.
    #[test]
    fn murmur2_matches_kafka_reference_values() {
        let short: &[u8] = b"1234";
        let long: &[u8] = b"PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&[u8], u32); 11] = [
            (b"kafka", 0xd067_cf64),
            (b"giberish123456789", 0x8f55_2b0c),
            (short, 0x9fc9_7b14),
            (&short[1..], 0xe7c0_09ca),
            (&short[2..], 0x8739_30da),
            (&short[3..], 0x5a4b_5ca1),
            (long, 0x7842_4f1c),
            (&long[1..], 0x4a62_b377),
            (&long[2..], 0xe0e4_e09e),
            (&long[3..], 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_for_key_masks_the_sign_bit_like_kafka() {
        // 0xd067cf64 & 0x7fffffff = 1348980580; % 10 = 0, % 12 = 4.
        assert_eq!(partition_for_key(b"kafka", 10), 0);
        assert_eq!(partition_for_key(b"kafka", 12), 1_348_980_580 % 12);
    }
}
