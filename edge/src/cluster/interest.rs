//! The edge's side of delivery by subscription: for the users connected here, which of their
//! conversations other nodes own, who of each conversation's members is connected here, and
//! the last seq delivered here of each, so a hole is filled before anything after it.
//!
//! - A user's first connection here subscribes them at every other store node; its `welcome`
//!   goes out once every node answered (or failed), so from `welcome` on every committed
//!   message of the user's conversations reaches this node. The answers carry each
//!   conversation's head, where its tracking starts.
//! - The user's last connection unsubscribes them.
//! - An owner's delivery with seq `s` is delivered when `s` is the next one, dropped when it
//!   was delivered already, and otherwise held while the missing range is fetched from the
//!   owner (`Request::Sync` with no reader). If it cannot be filled, that conversation's
//!   connections here are closed with 4009 and resync: no connection sees a hole without
//!   `gap`, and none a duplicate.
//! - An owner that comes back (a new run, or a healed partition) gets every local user's
//!   subscription again; a head past what was delivered here starts a repair.

use super::wire::{Deliver, Target};
use crate::node::ops::{msg_frame, shown_id, stored_body, OpError, Reply};
use crate::node::request::{Origin, Request};
use crate::node::{Addressed, Answer, ConnRef, Delivery, Hub, ShardEvent};
use crate::ws::handshake::Encoding;
use ahash::{HashMap, HashSet};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_backplane::NodeId;
use switchboard_store::{ConvId, InboxEntry, MemberSet, RangePage, Seq, UserId};

/// Deliveries held for one conversation while a gap is filled; past this its connections
/// here are closed (4009) rather than hold more.
const HELD_MAX: usize = 10_000;

/// The close code and reason for connections that missed messages which could not be filled.
pub const MISSED_CLOSE: (u16, &str) = (4009, "missed messages that could not be filled; resync");

/// A user connected here.
#[derive(Default)]
struct LocalUser {
    conns: u32,
    /// The other nodes' conversations the user is a member of.
    convs: HashSet<Box<str>>,
    /// Subscriptions still unanswered, and the connections whose `welcome` waits for them.
    waiting: Option<(usize, Vec<(ConnRef, Bytes)>)>,
}

/// A conversation another node owns that members connected here belong to.
struct Tracked {
    owner: NodeId,
    /// A channel: its messages reach open connections in full, the others as `notify`.
    channel: bool,
    members: Arc<MemberSet>,
    /// The last seq delivered here.
    last: u64,
    /// While a gap is filled: the seq it is filled up to, and what arrived meanwhile.
    repair: Option<(u64, VecDeque<Deliver>)>,
}

#[derive(Default)]
struct State {
    users: HashMap<Box<str>, LocalUser>,
    convs: HashMap<Box<str>, Tracked>,
}

/// What to do once the lock is let go.
enum Action {
    Deliver(Delivery),
    /// Fill `conv` after `after` from its owner.
    Fetch {
        conv: Box<str>,
        owner: NodeId,
        after: u64,
        upto: u64,
    },
    Evict(Arc<MemberSet>),
    Welcome(ConnRef, Bytes),
}

#[derive(Default, Debug)]
pub struct InterestMetrics {
    /// Gaps seen in owners' deliveries, and fetched.
    pub gap_repairs: AtomicU64,
    /// Conversations whose connections here were closed because a gap could not be filled.
    pub gap_evictions: AtomicU64,
    /// Deliveries dropped as already delivered.
    pub duplicates: AtomicU64,
}

pub struct Interest {
    me: NodeId,
    hub: Arc<Hub>,
    router: Arc<super::route::Router>,
    state: Mutex<State>,
    pub metrics: InterestMetrics,
}

