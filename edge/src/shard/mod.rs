//! One shard: a thread pinned to a core with its own `SO_REUSEPORT` listener. Its sockets live
//! on io_uring rings of its own (the [`driver`]); everything else (the inbox, where the
//! store's answers come back, REST's included, and the timers) runs on a monoio event loop
//! on the same thread. Connections live on the shard
//! that accepted them, for good. The shard's state is single-threaded (`Rc`, `RefCell`): the
//! only ways in from other threads are its inbox ([`crate::node::mailbox`]) and the store
//! jobs' answers. docs/architecture.md draws the whole path.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | the shard's connections, who is connected here, fan-out into local connections, the inbox loop, timers falling due |
//! | [`agenda`] | what the shard has to do next: connections with news, the timer queue, the time of the turn |
//! | [`timer`] | a connection's timer table and the shard's timer queue, sans-IO |
//! | [`driver`] | accepts, receives, sends and closes for every connection, on the shard's rings |
//! | [`uring`] | the raw rings: direct-descriptor tables, provided buffers, vectored sends |
//! | [`wire`] | one connection's bytes in: the HTTP head, then WebSocket frames into the session, or REST |
//! | [`conn`] | one connection's shared state: user, outbound queue, channels, close |
//! | [`http`] | REST (PROTOCOL.md §6), `/healthz`, `/readyz`, `/metrics` |
//! | [`io`] | wakeups between the shard's tasks |
//! | [`quic`] | a QUIC connection's side on the shard: its session, frames in, batches out to the QUIC endpoint thread |
//! | [`transport`] | TLS (rustls), sans-IO |

pub mod agenda;
pub mod conn;
pub mod driver;
pub mod http;
pub mod io;
pub mod quic;
pub mod timer;
pub mod transport;
pub mod uring;
pub mod wire;

use crate::metrics::ShardMetrics;
use crate::node::mailbox::Mailbox;
use crate::node::ops::{self, shown_id, stored_body, OpError, Reply};
use crate::node::request::{Origin, Request};
use crate::node::{Answer, ConnRef, Delivery, Node, Reach, ShardEvent};
use crate::proto::server::{InboxItem, ServerFrame};
use crate::session::{Command, DRAINING_CLOSE};
use crate::ws::handshake::Encoding;
use agenda::{Agenda, Clock, Now};
use conn::Conn;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use switchboard_store::{InboxEntry, MemberSet, UserId};
use timer::Deadlines;

/// Maps hashed with aHash from a seed the shell draws (these are looked up once per
/// recipient of every delivery; their keys come from clients, so the seed is random).
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// A REST connection with no request for this long is closed.
const REST_IDLE_MS: u64 = 60_000;

/// Events taken from the inbox per turn.
const EVENTS_PER_TURN: usize = 1024;

/// A channel whose `notify` is due at the next flush.
struct PendingNotify {
    head: u64,
    audience: Arc<MemberSet>,
}

/// An `inbox` waiting for the parts from every store shard.
struct InboxGather {
    conn: ConnRef,
    parts_left: usize,
    entries: Vec<InboxEntry>,
    error: Option<OpError>,
    req: Option<String>,
}

/// Connection slots with generations, so that a [`ConnRef`] outliving its connection misses.
#[derive(Default)]
struct Slots {
    conns: Vec<Option<Rc<Conn>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    /// Slots in use (reserved or holding a connection): a drain ends when it reaches 0.
    live: usize,
}

pub struct Local {
    pub index: u16,
    pub node: Arc<Node>,
    /// The to-do list, the timer queue and the time of the turn, shared with the connections.
    pub agenda: Rc<Agenda>,
    slots: RefCell<Slots>,
    /// Authenticated connections here, by user.
    users: RefCell<HashMap<Box<str>, Vec<Rc<Conn>>>>,
    /// Connections here that have a channel open, by channel.
    open: RefCell<HashMap<Box<str>, Vec<Rc<Conn>>>>,
    notify: RefCell<HashMap<Box<str>, PendingNotify>>,
    inboxes: RefCell<HashMap<u64, InboxGather>>,
    /// Connections over QUIC: their sessions and links.
    quic: RefCell<quic::Wires>,
    /// Keys the sends a connection remembers ([`Local::send_key`]).
    sends: ahash::RandomState,
    draining: Cell<bool>,
}

