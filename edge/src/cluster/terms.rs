//! The terms a cluster's nodes must agree on: the partition count and every node's role.
//! Placement is computed from both on every node, so two nodes that disagree would look for a
//! conversation on different owners. Each node states its terms to every peer as soon as a
//! connection to it is chosen; on a mismatch the node that started later refuses to stay
//! (it is the one just (re)configured), and says why, and the earlier one logs it.

use super::Cluster;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use switchboard_backplane::Boot;

/// What a node states (a control-class frame, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// Always `"terms"`: the first control frame type of the cluster layer.
    pub t: String,
    pub partitions: u32,
    /// Every node's role as this node is configured with it, itself included.
    pub roles: BTreeMap<u16, String>,
    /// Where clients reach the sender (its WebSocket URL); not a term to agree on, but what
    /// the others put in `welcome.nodes`.
    #[serde(default)]
    pub client_url: String,
}

impl Terms {
    pub fn of(cluster: &Cluster, client_url: String) -> Terms {
        let mut roles: BTreeMap<u16, String> =
            cluster.peers.iter().map(|p| (p.node.0, p.role.name().to_string())).collect();
        roles.insert(cluster.me.0, cluster.role.name().to_string());
        Terms { t: "terms".into(), partitions: cluster.partitions, roles, client_url }
    }

    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("terms serialize").into()
    }

    /// `None` for a control frame that is not a statement of terms.
    pub fn decode(frame: &[u8]) -> Option<Terms> {
        serde_json::from_slice::<Terms>(frame).ok().filter(|t| t.t == "terms")
    }

    /// Where `theirs` differs from these, in words; `Ok` when they agree.
    pub fn agree(&self, theirs: &Terms, peer: u16) -> Result<(), String> {
        if self.partitions != theirs.partitions {
            return Err(format!(
                "node {peer} has partitions = {}, this node {}: every node of a cluster needs the same count",
                theirs.partitions, self.partitions
            ));
        }
        if self.roles != theirs.roles {
            let show = |roles: &BTreeMap<u16, String>| {
                roles.iter().map(|(n, r)| format!("{n}:{r}")).collect::<Vec<_>>().join(", ")
            };
            return Err(format!(
                "node {peer} is configured with the nodes and roles [{}], this node with [{}]: every node needs the same peers and roles",
                show(&theirs.roles),
                show(&self.roles)
            ));
        }
        Ok(())
    }
}

/// Of two nodes that disagree, the one that started later leaves.
pub fn leaves(mine: Boot, theirs: Boot) -> bool {
    mine > theirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Peer, Role};
    use switchboard_backplane::NodeId;

    fn cluster(me: u16, partitions: u32, peers: &[(u16, Role)]) -> Cluster {
        Cluster {
            me: NodeId(me),
            role: Role::Both,
            peers: peers
                .iter()
                .map(|(n, role)| Peer { node: NodeId(*n), backplane: "127.0.0.1:1".parse().unwrap(), role: *role })
                .collect(),
            partitions,
        }
    }

    #[test]
    fn nodes_agree_on_partitions_and_roles_or_say_where_not() {
        let one = Terms::of(&cluster(1, 256, &[(2, Role::Both), (3, Role::Edge)]), "ws://a/v1/ws".into());
        let two = Terms::of(&cluster(2, 256, &[(1, Role::Both), (3, Role::Edge)]), "ws://b/v1/ws".into());
        assert_eq!(one.agree(&two, 2), Ok(()));
        assert_eq!(Terms::decode(&two.encode()), Some(two));
        let other_count = Terms::of(&cluster(2, 128, &[(1, Role::Both), (3, Role::Edge)]), String::new());
        let e = one.agree(&other_count, 2).unwrap_err();
        assert!(e.contains("partitions = 128") && e.contains("this node 256"), "{e}");
        let other_roles = Terms::of(&cluster(2, 256, &[(1, Role::Both), (3, Role::Both)]), String::new());
        assert!(one.agree(&other_roles, 2).unwrap_err().contains("3:both"));
        assert_eq!(Terms::decode(b"{\"t\":\"sub\"}"), None);
        assert_eq!(Terms::decode(b"not json"), None);
        assert!(leaves(Boot(2), Boot(1)) && !leaves(Boot(1), Boot(2)));
    }
}
