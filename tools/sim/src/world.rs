//! One simulated cluster under one seed: three nodes, each a store node and an edge, and
//! clients that connect to any of them, in one thread on a virtual clock.
//!
//! What is real: each node's store shard (the conversations' sequencer, deduplication, group
//! commit and recovery) over the simulated disk, which loses unsynced writes on a crash,
//! tears the last one and fails fsync; and each edge's delivery-by-subscription core
//! (`cluster::tracking`: subscriptions, duplicate drops, gap repair, eviction), fed every
//! delivery an owner sends. What the simulator plays itself, as thinly as it can: the
//! owner's fan-out table (who is subscribed where), the routes between nodes (`net`), and
//! the clients, which send with retries under the same id, disconnect, and reconnect to any
//! node with a resync from their last seq.
//!
//! A run is a safety phase with faults (crashes and restarts, link breaks and partitions,
//! refused and doubled deliveries, fsync failures), then a liveness phase that heals all of it
//! and checks that every member ends up holding every acknowledged message.

use crate::check::{Checker, ConnView};
use crate::net::Net;
use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use switchboard_backplane::NodeId;
use switchboard_edge::auth::{mint_hs256, Verifier};
use switchboard_edge::cluster::placement::Placement;
use switchboard_edge::cluster::tracking::{Action, Tracking};
use switchboard_edge::cluster::wire::{Deliver, Target};
use switchboard_edge::node::ops::{msg_frame, shown_id, stored_body, OpError};
use switchboard_edge::node::request::lane_key;
use switchboard_edge::node::{ConnRef, Reach};
use switchboard_edge::proto::error::ErrorCode;
use switchboard_edge::proto::ParseLimits;
use switchboard_edge::session::{Command, Session, SessionLimits, Step};
use switchboard_edge::ws::handshake::Encoding;
use switchboard_edge::ws::{Decoder, Event as WsEvent, Limits as WsLimits};
use switchboard_store::storage::{SimDisk, SimStorage};
use switchboard_store::{
    ConvId, ConvKind, CursorKind, Error as StoreError, InboxEntry, LogConfig, RangePage, SendRequest, Seq, Shard,
    ShardConfig, StoredMessage, UserId,
};

pub const NODES: u16 = 3;
const USERS: usize = 6;
const GROUPS: usize = 4;
const PARTITIONS: u32 = 16;
/// How long an edge waits for another node's answer (the real route waits too, then answers
/// `unavailable`).
const ANSWER_WAIT_MS: u64 = 250;
const SAFETY_MS: u64 = 3_000;
/// Healed at `SAFETY_MS`; sends stop at `SAFETY_MS + SENDS_UNTIL_MS`; checked at the end.
const SENDS_UNTIL_MS: u64 = 1_500;
const LIVENESS_MS: u64 = 4_000;
/// Messages per sync page.
const SYNC_PAGE: u16 = 8;
/// Virtual time 0 is this Unix time (ms): the sessions' clock, against which tokens expire.
const START_MS: u64 = 1_800_000_000_000;
const SECRET: &[u8] = b"simulated cluster";
/// The sessions' limits: generous, so that a refusal is a finding, not a rate limit.
const LIMITS: SessionLimits = SessionLimits {
    parse: ParseLimits { message_bytes_max: 16 * 1024 },
    sends_per_s: 10_000,
    sends_burst: 10_000,
    typing_per_s: 10_000,
    syncs_per_s: 10_000,
    rate_refusals_max: 1_000,
};

#[derive(Debug, Clone)]
enum Packet {
    Send(Send),
    Sent {
        req: u64,
        result: Result<(u64, bool), String>,
    },
    Subscribe {
        req: u64,
        user: String,
    },
    Subscribed {
        req: u64,
        result: Result<Vec<InboxEntry>, String>,
    },
    Unsubscribe {
        user: String,
    },
    Fetch {
        req: u64,
        conv: String,
        reader: Option<String>,
        after: u64,
        limit: u16,
    },
    Fetched {
        req: u64,
        result: Result<RangePage, String>,
    },
    Deliver(Deliver),
    /// A read receipt: the user's read cursor moves to `seq`.
    Receipt {
        req: u64,
        conv: String,
        user: String,
        seq: u64,
    },
    /// Its answer, once the cursor is durable (as the daemon's `receipt` answers).
    Receipted {
        req: u64,
        result: Result<(), String>,
    },
}

/// A client's send, as its edge forwards it to the conversation's owner.
#[derive(Debug, Clone)]
struct Send {
    req: u64,
    conv: String,
    sender: String,
    id: String,
    body: String,
}

impl Packet {
    /// The stream a packet shares with others (the real `Request::lane_key`): a user's
    /// subscriptions, a conversation's requests and deliveries. Answers go as they come.
    fn lane(&self) -> Option<&str> {
        match self {
            Packet::Subscribe { user, .. } | Packet::Unsubscribe { user } => Some(user),
            Packet::Send(Send { conv, .. }) | Packet::Fetch { conv, .. } | Packet::Receipt { conv, .. } => Some(conv),
            Packet::Deliver(d) => Some(&d.conv),
            Packet::Sent { .. } | Packet::Subscribed { .. } | Packet::Fetched { .. } | Packet::Receipted { .. } => None,
        }
    }
}

