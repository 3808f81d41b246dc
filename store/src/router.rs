//! Which shard owns a conversation: a stable hash of its id, the same in every process and
//! every version, because the shard's data folder is named by its number.

use crate::ids::ConvId;

/// FNV-1a, 64-bit, then splitmix64's finalizer: stable forever. The finalizer matters: FNV's
/// low bits are a plain XOR of the bytes' low bits, so `dm:uK:vK` ids (each digit twice) would
/// all land on one shard of two.
pub fn shard_for(conv: &ConvId, shards: usize) -> usize {
    assert!(shards > 0);
    (conv_hash(conv) % shards as u64) as usize
}

/// The cluster partition of a conversation (DESIGN.md "Across nodes"), from the same hash's
/// other half, so that which node owns a conversation and which of its shards holds it are
/// not tied to each other.
pub fn partition_for(conv: &ConvId, partitions: u32) -> u32 {
    assert!(partitions > 0);
    (conv_hash(conv).rotate_right(32) % u64::from(partitions)) as u32
}

fn conv_hash(conv: &ConvId) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in conv.as_str().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^= h >> 31;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        let c = ConvId::new("dm:alice:bob").unwrap();
        assert_eq!(shard_for(&c, 1), 0);
        assert_eq!(shard_for(&c, 4), shard_for(&c, 4));
        for shards in [2, 3, 4] {
            let mut counts = vec![0usize; shards];
            for i in 0..4000 {
                counts[shard_for(&ConvId::new(&format!("g{i}")).unwrap(), shards)] += 1;
                counts[shard_for(&ConvId::new(&format!("dm:u{i}:v{i}")).unwrap(), shards)] += 1;
            }
            assert!(counts.iter().all(|&n| n > 8000 / shards * 9 / 10), "{counts:?}");
        }
    }

    #[test]
    fn partitions_are_stable_spread_and_independent_of_shards() {
        let c = ConvId::new("dm:alice:bob").unwrap();
        // Fixed forever: data folders are laid out by it.
        assert_eq!(partition_for(&c, 256), partition_for(&c, 256));
        let mut counts = vec![0usize; 16];
        let mut pairs = std::collections::HashSet::new();
        for i in 0..16_000 {
            let c = ConvId::new(&format!("g{i}")).unwrap();
            counts[partition_for(&c, 16) as usize] += 1;
            pairs.insert((partition_for(&c, 16), shard_for(&c, 4)));
        }
        assert!(counts.iter().all(|&n| n > 900), "{counts:?}");
        // Each partition's conversations spread over every shard of its node.
        assert_eq!(pairs.len(), 64);
    }
}