impl Local {
    /// Shard `index` of `node`, starting at `now`, its maps hashed from `seed`. It reads no
    /// clock: its shell (the daemon's [`run`], or the simulator) passes the time of each turn.
    pub fn new(index: u16, node: Arc<Node>, now: Now, seed: u64) -> Local {
        let cfg = &node.config;
        let deadlines =
            Deadlines { heartbeat_ms: cfg.heartbeat_ms, auth_ms: cfg.auth_timeout_ms, rest_idle_ms: REST_IDLE_MS };
        let hashing = ahash::RandomState::with_seeds(seed, seed.rotate_left(17), !seed, seed ^ 0x9e37_79b9_7f4a_7c15);
        Local {
            index,
            agenda: Rc::new(Agenda::new(now, deadlines)),
            node,
            slots: RefCell::default(),
            users: RefCell::new(HashMap::with_hasher(hashing.clone())),
            open: RefCell::new(HashMap::with_hasher(hashing.clone())),
            notify: RefCell::new(HashMap::with_hasher(hashing.clone())),
            inboxes: RefCell::new(HashMap::with_hasher(hashing.clone())),
            quic: RefCell::default(),
            sends: hashing,
            draining: Cell::new(false),
        }
    }

    /// A turn begins at `now`, the clock read once by the shell for everything the turn does.
    pub fn turn(&self, now: Now) {
        self.agenda.advance(now);
    }

    /// A new connection's shared state, in slot `id`.
    pub fn new_conn(&self, id: ConnRef) -> Rc<Conn> {
        Rc::new(Conn::new(id, self.node.config.outbox_bytes_max, self.agenda.clone()))
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.node.hub.metrics.shards[self.index as usize]
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// A slot for a new connection.
    pub fn reserve(&self) -> ConnRef {
        let mut s = self.slots.borrow_mut();
        s.live += 1;
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None => {
                s.conns.push(None);
                s.generations.push(0);
                (s.conns.len() - 1) as u32
            }
        };
        ConnRef { shard: self.index, slot, generation: s.generations[slot as usize] }
    }

    pub fn insert(&self, conn: Rc<Conn>) {
        let slot = conn.id.slot as usize;
        self.slots.borrow_mut().conns[slot] = Some(conn);
    }

    fn get(&self, id: ConnRef) -> Option<Rc<Conn>> {
        let s = self.slots.borrow();
        if s.generations.get(id.slot as usize) != Some(&id.generation) {
            return None;
        }
        s.conns[id.slot as usize].clone()
    }

