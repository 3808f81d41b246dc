//! The owner's side of delivery by subscription: which other nodes have members of each of
//! this node's conversations connected, and sending each committed delivery once to each of
//! them, on the conversation's lane.
//!
//! One table per store shard, touched only from that shard's thread (its read jobs for
//! `Subscribe` and `Unsubscribe`, its finishers for deliveries and member changes), so every
//! change is ordered with the commits around it: a `Subscribe` answered with head `h` is
//! followed by every delivery after `h`, and none before. The one other writer is the
//! cluster's event thread when a node goes down, under the same lock.
//!
//! Per conversation the table keeps a count per node (members of it connected there), so a
//! delivery costs O(subscribed nodes), whatever the conversation's size. Per user it keeps
//! the nodes where the user is subscribed, so member changes and user-addressed frames
//! (`joined`, `left`) find them.

use super::wire::{self, Target, Wire};
use crate::node::{Addressed, Delivery};
use ahash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use switchboard_backplane::queue::SendError;
use switchboard_backplane::rt::Handle;
use switchboard_backplane::{Boot, Class, NodeId};

/// The subscriptions of one store shard's conversations.
#[derive(Default, Debug)]
struct Table {
    /// Nodes where each user is subscribed.
    nodes_of: HashMap<Box<str>, Vec<NodeId>>,
    /// Per conversation, per node: how many of its members are subscribed there.
    by_conv: HashMap<Box<str>, Vec<(NodeId, u32)>>,
    /// The run of each node that its entries here belong to, or that was declared down last:
    /// all of a node's entries are of one run.
    runs: HashMap<NodeId, Boot>,
    /// Per node and conversation: the users whose join a refused frame carried, sent again
    /// with the next frame of the conversation there. A lost message is repaired by its gap;
    /// a lost join is not where the node does not track the conversation, or where another
    /// user's subscription started tracking it past the join (`switchboard-sim` found an
    /// added member that never heard anything of its new group).
    /// By conversation (looked up for every delivery without a key to build): (node, user).
    refused_joins: HashMap<Box<str>, Vec<(NodeId, Box<str>)>>,
}

impl Table {
    fn count(&mut self, conv: &str, node: NodeId, up: bool) {
        if up {
            let nodes = self.by_conv.entry(conv.into()).or_default();
            match nodes.iter_mut().find(|(n, _)| *n == node) {
                Some((_, c)) => *c += 1,
                None => nodes.push((node, 1)),
            }
        } else if let Some(nodes) = self.by_conv.get_mut(conv) {
            if let Some(i) = nodes.iter().position(|(n, _)| *n == node) {
                nodes[i].1 -= 1;
                if nodes[i].1 == 0 {
                    nodes.swap_remove(i);
                }
            }
            if nodes.is_empty() {
                self.by_conv.remove(conv);
            }
        }
    }

    fn nodes_of(&self, user: &str) -> Vec<NodeId> {
        self.nodes_of.get(user).cloned().unwrap_or_default()
    }

    fn subscribed(&self, conv: &str) -> Vec<NodeId> {
        self.by_conv.get(conv).map(|n| n.iter().map(|(n, _)| *n).collect()).unwrap_or_default()
    }

    /// Whether a request from `node`'s run `boot` is for the run the entries are of. A
    /// request from an earlier run (still in a store queue when a restart replaced it) is
    /// not; a later run's first one replaces the earlier run's entries.
    fn admit(&mut self, node: NodeId, boot: Boot) -> bool {
        match self.runs.get(&node).copied() {
            Some(run) if run > boot => false,
            Some(run) if run == boot => true,
            _ => {
                self.forget(node);
                self.runs.insert(node, boot);
                true
            }
        }
    }

    /// `user` is no longer a join to send again for `conv` (or, `conv` none, for any).
    fn unrefuse(&mut self, node: Option<NodeId>, conv: Option<&str>, user: &str) {
        self.refused_joins.retain(|c, joins| {
            if conv.is_none_or(|conv| conv == &**c) {
                joins.retain(|(n, u)| !(node.is_none_or(|node| node == *n) && &**u == user));
            }
            !joins.is_empty()
        });
    }

