//! The sans-IO core of the edge's delivery by subscription (the shell that runs its actions
//! is [`super::interest`]): for the users connected here, which of their conversations other
//! nodes own, who of each conversation's members is connected here, and the last seq
//! delivered here of each, so a hole is filled before anything after it.
//!
//! Every method takes an event and returns [`Action`]s; nothing here reads a clock, sends, or
//! locks, and its maps are hashed from a seed, so two of them run side by side in one thread
//! of `switchboard-sim` exactly as they run in a node.
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
//!   subscription again; a head past what was delivered here starts a repair. A user that
//!   subscription adds to a conversation here for the first time (it connected while the
//!   owner was away) is closed with 4009: what its client missed is unknown here.
//! - Only the answers of a user's current round of subscriptions release its `welcome`, and
//!   only those of the subscriptions made since its first connection here count at all.

use super::wire::{Deliver, Target};
use crate::node::ops::{msg_frame, shown_id, stored_body, OpError};
use crate::node::request::Origin;
use crate::node::{Addressed, ConnRef, Delivery, Reach};
use crate::proto::server::ServerFrame;
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_backplane::NodeId;
use switchboard_store::{ConvId, ConvKind, InboxEntry, MemberSet, RangePage, UserId};

/// Deliveries held for one conversation while a gap is filled; past this its connections
/// here are closed (4009) rather than hold more.
pub const HELD_MAX: usize = 10_000;

/// Messages asked for per repair request.
const FETCH_MAX: u64 = 1_000;

/// The close code and reason for connections that missed messages which could not be filled.
pub const MISSED_CLOSE: (u16, &str) = (4009, "missed messages that could not be filled; resync");

/// Maps hashed from a seed (aHash): lookups once per delivery, and an order that a seed fixes.
type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type Set<K> = std::collections::HashSet<K, ahash::RandomState>;

/// A user connected here.
struct LocalUser {
    conns: u32,
    /// The other nodes' conversations the user is a member of.
    convs: Set<Box<str>>,
    /// Subscriptions still unanswered, and the connections whose `welcome` waits for them.
    waiting: Option<(usize, Vec<(ConnRef, Bytes)>)>,
    /// Which user's first connection this is (a number from [`Tracking::rounds`]): answers
    /// to the subscriptions of an earlier one (its user left meanwhile) are not taken; its
    /// own subscriptions, made again or not, tell what is current.
    round: u64,
    /// Per conversation, the seq that what is known here of the user's membership is as of:
    /// the head of the subscription answer that listed it, or the seq of the last change
    /// applied. A change or an answer as of an earlier seq is not applied over it, and a
    /// change after it is, even in a delivery dropped as a duplicate. (Answers and changes
    /// travel on different lanes; `switchboard-sim` found a removed member given a group's
    /// messages again by an answer read before its removal, coming after it, or coming
    /// before it while another member's answer had moved the group past the removal.)
    as_of: Vec<(Box<str>, u64)>,
    /// Conversations an answer listed as read before tracking here started, asked again:
    /// one the next answer does not list, the user is told it left.
    stale: Vec<Box<str>>,
}

/// `joined` (or `left`) of `conv` for `user`'s connections here.
fn membership(conv: &str, channel: bool, user: &str, joined: bool) -> Delivery {
    let kind = if channel { ConvKind::Channel } else { ConvKind::Group }.as_str();
    let (frame, name) = match joined {
        true => (ServerFrame::Joined { conv, kind }, "joined"),
        false => (ServerFrame::Left { conv, kind }, "left"),
    };
    Delivery {
        conv: conv.into(),
        audience: Arc::new(std::iter::once(user.into()).collect()),
        except: None,
        sent_as: None,
        reach: Reach::Everyone,
        frame: name,
        json: frame.encode(Encoding::Json),
        bin: frame.encode(Encoding::Binary),
        started: None,
        seq: 0,
        addressed: Addressed::Members,
    }
}

impl LocalUser {
    fn as_of(&self, conv: &str) -> Option<u64> {
        self.as_of.iter().find(|(c, _)| **c == *conv).map(|(_, seq)| *seq)
    }

    fn set_as_of(&mut self, conv: &str, seq: u64) {
        self.as_of.retain(|(c, _)| **c != *conv);
        self.as_of.push((conv.into(), seq));
    }

    /// Whether a change of the user's membership of `conv` at `seq` is newer than what is
    /// known here, which it then becomes as of. Seq 0 (a creation's join, or a join sent
    /// again after a refusal) is always newer, and moves nothing.
    fn advance(&mut self, conv: &str, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        if self.as_of(conv).is_some_and(|at| at >= seq) {
            return false;
        }
        self.set_as_of(conv, seq);
        true
    }
}

/// Applies `user`'s join (`added`) or leave of the conversation `t` at `seq`, unless what is
/// known here of the user's membership is as of a later seq (`LocalUser::advance`). Whether
/// the members here changed.
fn apply(users: &mut Map<Box<str>, LocalUser>, t: &mut Tracked, conv: &str, user: &str, added: bool, seq: u64) -> bool {
    let Some(u) = users.get_mut(user) else {
        return !added && Arc::make_mut(&mut t.members).remove(user);
    };
    if !u.advance(conv, seq) {
        return false;
    }
    let members = Arc::make_mut(&mut t.members);
    match added {
        true => {
            u.convs.insert(conv.into());
            members.insert(user.into())
        }
        false => {
            u.convs.remove(conv);
            members.remove(user)
        }
    }
}

/// A conversation another node owns that members connected here belong to.
struct Tracked {
    owner: NodeId,
    /// A channel: its messages reach open connections in full, the others as `notify`.
    channel: bool,
    members: Arc<MemberSet>,
    /// The last seq delivered here.
    last: u64,
    /// The seq tracking started at: every member change after it reaches this core (a
    /// delivery, a repair's page, or a close to resync where one cannot be filled); what
    /// changed at or before it was never seen here.
    since: u64,
    /// While a gap is filled: the seq it is filled up to, and what arrived meanwhile.
    repair: Option<(u64, VecDeque<Deliver>)>,
}