    /// Frees the slot and forgets the connection everywhere.
    pub fn remove(&self, conn: &Rc<Conn>) {
        {
            let mut s = self.slots.borrow_mut();
            let i = conn.id.slot as usize;
            if s.generations[i] == conn.id.generation {
                s.conns[i] = None;
                s.generations[i] = s.generations[i].wrapping_add(1);
                s.free.push(conn.id.slot);
                s.live -= 1;
            }
        }
        if let Some(user) = conn.user() {
            let mut users = self.users.borrow_mut();
            if let Some(list) = users.get_mut(user.as_str()) {
                list.retain(|c| !Rc::ptr_eq(c, conn));
                if list.is_empty() {
                    users.remove(user.as_str());
                }
            }
            let last = match &self.node.interest {
                Some(interest) => interest.disconnected(user),
                None => true,
            };
            self.node.user_disconnected(user, last, self.agenda.now().unix_ms);
            self.metrics().connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.metrics().disconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.is_draining() && self.is_empty() {
            // The inbox loop waits for the last connection to go.
            self.node.hub.shards[self.index as usize].wake();
        }
        let mut open = self.open.borrow_mut();
        for conv in conn.take_open() {
            if let Some(list) = open.get_mut(&conv) {
                list.retain(|c| !Rc::ptr_eq(c, conn));
                if list.is_empty() {
                    open.remove(&conv);
                }
            }
        }
    }

    /// The connection said `hello` and is now `user`'s.
    fn register(&self, conn: &Rc<Conn>, user: UserId) {
        conn.set_user(user);
        let user = conn.user().expect("just set");
        // Most users have one connection here: room for one, not the default four.
        self.users.borrow_mut().entry(user.as_str().into()).or_insert_with(|| Vec::with_capacity(1)).push(conn.clone());
        self.metrics().connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics().connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.authenticated();
    }

    /// The connection said `hello` as `user`: it is registered, and this is its `welcome`,
    /// encoded (sent now on a single node; in a cluster, once the user is subscribed).
    pub fn hello(&self, conn: &Rc<Conn>, user: UserId, req: Option<&str>) -> bytes::Bytes {
        self.metrics().frame_in("hello");
        self.register(conn, user);
        let user = conn.user().expect("just set");
        let session_id = format!("{}-{}", self.node.name, self.node.next_session());
        let nodes = self.node.cluster_view.client_urls();
        let welcome = ServerFrame::Welcome {
            user: user.as_str(),
            session: &session_id,
            node: &self.node.name,
            heartbeat_ms: self.node.config.heartbeat_ms,
            req,
            nodes: &nodes,
        };
        welcome.encode(conn.encoding())
    }

    /// No connection left on this shard.
    fn is_empty(&self) -> bool {
        self.slots.borrow().live == 0
    }

    /// Every connection of the shard. `f` may queue frames and close connections (neither
    /// touches the slots: a closed connection leaves them later, from its own task).
    fn each_conn(&self, f: impl FnMut(&Rc<Conn>)) {
        self.slots.borrow().conns.iter().flatten().for_each(f)
    }

    /// Local connections of the audience: walks whichever of the two is smaller.
    fn each_member_conn(&self, audience: &MemberSet, mut f: impl FnMut(&Rc<Conn>)) {
        let users = self.users.borrow();
        if audience.len() <= users.len() {
            for u in audience {
                for c in users.get(u).into_iter().flatten() {
                    f(c)
                }
            }
        } else {
            for (u, conns) in users.iter() {
                if audience.contains(u) {
                    conns.iter().for_each(&mut f)
                }
            }
        }
    }

    /// The key a connection remembers its send of `id` to `conv` by. A 64-bit hash keyed
    /// from the shard's seed: two sends' keys collide with odds of 2^-64 (which would leave a
    /// repaired message out of that one connection), for 8 bytes a send instead of the ids.
    pub fn send_key(&self, conv: &str, id: &str) -> u64 {
        self.sends.hash_one((conv, id))
    }

    fn deliver(&self, d: &Delivery) {
        let mut pushed = 0u64;
        let except = self.node.hub.local(d.except);
        let sent = d.sent_as.as_deref().map(|id| self.send_key(&d.conv, id));
        let mut push = |c: &Rc<Conn>| {
            if Some(c.id) == except || sent.is_some_and(|key| c.sent(key)) || c.already_synced(&d.conv, d.seq) {
                return;
            }
            let payload = match c.encoding() {
                Encoding::Json => d.json.clone(),
                Encoding::Binary => d.bin.clone(),
            };
            c.push_timed(payload, d.started);
            pushed += 1;
        };
        match d.reach {
            Reach::Everyone => self.each_member_conn(&d.audience, &mut push),
            Reach::Channel { head } => {
                // Pushing never changes who has the channel open (a close that it causes
                // unregisters later, from the connection's own task), so no copy of the list.
                if let Some(open) = self.open.borrow().get(&d.conv) {
                    for c in open {
                        if c.user().is_some_and(|u| d.audience.contains(u.as_str())) {
                            push(c);
                            c.saw(&d.conv, head);
                        }
                    }
                }
                let mut n = self.notify.borrow_mut();
                let p = n.entry(d.conv.clone()).or_insert(PendingNotify { head, audience: d.audience.clone() });
                p.head = p.head.max(head);
                p.audience = d.audience.clone();
            }
        }
        self.metrics().frame_out(d.frame, pushed);
    }

    /// Sends the coalesced `notify` of every channel that moved since the last flush to the
    /// local member connections that do not have it open (the shell calls it on its timer).
    pub fn flush_notify(&self) {
        let pending: Vec<(Box<str>, PendingNotify)> = self.notify.borrow_mut().drain().collect();
        for (conv, p) in pending {
            let frame = ServerFrame::Notify { conv: &conv, head: p.head };
            let (json, bin) = (frame.encode(Encoding::Json), frame.encode(Encoding::Binary));
            let mut n = 0;
            self.each_member_conn(&p.audience, |c| {
                if c.needs_notify(&conv, p.head) {
                    c.push(if c.encoding() == Encoding::Json { json.clone() } else { bin.clone() });
                    n += 1;
                }
            });
            self.metrics().frame_out("notify", n);
        }
    }

    fn answer(&self, to: ConnRef, answer: Answer) {
        let answer = match answer {
            Answer::InboxPart { request, entries } => return self.inbox_part(request, entries),
            Answer::Frame { bytes, name } => {
                if let Some(c) = self.get(to) {
                    self.metrics().frame_out(name, 1);
                    c.push(bytes);
                }
                return;
            }
            Answer::Welcome(bytes) => {
                if let Some(c) = self.get(to) {
                    self.metrics().frame_out("welcome", 1);
                    c.welcome(bytes);
                }
                return;
            }
            Answer::Rest { finish, close } => {
                if let Some(c) = self.get(to) {
                    http::respond(self, &c, finish.response(), close);
                }
                return;
            }
            other => other,
        };
        let Some(c) = self.get(to) else { return };
        c.finished_request();
        let out = |frame: &ServerFrame<'_>, name: &str| {
            self.metrics().frame_out(name, 1);
            c.push(frame.encode(c.encoding()));
        };
        match answer {
            Answer::Ack { id, conv, seq, ts, dup, started } => {
                let took = self.agenda.now().at.saturating_duration_since(started);
                ShardMetrics::record(&self.metrics().ack_us, took.as_micros() as u64);
                out(&ServerFrame::Ack { id: &id, conv: conv.as_str(), seq, ts, dup }, "ack");
            }
            Answer::Error { error, id, req } => {
                self.metrics().error(error.code);
                out(&error.frame(id.as_deref(), req.as_deref()), "error");
            }
            Answer::Synced { conv, page, req } => {
                let conv = conv.as_str();
                if let Some((from, to)) = page.gap {
                    out(&ServerFrame::Gap { conv, from: from.0, to: to.0 }, "gap");
                }
                for m in &page.messages {
                    let id = shown_id(&m.client_id, m.seq);
                    out(&ops::msg_frame(conv, m, &id, stored_body(&m.body)), "msg");
                }
                let n = page.messages.len() as u64;
                self.metrics().resync_messages.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                let (upto, head, more) = (page.upto.0, page.head.0, page.more);
                // Only across nodes can a repair's pushes trail this page (docs/cluster.md):
                // on one node, deliveries and answers leave the store thread in order.
                if self.node.interest.is_some() {
                    c.synced(conv, upto, self.agenda.now().mono_ms);
                }
                out(&ServerFrame::Synced { conv, upto, head, more, req: req.as_deref() }, "synced");
            }
            Answer::Opened { conv } => {
                let conv = conv.as_str();
                // A move of the channel since the last flush is due as a `notify` at the next,
                // which passes an open connection by: told now, as the push of what follows
                // starts (found by switchboard-sim: a message between two flushes, while the
                // channel was closed here, reached this connection neither way).
                let (pending, seen) = (self.notify.borrow().get(conv).map(|p| p.head), c.seen_before(conv));
                if c.open_channel(conv) {
                    self.open.borrow_mut().entry(conv.into()).or_default().push(c.clone());
                    if let Some(head) = pending.filter(|&head| head > seen) {
                        out(&ServerFrame::Notify { conv, head }, "notify");
                    }
                }
            }
            Answer::Done => {}
            Answer::InboxPart { .. } | Answer::Frame { .. } | Answer::Welcome(_) | Answer::Rest { .. } => {
                unreachable!("handled above")
            }
        }
    }

