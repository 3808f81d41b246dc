//! One simulated cluster under one seed: three nodes, each a store node and an edge, and
//! clients that connect to any of them, in one thread on a virtual clock.
//!
//! What is real: each node's store shard (the conversations' sequencer, deduplication, group
//! commit and recovery) over the simulated disk, which loses unsynced writes on a crash,
//! tears the last one, fails fsync and stalls; the owner's side of every request
//! (`node::owner`, as a store thread runs it for `ops::apply`: the store calls, and the
//! finishers that answer and deliver once the commit is known), with the owner's fan-out core
//! (`cluster::fanout::Subscriptions`); each edge's delivery-by-subscription core
//! (`cluster::tracking`: subscriptions, duplicate drops, gap repair, eviction); and between
//! them the mesh's real cores carrying the cluster's real frames (`net`), and the router's
//! real table of requests waiting for answers (`cluster::waiting`); and each node's edge
//! shard (`shard::Local`, in [`crate::shard`]): the delivery into connections, the `welcome`,
//! eviction, channels' full pushes and `notify`, the outbound queues, whose bytes the clients
//! read. What the simulator plays itself, as thinly as it can: the store thread's loop
//! (stage, commit, finish), the shard's `command` (a session's decisions into requests), and
//! the clients, which send with retries under the same id, disconnect, and reconnect to any
//! node with a resync from their last seq, over WebSocket or QUIC framing, in JSON or
//! binary, and open and close the channel.
//!
//! A run is a safety phase with faults (crashes and restarts, link breaks and partitions,
//! refused and doubled deliveries, fsync failures), then a liveness phase that heals all of it
//! and checks that every member ends up holding every acknowledged message.

use crate::check::{Checker, ConnView};
use crate::net::{Net, Sent};
use crate::shard::Shard as EdgeShard;
use crate::wire::{Heard, ServerReader};
use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use switchboard_backplane::mesh::Event as MeshEvent;
use switchboard_backplane::{Boot, Class, NodeId};
use switchboard_edge::auth::{mint_hs256, Verifier};
use switchboard_edge::cluster::fanout::Subscriptions;
use switchboard_edge::cluster::placement::Placement;
use switchboard_edge::cluster::tracking::{Action, Round, Tracking, HELD_MAX, MISSED_CLOSE};
use switchboard_edge::cluster::waiting::Waiting;
use switchboard_edge::cluster::wire::{self, Wire, WireError};
use switchboard_edge::config::Config;
use switchboard_edge::node::ops::{shown_id, OpError};
use switchboard_edge::node::owner::{self, Finish, Finished, On, Part};
use switchboard_edge::node::request::{lane_key, Origin, Outcome, Request};
use switchboard_edge::node::{Answer, Delivery, ShardEvent};
use switchboard_edge::proto::error::ErrorCode;
use switchboard_edge::proto::ParseLimits;
use switchboard_edge::quic::framing::{Deframer, TooLarge};
use switchboard_edge::session::{Command, Session, SessionLimits, Step};
use switchboard_edge::shard::agenda::Now;
use switchboard_edge::ws::handshake::Encoding;
use switchboard_edge::ws::{close_code, Decoder, Event as WsEvent, Limits as WsLimits};
use switchboard_store::rt::Commit;
use switchboard_store::segment;
use switchboard_store::storage::{SimDisk, SimStorage};
use switchboard_store::{
    Appended, ConvId, ConvKind, Error as StoreError, InboxEntry, LogConfig, RangePage, Seq, Shard, ShardConfig,
    StoredMessage, UserId,
};

pub const NODES: u16 = 3;
/// How often a crash also flips a durable bit. Most flips make the store refuse to open,
/// which ends the run, so they are kept rare enough to leave the rest of the seeds whole.
const FLIP_PER_CRASH: f64 = 0.03;
const USERS: usize = 6;
const GROUPS: usize = 4;
/// The channel: a member's connection gets its messages in full while it has it open, and a
/// coalesced `notify` otherwise.
const CHANNEL: &str = "c0";
/// How often each shard flushes its channels' `notify` (the daemon's `notify_interval_ms`,
/// 1 s by default, shortened so that a seed's few virtual seconds see many).
const NOTIFY_MS: u64 = 100;
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

#[derive(Debug)]
enum Event {
    /// A node's frame to itself: the in-process path, at once and never lost.
    Local {
        node: u16,
        run: u64,
        wire: Wire,
    },
    Commit {
        node: u16,
        run: u64,
    },
    /// A request's deadline: the router's sweep, at the moment it is due.
    Timeout {
        node: u16,
        run: u64,
    },
    Client {
        client: usize,
    },
    Fault,
    Restart {
        node: u16,
    },
    Heal,
    /// A node stalled by [`World::fault`] reads its streams again.
    Unstall {
        node: u16,
    },
    Liveness,
    StopSending,
    /// A shard's timer: its channels' coalesced `notify` go out.
    Notify {
        node: u16,
    },
}

/// A request an edge waits on.
#[derive(Debug)]
enum Pending {
    Send {
        conn: u32,
        conv: String,
        id: String,
    },
    Subscribe {
        user: String,
        round: Round,
    },
    Repair {
        conv: String,
    },
    Sync {
        conn: u32,
        conv: String,
        after: u64,
    },
    Receipt {
        user: String,
        conv: String,
        seq: u64,
    },
    /// One store node's part of a connection's `inbox`.
    Inbox {
        gather: u64,
    },
    Typing {
        user: String,
        conv: String,
    },
    /// A connection's `open` of a channel: once allowed, the shard pushes it in full.
    Open {
        conn: u32,
        conv: String,
    },
    /// An owner's change of a group's members (the REST call, made on any node).
    Members {
        conv: String,
    },
    /// Its answer is waited for by nobody, but the router keeps it like any other.
    Unsubscribe,
}

/// A connection's `inbox`, waiting for every store node's part (as the shard gathers it).
struct InboxGather {
    node: u16,
    conn: u32,
    left: u16,
    convs: BTreeSet<String>,
    failed: bool,
}

/// Who asked for something: the node, the request's id there, and its lane.
#[derive(Clone, Copy)]
struct Asker {
    node: u16,
    id: u64,
    lane: u64,
}

/// How a connection's bytes reach its session: a WebSocket's through the edge's real frame
/// decoder, or a QUIC stream's through the QUIC endpoint's real deframer.
enum Framing {
    Ws { decoder: Decoder, inbuf: BytesMut },
    Quic(Deframer),
}

struct Conn {
    client: usize,
    user: String,
    /// The edge's side of the socket or stream: the real decoder and session.
    framing: Framing,
    session: Session,
    /// The shard's real connection: what is queued for the client, and what it holds back
    /// until the `welcome`.
    edge: Rc<switchboard_edge::shard::conn::Conn>,
    /// The client's side: what it reads of what the shard wrote.
    reader: ServerReader,
    /// The client read its `welcome`.
    welcomed: bool,
    view: ConnView,
}

struct Node {
    /// The node's process number: what was addressed to an earlier one is lost.
    run: u64,
    disk: Rc<RefCell<SimDisk>>,
    /// `None` while the node is down.
    store: Option<Shard<SimStorage>>,
    /// The writes staged in the owner's store since its last commit, in order: each answered
    /// and delivered by its real finisher once the commit is known.
    staged: Vec<(Asker, Finish)>,
    commit_due: bool,
    /// The next group commit's fsync stalls (a slow disk): it lands this much later.
    stall_ms: u64,
    /// The owner's real fan-out core: which nodes have which members subscribed.
    subs: Subscriptions,
    tracking: Tracking,
    /// The node's real edge shard, a new one for each process.
    shard: EdgeShard,
    conns: BTreeMap<u32, Conn>,
    /// The simulator's connection in each of the shard's slots.
    slots: BTreeMap<u32, u32>,
    /// Requests waiting for an answer: the router's real table, with virtual deadlines.
    waiting: Waiting<Pending, u64>,
    /// Where the newest durable batch starts (log file, offset): a bit flipped inside it
    /// cannot be told from a write torn by a crash, so flips land below it.
    newest: (String, u64),
    /// A durable bit of its disk flipped while it was down.
    flipped: bool,
}

