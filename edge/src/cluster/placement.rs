//! Where a conversation lives: its partition (a stable hash of its id, `partitions` of them),
//! then the store node that owns the partition, by rendezvous hashing over the *configured*
//! store nodes. Not the live ones: a partition's log is on its node's disk, so while that node
//! is down its conversations wait for it (`unavailable`), and no other node takes them over
//! until replication lets one do so safely.
//!
//! Rendezvous (highest random weight): each node scores each partition, the highest score
//! owns it. Adding or removing a node moves only the partitions it wins or held, and no
//! virtual nodes are needed; O(store nodes) per lookup is nothing at the node counts a
//! configured list implies, and the owner of every partition is computed once at start.

use switchboard_backplane::NodeId;
use switchboard_store::router::partition_for;
use switchboard_store::ConvId;

/// Which store node owns each partition.
#[derive(Clone, Debug)]
pub struct Placement {
    owners: Vec<NodeId>,
}

/// A partition's score on a node: splitmix64 of both, stable forever (data folders depend on
/// it).
fn score(partition: u32, node: NodeId) -> u64 {
    let mut h = (u64::from(partition) << 16 | u64::from(node.0)).wrapping_add(0x9e3779b97f4a7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// The node of `nodes` (not empty) that `key` belongs to by rendezvous hashing.
pub fn rendezvous(key: u64, nodes: &[NodeId]) -> NodeId {
    let key = (key ^ (key >> 32)) as u32;
    *nodes.iter().max_by_key(|n| (score(key, **n), n.0)).expect("not empty")
}

impl Placement {
    /// `store_nodes` must not be empty.
    pub fn new(partitions: u32, store_nodes: &[NodeId]) -> Placement {
        assert!(!store_nodes.is_empty(), "a cluster has at least one store node");
        let owners = (0..partitions).map(|p| rendezvous(u64::from(p), store_nodes)).collect();
        Placement { owners }
    }

    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    pub fn partition_of(&self, conv: &ConvId) -> u32 {
        partition_for(conv, self.partitions())
    }

    pub fn owner_of_partition(&self, partition: u32) -> NodeId {
        self.owners[partition as usize]
    }

    /// The store node that sequences and stores `conv`.
    pub fn owner(&self, conv: &ConvId) -> NodeId {
        self.owner_of_partition(self.partition_of(conv))
    }

    /// The partitions `node` owns.
    pub fn owned_by(&self, node: NodeId) -> impl Iterator<Item = u32> + '_ {
        self.owners.iter().enumerate().filter(move |(_, n)| **n == node).map(|(p, _)| p as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u16]) -> Vec<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn partitions_spread_over_the_store_nodes_and_a_change_moves_only_its_own() {
        let three = Placement::new(256, &nodes(&[1, 2, 3]));
        for node in 1..=3 {
            let owned = three.owned_by(NodeId(node)).count();
            assert!((50..=120).contains(&owned), "node {node} owns {owned} of 256");
        }
        // A fourth store node takes partitions only from the others, never moves one between
        // two of them; removing it gives each back to its earlier owner.
        let four = Placement::new(256, &nodes(&[1, 2, 3, 4]));
        let mut moved = 0;
        for p in 0..256 {
            if three.owner_of_partition(p) != four.owner_of_partition(p) {
                assert_eq!(four.owner_of_partition(p), NodeId(4));
                moved += 1;
            }
        }
        assert!((30..=100).contains(&moved), "{moved}");
        // The order nodes are listed in does not matter.
        let shuffled = Placement::new(256, &nodes(&[3, 1, 2]));
        assert!((0..256).all(|p| shuffled.owner_of_partition(p) == three.owner_of_partition(p)));
        let conv = ConvId::new("dm:alice:bob").unwrap();
        assert_eq!(three.owner(&conv), three.owner_of_partition(three.partition_of(&conv)));
        // One store node owns everything.
        let one = Placement::new(8, &nodes(&[5]));
        assert!((0..8).all(|p| one.owner_of_partition(p) == NodeId(5)));
    }
}