    fn inbox_part(&self, request: u64, part: Result<Vec<InboxEntry>, OpError>) {
        let done = {
            let mut inboxes = self.inboxes.borrow_mut();
            let Some(g) = inboxes.get_mut(&request) else { return };
            match part {
                Ok(entries) => g.entries.extend(entries),
                Err(e) => g.error = Some(e),
            }
            g.parts_left -= 1;
            if g.parts_left > 0 {
                return;
            }
            inboxes.remove(&request).expect("present")
        };
        let Some(c) = self.get(done.conn) else { return };
        c.finished_request();
        let req = done.req.as_deref();
        let frame = match &done.error {
            Some(e) => e.frame(None, req),
            None => {
                let mut entries = done.entries;
                entries.sort_by(|a, b| a.conv.cmp(&b.conv));
                let convs = entries
                    .iter()
                    .map(|e| InboxItem {
                        conv: &e.conv,
                        kind: e.kind.as_str(),
                        head: e.head.0,
                        delivered: e.delivered.0,
                        read: e.read.0,
                    })
                    .collect();
                self.metrics().frame_out("inbox", 1);
                return c.push(ServerFrame::Inbox { convs, req }.encode(c.encoding()));
            }
        };
        self.metrics().frame_out("error", 1);
        c.push(frame.encode(c.encoding()));
    }