/// Which subscriptions of a user an answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// The user's first connection here that they were made for (its `round` here).
    pub of: u64,
    /// Made again (the owner is back, or an earlier try failed): no `welcome` waits for it.
    pub again: bool,
}

/// What the shell does for the core.
#[derive(Debug)]
pub enum Action {
    /// Hand to the local connections of its audience.
    Deliver(Delivery),
    /// Ask `owner` for `limit` messages of `conv` after `after`; the answer goes to
    /// [`Tracking::repaired`].
    Fetch { conv: Box<str>, owner: NodeId, after: u64, limit: u16 },
    /// Close every local connection of these users with [`MISSED_CLOSE`].
    Evict(Arc<MemberSet>),
    /// Send this connection its `welcome`.
    Welcome(ConnRef, Bytes),
    /// Subscribe `user` at `node`; the answer goes to [`Tracking::subscribed`] with `round`.
    Subscribe { user: UserId, node: NodeId, round: Round },
    /// Unsubscribe `user` at `node` (no answer needed).
    Unsubscribe { user: UserId, node: NodeId },
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

pub struct Tracking {
    me: NodeId,
    seeds: ahash::RandomState,
    users: Map<Box<str>, LocalUser>,
    convs: Map<Box<str>, Tracked>,
    rounds: u64,
    /// Subscriptions that failed (no answer in time, or an error), by node, made again at the
    /// first sign that the node answers: one of its deliveries or answers arriving here.
    failed: Vec<(NodeId, Box<str>)>,
    /// Shared with the shell, which reports them without the core's lock.
    pub metrics: Arc<InterestMetrics>,
}

impl Tracking {
    /// The most deliveries held behind one repair now (never above [`HELD_MAX`]), for the
    /// simulator's checker of queue bounds.
    pub fn held_most(&self) -> usize {
        self.convs.values().filter_map(|t| t.repair.as_ref().map(|(_, held)| held.len())).max().unwrap_or(0)
    }

    /// `seed` fixes the maps' hashing, and with it the order of every list of actions.
    pub fn new(me: NodeId, seed: u64) -> Tracking {
        let seeds = ahash::RandomState::with_seeds(seed, seed ^ 0x9e37_79b9_7f4a_7c15, !seed, seed.rotate_left(32));
        Tracking {
            me,
            users: Map::with_hasher(seeds.clone()),
            convs: Map::with_hasher(seeds.clone()),
            seeds,
            rounds: 0,
            failed: Vec::new(),
            metrics: Arc::default(),
        }
    }

    /// Conversations tracked here (for `/metrics`).
    pub fn tracked(&self) -> usize {
        self.convs.len()
    }

    /// The users connected here.
    pub fn users(&self) -> Vec<UserId> {
        self.users.keys().filter_map(|u| UserId::new(u).ok()).collect()
    }

    /// A connection of `user` said `hello`; `welcome` goes to it once the user is subscribed
    /// at every node of `remote` (the other store nodes). The flag: whether it is the user's
    /// only connection here.
    pub fn connected(
        &mut self,
        user: &UserId,
        conn: ConnRef,
        welcome: Bytes,
        remote: &[NodeId],
    ) -> (bool, Vec<Action>) {
        let (seeds, round) = (self.seeds.clone(), self.rounds);
        let u = self.users.entry(user.as_str().into()).or_insert_with(|| LocalUser {
            conns: 0,
            convs: Set::with_hasher(seeds),
            waiting: None,
            round,
            as_of: Vec::new(),
            stale: Vec::new(),
        });
        self.rounds += 1;
        u.conns += 1;
        let first = u.conns == 1;
        match &mut u.waiting {
            Some((_, waiting)) => {
                waiting.push((conn, welcome));
                (first, Vec::new())
            }
            None if first && !remote.is_empty() => {
                u.waiting = Some((remote.len(), vec![(conn, welcome)]));
                let round = Round { of: u.round, again: false };
                let subscribe = remote.iter().map(|&node| Action::Subscribe { user: user.clone(), node, round });
                (first, subscribe.collect())
            }
            None => (first, vec![Action::Welcome(conn, welcome)]),
        }
    }