/// Commits `store`, keeping `newest` at the start of the batch it made durable, if it wrote
/// one (a roll puts it at the start of a segment; a commit of nothing leaves the last one).
fn commit_at(store: &mut Shard<SimStorage>, newest: &mut (String, u64)) -> Result<(), StoreError> {
    let segment = |s: &Shard<SimStorage>| s.log().segments().last().map(|a| (segment::log_name(a.base), a.len));
    let before = segment(store);
    store.commit()?;
    match (before, segment(store)) {
        (Some(before), Some(after)) if after == before => {}
        (Some(before), Some((name, _))) => *newest = if name == before.0 { before } else { (name, 0) },
        _ => {}
    }
    Ok(())
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
    /// Its last `inbox` failed: asked again at its next turn.
    inbox_due: bool,
    /// The channels it wants open, on every connection it makes (as the JS client keeps them).
    open: BTreeSet<String>,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub events: u64,
    pub crashes: u64,
    pub breaks: u64,
    /// Frames the nodes received over the mesh.
    pub frames: u64,
    /// Nodes declared down by a peer's SWIM.
    pub downs: u64,
    /// Group commits whose fsync stalled.
    pub stalls: u64,
    /// Nodes that stopped reading the mesh for a while, and frames a full queue refused.
    pub slow_nodes: u64,
    pub full: u64,
    /// The most bytes one mesh queue held for one peer, per class (control, live, bulk).
    pub queued_most: [usize; 3],
    pub repairs: u64,
    pub evictions: u64,
    /// Member changes the owners answered, and `typing` frames the clients received.
    pub member_changes: u64,
    pub typing: u64,
    /// Connections made, those over QUIC, and those in the binary encoding.
    pub connects: u64,
    pub quic_conns: u64,
    pub binary_conns: u64,
    /// Connections the shard closed (an eviction for missed messages, a full queue).
    pub server_closes: u64,
    /// Channel messages pushed in full (to a connection with the channel open), and the
    /// `notify` frames read.
    pub channel_pushes: u64,
    pub notifies: u64,
    /// Durable bits flipped, and stores that refused to open on one (ending the run).
    pub flips: u64,
    pub corruptions: u64,
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
    inboxes: BTreeMap<u64, InboxGather>,
    next_gather: u64,
    /// Faults stop and everything heals from here on.
    healed: bool,
    /// A store refused to open on a flipped bit: nothing more is checked.
    stopped: bool,
    sending: bool,
    stats: Stats,
    verifier: Verifier,
    /// The shards' `Instant` at virtual time 0 (for the latencies they measure, nothing else).
    epoch: Instant,
    /// The node's settings the owner's side reads: the defaults.
    defaults: Config,
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

/// Every message of `conv` that `store` holds, in seq order.
fn read_all(store: &mut Shard<SimStorage>, conv: &str) -> Result<Vec<StoredMessage>, StoreError> {
    let (id, mut after, mut all) = (ConvId::new(conv).expect("valid"), 0, Vec::new());
    loop {
        let page = store.range(&id, None, Seq(after), 64)?;
        all.extend(page.messages);
        if !page.more {
            return Ok(all);
        }
        after = page.upto.0;
    }
}

/// A group's member changes among its messages: (seq, user, added).
fn member_changes(messages: &[StoredMessage]) -> Vec<(u64, String, bool)> {
    let change = |m: &StoredMessage| {
        let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
        let added = match v["event"].as_str()? {
            "member_added" => true,
            "member_removed" => false,
            _ => return None,
        };
        Some((m.seq.0, v["user"].as_str()?.to_string(), added))
    };
    messages.iter().filter(|m| m.kind == "system").filter_map(change).collect()
}

/// Every conversation: the groups, then the channel.
fn all_convs() -> Vec<String> {
    (0..GROUPS).map(|g| format!("g{g}")).chain([CHANNEL.to_string()]).collect()
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
        let epoch = Instant::now();
        let nodes = (1..=NODES)
            .map(|id| {
                let disk = SimDisk::new(seed ^ u64::from(id) << 48);
                let (store, _) = Shard::open(SimStorage(disk.clone()), config()).expect("an empty disk opens");
                Node {
                    run: 0,
                    disk,
                    store: Some(store),
                    staged: Vec::new(),
                    commit_due: false,
                    stall_ms: 0,
                    subs: Subscriptions::new(1),
                    tracking: Tracking::new(NodeId(id), seed ^ u64::from(id)),
                    shard: EdgeShard::new(id, Verifier::hs256(SECRET), crate::shard::now(epoch, 0, START_MS), seed),
                    conns: BTreeMap::new(),
                    slots: BTreeMap::new(),
                    waiting: Waiting::new(),
                    newest: (String::new(), 0),
                    flipped: false,
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
                inbox_due: false,
                open: BTreeSet::new(),
            })
            .collect();
        let mut world = World {
            seed,
            rng: SmallRng::seed_from_u64(rng.gen()),
            now: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            net: Net::new(rng.gen(), NODES),
            nodes,
            clients: Vec::new(),
            placement: Placement::new(PARTITIONS, &ids),
            check: Checker::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            next_conn: 0,
            inboxes: BTreeMap::new(),
            next_gather: 0,
            healed: false,
            stopped: false,
            sending: true,
            stats: Stats::default(),
            verifier: Verifier::hs256(SECRET),
            epoch,
            defaults: Config::default(),
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
            let n = &mut world.nodes[owner as usize - 1];
            let store = n.store.as_mut().expect("up");
            store.create(&id, ConvKind::Group, &conv, &ids[0], &ids, 0).expect("a new group");
            commit_at(store, &mut n.newest).expect("the disk does not fail yet");
            for &m in &members {
                clients[m].convs.push(conv.clone());
            }
            world.check.created(&conv, ids.iter().map(|u| u.as_str().to_string()).collect());
        }
        // The channel: most users are members.
        let members: BTreeSet<usize> = (0..USERS).filter(|&u| u < 2 || rng.gen_bool(0.7)).collect();
        let ids: Vec<UserId> = members.iter().map(|&m| UserId::new(&users[m]).unwrap()).collect();
        let (id, owner) = (ConvId::new(CHANNEL).unwrap(), world.owner(CHANNEL));
        let n = &mut world.nodes[owner as usize - 1];
        let store = n.store.as_mut().expect("up");
        store.create(&id, ConvKind::Channel, CHANNEL, &ids[0], &ids, 0).expect("a new channel");
        commit_at(store, &mut n.newest).expect("the disk does not fail yet");
        for &m in &members {
            clients[m].convs.push(CHANNEL.to_string());
        }
        world.check.created(CHANNEL, ids.iter().map(|u| u.as_str().to_string()).collect());
        world.clients = clients;
        for node in 1..=NODES {
            world.schedule(NOTIFY_MS, Event::Notify { node });
        }
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
        loop {
            self.check_queues();
            // The world's next event, or the network's (a frame lands, a mesh timer fires),
            // whichever is first; the network first at a tie.
            let world = self.queue.peek().map(|Reverse((at, _))| *at);
            let net = self.net.sim.next_due();
            let Some(at) = world.into_iter().chain(net).min() else { break };
            if at > end || self.stopped {
                break;
            }
            self.now = self.now.max(at);
            if net == Some(at) {
                self.net.sim.run_until(self.now);
                self.hear_the_mesh();
                continue;
            }
            let Reverse((_, id)) = self.queue.pop().expect("peeked");
            let event = self.events.remove(&id).expect("scheduled");
            self.net.sim.now_ms = self.now;
            self.stats.events += 1;
            let line = format!("{} {event:?}", self.now);
            self.traced(&line);
            self.handle(event);
        }
        if self.verbose {
            print!("{}", self.net.sim.describe());
        }
        if !self.stopped {
            self.now = end;
            self.finish();
        }
        self.stats.full = self.net.full;
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

    /// No queue of the code under test beyond its limit: each mesh queue for a peer, in
    /// bytes per class, and each edge's deliveries held behind a repair.
    fn check_queues(&mut self) {
        let most = self.net.queued_most();
        for class in Class::ALL {
            let (len, max) = (most[class.index()], self.net.sim.config.queue_bytes_max(class));
            let peak = &mut self.stats.queued_most[class.index()];
            *peak = (*peak).max(len);
            self.check.queue(self.now, format_args!("a {} mesh queue", class.name()), len, max);
        }
        for i in 0..self.nodes.len() {
            let held = self.nodes[i].tracking.held_most();
            self.check.queue(self.now, "the deliveries held behind a repair", held, HELD_MAX);
        }
    }

    /// Folds a line into the trace hash (and prints it, verbose).
    fn traced(&mut self, line: &str) {
        if self.verbose {
            println!("{line}");
        }
        for b in line.bytes() {
            self.trace = (self.trace ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Local { node, run, wire } => {
                if self.node(node).run == run && self.node(node).up() {
                    // In-process calls carry boot 0, as `Node::call_on`'s do.
                    self.arrive(node, node, Boot(0), wire);
                }
            }
            Event::Commit { node, run } => {
                if self.node(node).run == run {
                    self.node(node).commit_due = false;
                    self.commit(node);
                }
            }
            Event::Timeout { node, run } => {
                if self.node(node).run == run {
                    let now = self.now;
                    for (to, p) in self.node(node).waiting.expired(now) {
                        self.failed(node, to.0, p);
                    }
                }
            }
            Event::Client { client } => self.client_turn(client),
            Event::Fault => self.fault(),
            Event::Restart { node } => self.restart(node),
            Event::Heal => self.net.sim.heal_all(),
            Event::Unstall { node } => self.net.stall(node, false),
            Event::StopSending => self.sending = false,
            Event::Notify { node } => {
                self.schedule(self.now + NOTIFY_MS, Event::Notify { node });
                if self.node(node).up() {
                    self.shard_turn(node).flush_notify();
                    self.write_out(node);
                }
            }
            Event::Liveness => {
                self.healed = true;
                self.net.calm_down();
                for id in 1..=NODES {
                    if !self.node(id).up() {
                        self.restart(id);
                    }
                    self.net.stall(id, false);
                    self.node(id).disk.borrow_mut().fail_next_sync = false;
                    self.node(id).stall_ms = 0;
                }
                self.schedule(self.now + SENDS_UNTIL_MS, Event::StopSending);
            }
        }
    }

    // ---- the network ----

    /// Sends `wire` from `from` to `to` on `lane`'s lane: through the mesh, or in-process to
    /// itself. Whether it left (the mesh refuses a peer it holds down).
    fn post(&mut self, from: u16, to: u16, lane: u64, wire: Wire) -> bool {
        if from == to {
            let run = self.node(to).run;
            self.schedule(self.now, Event::Local { node: to, run, wire });
            return true;
        }
        let delivery = matches!(wire, Wire::Deliver(_));
        self.net.send(&mut self.rng, from, to, lane, wire::encode(&wire), delivery) == Sent::Taken
    }

    /// Answers a request, on its lane (as the router's `answer_to`).
    fn answer(&mut self, from: u16, asker: Asker, result: Result<Outcome, OpError>) {
        let wire = Wire::Answer { id: asker.id, result: result.map_err(WireError::from) };
        self.post(from, asker.node, asker.lane, wire);
    }

    /// Sends a request from `node` to `to` and waits for its answer, or for the timeout; a
    /// request the mesh refuses fails at once (the router answers `unavailable`).
    fn request(&mut self, node: u16, to: u16, pending: Pending, request: Request) {
        let deadline = self.now + ANSWER_WAIT_MS;
        let n = self.node(node);
        let id = n.waiting.insert(NodeId(to), deadline, pending);
        let run = n.run;
        self.schedule(deadline, Event::Timeout { node, run });
        let lane = request.lane_key();
        if !self.post(node, to, lane, Wire::Request { id, request }) {
            if let Some(p) = self.node(node).waiting.remove(id) {
                self.failed(node, to, p);
            }
        }
    }

    /// What the mesh did since the last look: each node's events (a chosen connection, a
    /// peer down), then the frames it received, decoded by the cluster's real codec.
    fn hear_the_mesh(&mut self) {
        for node in 1..=NODES {
            let heard = self.net.heard(node);
            for event in heard.events {
                self.mesh_event(node, event);
            }
            for frame in heard.frames {
                self.stats.frames += 1;
                if !self.node(node).up() {
                    continue;
                }
                match wire::decode(&frame.frame) {
                    Some(Ok(w)) => {
                        let line = format!("{} {node}<-{} {w:?}", self.now, frame.from);
                        self.traced(&line);
                        self.arrive(node, frame.from.0, frame.boot, w);
                    }
                    other => self.check.note(self.now, format!("node {node}: a frame it cannot read: {other:?}")),
                }
            }
        }
    }

    /// What `node`'s mesh told it, handled as the cluster's event thread does (`join`).
    fn mesh_event(&mut self, node: u16, event: MeshEvent) {
        let line = format!("{} {node} mesh {event:?}", self.now);
        self.traced(&line);
        match event {
            // Frames written on the connection before may be lost: the users here are
            // subscribed again, and the heads that come back show any gap.
            MeshEvent::Connected { node: peer, .. } => {
                let actions = self.node(node).tracking.owner_connected(peer);
                self.run_actions(node, actions);
            }
            MeshEvent::Down { node: peer, boot } => {
                self.stats.downs += 1;
                self.node(node).subs.down(peer, boot);
                // The router answers what it asked there `unavailable`.
                for p in self.node(node).waiting.down(peer) {
                    self.failed(node, peer.0, p);
                }
            }
            MeshEvent::Up { .. } | MeshEvent::Disconnected { .. } | MeshEvent::IdInUse { .. } | MeshEvent::Frame(_) => {
            }
        }
    }

    fn arrive(&mut self, to: u16, from: u16, boot: Boot, wire: Wire) {
        match wire {
            Wire::Request { id, request } => {
                let asker = Asker { node: from, id, lane: request.lane_key() };
                self.serve(to, asker, boot, request);
            }
            Wire::Answer { id, result } => {
                if let Some(p) = self.node(to).waiting.answered(NodeId(from), id) {
                    self.answered(to, from, p, result.map_err(OpError::from));
                }
            }
            Wire::Deliver(d) => {
                let placement = &self.placement;
                let actions = self.nodes[to as usize - 1].tracking.deliver(d, &|c| placement.owner(c));
                self.run_actions(to, actions);
            }
        }
    }

    /// The owner's side of a request: the real `owner::on_shard`, as a store thread runs it
    /// for `ops::apply`. A read first commits what is staged (the store thread runs reads only
    /// when nothing is staged); a write waits for the next group commit.
    fn serve(&mut self, owner: u16, asker: Asker, boot: Boot, request: Request) {
        if !request.writes() && !self.flush(owner) {
            return;
        }
        let now_ms = START_MS + self.now;
        let Node { store, subs, staged, .. } = &mut self.nodes[owner as usize - 1];
        let on = On {
            index: 0,
            from: NodeId(asker.node),
            boot,
            now_ms,
            started: None,
            subs: Some(subs),
            receipts_fanout_max: self.defaults.receipts_fanout_max,
            group_members_max: self.defaults.group_members_max,
        };
        let store = store.as_mut().expect("up");
        let part = owner::on_shard(store, &on, request);
        // A write that staged nothing (a duplicate, a refusal) is finished by the next commit
        // too, as the store thread finishes it with the group in hand.
        let commit = store.staged_count() > 0 || matches!(part, Part::Staged(_));
        match part {
            Part::Now(finished) => self.finished(owner, asker, finished),
            Part::Staged(finish) => staged.push((asker, finish)),
        }
        if commit {
            self.commit_soon(owner);
        }
    }

    /// What the owner's part produced: its deliveries, in order, then its answer (as
    /// `ops::apply`'s shell sends them).
    fn finished(&mut self, owner: u16, asker: Asker, finished: Finished) {
        for d in finished.deliveries {
            self.deliver(owner, d);
        }
        self.answer(owner, asker, finished.result);
    }

    /// An answer came back for `pending`.
    fn answered(&mut self, node: u16, from: u16, pending: Pending, result: Result<Outcome, OpError>) {
        match pending {
            Pending::Send { conn, conv, id } => {
                let result = result.and_then(Appended::try_from).map(|a| (a.seq.0, a.dup));
                self.sent(node, conn, &conv, &id, result);
            }
            Pending::Subscribe { user, round } => {
                let result = result.and_then(Vec::<InboxEntry>::try_from);
                let actions = self.node(node).tracking.subscribed(&user, NodeId(from), round, result);
                self.run_actions(node, actions);
            }
            Pending::Repair { conv } => {
                let placement = &self.placement;
                let result = result.and_then(RangePage::try_from);
                let actions = self.nodes[node as usize - 1].tracking.repaired(&conv, result, &|c| placement.owner(c));
                self.run_actions(node, actions);
            }
            Pending::Sync { conn, conv, after } => {
                let result = result.and_then(RangePage::try_from);
                self.synced(node, conn, &conv, after, result);
            }
            Pending::Inbox { gather } => self.inbox_part(gather, result.and_then(Vec::<InboxEntry>::try_from).ok()),
            Pending::Typing { user, conv } => match result.and_then(<()>::try_from) {
                Ok(()) => {}
                Err(e) => self.refused(&user, &conv, "typing", e),
            },
            Pending::Members { conv } => match result {
                Ok(_) => self.stats.member_changes += 1,
                Err(e) if e.code == ErrorCode::Unavailable => {}
                Err(e) => self.check.note(self.now, format!("{conv}: a member change refused: {}", e.message)),
            },
            Pending::Receipt { user, conv, seq } => match result.and_then(<()>::try_from) {
                Ok(()) => self.check.receipt_acked(&user, &conv, seq),
                Err(e) => self.refused(&user, &conv, "read receipt", e),
            },
            // As the daemon's: the owner drops the subscription, or it lapses with the run.
            Pending::Unsubscribe => {}
            Pending::Open { conn, conv } => {
                let Some((edge, user)) = self.node(node).conns.get(&conn).map(|c| (c.edge.id, c.user.clone())) else {
                    return;
                };
                match result.and_then(ConvKind::try_from) {
                    Ok(_) => {
                        let conv = ConvId::new(&conv).expect("valid");
                        self.shard_event(node, ShardEvent::Answer(edge, Answer::Opened { conv }));
                    }
                    Err(e) => self.refused(&user, &conv, "open", e),
                }
            }
        }
    }

    /// A request timed out (the other node is down, or the link broke).
    fn failed(&mut self, node: u16, to: u16, pending: Pending) {
        let why = "no answer".to_string();
        let actions = match pending {
            Pending::Send { conn, .. } => {
                if let Some(c) = self.node(node).conns.get(&conn).map(|c| c.client) {
                    self.clients[c].in_flight = false;
                }
                return;
            }
            Pending::Subscribe { user, round } => {
                self.node(node).tracking.subscribed(&user, NodeId(to), round, Err(unavailable(why)))
            }
            Pending::Repair { conv } => {
                let placement = &self.placement;
                self.nodes[node as usize - 1].tracking.repaired(&conv, Err(unavailable(why)), &|c| placement.owner(c))
            }
            // A client whose resync failed reconnects, and resyncs again.
            Pending::Sync { conn, .. } => return self.close(node, conn),
            // Not answered: it may or may not be stored; the client sends a later one anyway.
            // Not opened: its `notify` still comes.
            Pending::Receipt { .. }
            | Pending::Typing { .. }
            | Pending::Members { .. }
            | Pending::Unsubscribe
            | Pending::Open { .. } => return,
            Pending::Inbox { gather } => return self.inbox_part(gather, None),
        };
        self.run_actions(node, actions);
    }

    // ---- the owner's side: the store ----

    /// Schedules the group commit, if none is due: in a moment, or later when its fsync
    /// stalls.
    fn commit_soon(&mut self, owner: u16) {
        let n = self.node(owner);
        if !n.commit_due {
            n.commit_due = true;
            let stall = std::mem::take(&mut n.stall_ms);
            let (run, at) = (n.run, self.now + stall + self.rng.gen_range(0..3));
            self.schedule(at, Event::Commit { node: owner, run });
        }
    }

    /// Commits what is staged before a read, so no read sees a seq whose delivery is still to
    /// come. Returns whether the node is still up.
    fn flush(&mut self, node: u16) -> bool {
        let n = self.node(node);
        if !n.staged.is_empty() || n.store.as_ref().is_some_and(|s| s.staged_count() > 0) {
            self.commit(node);
        }
        self.node(node).up()
    }

    /// The group commit, then each staged write's finisher with its outcome: only once it is
    /// durable are writes answered and delivered. A failed fsync poisons the store: what was
    /// staged is answered `unavailable`, and the process exits (to be restarted).
    fn commit(&mut self, node: u16) {
        let n = self.node(node);
        let Some(store) = n.store.as_mut() else { return };
        let commit = match commit_at(store, &mut n.newest) {
            Ok(()) => Commit::Durable,
            Err(e) => Commit::Failed(e.to_string()),
        };
        for (asker, finish) in std::mem::take(&mut self.node(node).staged) {
            self.finished(node, asker, finish(&commit));
        }
        if commit != Commit::Durable {
            self.crash(node);
        }
    }

    /// A delivery goes to the owner's own connections of its audience, and once to every
    /// other node where a member is subscribed (the real fan-out core decides which).
    fn deliver(&mut self, owner: u16, d: Delivery) {
        let remote = self.node(owner).subs.frames(0, &d);
        let lane = lane_key(&d.conv);
        let conv = d.conv.clone();
        self.shard_event(owner, ShardEvent::Deliver(Arc::new(d)));
        for frame in remote {
            // Never this node itself: its own users are not subscribed here.
            if self.net.send(&mut self.rng, owner, frame.node.0, lane, frame.bytes.clone(), true) == Sent::Refused {
                self.node(owner).subs.refused(0, &conv, frame);
            }
        }
    }

    // ---- the edge's side ----

    fn run_actions(&mut self, node: u16, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Deliver(d) => self.shard_event(node, ShardEvent::Deliver(Arc::new(d))),
                Action::Welcome(conn, bytes) => {
                    self.shard_event(node, ShardEvent::Answer(conn, Answer::Welcome(bytes)))
                }
                Action::Evict(users) => {
                    let (code, reason) = MISSED_CLOSE;
                    self.shard_event(node, ShardEvent::Evict { users, code, reason });
                }
                Action::Subscribe { user, node: to, round } => {
                    let pending = Pending::Subscribe { user: user.to_string(), round };
                    self.request(node, to.0, pending, Request::Subscribe { user });
                }
                Action::Unsubscribe { user, node: to } => {
                    self.request(node, to.0, Pending::Unsubscribe, Request::Unsubscribe { user });
                }
                Action::Fetch { conv, owner, after, limit } => {
                    let pending = Pending::Repair { conv: conv.to_string() };
                    let conv = ConvId::new(&conv).expect("tracked conversations are valid");
                    self.request(
                        node,
                        owner.0,
                        pending,
                        Request::Sync { conv, reader: None, after: Seq(after), limit },
                    );
                }
            }
        }
    }

    /// The time of a turn of the shards, now.
    fn shard_now(&self) -> Now {
        crate::shard::now(self.epoch, self.now, START_MS)
    }

    /// `node`'s shard, at the start of a turn now.
    fn shard_turn(&mut self, node: u16) -> Rc<switchboard_edge::shard::Local> {
        let now = self.shard_now();
        let local = self.node(node).shard.local.clone();
        local.turn(now);
        local
    }

    /// One event into `node`'s shard, as its inbox would carry it; then what the shard wrote.
    fn shard_event(&mut self, node: u16, event: ShardEvent) {
        self.shard_turn(node).handle(event);
        self.write_out(node);
    }

    /// The driver's part, played: each connection the shard queued frames for has them
    /// written to its client, which reads them (and may write in turn, and so on), until
    /// nothing is left to write. A connection the shard closed is closed once its queue is out.
    fn write_out(&mut self, node: u16) {
        loop {
            let todo = self.node(node).shard.to_write();
            if todo.is_empty() {
                return;
            }
            for id in todo {
                let n = self.node(node);
                let Some(&key) = n.slots.get(&id.slot) else { continue };
                let Some(c) = n.conns.get_mut(&key).filter(|c| c.edge.id == id) else { continue };
                let bytes = crate::shard::written(&c.edge);
                let closing = c.edge.closing();
                let heard = c.reader.read(&bytes, c.edge.encoding() == Encoding::Binary);
                let mut welcomed = false;
                for h in heard {
                    match h {
                        Heard::Frame(v) if v["t"] == "welcome" => {
                            welcomed = true;
                            if let Some(c) = self.node(node).conns.get_mut(&key) {
                                c.welcomed = true;
                            }
                        }
                        Heard::Frame(v) => self.client_reads(node, key, v),
                        Heard::Unreadable(why) => {
                            let what = format!("node {node} (conn {key}) wrote what its client cannot read: {why}");
                            self.check.note(self.now, what);
                        }
                    }
                }
                // As a client does: it reads what arrived with the `welcome` (what was held
                // for it) before its resyncs are answered.
                if welcomed {
                    self.welcome(node, key);
                }
                if let Some((code, why)) = closing {
                    if self.verbose {
                        println!("  node {node} closes conn {key}: {code} {why}");
                    }
                    self.stats.server_closes += 1;
                    self.close(node, key);
                }
            }
        }
    }

    /// A frame the client read: checked and kept.
    fn client_reads(&mut self, node: u16, conn: u32, v: serde_json::Value) {
        let now = self.now;
        let Some(c) = self.nodes[node as usize - 1].conns.get_mut(&conn) else { return };
        let Some(conv) = v["conv"].as_str().map(str::to_string) else {
            return self
                .check
                .note(now, format!("{} on node {node} was pushed a frame of no conversation: {v}", c.user));
        };
        match v["t"].as_str() {
            Some("msg") => {}
            // Joined: it syncs the conversation from what it holds. Left: it forgets it, and
            // the connection's order of it starts again if it comes back.
            Some("joined") => {
                c.view.forget(&conv);
                let client = &mut self.clients[c.client];
                if !client.convs.contains(&conv) {
                    client.convs.push(conv.clone());
                }
                let after = client.have.get(&conv).map(contiguous).unwrap_or(0);
                return self.sync(node, conn, conv, after);
            }
            Some("left") => {
                c.view.forget(&conv);
                let client = &mut self.clients[c.client];
                client.convs.retain(|cv| *cv != conv);
                if client.outstanding.as_ref().is_some_and(|(cv, _)| *cv == conv) {
                    client.outstanding = None;
                }
                return;
            }
            Some("typing") => return self.stats.typing += 1,
            // The channel moved while not open here: it syncs what it does not hold yet.
            Some("notify") => {
                self.stats.notifies += 1;
                let client = &mut self.clients[c.client];
                if !client.convs.contains(&conv) {
                    client.convs.push(conv.clone());
                }
                let after = client.have.get(&conv).map(contiguous).unwrap_or(0);
                if v["head"].as_u64().expect("head") > after {
                    self.sync(node, conn, conv, after);
                }
                return;
            }
            _ => return,
        }
        let (seq, id) = (v["seq"].as_u64().expect("seq"), v["id"].as_str().expect("id"));
        // A channel is pushed in full only where it is open (elsewhere: `notify`).
        if conv == CHANNEL && !self.clients[c.client].open.contains(CHANNEL) {
            let what = format!("{} on node {node} (conn {conn}): pushed {conv} {seq}, not open", c.user);
            self.check.note(now, what);
        }
        self.check.received(now, &c.user, &conv, id, seq);
        let who = format!("{} on node {node} (conn {conn})", c.user);
        self.check.pushed_id(now, &who, conn, &conv, id);
        if self.verbose {
            println!("  push to {who}: {conv} {seq}");
        }
        self.check.push(now, &who, &mut c.view, &conv, seq);
        let client = &mut self.clients[c.client];
        let held = client.have.entry(conv.clone()).or_default();
        // A channel's pushes start where its `open` took effect, past what came as `notify`
        // before: the client syncs what lies between (as the JS client does on a hole).
        let (before, channel) = (contiguous(held), conv == CHANNEL);
        held.insert(seq);
        self.stats.channel_pushes += channel as u64;
        if channel && seq > before + 1 && client.convs.contains(&conv) {
            return self.sync(node, conn, conv, before);
        }
        // A message of a conversation it did not know of (its `joined` was lost): it learns
        // of it, and syncs what it missed.
        if !client.convs.contains(&conv) {
            client.convs.push(conv.clone());
            let after = client.have.get(&conv).map(contiguous).unwrap_or(0);
            self.sync(node, conn, conv, after);
        }
    }

    fn connect(&mut self, client: usize, node: u16) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let user = self.clients[client].user.clone();
        // Some connect over QUIC, some speak the binary encoding, some give their token when
        // they open the connection (a WebSocket's `?token=`, a QUIC client's) and say `hello`
        // without one: the session checks it against the time of the open.
        let (quic, binary, at_open) = (self.rng.gen_bool(0.3), self.rng.gen_bool(0.3), self.rng.gen_bool(0.3));
        self.stats.connects += 1;
        self.stats.quic_conns += quic as u64;
        self.stats.binary_conns += binary as u64;
        let token = mint_hs256(SECRET, &UserId::new(&user).unwrap(), START_MS / 1000, 86_400, false);
        let now_ms = START_MS + self.now;
        let from_open = at_open.then(|| self.verifier.verify(&token, now_ms / 1000));
        let encoding = if binary { Encoding::Binary } else { Encoding::Json };
        let session = Session::new(encoding, LIMITS, from_open, now_ms);
        let framing = match quic {
            true => Framing::Quic(Deframer::new(self.defaults.frame_bytes_max)),
            false => Framing::Ws { decoder: Decoder::new(WsLimits::default()), inbuf: BytesMut::new() },
        };
        self.shard_turn(node);
        let edge = self.node(node).shard.open();
        match quic {
            true => edge.over_quic(encoding),
            false => edge.upgraded(encoding, false),
        }
        let reader = match quic {
            true => ServerReader::Quic(Deframer::new(self.defaults.frame_bytes_max)),
            false => ServerReader::Ws(Vec::new()),
        };
        self.node(node).slots.insert(edge.id.slot, conn);
        let c = Conn {
            client,
            user: user.clone(),
            framing,
            session,
            edge,
            reader,
            welcomed: false,
            view: ConnView::default(),
        };
        self.node(node).conns.insert(conn, c);
        self.clients[client].at = Some((node, conn));
        if self.verbose {
            let how = format!("{}{}", if quic { "QUIC" } else { "WebSocket" }, if binary { ", binary" } else { "" });
            println!("  connect {user} to node {node} (conn {conn}, {how})");
        }
        let hello = match at_open {
            true => serde_json::json!({"t":"hello"}),
            false => serde_json::json!({"t":"hello","token":token}),
        };
        self.client_writes(node, conn, &hello.to_string());
    }

    /// The client writes one frame, given as PROTOCOL.md's JSON: in the connection's
    /// encoding (binary made by the edge's client encoder from the parsed JSON) and framing,
    /// its bytes reach the edge in pieces, through the real decoder into the real session, and
    /// what the session says is done.
    fn client_writes(&mut self, node: u16, conn: u32, text: &str) {
        let now_ms = START_MS + self.now;
        let Some(c) = self.nodes[node as usize - 1].conns.get(&conn) else { return };
        let binary = c.session.encoding() == Encoding::Binary;
        let payload = match binary {
            false => Bytes::copy_from_slice(text.as_bytes()),
            true => {
                let r = switchboard_edge::proto::parse(text, LIMITS.parse).expect("the simulator writes valid frames");
                switchboard_edge::proto::binary::encode_client(&r.frame, r.req.as_deref())
            }
        };
        let frame = match c.framing {
            Framing::Ws { .. } => crate::wire::client_ws_frame(&mut self.rng, &payload, binary),
            Framing::Quic(_) => crate::wire::client_quic_frame(&payload),
        };
        let pieces: Vec<Vec<u8>> = crate::wire::pieces(&mut self.rng, &frame).into_iter().map(<[u8]>::to_vec).collect();
        let mut steps = Vec::new();
        for piece in pieces {
            let Some(c) = self.nodes[node as usize - 1].conns.get_mut(&conn) else { return };
            let Conn { framing, session, .. } = c;
            let mut hear = |payload: &Bytes, binary| session.on_message(payload, binary, &self.verifier, now_ms);
            match framing {
                Framing::Ws { decoder, inbuf } => {
                    inbuf.extend_from_slice(&piece);
                    loop {
                        match decoder.decode(inbuf) {
                            Ok(Some(WsEvent::Text(payload))) => steps.push(hear(&payload, false)),
                            Ok(Some(WsEvent::Binary(payload))) => steps.push(hear(&payload, true)),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(v) => {
                                steps.push(Step::Close(v.code, v.reason));
                                break;
                            }
                        }
                    }
                }
                // As the QUIC endpoint's reader: whole frames to the session, in the
                // session's encoding (a QUIC stream has no text or binary of its own).
                Framing::Quic(deframer) => {
                    let mut frames = Vec::new();
                    match deframer.feed(Bytes::from(piece), &mut frames) {
                        Ok(()) => steps.extend(frames.iter().map(|f| hear(f, binary))),
                        Err(TooLarge { .. }) => steps.push(Step::Close(close_code::TOO_BIG, "frame too large")),
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
        let Some(c) = self.nodes[node as usize - 1].conns.get(&conn) else { return };
        let who = format!("{} on node {node} (conn {conn})", c.user);
        let edge_id = c.edge.id;
        match step {
            Step::Welcome { identity, .. } => {
                if identity.user.as_str() != c.user {
                    self.check.note(now, format!("{who}: welcomed as {}", identity.user));
                }
                // As the daemon's shard: registered, the `welcome` held back until the user
                // is subscribed on the other nodes.
                let remote: Vec<NodeId> = (1..=NODES).filter(|&n| n != node).map(NodeId).collect();
                let edge = c.edge.clone();
                let welcome = self.shard_turn(node).hello(&edge, identity.user.clone(), None);
                edge.await_welcome();
                let (_, actions) = self.node(node).tracking.connected(&identity.user, edge.id, welcome, &remote);
                self.run_actions(node, actions);
            }
            Step::Command(Command::Send { conv, id, body, kind }) => {
                let (owner, sender) = (self.owner(conv.as_str()), UserId::new(&c.user).expect("a valid user"));
                self.nodes[node as usize - 1].conns.get_mut(&conn).expect("open").view.sent(conv.as_str(), &id);
                self.check.wrote(conn, conv.as_str(), &id);
                // As the shard's `command` does on a node of a cluster.
                let key = self.node(node).shard.local.send_key(conv.as_str(), &id);
                self.node(node).conns.get(&conn).expect("open").edge.remember_send(key);
                let pending = Pending::Send { conn, conv: conv.to_string(), id: id.clone() };
                let except = Some(Origin { node, conn: edge_id });
                self.request(node, owner, pending, Request::Send { conv, sender, id, body, kind, except });
            }
            Step::Command(Command::Sync { conv, after, limit, .. }) => {
                let (owner, reader) = (self.owner(conv.as_str()), Some(UserId::new(&c.user).expect("a valid user")));
                let pending = Pending::Sync { conn, conv: conv.to_string(), after: after.0 };
                self.request(node, owner, pending, Request::Sync { conv, reader, after, limit });
            }
            Step::Command(Command::Receipt { conv, seq, kind }) => {
                let (owner, user) = (self.owner(conv.as_str()), UserId::new(&c.user).expect("a valid user"));
                let pending = Pending::Receipt { user: c.user.clone(), conv: conv.to_string(), seq: seq.0 };
                let except = Origin { node, conn: edge_id };
                self.request(node, owner, pending, Request::Receipt { conv, user, seq, kind, except });
            }
            Step::Command(Command::Typing { conv }) => {
                let (owner, user) = (self.owner(conv.as_str()), UserId::new(&c.user).expect("a valid user"));
                let pending = Pending::Typing { user: c.user.clone(), conv: conv.to_string() };
                let except = Origin { node, conn: edge_id };
                self.request(node, owner, pending, Request::Typing { conv, user, except });
            }
            // Every store node's part (each holds some of the user's conversations).
            Step::Command(Command::Inbox { after_ts, .. }) => {
                let user = UserId::new(&c.user).expect("a valid user");
                let gather = self.next_gather;
                self.next_gather += 1;
                let g = InboxGather { node, conn, left: NODES, convs: BTreeSet::new(), failed: false };
                self.inboxes.insert(gather, g);
                for to in 1..=NODES {
                    self.request(node, to, Pending::Inbox { gather }, Request::Inbox { user: user.clone(), after_ts });
                }
            }
            Step::Command(Command::Open { conv, .. }) => {
                let (owner, user) = (self.owner(conv.as_str()), UserId::new(&c.user).expect("a valid user"));
                // As the shard's `command` does: a `close` before the answer takes it back.
                c.edge.opening(conv.as_str());
                let pending = Pending::Open { conn, conv: conv.to_string() };
                self.request(node, owner, pending, Request::Open { conv, user });
            }
            // The shard's own: it stops the channel's full pushes to this connection at once.
            Step::Command(cmd @ Command::Close { .. }) => {
                let edge = c.edge.clone();
                self.shard_turn(node).command(&edge, cmd);
                self.write_out(node);
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

    /// The client read its `welcome` (and what was held for it): it resyncs every
    /// conversation from the last seq it holds without a hole.
    fn welcome(&mut self, node: u16, conn: u32) {
        let Some(client) = self.node(node).conns.get(&conn).map(|c| c.client) else { return };
        for conv in self.clients[client].convs.clone() {
            let after = self.clients[client].have.get(&conv).map(contiguous).unwrap_or(0);
            self.sync(node, conn, conv, after);
        }
        // What changed while it was away: conversations it joined, or left.
        self.client_writes(node, conn, r#"{"t":"inbox"}"#);
        for conv in self.clients[client].open.clone() {
            self.client_writes(node, conn, &serde_json::json!({"t":"open","conv":conv}).to_string());
        }
    }

    /// One store node's part of an `inbox` (`None`: it failed). With all of them, the client
    /// knows its conversations: it resyncs those it did not know, and forgets those it left.
    fn inbox_part(&mut self, gather: u64, part: Option<Vec<InboxEntry>>) {
        let Some(g) = self.inboxes.get_mut(&gather) else { return };
        match part {
            Some(entries) => g.convs.extend(entries.iter().map(|e| e.conv.as_str().to_string())),
            None => g.failed = true,
        }
        g.left -= 1;
        if g.left > 0 {
            return;
        }
        let g = self.inboxes.remove(&gather).expect("present");
        let Some(client) = self.node(g.node).conns.get(&g.conn).map(|c| c.client) else { return };
        if g.failed {
            self.clients[client].inbox_due = true;
            return;
        }
        let c = &mut self.clients[client];
        let new: Vec<(String, u64)> = g
            .convs
            .iter()
            .filter(|conv| !c.convs.contains(conv))
            .map(|conv| (conv.clone(), c.have.get(conv).map(contiguous).unwrap_or(0)))
            .collect();
        c.convs = g.convs.into_iter().collect();
        // A send to a conversation it left is given up.
        if c.outstanding.as_ref().is_some_and(|(conv, _)| !c.convs.contains(conv)) {
            c.outstanding = None;
        }
        for (conv, after) in new {
            self.sync(g.node, g.conn, conv, after);
        }
    }

    /// `user`'s request about `conv` was refused: if `forbidden`, it had been removed (checked
    /// at the end against the conversation's history), and it forgets the conversation.
    fn refused(&mut self, user: &str, conv: &str, what: &str, e: OpError) {
        match e.code {
            // Not stored (a failed fsync), or not answered: it sends a later one anyway.
            ErrorCode::Unavailable => {}
            ErrorCode::Forbidden => {
                self.check.forbidden(self.now, user, conv);
                if let Some(c) = self.clients.iter_mut().find(|c| c.user == user) {
                    c.convs.retain(|cv| cv != conv);
                    if c.outstanding.as_ref().is_some_and(|(cv, _)| cv == conv) {
                        c.outstanding = None;
                    }
                }
            }
            _ => self.check.note(self.now, format!("{user}'s {what} of {conv}: {}", e.message)),
        }
    }

    fn sync(&mut self, node: u16, conn: u32, conv: String, after: u64) {
        let frame = serde_json::json!({"t":"sync","conv":conv,"after":after,"limit":SYNC_PAGE});
        self.client_writes(node, conn, &frame.to_string());
    }

    fn synced(&mut self, node: u16, conn: u32, conv: &str, after: u64, result: Result<RangePage, OpError>) {
        let now = self.now;
        let Some(c) = self.node(node).conns.get(&conn) else { return };
        let (client, user) = (c.client, c.user.clone());
        let who = format!("{user} on node {node} (conn {conn})");
        let page = match result {
            Ok(page) => page,
            Err(e) if e.code == ErrorCode::Forbidden => return self.refused(&user, conv, "sync", e),
            Err(e) => {
                self.check.note(now, format!("{who}: sync of {conv} refused: {}", e.message));
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

    fn sent(&mut self, node: u16, conn: u32, conv: &str, id: &str, result: Result<(u64, bool), OpError>) {
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
                // Its own message is never pushed to it: the ack tells its seq.
                c.have.entry(conv.to_string()).or_default().insert(seq);
            }
            // Not stored (a failed fsync): retried under the same id.
            Err(e) if e.code == ErrorCode::Unavailable => {}
            Err(e) if e.code == ErrorCode::Forbidden => {
                let user = c.user.clone();
                self.refused(&user, conv, "send", e);
            }
            Err(e) => self.check.note(now, format!("{conv} id {id}: send refused: {}", e.message)),
        }
    }

    fn close(&mut self, node: u16, conn: u32) {
        let Some(c) = self.node(node).conns.remove(&conn) else { return };
        let n = self.node(node);
        if n.slots.get(&c.edge.id.slot) == Some(&conn) {
            n.slots.remove(&c.edge.id.slot);
        }
        self.shard_turn(node).remove(&c.edge);
        if self.verbose {
            println!("  close {} on node {node} (conn {conn})", c.user);
        }
        self.check.gone(c.view);
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
        if !self.node(node).conns.get(&conn).is_some_and(|c| c.welcomed) {
            return;
        }
        if !self.healed && self.rng.gen_bool(0.05) {
            return self.close(node, conn);
        }
        if std::mem::take(&mut self.clients[client].inbox_due) {
            self.client_writes(node, conn, r#"{"t":"inbox"}"#);
        }
        if self.clients[client].convs.is_empty() {
            return;
        }
        if self.rng.gen_bool(0.2) {
            self.read_receipt(client, node, conn);
        }
        if self.rng.gen_bool(0.1) {
            let c = &self.clients[client];
            let conv = c.convs[self.rng.gen_range(0..c.convs.len())].clone();
            self.client_writes(node, conn, &serde_json::json!({"t":"typing","conv":conv}).to_string());
        }
        // It opens the channel, or closes it: its order of the channel starts again. Not once
        // sends stop, so that what a closed channel's last messages owe it comes by `notify`.
        if self.sending && self.clients[client].convs.iter().any(|c| c == CHANNEL) && self.rng.gen_bool(0.1) {
            let opening = self.clients[client].open.insert(CHANNEL.to_string());
            if !opening {
                self.clients[client].open.remove(CHANNEL);
            }
            if let Some(c) = self.node(node).conns.get_mut(&conn) {
                c.view.forget(CHANNEL);
            }
            let t = if opening { "open" } else { "close" };
            if self.verbose {
                println!("  {} {t}s {CHANNEL} on node {node} (conn {conn})", self.clients[client].user);
            }
            self.client_writes(node, conn, &serde_json::json!({"t":t,"conv":CHANNEL}).to_string());
            if !self.node(node).conns.contains_key(&conn) {
                return;
            }
        }
        let c = &mut self.clients[client];
        if c.in_flight || c.convs.is_empty() {
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
        if c.convs.is_empty() {
            return;
        }
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
                if self.rng.gen_bool(FLIP_PER_CRASH) {
                    self.flip(a);
                }
                let at = self.now + self.rng.gen_range(20..400);
                self.schedule(at, Event::Restart { node: a });
            }
            1 | 2 if a != b => {
                self.stats.breaks += 1;
                self.net.sim.break_link(NodeId(a), NodeId(b));
            }
            // Longer than the mesh's idle timeout, the connection closes; longer than SWIM's
            // patience, each side declares the other down.
            3 if a != b => {
                self.net.sim.partition(NodeId(a), NodeId(b));
                let at = self.now + self.rng.gen_range(50..1_000);
                self.schedule(at, Event::Heal);
            }
            4 => self.node(a).disk.borrow_mut().fail_next_sync = true,
            5 | 6 => {
                self.net.refusal = [0.0, 0.01, 0.1, 0.3][self.rng.gen_range(0..4)];
                self.net.duplication = [0.0, 0.05][self.rng.gen_range(0..2)];
                self.net.sim.delay_ms = (1, [5, 20, 80][self.rng.gen_range(0..3)]);
            }
            7 => {
                self.stats.stalls += 1;
                self.node(a).stall_ms = self.rng.gen_range(50..600);
            }
            8 => self.change_members(a),
            // A node stops reading its peers' streams (its inbox full): their queues for it
            // fill, and the mesh refuses what does not fit.
            _ => {
                self.stats.slow_nodes += 1;
                self.net.stall(a, true);
                let at = self.now + self.rng.gen_range(50..600);
                self.schedule(at, Event::Unstall { node: a });
            }
        }
    }

    /// A group's owner adds a user to it, or removes one, through `node` (as over REST: the
    /// request goes to the group's node, and its answer comes back).
    fn change_members(&mut self, node: u16) {
        let convs = all_convs();
        let conv = convs[self.rng.gen_range(0..convs.len())].clone();
        let user = UserId::new(&format!("u{}", self.rng.gen_range(0..USERS))).unwrap();
        let (owner, id) = (self.owner(&conv), ConvId::new(&conv).unwrap());
        if !self.node(node).up() {
            return;
        }
        let Some(store) = self.node(owner).store.as_ref() else { return };
        let Ok(info) = store.conv_info(&id) else { return };
        if info.owner == user.as_str() {
            return;
        }
        let actor = UserId::new(&info.owner).unwrap();
        let (add, remove) = match store.is_member(&id, &user) {
            true => (Vec::new(), vec![user]),
            false => (vec![user], Vec::new()),
        };
        let request = Request::Members { conv: id, actor, admin: false, add, remove };
        self.request(node, owner, Pending::Members { conv }, request);
    }

    /// A power cut of `node`: unsynced writes lost or torn, every connection and all that
    /// the process held gone.
    fn crash(&mut self, node: u16) {
        if !self.node(node).up() {
            return;
        }
        self.stats.crashes += 1;
        self.net.sim.crash(NodeId(node));
        let (seed, now) = (self.seed, self.shard_now());
        let n = self.node(node);
        n.disk.borrow_mut().crash();
        n.store = None;
        n.run += 1;
        n.staged.clear();
        n.commit_due = false;
        n.stall_ms = 0;
        n.subs = Subscriptions::new(1);
        n.waiting = Waiting::new();
        n.tracking = Tracking::new(NodeId(node), seed ^ n.run << 8 ^ u64::from(node));
        n.shard = EdgeShard::new(node, Verifier::hs256(SECRET), now, seed ^ n.run);
        n.slots.clear();
        let conns = std::mem::take(&mut n.conns);
        self.inboxes.retain(|_, g| g.node != node);
        for (conn, c) in conns {
            self.check.gone(c.view);
            let client = &mut self.clients[c.client];
            if client.at == Some((node, conn)) {
                client.at = None;
                client.in_flight = false;
            }
        }
    }

    /// A durable bit of a downed node's disk flips, below its newest batch, as a failing
    /// disk's would: its store must refuse to open (a single copy cannot be repaired), or
    /// open and serve exactly what it acknowledged.
    fn flip(&mut self, node: u16) {
        let n = &mut self.nodes[node as usize - 1];
        let mut disk = n.disk.borrow_mut();
        let names = disk.names();
        let name = names[self.rng.gen_range(0..names.len())].clone();
        let len = if name == n.newest.0 { n.newest.1 } else { disk.file(&name).map_or(0, |f| f.len() as u64) };
        if len > 0 {
            let bit = self.rng.gen_range(0..len * 8);
            if self.verbose {
                println!("  flip {name} bit {bit} (byte {} of {len}; newest {:?})", bit / 8, n.newest);
            }
            disk.flip_bit(&name, bit);
            n.flipped = true;
            self.stats.flips += 1;
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
            // What a flipped bit must bring, if not harmless: a store that refuses to serve
            // what it cannot vouch for. The node stays down; with one copy of its
            // conversations nothing more can be demanded of them, so the run ends here.
            Err(StoreError::Corrupt { .. }) if self.node(node).flipped => {
                self.stats.corruptions += 1;
                self.stopped = true;
                return;
            }
            Err(e) => return self.check.note(now, format!("node {node} does not open after a crash: {e}")),
        };
        let convs: Vec<String> = self.check.acked.keys().filter(|c| self.owner(c) == node).cloned().collect();
        for conv in convs {
            match read_all(&mut store, &conv) {
                Ok(messages) => {
                    let served: BTreeMap<u64, String> = messages
                        .iter()
                        .map(|m| (m.seq.0, String::from_utf8_lossy(&m.client_id).into_owned()))
                        .collect();
                    self.check.recovered(now, node, &conv, &served);
                }
                Err(e) => self.check.note(now, format!("node {node} restarted: {conv} unreadable: {e}")),
            }
        }
        self.check_read_marks(node, &mut store, &format!("node {node} restarted"));
        self.node(node).flipped = false;
        self.node(node).store = Some(store);
        self.net.sim.start(NodeId(node));
    }

    /// Every read receipt answered for a conversation `store` owns is held, and no mark is
    /// beyond what its user sent.
    fn check_read_marks(&mut self, node: u16, store: &mut Shard<SimStorage>, when: &str) {
        let now = self.now;
        let marks: Vec<(String, String)> =
            self.check.receipts_sent.keys().filter(|(_, conv)| self.owner(conv) == node).cloned().collect();
        for (user, conv) in marks {
            // A removal ends a member's cursors; one added again starts new ones.
            let removed = |(_, u, added): &(u64, String, bool)| *u == user && !*added;
            if read_all(store, &conv).is_ok_and(|all| member_changes(&all).iter().any(removed)) {
                continue;
            }
            match store.cursor(&ConvId::new(&conv).unwrap(), &UserId::new(&user).unwrap()) {
                Ok((_, read)) => self.check.read_mark(now, when, &user, &conv, read.0),
                Err(e) => self.check.note(now, format!("{when}: {user}'s cursor of {conv} unreadable: {e}")),
            }
        }
    }

    // ---- the end ----

    /// After the liveness phase: nothing left unacknowledged, every member holds every
    /// acknowledged message sent while it was a member and knows its groups, and nobody
    /// received what it was not a member for.
    fn finish(&mut self) {
        let now = self.now;
        for node in 1..=NODES {
            // What the last moment staged is committed (and answered) before it is read.
            self.flush(node);
            if let Some(mut store) = self.nodes[node as usize - 1].store.take() {
                self.check_read_marks(node, &mut store, "healed");
                self.nodes[node as usize - 1].store = Some(store);
            }
        }
        for conv in all_convs() {
            let owner = self.owner(&conv);
            let Some(store) = self.node(owner).store.as_mut() else { continue };
            match read_all(store, &conv) {
                Ok(messages) => {
                    let ids = messages.iter().map(|m| (m.seq.0, shown_id(&m.client_id, m.seq).into_owned()));
                    self.check.stored(&conv, ids.collect());
                    self.check.changes(&conv, member_changes(&messages));
                }
                Err(e) => self.check.note(now, format!("healed, {conv} unreadable: {e}")),
            }
        }
        self.check.authorized(now);
        let live = self.nodes.iter().flat_map(|n| n.conns.values().map(|c| &c.view));
        self.check.holes(live);
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if let Some((conv, id)) = &client.outstanding {
                let what = format!("healed, {}'s send {id} to {conv} was never acknowledged", client.user);
                self.check.note(now, what);
            }
            let user = client.user.clone();
            let groups: BTreeSet<String> =
                all_convs().into_iter().filter(|conv| self.check.member_at_end(&user, conv)).collect();
            let known: BTreeSet<String> = client.convs.iter().cloned().collect();
            if known != groups {
                self.check
                    .note(now, format!("healed, {user} knows of groups {known:?}, and is a member of {groups:?}"));
            }
            for conv in groups {
                let have = self.clients[c].have.get(&conv).cloned().unwrap_or_default();
                self.check.holds_all(now, &user, &conv, &have);
            }
        }
    }
}