#[derive(Debug)]
enum Event {
    Arrive { to: u16, run: u64, from: u16, epoch: u64, packet: Packet },
    Commit { node: u16, run: u64 },
    Timeout { node: u16, run: u64, req: u64 },
    Client { client: usize },
    Fault,
    Restart { node: u16 },
    Heal,
    Liveness,
    StopSending,
}

/// A request an edge waits on.
#[derive(Debug)]
enum Pending {
    Send { conn: u32, conv: String, id: String },
    Subscribe { user: String, round: Option<u64> },
    Repair { conv: String },
    Sync { conn: u32, conv: String, after: u64 },
    Receipt { user: String, conv: String, seq: u64 },
}

/// A send staged in the owner's store, answered once its group commit is durable.
struct Staged {
    from: u16,
    req: u64,
    conv: String,
    message: StoredMessage,
    dup: bool,
}

struct Conn {
    client: usize,
    user: String,
    /// The edge's side of the socket: the real frame decoder and session.
    decoder: Decoder,
    inbuf: BytesMut,
    session: Session,
    /// `welcome` sent; before it, frames are held (as the real connection holds them).
    live: bool,
    held: Vec<Bytes>,
    view: ConnView,
}

struct Node {
    /// The node's process number: what was addressed to an earlier one is lost.
    run: u64,
    disk: Rc<RefCell<SimDisk>>,
    /// `None` while the node is down.
    store: Option<Shard<SimStorage>>,
    staged: Vec<Staged>,
    /// Receipts staged in the owner's store, answered once durable: (from, req).
    staged_receipts: Vec<(u16, u64)>,
    commit_due: bool,
    /// The owner's fan-out table: the nodes where each user is subscribed.
    subs: BTreeMap<String, BTreeSet<u16>>,
    tracking: Tracking,
    conns: BTreeMap<u32, Conn>,
    pending: BTreeMap<u64, Pending>,
    next_req: u64,
}

impl Node {
    fn up(&self) -> bool {
        self.store.is_some()
    }
}

struct Client {
    user: String,
    convs: Vec<String>,
    at: Option<(u16, u32)>,
    /// A send not acknowledged yet: retried with the same id until it is.
    outstanding: Option<(String, String)>,
    in_flight: bool,
    next_id: u64,
    /// Every seq held, by push or by sync.
    have: BTreeMap<String, BTreeSet<u64>>,
    /// The read receipt sent last per conversation.
    read: BTreeMap<String, u64>,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub events: u64,
    pub crashes: u64,
    pub breaks: u64,
    pub repairs: u64,
    pub evictions: u64,
}

/// What one seed did.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// FNV-1a of every event handled, in order: the same seed gives the same hash.
    pub trace: u64,
    pub violations: Vec<String>,
    pub acks: u64,
    pub dup_acks: u64,
    /// Read receipts answered.
    pub receipts: u64,
    pub pushes: u64,
    pub stats: Stats,
}

pub struct World {
    seed: u64,
    rng: SmallRng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    net: Net,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    placement: Placement,
    check: Checker,
    trace: u64,
    next_conn: u32,
    /// Faults stop and everything heals from here on.
    healed: bool,
    sending: bool,
    stats: Stats,
    verifier: Verifier,
    /// Prints every event as it is handled.
    pub verbose: bool,
}

fn config() -> ShardConfig {
    ShardConfig {
        log: LogConfig { segment_bytes_max: 4096, index_interval_bytes: 512, ..LogConfig::default() },
        ..ShardConfig::default()
    }
}

fn unavailable(why: String) -> OpError {
    OpError::new(ErrorCode::Unavailable, why)
}