    /// `node` answered a subscription of `user` with the heads of the user's conversations
    /// there. `round`: the one its subscription was made for ([`Action::Subscribe`]).
    pub fn subscribed(
        &mut self,
        user: &str,
        node: NodeId,
        round: Round,
        result: Result<Vec<InboxEntry>, OpError>,
    ) -> Vec<Action> {
        let mut actions = if result.is_ok() { self.retry(node) } else { Vec::new() };
        let Tracking { users, convs, metrics, failed, .. } = self;
        // An answer for an earlier first connection of the user: its user left, and the
        // membership it tells of may have changed since, unseen here (`switchboard-sim`
        // found it). This connection's own subscriptions answer for now.
        let Some(u) = users.get_mut(user).filter(|u| u.round == round.of) else { return actions };
        match result {
            Ok(entries) => {
                // Asked again after a stale answer: a conversation of this owner that this
                // answer does not list the user is not in, and hears `left`, as the removal
                // never seen here would have told it (unless a join seen since made it a
                // member again). Other owners' answers say nothing of it.
                let (here, elsewhere): (Vec<Box<str>>, Vec<Box<str>>) = std::mem::take(&mut u.stale)
                    .into_iter()
                    .partition(|c| convs.get(c).is_none_or(|t| t.owner == node));
                u.stale = elsewhere;
                for c in here {
                    let listed = entries.iter().any(|e| e.conv.as_str() == &*c);
                    match convs.get(&c) {
                        Some(t) if !listed && !t.members.contains(user) => {
                            actions.push(Action::Deliver(membership(&c, t.channel, user, false)))
                        }
                        _ => {}
                    }
                }
                let (mut missed, mut stale) = (false, false);
                for e in entries {
                    if u.as_of(e.conv.as_str()).is_some_and(|at| at > e.head.0) {
                        continue;
                    }
                    // Read before tracking here started, from another member's answer: a
                    // removal of this user in between was never seen here, so the answer
                    // cannot make them a member. It is asked again, and the new answer,
                    // read after, tells (`switchboard-sim` found a removed member still
                    // pushed to: the removal's delivery refused, another member's answer
                    // starting the group past it, the removed user's own answer older).
                    if let Some(t) = convs.get(e.conv.as_str()) {
                        if e.head.0 < t.since && !t.members.contains(user) {
                            if !u.stale.iter().any(|c| **c == *e.conv.as_str()) {
                                u.stale.push(e.conv.as_str().into());
                            }
                            stale = true;
                            continue;
                        }
                    }
                    u.set_as_of(e.conv.as_str(), e.head.0);
                    u.convs.insert(e.conv.as_str().into());
                    let t = convs.entry(e.conv.as_str().into()).or_insert_with(|| Tracked {
                        owner: node,
                        channel: e.kind == ConvKind::Channel,
                        members: Arc::default(),
                        last: e.head.0,
                        since: e.head.0,
                        repair: None,
                    });
                    // The answer knows the kind (tracking may have started from a frame that
                    // does not: see `deliver_in_order`).
                    t.channel = e.kind == ConvKind::Channel;
                    // A subscription made again (the owner is back) that brings a
                    // conversation this user was not tracked in here: its messages up to
                    // `head` reached nobody's connections of this user, and what the
                    // client synced before may end earlier. Only a resync can tell.
                    missed |= Arc::make_mut(&mut t.members).insert(user.into()) && round.again;
                    if e.head.0 > t.last {
                        actions.extend(repair(metrics, &e.conv, t, e.head.0));
                    }
                }
                if missed {
                    metrics.gap_evictions.fetch_add(1, Ordering::Relaxed);
                    actions.push(Action::Evict(Arc::new(std::iter::once(user.into()).collect())));
                }
                // Made again, the answer is for no `welcome` (this one counts for it); a
                // conversation it brings that the user was not in here closes them to resync.
                if let (true, Ok(again)) = (stale, UserId::new(user)) {
                    actions.push(Action::Subscribe { user: again, node, round: Round { of: round.of, again: true } });
                }
            }
            // Its conversations answer `unavailable` until it is back, when it gets this
            // user's subscription again: on its next connection, or at its next delivery
            // or answer here. (A subscription whose answer came late, its request held in a
            // stalled connection, is in place at the owner, whose deliveries then come for
            // a user this node does not know to give them to: `switchboard-sim` found it.)
            Err(e) => {
                tracing::warn!(%node, user, "subscribing failed: {}", e.message);
                if !failed.iter().any(|(n, u)| *n == node && **u == *user) {
                    failed.push((node, user.into()));
                }
            }
        }
        if let (false, Some((left, waiting))) = (round.again, &mut u.waiting) {
            *left -= 1;
            if *left == 0 {
                actions.extend(waiting.drain(..).map(|(c, w)| Action::Welcome(c, w)));
                u.waiting = None;
            }
        }
        actions
    }

    /// A connection of `user` closed. The flag: whether it was their last one here.
    pub fn disconnected(&mut self, user: &UserId, remote: &[NodeId]) -> (bool, Vec<Action>) {
        let Some(u) = self.users.get_mut(user.as_str()) else { return (false, Vec::new()) };
        u.conns -= 1;
        if u.conns > 0 {
            return (false, Vec::new());
        }
        let u = self.users.remove(user.as_str()).expect("present");
        for conv in u.convs {
            leave(&mut self.convs, &conv, user.as_str());
        }
        (true, remote.iter().map(|&node| Action::Unsubscribe { user: user.clone(), node }).collect())
    }

    /// A connection to store node `node` was chosen (a new run, or after a partition): every
    /// user here is subscribed there anew.
    pub fn owner_connected(&mut self, node: NodeId) -> Vec<Action> {
        if node == self.me {
            return Vec::new();
        }
        self.failed.retain(|(n, _)| *n != node);
        let resubscribe = self.users.iter().filter_map(|(user, u)| {
            let round = Round { of: u.round, again: true };
            UserId::new(user).ok().map(|user| Action::Subscribe { user, node, round })
        });
        resubscribe.collect()
    }

    /// The subscriptions at `node` that failed, made again (of the users still here).
    fn retry(&mut self, node: NodeId) -> Vec<Action> {
        if self.failed.is_empty() {
            return Vec::new();
        }
        let (again, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.failed).into_iter().partition(|(n, _)| *n == node);
        self.failed = rest;
        let users = &self.users;
        let resubscribe = |(node, user): (NodeId, Box<str>)| {
            let round = Round { of: users.get(&user)?.round, again: true };
            UserId::new(&user).ok().map(|user| Action::Subscribe { user, node, round })
        };
        again.into_iter().filter_map(resubscribe).collect()
    }

    /// An owner's delivery arrived. `owner`: who owns a conversation not tracked yet.
    pub fn deliver(&mut self, d: Deliver, owner: &dyn Fn(&ConvId) -> NodeId) -> Vec<Action> {
        if !self.failed.is_empty() {
            let Ok(id) = ConvId::new(&d.conv) else { return Vec::new() };
            let mut actions = self.retry(owner(&id));
            actions.extend(self.deliver_in_order(d, owner));
            return actions;
        }
        self.deliver_in_order(d, owner)
    }

