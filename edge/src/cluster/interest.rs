//! The shell of the edge's delivery by subscription: runs the sans-IO core
//! ([`super::tracking`]) under a lock, and carries out its actions: deliveries into the local
//! shards, subscriptions and repairs over the cluster's routes, whose answers come back in.

use super::tracking::{Action, Tracking};
pub use super::tracking::{InterestMetrics, MISSED_CLOSE};
use super::wire::Deliver;
use crate::node::ops::{OpError, Reply};
use crate::node::request::Request;
use crate::node::{Answer, Hub, ShardEvent};
use std::sync::{Arc, Mutex};
use switchboard_backplane::NodeId;
use switchboard_store::{ConvId, InboxEntry, RangePage, Seq, UserId};

pub struct Interest {
    hub: Arc<Hub>,
    router: Arc<super::route::Router>,
    core: Mutex<Tracking>,
    pub metrics: Arc<InterestMetrics>,
}

impl Interest {
    pub fn new(hub: Arc<Hub>, router: Arc<super::route::Router>) -> Interest {
        let core = Tracking::new(router.me(), rand::random());
        let metrics = core.metrics.clone();
        Interest { hub, router, core: Mutex::new(core), metrics }
    }

    /// Runs `f` on the core, then what it asked for, with the lock let go.
    fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut Tracking, &super::route::Router) -> (T, Vec<Action>)) -> T {
        let (out, actions) = f(&mut self.core.lock().unwrap_or_else(|p| p.into_inner()), &self.router);
        self.run(actions);
        out
    }

    fn peek<T>(&self, f: impl FnOnce(&Tracking) -> T) -> T {
        f(&self.core.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Conversations tracked here (for `/metrics`).
    pub fn tracked(&self) -> usize {
        self.peek(Tracking::tracked)
    }

    /// The users connected here.
    pub fn users(&self) -> Vec<UserId> {
        self.peek(Tracking::users)
    }

    /// A connection of `user` said `hello`; `welcome` goes to it once the user is subscribed.
    /// Returns whether it is the user's only connection here.
    pub fn connected(self: &Arc<Self>, user: &UserId, conn: crate::node::ConnRef, welcome: bytes::Bytes) -> bool {
        self.with(|t, router| {
            let remote: Vec<NodeId> = router.remote_store_nodes().collect();
            t.connected(user, conn, welcome, &remote)
        })
    }

    /// A connection of `user` closed. Returns whether it was their last one here.
    pub fn disconnected(self: &Arc<Self>, user: &UserId) -> bool {
        self.with(|t, router| {
            let remote: Vec<NodeId> = router.remote_store_nodes().collect();
            t.disconnected(user, &remote)
        })
    }

    /// A connection to `node` was chosen (a new run, or after a partition): every user here
    /// is subscribed there anew.
    pub fn owner_connected(self: &Arc<Self>, node: NodeId) {
        if self.router.store_nodes().contains(&node) {
            self.with(|t, _| ((), t.owner_connected(node)));
        }
    }

    /// An owner's delivery arrived.
    pub fn deliver(self: &Arc<Self>, d: Deliver) {
        self.with(|t, router| ((), t.deliver(d, &|c| router.owner(c))));
    }

    fn run(self: &Arc<Self>, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Deliver(d) => self.hub.deliver_here(d),
                Action::Welcome(conn, bytes) => self.hub.answer(conn, Answer::Welcome(bytes)),
                Action::Evict(users) => {
                    let (code, reason) = MISSED_CLOSE;
                    for s in &self.hub.shards {
                        s.post(ShardEvent::Evict { users: users.clone(), code, reason });
                    }
                }
                Action::Subscribe { user, node, round } => {
                    let this = self.clone();
                    let name: Box<str> = user.as_str().into();
                    let reply = Reply::new(move |r: Result<Vec<InboxEntry>, OpError>| {
                        this.with(|t, _| ((), t.subscribed(&name, node, round, r)))
                    });
                    self.router.forward(node, Request::Subscribe { user }, reply.expecting());
                }
                Action::Unsubscribe { user, node } => {
                    let reply = Reply::new(|_: Result<(), OpError>| {});
                    self.router.forward(node, Request::Unsubscribe { user }, reply.expecting());
                }
                Action::Fetch { conv, owner, after, limit } => {
                    let Ok(id) = ConvId::new(&conv) else { continue };
                    let this = self.clone();
                    let reply = Reply::new(move |r: Result<RangePage, OpError>| {
                        this.with(|t, router| ((), t.repaired(&conv, r, &|c| router.owner(c))))
                    });
                    let request = Request::Sync { conv: id, reader: None, after: Seq(after), limit };
                    self.router.forward(owner, request, reply.expecting());
                }
            }
        }
    }
}