    fn forget(&mut self, node: NodeId) {
        self.refused_joins.retain(|_, joins| {
            joins.retain(|(n, _)| *n != node);
            !joins.is_empty()
        });
        self.nodes_of.retain(|_, nodes| {
            nodes.retain(|n| *n != node);
            !nodes.is_empty()
        });
        self.by_conv.retain(|_, nodes| {
            nodes.retain(|(n, _)| *n != node);
            !nodes.is_empty()
        });
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct FanoutMetrics {
    /// Deliveries sent to other nodes.
    pub sent: AtomicU64,
    /// Deliveries a full queue refused: the node repairs the gap from the next message on.
    pub refused: AtomicU64,
}

/// The sans-IO core: who is subscribed where, and who each delivery is for. It sends
/// nothing, so `switchboard-sim` runs it for its owners as [`Fanout`] does for a node's.
///
/// Each entry belongs to a run of its node (`Table::runs`), which decides what a request
/// or a `Down` can change (each of these was found by `switchboard-sim`):
/// - A run declared down loses its entries, but it may be alive (a partition, a false
///   suspicion): the mesh then closes its connection, and on the next one it subscribes
///   again, which is taken. (Were it refused, its users would hear nothing more from this
///   node's conversations for as long as the run lived.)
/// - A restarted node's new run can subscribe before this node hears of the restart (its
///   frames race the stream header that names the run): the earlier run's `Down`, coming
///   after, leaves the new run's entries alone.
/// - Requests from an earlier run still queued here are ignored: they can neither add an
///   entry nor remove a later run's.
#[derive(Debug)]
pub struct Subscriptions {
    tables: Vec<Mutex<Table>>,
}

/// One subscribed node's frame of a delivery.
pub struct Frame {
    pub node: NodeId,
    pub bytes: bytes::Bytes,
    /// The users whose join it carries, sent again if it is refused.
    joins: Vec<Box<str>>,
}

/// The core with its shell: deliveries sent on the mesh.
pub struct Fanout {
    mesh: Handle,
    pub subs: Subscriptions,
    pub metrics: FanoutMetrics,
}

impl Fanout {
    pub fn new(mesh: Handle, store_shards: usize) -> Fanout {
        Fanout { mesh, subs: Subscriptions::new(store_shards), metrics: FanoutMetrics::default() }
    }

    /// Sends what store shard `shard` committed to every subscribed node, once each, and
    /// keeps the counts in step with member changes.
    pub fn deliver(&self, shard: usize, d: &Delivery) {
        let key = crate::node::request::lane_key(&d.conv);
        for frame in self.subs.frames(shard, d) {
            match self.mesh.send(frame.node, Class::Live, key, frame.bytes.clone()) {
                Ok(()) => self.metrics.sent.fetch_add(1, Ordering::Relaxed),
                Err(SendError::Full(_) | SendError::TooLarge(_)) => {
                    self.subs.refused(shard, &d.conv, frame);
                    self.metrics.refused.fetch_add(1, Ordering::Relaxed)
                }
                // Down: its subscriptions go with it.
                Err(_) => 0,
            };
        }
    }
}

impl Subscriptions {
    pub fn new(store_shards: usize) -> Subscriptions {
        let tables = (0..store_shards).map(|_| Mutex::default()).collect();
        Subscriptions { tables }
    }

    fn table(&self, shard: usize) -> std::sync::MutexGuard<'_, Table> {
        self.tables[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node`'s run `boot` is down: its subscriptions go, all at once (unless a later run's
    /// took their place).
    pub fn down(&self, node: NodeId, boot: Boot) {
        for shard in 0..self.tables.len() {
            let mut t = self.table(shard);
            if t.runs.get(&node).is_none_or(|run| *run <= boot) {
                t.forget(node);
                t.runs.insert(node, boot);
            }
        }
    }

    /// Subscribed subscriptions held (for `/metrics`): (user, node) pairs over all shards.
    pub fn subscriptions(&self) -> u64 {
        (0..self.tables.len()).map(|s| self.table(s).nodes_of.values().map(|n| n.len() as u64).sum::<u64>()).sum()
    }

    /// `user` is connected on `node`, which gets every delivery of `convs` (the user's
    /// conversations on store shard `shard`) from now on. Idempotent.
    pub fn subscribe<'a>(
        &self,
        shard: usize,
        node: NodeId,
        boot: Boot,
        user: &str,
        convs: impl Iterator<Item = &'a str>,
    ) {
        let mut t = self.table(shard);
        if !t.admit(node, boot) {
            return;
        }
        let nodes = t.nodes_of.entry(user.into()).or_default();
        if nodes.contains(&node) {
            return;
        }
        nodes.push(node);
        convs.for_each(|c| t.count(c, node, true));
    }

    /// The last connection of `user` on `node`'s run `boot` closed.
    pub fn unsubscribe<'a>(
        &self,
        shard: usize,
        node: NodeId,
        boot: Boot,
        user: &str,
        convs: impl Iterator<Item = &'a str>,
    ) {
        let mut t = self.table(shard);
        if t.runs.get(&node) != Some(&boot) {
            return;
        }
        let Some(nodes) = t.nodes_of.get_mut(user) else { return };
        let Some(i) = nodes.iter().position(|n| *n == node) else { return };
        nodes.swap_remove(i);
        if nodes.is_empty() {
            t.nodes_of.remove(user);
        }
        convs.for_each(|c| t.count(c, node, false));
        t.unrefuse(Some(node), None, user);
    }

    /// The mesh refused `frame` of `conv` (a full queue): the joins it carried go with the
    /// next frame of `conv` to its node.
    pub fn refused(&self, shard: usize, conv: &str, frame: Frame) {
        if frame.joins.is_empty() {
            return;
        }
        let mut t = self.table(shard);
        let pending = t.refused_joins.entry(conv.into()).or_default();
        for user in frame.joins {
            if !pending.iter().any(|(n, u)| *n == frame.node && *u == user) {
                pending.push((frame.node, user));
            }
        }
    }

    /// What store shard `shard` committed, as the frame for each subscribed node, once
    /// each; keeps the counts in step with member changes. Sent on the conversation's lane.
    pub fn frames(&self, shard: usize, d: &Delivery) -> Vec<Frame> {
        let mut t = self.table(shard);
        let mut targets: Vec<(NodeId, Target)> = Vec::new();
        match &d.addressed {
            // `joined` and `left`: the other nodes make them themselves, from the member
            // change that they apply (and repair, when its delivery is lost), for the users
            // connected there. Sent from here too, they would be lost with the frame, or
            // missing where the user's subscription is not taken yet (`switchboard-sim`
            // found both: a member never told that it left, or that it was added again).
            Addressed::User(_) => {}
            Addressed::Members => {
                targets.extend(t.subscribed(&d.conv).into_iter().map(|n| (n, Target::default())));
            }
            Addressed::Created => {
                let mut joins: HashMap<NodeId, Vec<Box<str>>> = HashMap::default();
                for user in d.audience.iter() {
                    for n in t.nodes_of(user) {
                        t.count(&d.conv, n, true);
                        joins.entry(n).or_default().push(user.clone());
                    }
                }
                targets.extend(t.subscribed(&d.conv).into_iter().map(|n| {
                    let joins = joins.remove(&n).unwrap_or_default();
                    (n, Target { joins, leaves: Vec::new() })
                }));
            }
            Addressed::Change { user, added: true } => {
                let at = t.nodes_of(user);
                at.iter().for_each(|n| t.count(&d.conv, *n, true));
                targets.extend(t.subscribed(&d.conv).into_iter().map(|n| {
                    let joins = if at.contains(&n) { vec![user.clone()] } else { Vec::new() };
                    (n, Target { joins, leaves: Vec::new() })
                }));
            }
            Addressed::Change { user, added: false } => {
                // The nodes counted before the change hear it, the removed member's too, and
                // every one of them is told who left, not only those where the user is
                // subscribed here: an edge can hold the user as a member from before this
                // node restarted, before its new subscription is taken. (`switchboard-sim`
                // found a removed member given its own removal and what followed.)
                let at = t.nodes_of(user);
                let leaves = vec![user.clone()];
                t.unrefuse(None, Some(&d.conv), user);
                targets.extend(
                    t.subscribed(&d.conv)
                        .into_iter()
                        .map(|n| (n, Target { joins: Vec::new(), leaves: leaves.clone() })),
                );
                at.iter().for_each(|n| t.count(&d.conv, *n, false));
            }
        }
        // Joins refused before go with this delivery's frame to their node, if it has one.
        if let Some(pending) = t.refused_joins.get_mut(&*d.conv) {
            pending.retain(|(node, user)| match targets.iter_mut().find(|(n, _)| n == node) {
                Some((_, target)) => {
                    if !target.joins.contains(user) {
                        target.joins.push(user.clone());
                    }
                    false
                }
                None => true,
            });
            if pending.is_empty() {
                t.refused_joins.remove(&*d.conv);
            }
        }
        drop(t);
        let frame = |(node, target): (NodeId, Target)| {
            let except = d.except.filter(|o| o.node == node.0).map(|o| o.conn);
            let joins = target.joins.clone();
            let bytes = wire::encode(&Wire::Deliver(wire::Deliver::of(d, except, target)));
            Frame { node, bytes, joins }
        };
        targets.into_iter().map(frame).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Reach;
    use bytes::Bytes;
    use std::sync::Arc;

    fn nodes(s: &Subscriptions) -> Vec<NodeId> {
        s.frames(0, &delivery()).into_iter().map(|f| f.node).collect()
    }

    /// Each case was found by switchboard-sim, running this core over the real mesh.
    #[test]
    fn each_subscription_belongs_to_a_run_of_its_node() {
        let s = Subscriptions::new(1);
        let (n, run_1, run_2) = (NodeId(2), Boot(1), Boot(2));
        s.subscribe(0, n, run_1, "u", ["g"].into_iter());
        assert_eq!(nodes(&s), vec![n]);
        // Declared down, alive after all: it subscribes again on its next connection.
        s.down(n, run_1);
        assert!(nodes(&s).is_empty());
        s.subscribe(0, n, run_1, "u", ["g"].into_iter());
        assert_eq!(nodes(&s), vec![n], "a run declared down while alive could never subscribe again");
        // Its restart subscribes before the earlier run's Down is heard: that Down leaves it.
        s.subscribe(0, n, run_2, "u", ["g"].into_iter());
        s.down(n, run_1);
        assert_eq!(nodes(&s), vec![n], "the earlier run's Down took the later run's subscription");
        // The earlier run's requests still queued here change nothing.
        s.unsubscribe(0, n, run_1, "u", ["g"].into_iter());
        s.subscribe(0, n, run_1, "v", ["g"].into_iter());
        assert_eq!(nodes(&s), vec![n]);
        assert_eq!(s.subscriptions(), 1);
        s.unsubscribe(0, n, run_2, "u", ["g"].into_iter());
        assert!(nodes(&s).is_empty());
    }

    fn change(user: &str, added: bool) -> Delivery {
        let addressed = Addressed::Change { user: user.into(), added };
        Delivery { addressed, ..delivery() }
    }

    fn delivery() -> Delivery {
        Delivery {
            conv: "g".into(),
            audience: Arc::new(["u".into()].into_iter().collect()),
            except: None,
            sent_as: None,
            reach: Reach::Everyone,
            frame: "msg",
            json: Bytes::new(),
            bin: Bytes::new(),
            started: None,
            seq: 1,
            addressed: Addressed::Members,
        }
    }

    type Names = Vec<Box<str>>;

    /// Each node's frame: (node, joins, leaves).
    fn targets(frames: Vec<Frame>) -> Vec<(NodeId, Names, Names)> {
        let target = |f: &Frame| match wire::decode(&f.bytes) {
            Some(Ok(Wire::Deliver(d))) => (d.target.joins, d.target.leaves),
            other => panic!("not a delivery: {other:?}"),
        };
        let mut t: Vec<_> = frames.iter().map(|f| (f.node, target(f).0, target(f).1)).collect();
        t.sort_by_key(|(n, _, _)| *n);
        t
    }

    /// Found by switchboard-sim: a removal was told only to the nodes where the removed
    /// user was subscribed here, while another node still held the user as a member (from
    /// before this node restarted); and a refused frame's join was lost for good where the
    /// node did not track the conversation.
    #[test]
    fn a_removal_is_told_to_every_subscribed_node_and_a_refused_join_goes_again() {
        let s = Subscriptions::new(1);
        let (two, three) = (NodeId(2), NodeId(3));
        s.subscribe(0, two, Boot(1), "ann", ["g"].into_iter());
        s.subscribe(0, three, Boot(1), "bob", std::iter::empty());
        let frames = s.frames(0, &change("bob", true));
        let refused = frames.into_iter().find(|f| f.node == three).expect("bob's node hears of his join");
        s.refused(0, "g", refused);
        let next = targets(s.frames(0, &delivery()));
        assert_eq!(next, vec![(two, vec![], vec![]), (three, vec!["bob".into()], vec![])], "the refused join again");
        assert_eq!(targets(s.frames(0, &delivery()))[1].1, Vec::<Box<str>>::new(), "once");
        // Removed: every subscribed node hears who left, the node bob is subscribed at or not.
        s.unsubscribe(0, three, Boot(1), "bob", ["g"].into_iter());
        s.subscribe(0, three, Boot(1), "cat", ["g"].into_iter());
        let leaves = targets(s.frames(0, &change("bob", false)));
        assert!(leaves.iter().all(|(_, _, leaves)| leaves == &vec![Box::<str>::from("bob")]), "{leaves:?}");
        assert_eq!(leaves.len(), 2);
    }
}
