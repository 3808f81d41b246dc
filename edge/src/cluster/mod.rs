//! This node's place in a cluster (DESIGN.md "Across nodes"): its id and role, the other
//! nodes and theirs, where each conversation's partition lives ([`placement`]), and the data
//! folder's record of the id and partition count it was made with ([`identity`]).
//!
//! `node_id = 0` is a single node: no backplane, no peers, every conversation local. The
//! nodes of a cluster check that they agree on the partition count and the roles
//! ([`terms`]).

pub mod fanout;
pub mod identity;
pub mod interest;
pub mod join;
pub mod local;
pub mod metrics;
pub mod placement;
pub mod registry;
pub mod route;
pub mod terms;
pub mod tracking;
pub mod waiting;
pub mod wire;

use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use switchboard_backplane::NodeId;

/// What this node knows of the others that the edge needs: their client URLs while they are
/// up, from their [`terms::Terms`]; written by the cluster's event thread, read at `welcome`.
///
/// The list every `welcome` carries is built when a node comes or goes, not per connection.
#[derive(Default, Debug)]
pub struct View {
    urls: std::sync::RwLock<Urls>,
}

/// Each node's client URL, and all of them as one list.
#[derive(Default, Debug)]
struct Urls {
    by_node: std::collections::BTreeMap<NodeId, String>,
    list: Arc<[String]>,
}

impl View {
    fn change(&self, f: impl FnOnce(&mut std::collections::BTreeMap<NodeId, String>)) {
        let mut urls = self.urls.write().unwrap_or_else(|p| p.into_inner());
        f(&mut urls.by_node);
        urls.list = urls.by_node.values().cloned().collect();
    }

    pub fn set_client_url(&self, node: NodeId, url: String) {
        self.change(|urls| {
            urls.insert(node, url);
        });
    }

    pub fn forget(&self, node: NodeId) {
        self.change(|urls| {
            urls.remove(&node);
        });
    }

    /// The live nodes' client URLs, in node order.
    pub fn client_urls(&self) -> Arc<[String]> {
        self.urls.read().unwrap_or_else(|p| p.into_inner()).list.clone()
    }
}

/// What a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Client connections and store partitions (the embedded default).
    Both,
    /// Client connections only: it can die without losing or blocking any conversation.
    Edge,
    /// Store partitions only: no client listener.
    Store,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "both" => Ok(Role::Both),
            "edge" => Ok(Role::Edge),
            "store" => Ok(Role::Store),
            other => Err(format!("role must be both, edge or store, not {other:?}")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Both => "both",
            Role::Edge => "edge",
            Role::Store => "store",
        }
    }

    pub fn holds_store(self) -> bool {
        self != Role::Edge
    }
}

/// Another node, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: NodeId,
    pub backplane: SocketAddr,
    pub role: Role,
}

impl Peer {
    /// `"ID@HOST:PORT"`, or with `/edge` or `/store` after it.
    pub fn parse(entry: &str) -> Result<Peer, String> {
        let bad = |why: &str| format!("peers: {entry:?} {why} (expected \"ID@HOST:PORT\" or \"ID@HOST:PORT/ROLE\")");
        let (id, rest) = entry.split_once('@').ok_or_else(|| bad("has no @"))?;
        let (addr, role) = match rest.split_once('/') {
            Some((addr, role)) => (addr, Role::parse(role).map_err(|e| bad(&e))?),
            None => (rest, Role::Both),
        };
        let node = id.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| bad("has no node id of 1 or more"))?;
        let backplane = addr.parse().map_err(|_| bad("has no HOST:PORT address"))?;
        Ok(Peer { node: NodeId(node), backplane, role })
    }
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub me: NodeId,
    pub role: Role,
    pub peers: Vec<Peer>,
    pub partitions: u32,
}