    /// A request from one of this shard's connections: route it to its conversation's store
    /// shard, or answer it from node state.
    pub fn command(&self, conn: &Rc<Conn>, cmd: Command) {
        let node = &self.node;
        let hub = &node.hub;
        let user = conn.user().expect("commands come after hello").clone();
        let to = conn.id;
        let answer = move |hub: &Arc<crate::node::Hub>, a: Answer| hub.answer(to, a);
        let error_reply = |id: Option<String>, req: Option<String>| {
            let hub = hub.clone();
            Reply::new(move |r: Result<(), OpError>| match r {
                Ok(()) => answer(&hub, Answer::Done),
                Err(error) => answer(&hub, Answer::Error { error, id, req }),
            })
        };
        if !matches!(cmd, Command::Close { .. } | Command::Presence { .. }) {
            // Answered later, from the store: counts against the connection's window.
            conn.started_request();
        }
        let origin = Origin::new(node.me(), to);
        match cmd {
            Command::Send { conv, id, body, kind } => {
                self.metrics().frame_in("send");
                // Only across nodes can a delivery lose its sending connection (a repair).
                if node.interest.is_some() {
                    conn.remember_send(self.send_key(conv.as_str(), &id));
                }
                let started = self.agenda.now().at;
                let h = hub.clone();
                let (conv2, id2) = (conv.clone(), id.clone());
                let reply = Reply::new(move |r: Result<switchboard_store::Appended, OpError>| {
                    let a = match r {
                        Ok(a) => Answer::Ack { id: id2, conv: conv2, seq: a.seq.0, ts: a.ts_ms, dup: a.dup, started },
                        Err(error) => Answer::Error { error, id: Some(id2), req: None },
                    };
                    answer(&h, a);
                });
                node.call(Request::Send { conv, sender: user, id, body, kind, except: Some(origin) }, reply);
            }
            Command::Receipt { conv, seq, kind } => {
                self.metrics().frame_in("receipt");
                node.call(Request::Receipt { conv, user, seq, kind, except: origin }, error_reply(None, None));
            }
            Command::Typing { conv } => {
                self.metrics().frame_in("typing");
                node.call(Request::Typing { conv, user, except: origin }, error_reply(None, None));
            }
            Command::Sync { conv, after, limit, req } => {
                self.metrics().frame_in("sync");
                let h = hub.clone();
                let c = conv.clone();
                let reply = Reply::new(move |r| {
                    let a = match r {
                        Ok(page) => Answer::Synced { conv: c, page, req },
                        Err(error) => Answer::Error { error, id: None, req },
                    };
                    answer(&h, a);
                });
                node.call(Request::Sync { conv, reader: Some(user), after, limit }, reply);
            }
            Command::Inbox { after_ts, req } => {
                self.metrics().frame_in("inbox");
                // One part from every node that holds some of the user's conversations.
                let request = node.next_request();
                let holders = node.store_nodes();
                let g = InboxGather { conn: to, parts_left: holders.len(), entries: Vec::new(), error: None, req };
                self.inboxes.borrow_mut().insert(request, g);
                for holder in holders {
                    let h = hub.clone();
                    let reply = Reply::new(move |r| answer(&h, Answer::InboxPart { request, entries: r }));
                    node.call_on(holder, Request::Inbox { user: user.clone(), after_ts }, reply);
                }
            }
            Command::Open { conv, req } => {
                self.metrics().frame_in("open");
                conn.opening(conv.as_str());
                let h = hub.clone();
                let c = conv.clone();
                let reply = Reply::new(move |r: Result<switchboard_store::ConvKind, OpError>| {
                    let a = match r {
                        Ok(_) => Answer::Opened { conv: c },
                        Err(error) => Answer::Error { error, id: None, req },
                    };
                    answer(&h, a);
                });
                node.call(Request::Open { conv, user }, reply);
            }
            Command::Close { conv } => {
                self.metrics().frame_in("close");
                if conn.close_channel(conv.as_str()) {
                    let mut open = self.open.borrow_mut();
                    if let Some(list) = open.get_mut(conv.as_str()) {
                        list.retain(|c| !Rc::ptr_eq(c, conn));
                        if list.is_empty() {
                            open.remove(conv.as_str());
                        }
                    }
                }
            }
            Command::Presence { users, req } => {
                self.metrics().frame_in("presence");
                let (h, encoding) = (hub.clone(), conn.encoding());
                let asked = users.clone();
                let reply = Reply::new(move |r: Result<Vec<(bool, Option<u64>)>, OpError>| {
                    let a = match r {
                        Ok(seen) => {
                            let bytes = crate::node::presence::frame(&asked, &seen, req.as_deref(), encoding);
                            Answer::Frame { bytes, name: "presence" }
                        }
                        Err(error) => Answer::Error { error, id: None, req },
                    };
                    answer(&h, a);
                });
                node.presence(users, reply);
            }
        }
    }