    fn deliver_in_order(&mut self, d: Deliver, owner: &dyn Fn(&ConvId) -> NodeId) -> Vec<Action> {
        let Tracking { users, convs, .. } = self;
        let Target { joins, leaves } = &d.target;
        let conv = d.conv.clone();
        let joins: Vec<&Box<str>> = joins.iter().filter(|u| users.contains_key(*u)).collect();
        if !convs.contains_key(&conv) {
            if joins.is_empty() {
                // Nobody here is a member (any more): a subscription that is on its way out,
                // or one whose answers are still on their way. A removal of a user here is
                // kept as what the user's membership is known as of, so that the user's own
                // answer, read before it but coming after, does not make them a member
                // again (`switchboard-sim` found it: another member's answer had started
                // tracking the group past the removal meanwhile).
                for user in leaves {
                    if let Some(u) = users.get_mut(user) {
                        u.advance(&conv, d.seq);
                    }
                }
                return Vec::new();
            }
            let Ok(id) = ConvId::new(&conv) else { return Vec::new() };
            let last = d.seq.saturating_sub(1);
            let channel = matches!(d.reach, Reach::Channel { .. });
            convs.insert(
                conv.clone(),
                Tracked { owner: owner(&id), channel, members: Arc::default(), last, since: last, repair: None },
            );
        }
        let t = convs.get_mut(&conv).expect("tracked");
        // Only a message's reach says whether the conversation is a channel: a receipt or a
        // `joined` (which may start the tracking, carrying a join) reaches everyone either
        // way. Found by switchboard-sim: a channel tracked from a receipt was taken for a
        // group, and its repaired messages were pushed in full to connections without it open.
        if d.seq != 0 {
            t.channel = matches!(d.reach, Reach::Channel { .. });
        }
        if let Some((_, held)) = &mut t.repair {
            let full = held.len() >= HELD_MAX;
            held.push_back(d);
            return match full {
                true => give_up(users, &self.metrics, &conv, t),
                false => Vec::new(),
            };
        }
        let duplicate = d.seq != 0 && d.seq <= t.last;
        if duplicate {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
        } else if d.seq > t.last + 1 && !cfg!(feature = "sim-bug-no-gap-repair") {
            let upto = d.seq - 1;
            let actions = repair(&self.metrics, &conv, t, upto);
            t.repair.as_mut().expect("repairing").1.push_back(d);
            return actions;
        }
        // The users here that a member change concerns hear `joined` before the message that
        // added them (or the frame that carries their join again, refused before), and
        // `left` after the one that removed them (which they do not get). A conversation's
        // creation names its members as joins too, and brings its own `joined`, or none for
        // a dm (whose members never change).
        // A duplicate's changes are applied for the users whose membership here is as of an
        // earlier seq; the message itself is not delivered again.
        let (mut actions, mut after) = (Vec::new(), Vec::new());
        let announce_joins = &*d.frame != "joined" && !conv.starts_with("dm:");
        for user in joins {
            if apply(users, t, &conv, user, true, d.seq) && announce_joins {
                actions.push(Action::Deliver(membership(&conv, t.channel, user, true)));
            }
        }
        for user in leaves {
            if apply(users, t, &conv, user, false, d.seq) && users.contains_key(user) {
                after.push(Action::Deliver(membership(&conv, t.channel, user, false)));
            }
        }
        if duplicate {
            actions.extend(after);
            if t.members.is_empty() {
                convs.remove(&conv);
            }
            return actions;
        }
        if d.seq != 0 {
            t.last = d.seq;
        }
        let members = t.members.clone();
        if members.is_empty() {
            convs.remove(&conv);
        }
        actions.push(Action::Deliver(self.delivery(d, members)));
        actions.extend(after);
        actions
    }

    /// The owner answered a repair ([`Action::Fetch`]).
    pub fn repaired(
        &mut self,
        conv: &str,
        result: Result<RangePage, OpError>,
        owner: &dyn Fn(&ConvId) -> NodeId,
    ) -> Vec<Action> {
        let Tracking { users, convs, metrics, .. } = self;
        let Some(t) = convs.get_mut(conv) else { return Vec::new() };
        let Some((upto, _)) = t.repair else { return Vec::new() };
        let mut actions = Vec::new();
        match result {
            Ok(page) if page.gap.is_none() => {
                let from = t.last;
                for m in page.messages.iter().filter(|m| m.seq.0 > from && m.seq.0 <= upto) {
                    // A member change in the gap changes who here gets what follows, and the
                    // user concerned hears of it, as from a delivery.
                    let mut left = None;
                    if let Some((user, added)) = member_change(m) {
                        let here = users.contains_key(user.as_str());
                        match apply(users, t, conv, &user, added, m.seq.0) && here {
                            true if added => actions.push(Action::Deliver(membership(conv, t.channel, &user, true))),
                            true => left = Some(user),
                            false => {}
                        }
                    }
                    let id = shown_id(&m.client_id, m.seq);
                    let frame = msg_frame(conv, m, &id, stored_body(&m.body));
                    let reach = if t.channel { Reach::Channel { head: m.seq.0 } } else { Reach::Everyone };
                    actions.push(Action::Deliver(Delivery {
                        conv: conv.into(),
                        audience: t.members.clone(),
                        except: None,
                        sent_as: (!m.client_id.is_empty()).then(|| id.as_ref().into()),
                        reach,
                        frame: "msg",
                        json: frame.encode(Encoding::Json),
                        bin: frame.encode(Encoding::Binary),
                        started: None,
                        seq: m.seq.0,
                        addressed: Addressed::Members,
                    }));
                    if let Some(user) = left {
                        actions.push(Action::Deliver(membership(conv, t.channel, &user, false)));
                    }
                    t.last = m.seq.0;
                }
                if t.last < upto && page.more {
                    actions.push(fetch(conv, t.owner, t.last, upto));
                    return actions;
                }
                if t.last < upto {
                    actions.extend(give_up(users, metrics, conv, t));
                }
            }
            // A hole retention made, or an owner that cannot answer: resync instead.
            Ok(_) | Err(_) => actions.extend(give_up(users, metrics, conv, t)),
        }
        // What arrived meanwhile goes through the usual checks, in order.
        let held = t.repair.take().map(|(_, h)| h).unwrap_or_default();
        if t.members.is_empty() {
            convs.remove(conv);
        }
        for d in held {
            actions.extend(self.deliver(d, owner));
        }
        actions
    }