impl Cluster {
    /// Checks the cluster keys together; the errors name the key.
    pub fn from_config(config: &Config) -> Result<Cluster, String> {
        let role = Role::parse(&config.role)?;
        if config.partitions == 0 || config.partitions > 65_536 {
            return Err(format!("partitions must be 1..=65536, not {}", config.partitions));
        }
        let peers = config.peers.iter().map(|p| Peer::parse(p)).collect::<Result<Vec<_>, _>>()?;
        let me = NodeId(config.node_id);
        if config.node_id == 0 {
            if !peers.is_empty() {
                return Err("peers are set but node_id is 0 (a single node); give this node a node_id".into());
            }
            if role != Role::Both {
                return Err(format!("role {} needs a cluster: set node_id and peers", role.name()));
            }
        } else {
            for key in [&config.cluster_ca_file, &config.node_cert_file, &config.node_key_file] {
                if key.is_none() {
                    return Err(format!(
                        "node_id {} needs cluster_ca_file, node_cert_file and node_key_file (switchboard-ctl cluster certs writes them)",
                        config.node_id
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::from([me]);
        for peer in &peers {
            if !seen.insert(peer.node) {
                return Err(format!("peers: node {} appears twice, or is this node's own id", peer.node));
            }
        }
        let cluster = Cluster { me, role, peers, partitions: config.partitions };
        if config.node_id != 0 && cluster.store_nodes().is_empty() {
            return Err("no node of the cluster holds a store: at least one must have role both or store".into());
        }
        Ok(cluster)
    }

    pub fn is_single(&self) -> bool {
        self.me.0 == 0
    }

    /// Every configured node that holds partitions, this one included, in id order.
    pub fn store_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.peers.iter().filter(|p| p.role.holds_store()).map(|p| p.node).collect();
        if self.role.holds_store() {
            nodes.push(self.me);
        }
        nodes.sort();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: u16, role: &str, peers: &[&str]) -> Config {
        Config {
            node_id,
            role: role.into(),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            cluster_ca_file: Some("ca.pem".into()),
            node_cert_file: Some("node.pem".into()),
            node_key_file: Some("node.key".into()),
            ..Config::default()
        }
    }

    #[test]
    fn peers_parse_with_their_roles_and_mistakes_say_what_is_wrong() {
        assert_eq!(
            Peer::parse("3@127.0.0.1:7422/edge").unwrap(),
            Peer { node: NodeId(3), backplane: "127.0.0.1:7422".parse().unwrap(), role: Role::Edge }
        );
        assert_eq!(Peer::parse("2@127.0.0.1:7412").unwrap().role, Role::Both);
        for bad in ["127.0.0.1:7412", "0@127.0.0.1:1", "x@127.0.0.1:1", "2@nowhere", "2@127.0.0.1:1/relay"] {
            let e = Peer::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_cluster_keys_are_checked_together() {
        let c = Cluster::from_config(&config(1, "both", &["2@127.0.0.1:7412", "3@127.0.0.1:7422/edge"])).unwrap();
        assert_eq!(c.store_nodes(), vec![NodeId(1), NodeId(2)]);
        let c = Cluster::from_config(&config(3, "edge", &["1@127.0.0.1:7402", "2@127.0.0.1:7412"])).unwrap();
        assert_eq!(c.store_nodes(), vec![NodeId(1), NodeId(2)]);
        assert!(Cluster::from_config(&Config::default()).unwrap().is_single());
        let errors = [
            (config(1, "both", &["1@127.0.0.1:7402"]), "twice"),
            (config(1, "both", &["2@127.0.0.1:7412", "2@127.0.0.1:7413"]), "twice"),
            (config(1, "edge", &["2@127.0.0.1:7412/edge"]), "holds a store"),
            (Config { node_id: 0, ..config(0, "store", &[]) }, "needs a cluster"),
            (Config { cluster_ca_file: None, ..config(1, "both", &[]) }, "cluster_ca_file"),
            (Config { partitions: 0, ..config(1, "both", &[]) }, "partitions"),
        ];
        for (config, why) in errors {
            let e = Cluster::from_config(&config).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }
}