    /// One event from the shard's inbox: what the inbox loop does with each (and the
    /// simulator, which runs this core with no inbox and no thread).
    pub fn handle(&self, event: ShardEvent) {
        match event {
            ShardEvent::Answer(to, answer) => self.answer(to, answer),
            ShardEvent::Deliver(d) => self.deliver(&d),
            ShardEvent::Evict { users, code, reason } => self.each_member_conn(&users, |c| c.close(code, reason)),
            ShardEvent::Drain { after_ms } => self.drain(after_ms),
            ShardEvent::Quic(event) => self.quic(event),
        }
    }

    /// Stops accepting; every client hears `reconnect`, then a 4010 close.
    fn drain(&self, after_ms: u64) {
        if self.draining.replace(true) {
            return;
        }
        // The driver stops accepting at its next turn.
        self.agenda.wake();
        self.each_conn(|c| {
            if c.user().is_some() {
                self.metrics().frame_out("reconnect", 1);
                c.push(ServerFrame::Reconnect { after_ms }.encode(c.encoding()));
            }
            c.close(DRAINING_CLOSE, "server draining");
        });
    }

    /// Fires the timers that are due ([`conn::expire`]).
    fn expire(&self) {
        conn::expire(&self.agenda, self.index, |id| self.get(id));
        // Entries of connections that are gone, or that a nearer deadline replaced, are
        // dropped as they come up; when they outnumber the live ones, all at once.
        let (queued, live) = (self.agenda.timers.borrow().len(), self.slots.borrow().live);
        if queued > 2 * live + 1024 {
            let holds = |at, id| self.get(id).is_some_and(|c| c.timers.holds_entry(at));
            self.agenda.timers.borrow_mut().retain(self.index, holds);
        }
    }
}

/// Runs shard `index` on this thread until it has drained.
pub fn run(index: u16, node: Arc<Node>, mailbox: Mailbox<ShardEvent>, listener: std::net::TcpListener) {
    let connections_max = node.config.connections_max.div_ceil(node.hub.shards.len()).max(1);
    let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().with_entries(4096).build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("shard {index}: cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let clock = Clock::new();
        let local = Rc::new(Local::new(index, node, clock.now(), rand::random()));
        match driver::Driver::new(local.clone(), clock, listener, connections_max) {
            Ok(d) => drop(monoio::spawn(d.run())),
            Err(e) => return tracing::error!("shard {index}: cannot set up io_uring for connections: {e}"),
        }
        monoio::spawn(timers(local.clone(), clock));
        if index == 0 {
            monoio::spawn(retention(local.clone()));
        }
        let mut events = Vec::with_capacity(EVENTS_PER_TURN);
        loop {
            let alive = mailbox.recv_many(&mut events, EVENTS_PER_TURN).await;
            local.turn(clock.now());
            for e in events.drain(..) {
                local.handle(e);
            }
            if !alive || (local.is_draining() && local.is_empty()) {
                break;
            }
        }
        // Let the last writers finish their close frames.
        for _ in 0..50 {
            if local.is_empty() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// The shard's clock: connection timers (heartbeat pings and timeouts), and the `notify` flush.
async fn timers(local: Rc<Local>, clock: Clock) {
    let cfg = &local.node.config;
    let tick_ms = cfg.notify_interval_ms.clamp(10, 1000).min(cfg.heartbeat_ms / 2).max(10);
    let mut tick = monoio::time::interval(Duration::from_millis(tick_ms));
    loop {
        tick.tick().await;
        if local.is_draining() {
            return;
        }
        local.turn(clock.now());
        local.flush_notify();
        local.expire();
    }
}

/// Shard 0 asks every store shard to apply the retention policy, when there is one.
async fn retention(local: Rc<Local>) {
    let cfg = &local.node.config;
    if cfg.retention_age_ms == 0 && cfg.retention_bytes_max == 0 {
        return;
    }
    let mut tick = monoio::time::interval(Duration::from_millis(cfg.retention_check_ms.max(10)));
    tick.tick().await;
    loop {
        tick.tick().await;
        if local.is_draining() {
            return;
        }
        for (i, store) in local.node.stores.iter().enumerate() {
            ops::retain(store, i);
        }
    }
}
