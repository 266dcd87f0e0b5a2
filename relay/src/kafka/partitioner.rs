//! Picks a record's partition from its key exactly as the Java client's default partitioner does.
//!
//! rskafka has no partitioner. Downstream, other producers written in Java (and the old Python uploader through
//! kafka-python, which copies Java's choice) put a car's records on `toPositive(murmur2(key)) % partitions`. Using
//! the same function means a car's records land on the same partition whoever produced them, so consumers that
//! rely on per-key ordering keep it. This is `org.apache.kafka.common.utils.Utils.murmur2` (MurmurHash2, seed
//! `0x9747b28c`) with `toPositive(n) = n & 0x7fffffff`, as used by `BuiltInPartitioner.partitionForKey`.
//!
//! Tested here against values printed by Kafka 4.4.0's own `Utils.murmur2`, and in `tests/` against records the
//! Java console producer writes to a real broker.

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with Kafka's seed, as a Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java works on wrapping 32-bit ints; u32 with wrapping ops gives the same bits.
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        if rest.len() >= 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client picks for `key` among `partitions` partitions (`partitions` > 0).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, Utils.murmur2(key), Utils.toPositive(murmur2) % 12), printed by Kafka 4.4.0's kafka-clients jar with
    /// jshell (`import org.apache.kafka.common.utils.Utils; Utils.murmur2(k.getBytes(UTF_8))`).
    const JAVA: [(&str, i32, i32); 9] = [
        ("21", -973_932_308, 0),
        ("foobar", -790_332_482, 6),
        ("a-little-bit-long-string", -985_981_536, 8),
        ("a-little-bit-longer-string", -1_486_304_829, 11),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971, 5),
        ("abc", 479_470_107, 3),
        ("CAR-042", 240_792_218, 2),
        ("车厢-7", -1_877_082_802, 10),
        ("", 275_646_681, 9),
    ];

    #[test]
    fn murmur2_matches_kafkas_java_implementation() {
        for (key, hash, _) in JAVA {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
        }
    }

    #[test]
    fn partition_matches_the_java_default_partitioner() {
        for (key, _, partition) in JAVA {
            assert_eq!(partition_for_key(key.as_bytes(), 12), partition, "partition of {key:?} among 12");
        }
    }

    #[test]
    fn one_partition_is_always_zero() {
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }
}