fn contiguous(have: &BTreeSet<u64>) -> u64 {
    let mut n = 0;
    while have.contains(&(n + 1)) {
        n += 1;
    }
    n
}

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let ids: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
        let nodes = (1..=NODES)
            .map(|id| {
                let disk = SimDisk::new(seed ^ u64::from(id) << 48);
                let (store, _) = Shard::open(SimStorage(disk.clone()), config()).expect("an empty disk opens");
                Node {
                    run: 0,
                    disk,
                    store: Some(store),
                    staged: Vec::new(),
                    staged_receipts: Vec::new(),
                    commit_due: false,
                    subs: BTreeMap::new(),
                    tracking: Tracking::new(NodeId(id), seed ^ u64::from(id)),
                    conns: BTreeMap::new(),
                    pending: BTreeMap::new(),
                    next_req: 0,
                }
            })
            .collect();
        let users: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
        let mut clients: Vec<Client> = users
            .iter()
            .map(|u| Client {
                user: u.clone(),
                convs: Vec::new(),
                at: None,
                outstanding: None,
                in_flight: false,
                next_id: 0,
                have: BTreeMap::new(),
                read: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            seed,
            rng: SmallRng::seed_from_u64(rng.gen()),
            now: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            net: Net::calm(),
            nodes,
            clients: Vec::new(),
            placement: Placement::new(PARTITIONS, &ids),
            check: Checker::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            next_conn: 0,
            healed: false,
            sending: true,
            stats: Stats::default(),
            verifier: Verifier::hs256(SECRET),
            verbose: false,
        };
        // Groups of two to four; every user in at least one.
        for g in 0..GROUPS {
            let conv = format!("g{g}");
            let mut members: BTreeSet<usize> = BTreeSet::new();
            members.insert(g % USERS);
            members.insert((g + GROUPS) % USERS);
            for _ in 0..rng.gen_range(0..3) {
                members.insert(rng.gen_range(0..USERS));
            }
            let ids: Vec<UserId> = members.iter().map(|&m| UserId::new(&users[m]).unwrap()).collect();
            let id = ConvId::new(&conv).unwrap();
            let owner = world.owner(&conv);
            let store = world.nodes[owner as usize - 1].store.as_mut().expect("up");
            store.create(&id, ConvKind::Group, &conv, &ids[0], &ids, 0).expect("a new group");
            store.commit().expect("the disk does not fail yet");
            for &m in &members {
                clients[m].convs.push(conv.clone());
            }
        }
        world.clients = clients;
        for c in 0..world.clients.len() {
            let at = world.rng.gen_range(0..20);
            world.schedule(at, Event::Client { client: c });
        }
        world.schedule(10, Event::Fault);
        world.schedule(SAFETY_MS, Event::Liveness);
        world
    }

    fn owner(&self, conv: &str) -> u16 {
        self.placement.owner(&ConvId::new(conv).expect("valid")).0
    }

    fn node(&mut self, id: u16) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn schedule(&mut self, at: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    /// Runs the seed to its end and checks what must hold once everything healed.
    pub fn run(mut self) -> Report {
        let end = SAFETY_MS + LIVENESS_MS;
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            let event = self.events.remove(&id).expect("scheduled");
            self.stats.events += 1;
            let line = format!("{at} {event:?}");
            if self.verbose {
                println!("{line}");
            }
            for b in line.bytes() {
                self.trace = (self.trace ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            self.handle(event);
        }
        self.now = end;
        self.finish();
        for n in &self.nodes {
            let m = &n.tracking.metrics;
            self.stats.repairs += m.gap_repairs.load(std::sync::atomic::Ordering::Relaxed);
            self.stats.evictions += m.gap_evictions.load(std::sync::atomic::Ordering::Relaxed);
        }
        Report {
            seed: self.seed,
            trace: self.trace,
            violations: std::mem::take(&mut self.check.violations),
            acks: self.check.acks,
            dup_acks: self.check.dup_acks,
            receipts: self.check.receipts,
            pushes: self.check.pushes,
            stats: self.stats,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrive { to, run, from, epoch, packet } => {
                let node = self.node(to);
                if node.run != run || !node.up() || (from != to && self.net.epoch(from, to) != epoch) {
                    return;
                }
                self.arrive(to, from, packet);
            }
            Event::Commit { node, run } => {
                if self.node(node).run == run {
                    self.node(node).commit_due = false;
                    self.commit(node);
                }
            }
            Event::Timeout { node, run, req } => {
                if self.node(node).run == run {
                    if let Some(p) = self.node(node).pending.remove(&req) {
                        self.failed(node, p);
                    }
                }
            }
            Event::Client { client } => self.client_turn(client),
            Event::Fault => self.fault(),
            Event::Restart { node } => self.restart(node),
            Event::Heal => self.heal(),
            Event::StopSending => self.sending = false,
            Event::Liveness => {
                self.healed = true;
                self.net.calm_down();
                for id in 1..=NODES {
                    if !self.node(id).up() {
                        self.restart(id);
                    }
                    self.node(id).disk.borrow_mut().fail_next_sync = false;
                }
                self.heal();
                self.schedule(self.now + SENDS_UNTIL_MS, Event::StopSending);
            }
        }
    }

    // ---- the network ----

    fn post(&mut self, from: u16, to: u16, packet: Packet) {
        if !self.node(to).up() {
            return;
        }
        let delivery = matches!(packet, Packet::Deliver(_));
        let (run, epoch) = (self.node(to).run, self.net.epoch(from, to));
        let lane = packet.lane().map(lane_key);
        for at in self.net.arrivals(&mut self.rng, self.now, (from, to), lane, delivery) {
            self.schedule(at, Event::Arrive { to, run, from, epoch, packet: packet.clone() });
        }
    }

    /// Sends a request from `node` to `to` and waits for its answer, or for the timeout.
    fn request(&mut self, node: u16, to: u16, pending: Pending, packet: impl FnOnce(u64) -> Packet) {
        let n = self.node(node);
        let req = n.next_req;
        n.next_req += 1;
        n.pending.insert(req, pending);
        let run = n.run;
        self.schedule(self.now + ANSWER_WAIT_MS, Event::Timeout { node, run, req });
        self.post(node, to, packet(req));
    }

    fn arrive(&mut self, to: u16, from: u16, packet: Packet) {
        match packet {
            Packet::Send(send) => self.owner_send(to, from, send),
            Packet::Subscribe { req, user } => {
                if !self.flush(to) {
                    return;
                }
                let n = self.node(to);
                n.subs.entry(user.clone()).or_default().insert(from);
                let entries = n.store.as_ref().expect("up").inbox(&UserId::new(&user).unwrap());
                self.post(to, from, Packet::Subscribed { req, result: Ok(entries) });
            }
            Packet::Unsubscribe { user } => {
                if let Some(nodes) = self.node(to).subs.get_mut(&user) {
                    nodes.remove(&from);
                }
            }
            Packet::Fetch { req, conv, reader, after, limit } => {
                if !self.flush(to) {
                    return;
                }
                let reader = reader.map(|r| UserId::new(&r).unwrap());
                let store = self.node(to).store.as_mut().expect("up");
                let result = store
                    .range(&ConvId::new(&conv).unwrap(), reader.as_ref(), Seq(after), limit as usize)
                    .map_err(|e| e.to_string());
                self.post(to, from, Packet::Fetched { req, result });
            }
            Packet::Deliver(d) => {
                let placement = &self.placement;
                let actions = self.nodes[to as usize - 1].tracking.deliver(d, &|c| placement.owner(c));
                self.run_actions(to, actions);
            }
            Packet::Sent { req, result } => {
                if let Some(Pending::Send { conn, conv, id }) = self.node(to).pending.remove(&req) {
                    self.sent(to, conn, &conv, &id, result);
                }
            }
            Packet::Subscribed { req, result } => {
                if let Some(Pending::Subscribe { user, round }) = self.node(to).pending.remove(&req) {
                    let result = result.map_err(unavailable);
                    let actions = self.node(to).tracking.subscribed(&user, NodeId(from), round, result);
                    self.run_actions(to, actions);
                }
            }
            Packet::Receipt { req, conv, user, seq } => self.owner_receipt(to, from, req, &conv, &user, seq),
            Packet::Receipted { req, result } => {
                if let Some(Pending::Receipt { user, conv, seq }) = self.node(to).pending.remove(&req) {
                    match result {
                        Ok(()) => self.check.receipt_acked(&user, &conv, seq),
                        Err(e) => self.check.note(self.now, format!("{user}'s read receipt of {conv} seq {seq}: {e}")),
                    }
                }
            }
            Packet::Fetched { req, result } => match self.node(to).pending.remove(&req) {
                Some(Pending::Repair { conv }) => {
                    let placement = &self.placement;
                    let result = result.map_err(unavailable);
                    let actions = self.nodes[to as usize - 1].tracking.repaired(&conv, result, &|c| placement.owner(c));
                    self.run_actions(to, actions);
                }
                Some(Pending::Sync { conn, conv, after }) => self.synced(to, conn, &conv, after, result),
                _ => {}
            },
        }
    }

    /// A request timed out (the other node is down, or the link broke).
    fn failed(&mut self, node: u16, pending: Pending) {
        let why = "no answer".to_string();
        let actions = match pending {
            Pending::Send { conn, .. } => {
                if let Some(c) = self.node(node).conns.get(&conn).map(|c| c.client) {
                    self.clients[c].in_flight = false;
                }
                return;
            }
            Pending::Subscribe { user, round } => {
                // Which node it was is not kept; the core only logs it.
                self.node(node).tracking.subscribed(&user, NodeId(0), round, Err(unavailable(why)))
            }
            Pending::Repair { conv } => {
                let placement = &self.placement;
                self.nodes[node as usize - 1].tracking.repaired(&conv, Err(unavailable(why)), &|c| placement.owner(c))
            }
            // A client whose resync failed reconnects, and resyncs again.
            Pending::Sync { conn, .. } => return self.close(node, conn),
            // Not answered: it may or may not be stored; the client sends a later one anyway.
            Pending::Receipt { .. } => return,
        };
        self.run_actions(node, actions);
    }

    // ---- the owner's side: the store ----

    fn owner_send(&mut self, owner: u16, from: u16, Send { req, conv, sender, id, body }: Send) {
        let now = self.now;
        let n = self.node(owner);
        let (conv_id, sender_id) = (ConvId::new(&conv).unwrap(), UserId::new(&sender).unwrap());
        let request = SendRequest {
            conv: &conv_id,
            sender: &sender_id,
            client_id: id.as_bytes(),
            kind: "text",
            body: body.as_bytes(),
            ts_ms: now,
        };
        match n.store.as_mut().expect("up").send(request) {
            Ok(appended) => {
                let message = StoredMessage {
                    seq: appended.seq,
                    ts_ms: appended.ts_ms,
                    sender,
                    client_id: id.as_bytes().to_vec(),
                    kind: "text".into(),
                    body: Bytes::copy_from_slice(body.as_bytes()),
                };
                n.staged.push(Staged { from, req, conv, message, dup: appended.dup });
                self.commit_soon(owner);
            }
            Err(StoreError::Poisoned(_)) => self.crash(owner),
            Err(e) => self.post(owner, from, Packet::Sent { req, result: Err(e.to_string()) }),
        }
    }

    /// A read receipt at the owner: the cursor is staged, and answered with the next commit.
    fn owner_receipt(&mut self, owner: u16, from: u16, req: u64, conv: &str, user: &str, seq: u64) {
        let n = self.node(owner);
        let (conv_id, user_id) = (ConvId::new(conv).unwrap(), UserId::new(user).unwrap());
        match n.store.as_mut().expect("up").move_cursor(&conv_id, &user_id, CursorKind::Read, Seq(seq)) {
            Ok(_) => {
                n.staged_receipts.push((from, req));
                self.commit_soon(owner);
            }
            Err(StoreError::Poisoned(_)) => self.crash(owner),
            Err(e) => self.post(owner, from, Packet::Receipted { req, result: Err(e.to_string()) }),
        }
    }

    /// Schedules the group commit, if none is due.
    fn commit_soon(&mut self, owner: u16) {
        let n = self.node(owner);
        if !n.commit_due {
            n.commit_due = true;
            let (run, at) = (n.run, self.now + self.rng.gen_range(0..3));
            self.schedule(at, Event::Commit { node: owner, run });
        }
    }

    /// Commits what is staged before a read, so no read sees a seq whose delivery is still to
    /// come. Returns whether the node is still up.
    fn flush(&mut self, node: u16) -> bool {
        if !self.node(node).staged.is_empty() || !self.node(node).staged_receipts.is_empty() {
            self.commit(node);
        }
        self.node(node).up()
    }

    /// The group commit; only once it is durable are its sends answered and delivered.
    fn commit(&mut self, node: u16) {
        let Some(store) = self.node(node).store.as_mut() else { return };
        if store.commit().is_err() {
            // A failed fsync poisons the store; the process exits and restarts.
            return self.crash(node);
        }
        for (from, req) in std::mem::take(&mut self.node(node).staged_receipts) {
            self.post(node, from, Packet::Receipted { req, result: Ok(()) });
        }
        for s in std::mem::take(&mut self.node(node).staged) {
            let result = Ok((s.message.seq.0, s.dup));
            self.post(node, s.from, Packet::Sent { req: s.req, result });
            if !s.dup {
                self.fan_out(node, &s.conv, &s.message);
            }
        }
    }

    /// A durable message goes to the owner's own connections of its members, and once to
    /// every other node where a member is subscribed.
    fn fan_out(&mut self, owner: u16, conv: &str, m: &StoredMessage) {
        let id = shown_id(&m.client_id, m.seq);
        let frame = msg_frame(conv, m, &id, stored_body(&m.body));
        let (json, bin) = (frame.encode(Encoding::Json), frame.encode(Encoding::Binary));
        let n = self.node(owner);
        let members = n.store.as_ref().expect("up").members(&ConvId::new(conv).unwrap()).unwrap_or_default();
        let members: BTreeSet<String> = members.into_iter().collect();
        let remote: BTreeSet<u16> =
            members.iter().flat_map(|u| n.subs.get(u).into_iter().flatten().copied()).filter(|&x| x != owner).collect();
        let local: Vec<u32> = n.conns.iter().filter(|(_, c)| members.contains(&c.user)).map(|(&k, _)| k).collect();
        for conn in local {
            self.push(owner, conn, json.clone());
        }
        for to in remote {
            let d = Deliver {
                conv: conv.into(),
                seq: m.seq.0,
                except: None,
                reach: Reach::Everyone,
                frame: "msg".into(),
                json: json.clone(),
                bin: bin.clone(),
                target: Target::Members { joins: Vec::new(), leaves: Vec::new() },
            };
            self.post(owner, to, Packet::Deliver(d));
        }
    }

    // ---- the edge's side ----

    fn run_actions(&mut self, node: u16, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Deliver(d) => {
                    let conns: Vec<u32> = self
                        .node(node)
                        .conns
                        .iter()
                        .filter(|(_, c)| d.audience.contains(c.user.as_str()))
                        .map(|(&k, _)| k)
                        .collect();
                    for conn in conns {
                        self.push(node, conn, d.json.clone());
                    }
                }
                Action::Welcome(conn, _) => self.welcome(node, conn.slot),
                Action::Evict(users) => {
                    let conns: Vec<u32> = self
                        .node(node)
                        .conns
                        .iter()
                        .filter(|(_, c)| users.contains(c.user.as_str()))
                        .map(|(&k, _)| k)
                        .collect();
                    for conn in conns {
                        self.close(node, conn);
                    }
                }
                Action::Subscribe { user, node: to, round } => {
                    let pending = Pending::Subscribe { user: user.to_string(), round };
                    self.request(node, to.0, pending, |req| Packet::Subscribe { req, user: user.to_string() });
                }
                Action::Unsubscribe { user, node: to } => {
                    self.post(node, to.0, Packet::Unsubscribe { user: user.to_string() })
                }
                Action::Fetch { conv, owner, after, limit } => {
                    let pending = Pending::Repair { conv: conv.to_string() };
                    let conv = conv.to_string();
                    self.request(node, owner.0, pending, |req| Packet::Fetch { req, conv, reader: None, after, limit });
                }
            }
        }
    }

    /// A frame for one connection: held until its `welcome`, then checked and kept.
    fn push(&mut self, node: u16, conn: u32, frame: Bytes) {
        let now = self.now;
        let Some(c) = self.nodes[node as usize - 1].conns.get_mut(&conn) else { return };
        if !c.live {
            c.held.push(frame);
            return;
        }
        let v: serde_json::Value = serde_json::from_slice(&frame).expect("the edge encodes JSON");
        if v["t"] != "msg" {
            return;
        }
        let (conv, seq) = (v["conv"].as_str().expect("conv").to_string(), v["seq"].as_u64().expect("seq"));
        self.check.received(now, &c.user, &conv, v["id"].as_str().expect("id"), seq);
        let who = format!("{} on node {node} (conn {conn})", c.user);
        if self.verbose {
            println!("  push to {who}: {conv} {seq}");
        }
        self.check.push(now, &who, &mut c.view, &conv, seq);
        self.clients[c.client].have.entry(conv).or_default().insert(seq);
    }

    fn connect(&mut self, client: usize, node: u16) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let user = self.clients[client].user.clone();
        let session = Session::new(Encoding::Json, LIMITS, None, START_MS + self.now);
        let decoder = Decoder::new(WsLimits::default());
        let (inbuf, held, view) = (BytesMut::new(), Vec::new(), ConnView::default());
        let c = Conn { client, user: user.clone(), decoder, inbuf, session, live: false, held, view };
        self.node(node).conns.insert(conn, c);
        self.clients[client].at = Some((node, conn));
        if self.verbose {
            println!("  connect {user} to node {node} (conn {conn})");
        }
        let token = mint_hs256(SECRET, &UserId::new(&user).unwrap(), START_MS / 1000, 86_400, false);
        self.client_writes(node, conn, &serde_json::json!({"t":"hello","token":token}).to_string());
    }

    /// The client writes one frame: its bytes reach the edge in pieces, through the real
    /// decoder into the real session, and what the session says is done.
    fn client_writes(&mut self, node: u16, conn: u32, text: &str) {
        let now_ms = START_MS + self.now;
        let frame = crate::wire::client_text_frame(&mut self.rng, text);
        let pieces: Vec<Vec<u8>> = crate::wire::pieces(&mut self.rng, &frame).into_iter().map(<[u8]>::to_vec).collect();
        let mut steps = Vec::new();
        for piece in pieces {
            let Some(c) = self.nodes[node as usize - 1].conns.get_mut(&conn) else { return };
            c.inbuf.extend_from_slice(&piece);
            loop {
                match c.decoder.decode(&mut c.inbuf) {
                    Ok(Some(WsEvent::Text(payload))) => {
                        steps.push(c.session.on_message(&payload, false, &self.verifier, now_ms))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(v) => {
                        steps.push(Step::Close(v.code, v.reason));
                        break;
                    }
                }
            }
        }
        for step in steps {
            self.session_step(node, conn, step);
        }
    }

    /// What the edge does with what a session decided (the daemon's `shard::wire`, played).
    fn session_step(&mut self, node: u16, conn: u32, step: Step) {
        let now = self.now;
        let Some(c) = self.node(node).conns.get(&conn) else { return };
        let who = format!("{} on node {node} (conn {conn})", c.user);
        match step {
            Step::Welcome { identity, .. } => {
                if identity.user.as_str() != c.user {
                    self.check.note(now, format!("{who}: welcomed as {}", identity.user));
                }
                let remote: Vec<NodeId> = (1..=NODES).filter(|&n| n != node).map(NodeId).collect();
                let conn_ref = ConnRef { shard: 0, slot: conn, generation: 0 };
                let welcome = Bytes::from_static(b"welcome");
                let (_, actions) = self.node(node).tracking.connected(&identity.user, conn_ref, welcome, &remote);
                self.run_actions(node, actions);
            }
            Step::Command(Command::Send { conv, id, body, .. }) => {
                let (conv, sender) = (conv.to_string(), c.user.clone());
                let body = String::from_utf8(body.to_vec()).expect("the session checked UTF-8");
                let owner = self.owner(&conv);
                let pending = Pending::Send { conn, conv: conv.clone(), id: id.clone() };
                self.request(node, owner, pending, |req| Packet::Send(Send { req, conv, sender, id, body }));
            }
            Step::Command(Command::Sync { conv, after, limit, .. }) => {
                let (conv, reader, after) = (conv.to_string(), Some(c.user.clone()), after.0);
                let owner = self.owner(&conv);
                let pending = Pending::Sync { conn, conv: conv.clone(), after };
                self.request(node, owner, pending, |req| Packet::Fetch { req, conv, reader, after, limit });
            }
            Step::Command(Command::Receipt { conv, seq, .. }) => {
                let (conv, user) = (conv.to_string(), c.user.clone());
                let owner = self.owner(&conv);
                let pending = Pending::Receipt { user: user.clone(), conv: conv.clone(), seq: seq.0 };
                self.request(node, owner, pending, |req| Packet::Receipt { req, conv, user, seq: seq.0 });
            }
            Step::Reply(frame, _) => {
                self.check.note(now, format!("{who}: the session refused a well-formed frame: {frame:?}"))
            }
            Step::Close(code, why) => {
                self.check.note(now, format!("{who}: the session closed a well-behaved client: {code} {why}"));
                self.close(node, conn);
            }
            Step::Nothing | Step::Command(_) => {}
        }
    }

    /// The `welcome`: what was held goes out, then the client resyncs every conversation
    /// from the last seq it holds without a hole.
    fn welcome(&mut self, node: u16, conn: u32) {
        let Some(c) = self.node(node).conns.get_mut(&conn) else { return };
        c.live = true;
        let (held, client) = (std::mem::take(&mut c.held), c.client);
        for frame in held {
            self.push(node, conn, frame);
        }
        for conv in self.clients[client].convs.clone() {
            let after = self.clients[client].have.get(&conv).map(contiguous).unwrap_or(0);
            self.sync(node, conn, conv, after);
        }
    }

    fn sync(&mut self, node: u16, conn: u32, conv: String, after: u64) {
        let frame = serde_json::json!({"t":"sync","conv":conv,"after":after,"limit":SYNC_PAGE});
        self.client_writes(node, conn, &frame.to_string());
    }

    fn synced(&mut self, node: u16, conn: u32, conv: &str, after: u64, result: Result<RangePage, String>) {
        let now = self.now;
        let Some(c) = self.node(node).conns.get(&conn) else { return };
        let (client, who) = (c.client, format!("{} on node {node} (conn {conn})", c.user));
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                self.check.note(now, format!("{who}: sync of {conv} refused: {e}"));
                return self.close(node, conn);
            }
        };
        let user = &self.nodes[node as usize - 1].conns[&conn].user;
        for m in &page.messages {
            self.check.received(now, user, conv, &shown_id(&m.client_id, m.seq), m.seq.0);
        }
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.0).collect();
        self.check.sync_page(now, &who, conv, after, &seqs, page.upto.0);
        self.clients[client].have.entry(conv.to_string()).or_default().extend(&seqs);
        if page.more {
            self.sync(node, conn, conv.to_string(), page.upto.0);
        }
    }

    fn sent(&mut self, node: u16, conn: u32, conv: &str, id: &str, result: Result<(u64, bool), String>) {
        let now = self.now;
        let Some(client) = self.node(node).conns.get(&conn).map(|c| c.client) else { return };
        let c = &mut self.clients[client];
        c.in_flight = false;
        match result {
            Ok((seq, dup)) => {
                if c.outstanding.as_ref().is_some_and(|(cv, i)| cv == conv && i == id) {
                    c.outstanding = None;
                }
                self.check.ack(now, conv, id, seq, dup);
            }
            Err(e) => self.check.note(now, format!("{conv} id {id}: send refused: {e}")),
        }
    }

    fn close(&mut self, node: u16, conn: u32) {
        let Some(c) = self.node(node).conns.remove(&conn) else { return };
        if self.verbose {
            println!("  close {} on node {node} (conn {conn})", c.user);
        }
        let client = &mut self.clients[c.client];
        if client.at == Some((node, conn)) {
            client.at = None;
            client.in_flight = false;
        }
        let remote: Vec<NodeId> = (1..=NODES).filter(|&n| n != node).map(NodeId).collect();
        let (_, actions) = self.node(node).tracking.disconnected(&UserId::new(&c.user).unwrap(), &remote);
        self.run_actions(node, actions);
    }

    // ---- the clients ----

    fn client_turn(&mut self, client: usize) {
        let next = self.now + self.rng.gen_range(5..60);
        self.schedule(next, Event::Client { client });
        let Some((node, conn)) = self.clients[client].at else {
            let up: Vec<u16> = (1..=NODES).filter(|&n| self.nodes[n as usize - 1].up()).collect();
            if !up.is_empty() {
                let node = up[self.rng.gen_range(0..up.len())];
                self.connect(client, node);
            }
            return;
        };
        if !self.node(node).conns.get(&conn).is_some_and(|c| c.live) {
            return;
        }
        if !self.healed && self.rng.gen_bool(0.05) {
            return self.close(node, conn);
        }
        if self.rng.gen_bool(0.2) {
            self.read_receipt(client, node, conn);
        }
        let c = &mut self.clients[client];
        if c.in_flight {
            return;
        }
        if c.outstanding.is_none() && self.sending && self.rng.gen_bool(0.5) {
            let conv = c.convs[self.rng.gen_range(0..c.convs.len())].clone();
            c.outstanding = Some((conv, format!("{}-{}", c.user, c.next_id)));
            c.next_id += 1;
        }
        let Some((conv, id)) = c.outstanding.clone() else { return };
        c.in_flight = true;
        let frame = serde_json::json!({"t":"send","conv":conv,"id":id,"body":{"n":c.next_id}});
        self.client_writes(node, conn, &frame.to_string());
    }

    /// The client says it has read a conversation up to the last seq it holds without a hole,
    /// if that is beyond its last receipt.
    fn read_receipt(&mut self, client: usize, node: u16, conn: u32) {
        let c = &mut self.clients[client];
        let conv = c.convs[self.rng.gen_range(0..c.convs.len())].clone();
        let upto = c.have.get(&conv).map(contiguous).unwrap_or(0);
        if upto <= c.read.get(&conv).copied().unwrap_or(0) {
            return;
        }
        c.read.insert(conv.clone(), upto);
        self.check.receipt_sent(&c.user, &conv, upto);
        let frame = serde_json::json!({"t":"receipt","conv":conv,"seq":upto,"kind":"read"});
        self.client_writes(node, conn, &frame.to_string());
    }

    // ---- faults ----

    fn fault(&mut self) {
        if self.healed {
            return;
        }
        let next = self.now + self.rng.gen_range(20..120);
        self.schedule(next, Event::Fault);
        let (a, b) = (self.rng.gen_range(1..=NODES), self.rng.gen_range(1..=NODES));
        match self.rng.gen_range(0..10) {
            0 if (1..=NODES).all(|n| self.nodes[n as usize - 1].up()) => {
                self.crash(a);
                let at = self.now + self.rng.gen_range(20..400);
                self.schedule(at, Event::Restart { node: a });
            }
            1 | 2 if a != b => {
                self.stats.breaks += 1;
                self.net.break_link(a, b);
                self.reconnected(a, b);
            }
            3 if a != b => {
                self.net.cut(a, b);
                let at = self.now + self.rng.gen_range(50..500);
                self.schedule(at, Event::Heal);
            }
            4 => self.node(a).disk.borrow_mut().fail_next_sync = true,
            5 | 6 => {
                self.net.delivery_loss = [0.0, 0.01, 0.1, 0.3][self.rng.gen_range(0..4)];
                self.net.duplication = [0.0, 0.05][self.rng.gen_range(0..2)];
                self.net.delay_ms = (1, [5, 20, 80][self.rng.gen_range(0..3)]);
            }
            _ => {}
        }
    }

    /// A power cut of `node`: unsynced writes lost or torn, every connection and all that
    /// the process held gone.
    fn crash(&mut self, node: u16) {
        if !self.node(node).up() {
            return;
        }
        self.stats.crashes += 1;
        for other in 1..=NODES {
            if other != node {
                self.net.break_link(node, other);
            }
        }
        let seed = self.seed;
        let n = self.node(node);
        n.disk.borrow_mut().crash();
        n.store = None;
        n.run += 1;
        n.staged.clear();
        n.staged_receipts.clear();
        n.commit_due = false;
        n.subs.clear();
        n.pending.clear();
        n.tracking = Tracking::new(NodeId(node), seed ^ n.run << 8 ^ u64::from(node));
        for (conn, c) in std::mem::take(&mut n.conns) {
            let client = &mut self.clients[c.client];
            if client.at == Some((node, conn)) {
                client.at = None;
                client.in_flight = false;
            }
        }
    }

    /// The node starts again on what its disk kept; every acknowledged message of its
    /// conversations must be there.
    fn restart(&mut self, node: u16) {
        if self.node(node).up() {
            return;
        }
        let now = self.now;
        let disk = self.node(node).disk.clone();
        disk.borrow_mut().fail_next_sync = false;
        let mut store = match Shard::open(SimStorage(disk), config()) {
            Ok((store, _)) => store,
            Err(e) => return self.check.note(now, format!("node {node} does not open after a crash: {e}")),
        };
        let convs: Vec<String> = self.check.acked.keys().filter(|c| self.owner(c) == node).cloned().collect();
        for conv in convs {
            let id = ConvId::new(&conv).unwrap();
            let mut served = BTreeMap::new();
            let mut after = 0;
            loop {
                match store.range(&id, None, Seq(after), 64) {
                    Ok(page) => {
                        served.extend(
                            page.messages.iter().map(|m| (m.seq.0, String::from_utf8_lossy(&m.client_id).into_owned())),
                        );
                        if !page.more {
                            break;
                        }
                        after = page.upto.0;
                    }
                    Err(e) => {
                        self.check.note(now, format!("node {node} restarted: {conv} unreadable: {e}"));
                        break;
                    }
                }
            }
            self.check.recovered(now, node, &conv, &served);
        }
        self.check_read_marks(node, &store, &format!("node {node} restarted"));
        self.node(node).store = Some(store);
        for other in 1..=NODES {
            if other != node && self.nodes[other as usize - 1].up() && !self.net.is_cut(node, other) {
                self.reconnected(node, other);
            }
        }
    }

    /// Heals every cut link.
    fn heal(&mut self) {
        for (a, b) in self.net.heal() {
            self.reconnected(a, b);
        }
    }

    /// A new connection between `a` and `b`: each edge subscribes its users at the other.
    fn reconnected(&mut self, a: u16, b: u16) {
        for (edge, owner) in [(a, b), (b, a)] {
            if self.node(edge).up() && self.node(owner).up() {
                let actions = self.node(edge).tracking.owner_connected(NodeId(owner));
                self.run_actions(edge, actions);
            }
        }
    }

    /// Every read receipt answered for a conversation `store` owns is held, and no mark is
    /// beyond what its user sent.
    fn check_read_marks(&mut self, node: u16, store: &Shard<SimStorage>, when: &str) {
        let now = self.now;
        let marks: Vec<(String, String)> =
            self.check.receipts_sent.keys().filter(|(_, conv)| self.owner(conv) == node).cloned().collect();
        for (user, conv) in marks {
            match store.cursor(&ConvId::new(&conv).unwrap(), &UserId::new(&user).unwrap()) {
                Ok((_, read)) => self.check.read_mark(now, when, &user, &conv, read.0),
                Err(e) => self.check.note(now, format!("{when}: {user}'s cursor of {conv} unreadable: {e}")),
            }
        }
    }

    // ---- the end ----

    /// After the liveness phase: nothing left unacknowledged, and every member holds every
    /// acknowledged message of each of its conversations.
    fn finish(&mut self) {
        let now = self.now;
        for node in 1..=NODES {
            if let Some(store) = self.nodes[node as usize - 1].store.take() {
                self.check_read_marks(node, &store, "healed");
                self.nodes[node as usize - 1].store = Some(store);
            }
        }
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if let Some((conv, id)) = &client.outstanding {
                let what = format!("healed, {}'s send {id} to {conv} was never acknowledged", client.user);
                self.check.note(now, what);
            }
            for conv in client.convs.clone() {
                let have = self.clients[c].have.get(&conv).cloned().unwrap_or_default();
                let user = self.clients[c].user.clone();
                self.check.holds_all(now, &user, &conv, &have);
            }
        }
    }
}
