//! Which shard owns a conversation: a stable hash of its id, the same in every process and
//! every version, because the shard's data folder is named by its number.

use crate::ids::ConvId;

/// FNV-1a, 64-bit: stable forever and good enough to spread ids over a few shards.
pub fn shard_for(conv: &ConvId, shards: usize) -> usize {
    assert!(shards > 0);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in conv.as_str().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        let c = ConvId::new("dm:alice:bob").unwrap();
        assert_eq!(shard_for(&c, 1), 0);
        assert_eq!(shard_for(&c, 4), shard_for(&c, 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&ConvId::new(&format!("g{i}")).unwrap(), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
    }
}