impl Interest {
    pub fn new(hub: Arc<Hub>, router: Arc<super::route::Router>) -> Interest {
        let me = router.me();
        Interest { me, hub, router, state: Mutex::default(), metrics: InterestMetrics::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Conversations tracked here (for `/metrics`).
    pub fn tracked(&self) -> usize {
        self.state().convs.len()
    }

    /// A connection of `user` said `hello`; `welcome` goes to it once the user is subscribed.
    /// Returns whether it is the user's only connection here.
    pub fn connected(self: &Arc<Self>, user: &UserId, conn: ConnRef, welcome: Bytes) -> bool {
        let remote: Vec<NodeId> = self.router.remote_store_nodes().collect();
        let (first, subscribe) = {
            let mut s = self.state();
            let u = s.users.entry(user.as_str().into()).or_default();
            u.conns += 1;
            let first = u.conns == 1;
            match &mut u.waiting {
                Some((_, waiting)) => {
                    waiting.push((conn, welcome));
                    (first, false)
                }
                None if first && !remote.is_empty() => {
                    u.waiting = Some((remote.len(), vec![(conn, welcome)]));
                    (first, true)
                }
                None => {
                    drop(s);
                    self.run(vec![Action::Welcome(conn, welcome)]);
                    return first;
                }
            }
        };
        if subscribe {
            for node in remote {
                self.subscribe(user, node, true);
            }
        }
        first
    }

    /// The users connected here.
    pub fn users(&self) -> Vec<UserId> {
        self.state().users.keys().filter_map(|u| UserId::new(u).ok()).collect()
    }

    /// `first`: the user's welcome waits for it.
    fn subscribe(self: &Arc<Self>, user: &UserId, node: NodeId, first: bool) {
        let this = self.clone();
        let name: Box<str> = user.as_str().into();
        let reply = Reply::new(move |r: Result<Vec<InboxEntry>, OpError>| this.subscribed(&name, node, first, r));
        self.router.forward(node, Request::Subscribe { user: user.clone() }, reply.expecting());
    }

    fn subscribed(self: &Arc<Self>, user: &str, node: NodeId, first: bool, result: Result<Vec<InboxEntry>, OpError>) {
        let mut actions = Vec::new();
        {
            let mut s = self.state();
            let State { users, convs } = &mut *s;
            let Some(u) = users.get_mut(user) else { return };
            match result {
                Ok(entries) => {
                    for e in entries {
                        u.convs.insert(e.conv.as_str().into());
                        let t = convs.entry(e.conv.as_str().into()).or_insert_with(|| Tracked {
                            owner: node,
                            channel: e.kind == switchboard_store::ConvKind::Channel,
                            members: Arc::default(),
                            last: e.head.0,
                            repair: None,
                        });
                        Arc::make_mut(&mut t.members).insert(user.into());
                        if e.head.0 > t.last {
                            actions.extend(repair(&self.metrics, &e.conv, t, e.head.0));
                        }
                    }
                }
                // Its conversations answer `unavailable` until it is back, when it gets
                // this user's subscription again.
                Err(e) => tracing::warn!(%node, user, "subscribing failed: {}", e.message),
            }
            if let (true, Some((left, waiting))) = (first, &mut u.waiting) {
                *left -= 1;
                if *left == 0 {
                    actions.extend(waiting.drain(..).map(|(c, w)| Action::Welcome(c, w)));
                    u.waiting = None;
                }
            }
        }
        self.run(actions);
    }

    /// A connection of `user` closed. Returns whether it was their last one here.
    pub fn disconnected(&self, user: &UserId) -> bool {
        let remote: Vec<NodeId> = self.router.remote_store_nodes().collect();
        {
            let mut s = self.state();
            let State { users, convs } = &mut *s;
            let Some(u) = users.get_mut(user.as_str()) else { return false };
            u.conns -= 1;
            if u.conns > 0 {
                return false;
            }
            let u = users.remove(user.as_str()).expect("present");
            for conv in u.convs {
                leave(convs, &conv, user.as_str());
            }
        }
        for node in remote {
            let reply = Reply::new(|_: Result<(), OpError>| {});
            self.router.forward(node, Request::Unsubscribe { user: user.clone() }, reply.expecting());
        }
        true
    }

    /// A connection to `node` was chosen (a new run, or after a partition): every user here
    /// is subscribed there anew.
    pub fn owner_connected(self: &Arc<Self>, node: NodeId) {
        if !self.router.store_nodes().contains(&node) || node == self.me {
            return;
        }
        for user in self.users() {
            self.subscribe(&user, node, false);
        }
    }

    /// An owner's delivery arrived.
    pub fn deliver(self: &Arc<Self>, d: Deliver) {
        let actions = {
            let mut s = self.state();
            self.accept(&mut s, d)
        };
        self.run(actions);
    }

    fn accept(&self, s: &mut State, d: Deliver) -> Vec<Action> {
        let State { users, convs } = s;
        let (joins, leaves) = match &d.target {
            Target::User(user) => {
                if !users.contains_key(user) {
                    return Vec::new();
                }
                let mut only = MemberSet::default();
                only.insert(user.clone());
                return vec![Action::Deliver(self.delivery(d.clone(), Arc::new(only)))];
            }
            Target::Members { joins, leaves } => (joins, leaves),
        };
        let conv = d.conv.clone();
        let joins: Vec<&Box<str>> = joins.iter().filter(|u| users.contains_key(*u)).collect();
        if !convs.contains_key(&conv) {
            if joins.is_empty() {
                // Nobody here is a member (any more): a subscription that is on its way out.
                return Vec::new();
            }
            let Ok(id) = ConvId::new(&conv) else { return Vec::new() };
            let owner = self.router.owner(&id);
            let last = d.seq.saturating_sub(1);
            let channel = matches!(d.reach, crate::node::Reach::Channel { .. });
            convs.insert(conv.clone(), Tracked { owner, channel, members: Arc::default(), last, repair: None });
        }
        let t = convs.get_mut(&conv).expect("tracked");
        if let Some((_, held)) = &mut t.repair {
            if held.len() >= HELD_MAX {
                return self.give_up(t);
            }
            held.push_back(d);
            return Vec::new();
        }
        if d.seq != 0 && d.seq <= t.last {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        if d.seq > t.last + 1 {
            let upto = d.seq - 1;
            let actions = repair(&self.metrics, &conv, t, upto);
            t.repair.as_mut().expect("repairing").1.push_back(d);
            return actions;
        }
        for user in joins {
            Arc::make_mut(&mut t.members).insert(user.clone());
            users.get_mut(user).expect("connected").convs.insert(conv.clone());
        }
        for user in leaves {
            Arc::make_mut(&mut t.members).remove(user);
            if let Some(u) = users.get_mut(user) {
                u.convs.remove(&conv);
            }
        }
        if d.seq != 0 {
            t.last = d.seq;
        }
        let members = t.members.clone();
        if members.is_empty() {
            convs.remove(&conv);
        }
        vec![Action::Deliver(self.delivery(d, members))]
    }

    /// The owner answered a repair.
    fn repaired(self: &Arc<Self>, conv: &str, result: Result<RangePage, OpError>) {
        let actions = {
            let mut s = self.state();
            let State { users, convs } = &mut *s;
            let Some(t) = convs.get_mut(conv) else { return };
            let Some((upto, _)) = t.repair else { return };
            let mut actions = Vec::new();
            match result {
                Ok(page) if page.gap.is_none() => {
                    let from = t.last;
                    for m in page.messages.iter().filter(|m| m.seq.0 > from && m.seq.0 <= upto) {
                        // A member change in the gap changes who here gets what follows.
                        if let Some((user, added)) = member_change(m) {
                            let user: Box<str> = user.into();
                            if !added {
                                Arc::make_mut(&mut t.members).remove(&user);
                            } else if users.contains_key(&user) {
                                Arc::make_mut(&mut t.members).insert(user.clone());
                            }
                            if let Some(u) = users.get_mut(&user) {
                                if added {
                                    u.convs.insert(conv.into());
                                } else {
                                    u.convs.remove(conv);
                                }
                            }
                        }
                        let id = shown_id(&m.client_id, m.seq);
                        let frame = msg_frame(conv, m, &id, stored_body(&m.body));
                        let reach = if t.channel {
                            crate::node::Reach::Channel { head: m.seq.0 }
                        } else {
                            crate::node::Reach::Everyone
                        };
                        let d = Delivery {
                            conv: conv.into(),
                            audience: t.members.clone(),
                            except: None,
                            reach,
                            frame: "msg",
                            json: frame.encode(Encoding::Json),
                            bin: frame.encode(Encoding::Binary),
                            started: None,
                            seq: m.seq.0,
                            addressed: Addressed::Members,
                        };
                        actions.push(Action::Deliver(d));
                        t.last = m.seq.0;
                    }
                    if t.last < upto && page.more {
                        let (conv, owner, after) = (conv.into(), t.owner, t.last);
                        actions.push(Action::Fetch { conv, owner, after, upto });
                        drop(s);
                        return self.run(actions);
                    }
                    if t.last < upto {
                        actions.extend(self.give_up(t));
                    }
                }
                // A hole retention made, or an owner that cannot answer: resync instead.
                Ok(_) | Err(_) => actions.extend(self.give_up(t)),
            }
            // What arrived meanwhile goes through the usual checks, in order.
            let held = t.repair.take().map(|(_, h)| h).unwrap_or_default();
            if t.members.is_empty() {
                s.convs.remove(conv);
            }
            for d in held {
                actions.extend(self.accept(&mut s, d));
            }
            actions
        };
        self.run(actions);
    }

    /// A gap that cannot be filled: the conversation's connections here are closed (4009)
    /// and resync; tracking goes on from what was missed.
    fn give_up(&self, t: &mut Tracked) -> Vec<Action> {
        self.metrics.gap_evictions.fetch_add(1, Ordering::Relaxed);
        if let Some((upto, held)) = t.repair.take() {
            t.last = held.iter().map(|d| d.seq).max().unwrap_or(upto).max(upto);
        }
        vec![Action::Evict(t.members.clone())]
    }

    fn delivery(&self, d: Deliver, audience: Arc<MemberSet>) -> Delivery {
        let except = d.except.map(|conn| Origin::new(self.me, conn));
        Delivery {
            conv: d.conv,
            audience,
            except,
            reach: d.reach,
            frame: super::wire::frame_name(&d.frame),
            json: d.json,
            bin: d.bin,
            started: None,
            seq: d.seq,
            addressed: Addressed::Members,
        }
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
                Action::Fetch { conv, owner, after, upto } => {
                    let Ok(id) = ConvId::new(&conv) else { continue };
                    let limit = (upto - after).min(1_000) as u16;
                    let this = self.clone();
                    let reply = Reply::new(move |r: Result<RangePage, OpError>| this.repaired(&conv, r));
                    let request = Request::Sync { conv: id, reader: None, after: Seq(after), limit };
                    self.router.forward(owner, request, reply.expecting());
                }
            }
        }
    }
}

/// The member change a system message records: (user, added).
fn member_change(m: &switchboard_store::StoredMessage) -> Option<(String, bool)> {
    if m.kind != "system" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
    let added = match v["event"].as_str()? {
        "member_added" => true,
        "member_removed" => false,
        _ => return None,
    };
    Some((v["user"].as_str()?.to_string(), added))
}

/// Starts filling `conv` up to `upto` (or extends a repair under way).
fn repair(metrics: &InterestMetrics, conv: &str, t: &mut Tracked, upto: u64) -> Vec<Action> {
    match &mut t.repair {
        Some((target, _)) => {
            *target = (*target).max(upto);
            Vec::new()
        }
        None => {
            metrics.gap_repairs.fetch_add(1, Ordering::Relaxed);
            t.repair = Some((upto, VecDeque::new()));
            vec![Action::Fetch { conv: conv.into(), owner: t.owner, after: t.last, upto }]
        }
    }
}

fn leave(convs: &mut HashMap<Box<str>, Tracked>, conv: &str, user: &str) {
    if let Some(t) = convs.get_mut(conv) {
        Arc::make_mut(&mut t.members).remove(user);
        if t.members.is_empty() && t.repair.is_none() {
            convs.remove(conv);
        }
    }
}