    fn delivery(&self, d: Deliver, audience: Arc<MemberSet>) -> Delivery {
        let except = d.except.map(|conn| Origin::new(self.me, conn));
        Delivery {
            conv: d.conv,
            audience,
            except,
            sent_as: None,
            reach: d.reach,
            frame: super::wire::frame_name(&d.frame),
            json: d.json,
            bin: d.bin,
            started: None,
            seq: d.seq,
            addressed: Addressed::Members,
        }
    }
}

/// A gap that cannot be filled: the conversation's connections here are closed (4009)
/// and resync; tracking goes on from what was missed. The member changes held meanwhile
/// still decide who here gets what follows, and a user one of them added is closed too: it
/// missed the gap as well. (`switchboard-sim` found a member added while a repair was under
/// way, its join dropped with the repair, connected here and never given the group again.)
fn give_up(
    users: &mut Map<Box<str>, LocalUser>,
    metrics: &InterestMetrics,
    conv: &str,
    t: &mut Tracked,
) -> Vec<Action> {
    metrics.gap_evictions.fetch_add(1, Ordering::Relaxed);
    let mut closed = (*t.members).clone();
    if let Some((upto, held)) = t.repair.take() {
        t.last = held.iter().map(|d| d.seq).max().unwrap_or(upto).max(upto);
        for d in &held {
            let changes = d.target.joins.iter().map(|u| (u, true)).chain(d.target.leaves.iter().map(|u| (u, false)));
            for (user, added) in changes {
                apply(users, t, conv, user, added, d.seq);
            }
        }
    }
    closed.extend(t.members.iter().cloned());
    vec![Action::Evict(Arc::new(closed))]
}

fn fetch(conv: &str, owner: NodeId, after: u64, upto: u64) -> Action {
    Action::Fetch { conv: conv.into(), owner, after, limit: (upto - after).min(FETCH_MAX) as u16 }
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
            vec![fetch(conv, t.owner, t.last, upto)]
        }
    }
}

