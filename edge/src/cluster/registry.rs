//! Who is connected where, for presence: each user's entry lives on one node, chosen by
//! rendezvous hashing over the *live* nodes (any role), and holds the nodes where the user
//! has connections. That node's [`Presence`] answers for the user: online while any node
//! holds them, last-seen (persisted there) from when the last one let go.
//!
//! - A user's first connection on a node registers them at their entry's node; the last
//!   one unregisters them, with the time.
//! - Entries hang on their node's membership: when SWIM declares a node down, every
//!   registration it made goes at once (its users' last-seen is then).
//! - When the live set changes, a user's entry may move: each node registers its users
//!   again where their entries now live (and tells the old place they moved).
//! - `presence` from any node asks each user's entry node, all at once.

use super::placement::rendezvous;
use crate::node::ops::{OpError, Reply};
use crate::node::presence::Presence;
use crate::node::request::{lane_key, Request};
use ahash::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use switchboard_backplane::NodeId;
use switchboard_store::UserId;

/// A user's state as presence shows it: online, and last seen (ms since the epoch).
pub type Seen = (bool, Option<u64>);

pub struct Registry {
    me: NodeId,
    /// The live nodes, this one included, in id order.
    live: RwLock<Vec<NodeId>>,
    /// The registrations held here (users whose entry is on this node): user → nodes.
    held: Mutex<HashMap<Box<str>, Vec<NodeId>>>,
    /// `presence` answered from entries on other nodes: request → answer, microseconds.
    pub lookup_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Registry {
    pub fn new(me: NodeId) -> Registry {
        let lookup_us = hdrhistogram::Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds");
        Registry { me, live: RwLock::new(vec![me]), held: Mutex::default(), lookup_us: Mutex::new(lookup_us) }
    }

    /// The node holding `user`'s entry.
    pub fn home(&self, user: &str) -> NodeId {
        rendezvous(lane_key(user), &self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Vec<NodeId>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries held here (for `/metrics`).
    pub fn entries(&self) -> usize {
        self.held().len()
    }

    /// The live set changed to `live` (this node included). Returns, for each of
    /// `local_users` whose entry moved, the old and the new home.
    pub fn set_live(&self, mut live: Vec<NodeId>, local_users: &[UserId]) -> Vec<(UserId, NodeId, NodeId)> {
        live.sort();
        live.dedup();
        let before = std::mem::replace(&mut *self.live.write().unwrap_or_else(|p| p.into_inner()), live.clone());
        local_users
            .iter()
            .filter_map(|u| {
                let (old, new) = (rendezvous(lane_key(u.as_str()), &before), rendezvous(lane_key(u.as_str()), &live));
                (old != new).then(|| (u.clone(), old, new))
            })
            .collect()
    }

    /// Sends `request` about a user to its entry's node (which may be this one).
    pub fn tell(&self, node: &crate::node::Node, home: NodeId, request: Request) {
        node.call_on(home, request, Reply::new(|_: Result<(), OpError>| {}));
    }

    /// `user` has connections on `from` (run on the entry's node). Idempotent.
    pub fn hold(&self, presence: &Presence, user: &UserId, from: NodeId) {
        let mut held = self.held();
        let nodes = held.entry(user.as_str().into()).or_default();
        if !nodes.contains(&from) {
            nodes.push(from);
            presence.connected(user.as_str());
        }
    }

    /// `user` has no connections on `from` any more, since `at_ms`.
    pub fn release(&self, presence: &Presence, user: &UserId, from: NodeId, at_ms: u64) {
        let mut held = self.held();
        let Some(nodes) = held.get_mut(user.as_str()) else { return };
        let Some(i) = nodes.iter().position(|n| *n == from) else { return };
        nodes.swap_remove(i);
        if nodes.is_empty() {
            held.remove(user.as_str());
        }
        presence.disconnected(user.as_str(), at_ms);
    }

    /// `node` is down: every registration it made goes.
    pub fn forget(&self, presence: &Presence, node: NodeId, at_ms: u64) {
        let mut held = self.held();
        held.retain(|user, nodes| {
            if let Some(i) = nodes.iter().position(|n| *n == node) {
                nodes.swap_remove(i);
                presence.disconnected(user, at_ms);
            }
            !nodes.is_empty()
        });
    }

    /// Presence of `users`, each asked at its entry's node; `reply` hears them in order.
    pub fn lookup(self: &Arc<Self>, node: &crate::node::Node, users: Vec<UserId>, reply: Reply<Vec<Seen>>) {
        let mut by_home: HashMap<NodeId, Vec<usize>> = HashMap::default();
        for (i, u) in users.iter().enumerate() {
            by_home.entry(self.home(u.as_str())).or_default().push(i);
        }
        struct Gather {
            left: usize,
            seen: Vec<Seen>,
            reply: Option<Reply<Vec<Seen>>>,
        }
        let remote = by_home.keys().any(|n| *n != self.me);
        let started = Instant::now();
        let g = Arc::new(Mutex::new(Gather {
            left: by_home.len(),
            seen: vec![(false, None); users.len()],
            reply: Some(reply),
        }));
        for (home, at) in by_home {
            let (g, this) = (g.clone(), self.clone());
            let asked: Vec<UserId> = at.iter().map(|i| users[*i].clone()).collect();
            let part = Reply::new(move |r: Result<Vec<Seen>, OpError>| {
                let mut g = g.lock().unwrap_or_else(|p| p.into_inner());
                // A home that cannot answer shows its users as offline, last seen unknown:
                // presence is soft state, never worth failing a request for.
                if let Ok(seen) = r {
                    for (i, s) in at.iter().zip(seen) {
                        g.seen[*i] = s;
                    }
                }
                g.left -= 1;
                if g.left == 0 {
                    if remote {
                        let us = started.elapsed().as_micros() as u64;
                        let _ = this.lookup_us.lock().unwrap_or_else(|p| p.into_inner()).record(us.max(1));
                    }
                    let seen = std::mem::take(&mut g.seen);
                    g.reply.take().expect("answered once").send(Ok(seen));
                }
            });
            node.call_on(home, Request::Presence { users: asked }, part);
        }
    }
}