fn leave(convs: &mut Map<Box<str>, Tracked>, conv: &str, user: &str) {
    if let Some(t) = convs.get_mut(conv) {
        Arc::make_mut(&mut t.members).remove(user);
        if t.members.is_empty() && t.repair.is_none() {
            convs.remove(conv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ErrorCode;
    use switchboard_store::Seq;

    const OWNER: NodeId = NodeId(2);

    fn user(u: &str) -> UserId {
        UserId::new(u).unwrap()
    }

    fn conn(slot: u32) -> ConnRef {
        ConnRef { shard: 0, slot, generation: 0 }
    }

    fn head(conv: &str, head: u64) -> InboxEntry {
        InboxEntry { conv: conv.into(), kind: ConvKind::Group, head: Seq(head), delivered: Seq(0), read: Seq(0) }
    }

    fn msg(conv: &str, seq: u64) -> Deliver {
        Deliver {
            conv: conv.into(),
            seq,
            except: None,
            reach: Reach::Everyone,
            frame: "msg".into(),
            json: Bytes::new(),
            bin: Bytes::new(),
            target: Target::default(),
        }
    }

    fn round_of(actions: &[Action]) -> Round {
        let round = actions.iter().find_map(|a| match a {
            Action::Subscribe { round, .. } => Some(*round),
            _ => None,
        });
        round.expect("a subscription")
    }

    /// The round of a subscription made again.
    fn again(t: &Tracking, u: &str) -> Round {
        Round { of: t.users[u].round, again: true }
    }

    fn welcomed(actions: &[Action]) -> Vec<u32> {
        actions.iter().filter_map(|a| if let Action::Welcome(c, _) = a { Some(c.slot) } else { None }).collect()
    }

    fn evicted(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Evict(_)))
    }

    /// Found by switchboard-sim: a connection closed while its subscriptions were out, and
    /// their late answers released the next connection's `welcome` before its own
    /// subscriptions were answered; its sync then ran ahead of the subscription.
    #[test]
    fn a_stale_subscription_answer_does_not_release_a_newer_connections_welcome() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, old) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        let old = round_of(&old);
        t.disconnected(&user("ann"), &[OWNER]);
        let (_, new) = t.connected(&user("ann"), conn(2), Bytes::new(), &[OWNER]);
        let new = round_of(&new);
        assert_ne!(old, new);
        let stale = t.subscribed("ann", OWNER, old, Err(OpError::new(ErrorCode::Unavailable, "no answer")));
        assert!(welcomed(&stale).is_empty(), "the old round's answer released the welcome");
        let fresh = t.subscribed("ann", OWNER, new, Ok(vec![head("g1", 3)]));
        assert_eq!(welcomed(&fresh), vec![2]);
    }

    /// Found by switchboard-sim: a user connected while an owner was down; once it was back,
    /// another member's subscription answered first and the next message went only to them,
    /// then this user's answer came with a head past it. A resubscription that brings a
    /// conversation new to the user here cannot know what the client missed: resync (4009).
    #[test]
    fn a_resubscription_that_brings_a_conversation_new_to_the_user_makes_it_resync() {
        let mut t = Tracking::new(NodeId(1), 7);
        for (slot, u) in [(1, "ann"), (2, "bob")] {
            let (_, a) = t.connected(&user(u), conn(slot), Bytes::new(), &[OWNER]);
            let round = round_of(&a);
            t.subscribed(u, OWNER, round, Err(OpError::new(ErrorCode::Unavailable, "down")));
        }
        // The owner is back: both are subscribed again; ann's answer comes first (and she
        // resyncs too: what her client synced while the owner was down is unknown here).
        assert_eq!(t.owner_connected(OWNER).len(), 2);
        assert!(evicted(&t.subscribed("ann", OWNER, again(&t, "ann"), Ok(vec![head("g1", 1)]))));
        let d = t.deliver(msg("g1", 2), &|_| OWNER);
        assert!(matches!(&d[..], [Action::Deliver(d)] if !d.audience.contains("bob")));
        let bob = t.subscribed("bob", OWNER, again(&t, "bob"), Ok(vec![head("g1", 2)]));
        assert!(evicted(&bob), "bob never got seq 2 and was not told to resync");
        // A member already tracked here is not closed by a subscription made again.
        assert!(!evicted(&t.subscribed("ann", OWNER, again(&t, "ann"), Ok(vec![head("g1", 2)]))));
    }

    /// Found by switchboard-sim: a subscription's request was held in a stalled connection
    /// past the answer's wait; the owner took it, and its deliveries came for a user that
    /// this node did not know to give them to, for as long as the user stayed.
    #[test]
    fn a_subscription_that_failed_is_made_again_when_its_owner_is_heard_from() {
        let mut t = Tracking::new(NodeId(1), 7);
        for (slot, u) in [(1, "ann"), (2, "bob")] {
            let (_, a) = t.connected(&user(u), conn(slot), Bytes::new(), &[OWNER]);
            t.subscribed(u, OWNER, round_of(&a), Ok(vec![head("g1", 1)]));
        }
        let (_, a) = t.connected(&user("cat"), conn(3), Bytes::new(), &[OWNER]);
        let failed = t.subscribed("cat", OWNER, round_of(&a), Err(OpError::new(ErrorCode::Unavailable, "no answer")));
        assert_eq!(welcomed(&failed), vec![3]);
        // The owner's next delivery (for ann and bob here) brings cat's subscription again.
        let d = t.deliver(msg("g1", 2), &|_| OWNER);
        assert!(
            d.iter()
                .any(|a| matches!(a, Action::Subscribe { user, node: OWNER, round: Round { again: true, .. } } if user.as_str() == "cat")),
            "{d:?}"
        );
        assert!(d.iter().any(|a| matches!(a, Action::Deliver(_))), "and the delivery goes as before");
        // Its answer makes cat resync (what it missed meanwhile is unknown here); once.
        assert!(evicted(&t.subscribed("cat", OWNER, again(&t, "cat"), Ok(vec![head("g1", 2)]))));
        assert!(!t.deliver(msg("g1", 3), &|_| OWNER).iter().any(|a| matches!(a, Action::Subscribe { .. })));
    }

    #[test]
    fn a_hole_is_filled_from_the_owner_before_anything_after_it() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 1)]));
        let held = t.deliver(msg("g1", 3), &|_| OWNER);
        assert!(matches!(&held[..], [Action::Fetch { after: 1, limit: 1, .. }]), "{held:?}");
        assert!(t.deliver(msg("g1", 4), &|_| OWNER).is_empty(), "held behind the repair");
        let page = RangePage {
            gap: None,
            messages: vec![switchboard_store::StoredMessage {
                seq: Seq(2),
                ts_ms: 1,
                sender: "bob".into(),
                client_id: b"m2".to_vec(),
                kind: "text".into(),
                body: Bytes::from_static(b"{}"),
            }],
            upto: Seq(2),
            head: Seq(4),
            more: false,
        };
        let seqs: Vec<(u64, Option<Box<str>>)> = t
            .repaired("g1", Ok(page), &|_| OWNER)
            .into_iter()
            .filter_map(|a| if let Action::Deliver(d) = a { Some((d.seq, d.sent_as)) } else { None })
            .collect();
        // The repaired message, read from the store, names its client id: its sending
        // connection (found by switchboard-sim, pushed its own message back) knows it by that.
        assert_eq!(seqs, vec![(2, Some("m2".into())), (3, None), (4, None)]);
        assert!(t.deliver(msg("g1", 3), &|_| OWNER).is_empty(), "a duplicate is dropped");
    }

    /// Found by switchboard-sim: a join to a channel that rode on a receipt (its own frame
    /// refused) started the channel's tracking here as a group's; a repair then pushed its
    /// messages in full to every member connection, open or not.
    #[test]
    fn a_channel_tracked_from_a_receipt_repairs_as_a_channel() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(Vec::new()));
        let receipt = Deliver {
            frame: "receipt".into(),
            seq: 0,
            target: Target { joins: vec!["ann".into()], leaves: Vec::new() },
            ..msg("c1", 0)
        };
        t.deliver(receipt, &|_| OWNER);
        let live = Deliver { reach: Reach::Channel { head: 3 }, ..msg("c1", 3) };
        assert!(matches!(&t.deliver(live, &|_| OWNER)[..], [Action::Fetch { after: 0, .. }]));
        let stored = |seq: u64| switchboard_store::StoredMessage {
            seq: Seq(seq),
            ts_ms: 1,
            sender: "bob".into(),
            client_id: format!("m{seq}").into_bytes(),
            kind: "text".into(),
            body: Bytes::from_static(b"{}"),
        };
        let page =
            RangePage { gap: None, messages: vec![stored(1), stored(2)], upto: Seq(2), head: Seq(3), more: false };
        let reaches: Vec<(u64, Reach)> = t
            .repaired("c1", Ok(page), &|_| OWNER)
            .into_iter()
            .filter_map(|a| if let Action::Deliver(d) = a { Some((d.seq, d.reach)) } else { None })
            .collect();
        let channel = |head| Reach::Channel { head };
        assert_eq!(reaches, vec![(1, channel(1)), (2, channel(2)), (3, channel(3))]);
    }

    /// The `system` message of a member change, as an owner delivers it.
    fn change(conv: &str, seq: u64, joins: &[&str], leaves: &[&str]) -> Deliver {
        let names = |us: &[&str]| us.iter().map(|u| Box::<str>::from(*u)).collect();
        let event = if joins.is_empty() { "member_removed" } else { "member_added" };
        let user = joins.iter().chain(leaves).next().expect("a user");
        let json = format!(r#"{{"t":"msg","kind":"system","body":{{"event":"{event}","user":"{user}"}}}}"#);
        let target = Target { joins: names(joins), leaves: names(leaves) };
        Deliver { target, json: Bytes::from(json), ..msg(conv, seq) }
    }

    /// Each delivery an action gives: its frame and who it is for, in order.
    fn given(actions: &[Action]) -> Vec<(&'static str, Vec<&str>)> {
        fn audience(d: &Delivery) -> Vec<&str> {
            let mut a: Vec<&str> = d.audience.iter().map(|u| &**u).collect();
            a.sort();
            a
        }
        actions
            .iter()
            .filter_map(|a| if let Action::Deliver(d) = a { Some((d.frame, audience(d))) } else { None })
            .collect()
    }

    /// Found by switchboard-sim: a user's subscription was read at the owner before its
    /// removal from a group, whose delivery reached this node first (they travel on
    /// different lanes); the answer, listing the group, made the user a member here again.
    #[test]
    fn a_removal_that_overtook_a_subscription_answer_is_not_undone_by_it() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 4)]));
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        t.deliver(change("g1", 5, &[], &["bob"]), &|_| OWNER);
        // Bob's answer, read before the removal (head 4), comes now.
        t.subscribed("bob", OWNER, round_of(&b), Ok(vec![head("g1", 4)]));
        assert_eq!(given(&t.deliver(msg("g1", 6), &|_| OWNER)), vec![("msg", vec!["ann"])]);
        // An answer read after the removal (the user added again since) is taken.
        t.subscribed("bob", OWNER, again(&t, "bob"), Ok(vec![head("g1", 6)]));
        assert_eq!(given(&t.deliver(msg("g1", 7), &|_| OWNER)), vec![("msg", vec!["ann", "bob"])]);
    }

    /// Found by switchboard-sim: a removal reached this node before any member's answer had
    /// started tracking the group here (dropped: nobody here to give it to), then another
    /// member's answer started it past the removal, and the removed user's own answer, read
    /// before it, made the user a member again.
    #[test]
    fn a_removal_that_came_before_the_group_was_tracked_is_not_undone_by_an_earlier_answer() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        assert!(given(&t.deliver(change("g1", 5, &[], &["bob"]), &|_| OWNER)).is_empty());
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 5)]));
        t.subscribed("bob", OWNER, round_of(&b), Ok(vec![head("g1", 4)]));
        assert_eq!(given(&t.deliver(msg("g1", 6), &|_| OWNER)), vec![("msg", vec!["ann"])]);
    }

    /// Found by switchboard-sim (seed 10421 with slow nodes): a removal's delivery was
    /// refused, another member's answer, read after the removal, started tracking the group
    /// past it, and the removed user's own answer, read before, then made them a member.
    #[test]
    fn an_answer_read_before_tracking_started_is_asked_again_not_taken() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 3)]));
        let again = t.subscribed("bob", OWNER, round_of(&b), Ok(vec![head("g1", 2)]));
        let asked: Vec<Round> = again
            .iter()
            .filter_map(|a| match a {
                Action::Subscribe { user, round, .. } if user.as_str() == "bob" => Some(*round),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![Round { of: round_of(&b).of, again: true }], "{again:?}");
        assert_eq!(given(&t.deliver(msg("g1", 4), &|_| OWNER)), vec![("msg", vec!["ann"])]);
        // The new answer, read after: bob is not a member, stays out, and is told so.
        assert_eq!(given(&t.subscribed("bob", OWNER, asked[0], Ok(Vec::new()))), vec![("left", vec!["bob"])]);
        assert_eq!(given(&t.deliver(msg("g1", 5), &|_| OWNER)), vec![("msg", vec!["ann"])]);
        // Were he one, the new answer makes him a member, and closes him to resync.
        let member = t.subscribed("bob", OWNER, asked[0], Ok(vec![head("g1", 5)]));
        assert!(member.iter().any(|a| matches!(a, Action::Evict(u) if u.contains("bob"))), "{member:?}");
        assert_eq!(given(&t.deliver(msg("g1", 6), &|_| OWNER)), vec![("msg", vec!["ann", "bob"])]);
    }

    /// A user's answer for an earlier first connection here (it closed, its user connected
    /// again meanwhile) tells of a membership that may have changed unseen here: a removal
    /// delivered while the user had no connection here changed nobody's state of them.
    #[test]
    fn an_answer_for_an_earlier_connection_of_the_user_is_not_taken() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        t.subscribed("bob", OWNER, round_of(&b), Ok(vec![head("g1", 4)]));
        let (_, first) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.disconnected(&user("ann"), &[OWNER]);
        t.deliver(change("g1", 5, &[], &["ann"]), &|_| OWNER);
        let (_, second) = t.connected(&user("ann"), conn(3), Bytes::new(), &[OWNER]);
        assert!(welcomed(&t.subscribed("ann", OWNER, round_of(&first), Ok(vec![head("g1", 4)]))).is_empty());
        assert_eq!(welcomed(&t.subscribed("ann", OWNER, round_of(&second), Ok(Vec::new()))), vec![3]);
        assert_eq!(given(&t.deliver(msg("g1", 6), &|_| OWNER)), vec![("msg", vec!["bob"])]);
    }

    /// Found by switchboard-sim: a member was added while a repair was under way; the repair
    /// failed, its held deliveries went with it, join included, and the new member, connected
    /// here, never got the group's messages (nor was it closed to resync).
    #[test]
    fn a_join_held_behind_a_repair_that_failed_still_applies_and_its_user_resyncs() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 1)]));
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        t.subscribed("bob", OWNER, round_of(&b), Ok(Vec::new()));
        assert!(matches!(&t.deliver(msg("g1", 3), &|_| OWNER)[..], [Action::Fetch { after: 1, .. }]));
        assert!(t.deliver(change("g1", 4, &["bob"], &[]), &|_| OWNER).is_empty(), "held");
        let failed = t.repaired("g1", Err(OpError::new(ErrorCode::Unavailable, "no answer")), &|_| OWNER);
        let closed: Vec<Vec<&str>> = failed
            .iter()
            .filter_map(|a| match a {
                Action::Evict(users) => {
                    let mut u: Vec<&str> = users.iter().map(|u| &**u).collect();
                    u.sort();
                    Some(u)
                }
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![vec!["ann", "bob"]]);
        assert_eq!(given(&t.deliver(msg("g1", 5), &|_| OWNER)), vec![("msg", vec!["ann", "bob"])]);
    }

    /// Found by switchboard-sim: another member's answer had moved the group past a removal
    /// (tracked at seq 5) when the removed user's answer, read before it (head 4), made it a
    /// member; the removal's delivery then came as a duplicate, and was dropped with its leave.
    /// Now that answer is not taken but asked again, and the removed user is told it left
    /// when the new answer does not list the group.
    #[test]
    fn a_removal_before_tracking_started_reaches_the_removed_user_as_left() {
        let mut t = Tracking::new(NodeId(1), 7);
        let (_, a) = t.connected(&user("ann"), conn(1), Bytes::new(), &[OWNER]);
        t.subscribed("ann", OWNER, round_of(&a), Ok(vec![head("g1", 5)]));
        let (_, b) = t.connected(&user("bob"), conn(2), Bytes::new(), &[OWNER]);
        let stale = t.subscribed("bob", OWNER, round_of(&b), Ok(vec![head("g1", 4)]));
        let again = stale.iter().find_map(|a| match a {
            Action::Subscribe { round, .. } => Some(*round),
            _ => None,
        });
        assert!(given(&t.deliver(change("g1", 5, &[], &["bob"]), &|_| OWNER)).is_empty(), "a duplicate");
        assert_eq!(given(&t.deliver(msg("g1", 6), &|_| OWNER)), vec![("msg", vec!["ann"])]);
        // Another store node's answer does not list g1, and says nothing of it.
        assert!(given(&t.subscribed("bob", NodeId(9), again.unwrap(), Ok(Vec::new()))).is_empty());
        let told = t.subscribed("bob", OWNER, again.expect("asked again"), Ok(Vec::new()));
        assert_eq!(given(&told), vec![("left", vec!["bob"])]);
        // Told once: a later answer without the group says nothing more.
        assert!(given(&t.subscribed("bob", OWNER, again.unwrap(), Ok(Vec::new()))).is_empty());
    }

    /// Found by switchboard-sim: `joined` and `left` came from the owner as frames of their
    /// own, lost with a refused frame or where the user's subscription was not taken yet,
    /// so a member was never told it had left, or been added again. The edge makes them
    /// itself from the change it applies, delivered or repaired.
    #[test]
    fn the_user_a_member_change_concerns_hears_joined_and_left_from_its_edge() {
        let mut t = Tracking::new(NodeId(1), 7);
        for (slot, u) in [(1, "ann"), (2, "bob")] {
            let (_, a) = t.connected(&user(u), conn(slot), Bytes::new(), &[OWNER]);
            t.subscribed(u, OWNER, round_of(&a), Ok(if u == "ann" { vec![head("g1", 1)] } else { Vec::new() }));
        }
        let added = t.deliver(change("g1", 2, &["bob"], &[]), &|_| OWNER);
        assert_eq!(given(&added), vec![("joined", vec!["bob"]), ("msg", vec!["ann", "bob"])]);
        // A creation's joins bring no second `joined` (its own frame is one; a dm has none).
        let (_, c) = t.connected(&user("cat"), conn(3), Bytes::new(), &[OWNER]);
        t.subscribed("cat", OWNER, round_of(&c), Ok(Vec::new()));
        let created = Deliver { frame: "joined".into(), ..change("g2", 0, &["cat"], &[]) };
        assert_eq!(given(&t.deliver(created, &|_| OWNER)), vec![("joined", vec!["cat"])]);
        let dm = Deliver {
            json: Bytes::from_static(br#"{"t":"msg","kind":"text"}"#),
            ..change("dm:bob:cat", 1, &["cat"], &[])
        };
        assert_eq!(given(&t.deliver(dm, &|_| OWNER)), vec![("msg", vec!["cat"])]);
        // A join refused before comes again with a later frame: `joined` too.
        let again = Deliver { json: Bytes::new(), ..change("g3", 7, &["cat"], &[]) };
        assert_eq!(given(&t.deliver(again, &|_| OWNER)), vec![("joined", vec!["cat"]), ("msg", vec!["cat"])]);
        let removed = t.deliver(change("g1", 3, &[], &["bob"]), &|_| OWNER);
        assert_eq!(given(&removed), vec![("msg", vec!["ann"]), ("left", vec!["bob"])]);
        // The same from a repaired hole: seq 5 comes, 4 (bob added again) is fetched.
        assert!(matches!(&t.deliver(msg("g1", 5), &|_| OWNER)[..], [Action::Fetch { after: 3, .. }]));
        let readded = switchboard_store::StoredMessage {
            seq: Seq(4),
            ts_ms: 1,
            sender: "ann".into(),
            client_id: Vec::new(),
            kind: "system".into(),
            body: Bytes::from_static(br#"{"event":"member_added","user":"bob"}"#),
        };
        let page = RangePage { gap: None, messages: vec![readded], upto: Seq(4), head: Seq(5), more: false };
        let repaired = t.repaired("g1", Ok(page), &|_| OWNER);
        let expected = vec![("joined", vec!["bob"]), ("msg", vec!["ann", "bob"]), ("msg", vec!["ann", "bob"])];
        assert_eq!(given(&repaired), expected);
    }
}
