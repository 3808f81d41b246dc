//! A simulated network for the mesh: several [`Mesh`]es in one thread, on one virtual
//! clock, with every random choice drawn from one seed.
//!
//! Each connection's streams are modelled as QUIC gives them to the mesh: bytes arrive in
//! order within a stream, after a random delay, and streams of one connection (and
//! connections) race each other. Packet loss shows as extra delay (QUIC retransmits). A
//! partition holds every byte between two nodes; one longer than the idle timeout closes
//! their connections on both sides, losing what was in flight. A crashed node's peers see
//! its connections close at the idle timeout, or at once when it restarts (the stateless
//! reset). A *stalled* node stops reading its live and bulk streams (its inbox is full), so
//! its peers' writes to them never complete and their queues for it fill, as QUIC's flow
//! control makes happen.

use crate::class::{Class, StreamKind};
use crate::config::MeshConfig;
use crate::ids::{Boot, NodeId};
use crate::mesh::{ConnId, DataItem, DataStream, Effect, Event, Inbound, Mesh};
use crate::queue::SendError;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// One end of a simulated connection: a node and its mesh's id for it.
type End = (NodeId, ConnId);

/// Every action names the run of the node it is for (`boot`): one for an earlier run of a
/// restarted node is dropped, as a real restart leaves nothing of the old process behind.
enum Action {
    /// The dial's handshake completes at the acceptor and then the dialer.
    Establish {
        from: End,
        boot: u64,
        to: NodeId,
    },
    DialFailed {
        at: End,
        boot: u64,
    },
    /// Bytes of one stream arrive (`from` wrote them; they arrive at its peer end).
    Bytes {
        from: End,
        stream: StreamKind,
        data: Vec<Bytes>,
        link: u64,
    },
    Closed {
        at: End,
        boot: u64,
        link: u64,
    },
}

struct Link {
    a: End,
    b: End,
    /// When each direction's stream last delivered: bytes of a stream keep their order.
    last_delivery: BTreeMap<(NodeId, StreamKind), u64>,
}

pub struct SimNode {
    pub mesh: Option<Mesh>,
    boot: u64,
    pub stalled: bool,
    readers: BTreeMap<(ConnId, NodeId, StreamKind), DataStream>,
    /// Batches that arrived while stalled, waiting to be read.
    held: Vec<(u64, End, StreamKind, Vec<Bytes>)>,
    /// Frames received: with the simulated connection they came on.
    pub received: Vec<(u64, Inbound)>,
    pub events: Vec<(u64, Event)>,
}

/// The whole simulated cluster.
pub struct SimNet {
    pub now_ms: u64,
    pub rng: SmallRng,
    pub config: MeshConfig,
    pub nodes: BTreeMap<NodeId, SimNode>,
    queue: BTreeMap<(u64, u64), Action>,
    seq: u64,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    partitioned: BTreeMap<(NodeId, NodeId), u64>,
    /// One-way delay range, milliseconds.
    pub delay_ms: (u64, u64),
}

impl SimNet {
    pub fn new(seed: u64, nodes: u16, config: MeshConfig) -> SimNet {
        let mut net = SimNet {
            now_ms: 0,
            rng: SmallRng::seed_from_u64(seed),
            config,
            nodes: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            next_link: 1,
            partitioned: BTreeMap::new(),
            delay_ms: (1, 20),
        };
        for i in 1..=nodes {
            let node = SimNode {
                mesh: None,
                boot: 0,
                stalled: false,
                readers: BTreeMap::new(),
                held: Vec::new(),
                received: Vec::new(),
                events: Vec::new(),
            };
            net.nodes.insert(NodeId(i), node);
        }
        for i in 1..=nodes {
            net.start(NodeId(i));
        }
        net
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// (Re)starts a node as a new run.
    pub fn start(&mut self, node: NodeId) {
        let peers = self.ids();
        let seed = self.rng.gen();
        let config = self.config.clone();
        let now = self.now_ms;
        let sim = self.nodes.get_mut(&node).expect("node");
        sim.boot += 1;
        sim.readers.clear();
        sim.held.clear();
        sim.mesh = Some(Mesh::new(config, node, Boot(sim.boot), &peers, now, seed));
        // Its earlier run's connections: a stateless reset closes them at the peers now.
        let links: Vec<u64> =
            self.links.iter().filter(|(_, l)| l.a.0 == node || l.b.0 == node).map(|(id, _)| *id).collect();
        for id in links {
            let link = self.links.remove(&id).expect("listed");
            let other = if link.a.0 == node { link.b } else { link.a };
            let at = self.now_ms + self.delay();
            let boot = self.nodes[&other.0].boot;
            self.schedule(at, Action::Closed { at: other, boot, link: id });
        }
        self.pump(node);
    }

    /// The node's process dies: its peers notice at their idle timeout.
    pub fn crash(&mut self, node: NodeId) {
        let sim = self.nodes.get_mut(&node).expect("node");
        sim.mesh = None;
        let links: Vec<u64> =
            self.links.iter().filter(|(_, l)| l.a.0 == node || l.b.0 == node).map(|(id, _)| *id).collect();
        for id in links {
            let link = &self.links[&id];
            let other = if link.a.0 == node { link.b } else { link.a };
            let at = self.now_ms + self.config.idle_timeout_ms;
            let boot = self.nodes[&other.0].boot;
            self.schedule(at, Action::Closed { at: other, boot, link: id });
        }
    }

    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.partitioned.entry((a.min(b), a.max(b))).or_insert(self.now_ms);
    }

    /// The connections between `a` and `b` fail now, at both ends (a path that stopped
    /// answering, a NAT rebinding): what was in flight on them is lost, and the meshes redial.
    pub fn break_link(&mut self, a: NodeId, b: NodeId) {
        let pair = (a.min(b), a.max(b));
        let links: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| (l.a.0.min(l.b.0), l.a.0.max(l.b.0)) == pair)
            .map(|(id, _)| *id)
            .collect();
        for id in links {
            self.close_both_ends(id);
        }
    }

    /// The link is gone: both ends hear that its connection closed, now.
    fn close_both_ends(&mut self, id: u64) {
        let link = self.links.remove(&id).expect("listed");
        for end in [link.a, link.b] {
            let boot = self.nodes[&end.0].boot;
            self.schedule(self.now_ms, Action::Closed { at: end, boot, link: id });
        }
    }

    pub fn heal_all(&mut self) {
        self.partitioned.clear();
    }

    fn is_partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partitioned.contains_key(&(a.min(b), a.max(b)))
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(self.delay_ms.0..=self.delay_ms.1)
    }

    fn schedule(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.queue.insert((at, self.seq), action);
    }

    /// Sends from `from` to `to` through its mesh.
    pub fn send(
        &mut self,
        from: NodeId,
        to: NodeId,
        class: Class,
        lane_key: u64,
        frame: Bytes,
    ) -> Result<(), SendError> {
        let now = self.now_ms;
        let mesh = self.nodes.get_mut(&from).and_then(|n| n.mesh.as_mut()).ok_or(SendError::Down)?;
        let result = mesh.send(to, class, lane_key, frame, now);
        self.pump(from);
        result
    }

    /// When the network next has something to do: an action falls due, or a mesh's timer.
    /// A simulator that runs more than the mesh steps the network to it with
    /// [`SimNet::run_until`], and handles what the nodes received in between.
    pub fn next_due(&self) -> Option<u64> {
        let next_action = self.queue.keys().next().map(|(at, _)| *at);
        let next_timer = self.nodes.values().filter_map(|n| n.mesh.as_ref().and_then(|m| m.poll_timeout())).min();
        next_action.into_iter().chain(next_timer).min()
    }

    /// Runs the network until `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        loop {
            let next_action = self.queue.keys().next().map(|(at, _)| *at);
            let next = self.next_due().unwrap_or(until_ms).min(until_ms);
            if next > until_ms {
                break;
            }
            self.now_ms = self.now_ms.max(next);
            self.expire_partitions();
            if next_action == Some(next) {
                let (_, action) = self.queue.pop_first().expect("due");
                self.act(action);
            }
            for node in self.ids() {
                let now = self.now_ms;
                if let Some(mesh) = self.nodes.get_mut(&node).and_then(|n| n.mesh.as_mut()) {
                    if mesh.poll_timeout().is_some_and(|t| t <= now) {
                        mesh.handle_timeout(now);
                    }
                }
                self.pump(node);
            }
            if next == until_ms && next_action != Some(next) {
                break;
            }
        }
    }

    /// Partitions that outlast the idle timeout close the connections across them.
    fn expire_partitions(&mut self) {
        let idle = self.config.idle_timeout_ms;
        let expired: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| {
                self.partitioned
                    .get(&(l.a.0.min(l.b.0), l.a.0.max(l.b.0)))
                    .is_some_and(|since| self.now_ms >= since + idle)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close_both_ends(id);
        }
    }

    fn mesh(&mut self, node: NodeId) -> Option<&mut Mesh> {
        self.nodes.get_mut(&node).and_then(|n| n.mesh.as_mut())
    }

    fn link_of(&self, end: End) -> Option<u64> {
        self.links.iter().find(|(_, l)| l.a == end || l.b == end).map(|(id, _)| *id)
    }

    fn current(&self, node: NodeId, boot: u64) -> bool {
        self.nodes[&node].boot == boot && self.nodes[&node].mesh.is_some()
    }

    fn act(&mut self, action: Action) {
        let now = self.now_ms;
        match action {
            Action::Establish { from, boot, to } => {
                if !self.current(from.0, boot) {
                    return;
                }
                if self.mesh(to).is_none() || self.is_partitioned(from.0, to) {
                    self.schedule(now, Action::DialFailed { at: from, boot });
                    return;
                }
                let accepted = self.mesh(to).expect("checked").handle_accepted(now, from.0).expect("configured");
                let id = self.next_link;
                self.next_link += 1;
                self.links.insert(id, Link { a: from, b: (to, accepted), last_delivery: BTreeMap::new() });
                self.mesh(from.0).expect("checked").handle_dialed(now, from.1);
                self.pump(to);
            }
            Action::DialFailed { at, boot } => {
                if self.current(at.0, boot) {
                    self.mesh(at.0).expect("current").handle_closed(now, at.1);
                }
            }
            Action::Closed { at, boot, link } => {
                self.links.remove(&link);
                if self.current(at.0, boot) {
                    self.mesh(at.0).expect("current").handle_closed(now, at.1);
                }
            }
            Action::Bytes { from, stream, data, link } => {
                let Some(l) = self.links.get(&link) else { return };
                let to = if l.a == from { l.b } else { l.a };
                if self.is_partitioned(from.0, to.0) {
                    // Held in the network (retransmitted) until the partition heals or the
                    // connection times out.
                    self.schedule(now + 10, Action::Bytes { from, stream, data, link });
                    return;
                }
                let sim = self.nodes.get_mut(&to.0).expect("node");
                if sim.mesh.is_none() {
                    return;
                }
                if sim.stalled && stream != StreamKind::Control {
                    sim.held.push((link, from, stream, data));
                    return;
                }
                self.consume(to, from, stream, data, link);
            }
        }
    }

    /// The receiving end reads a batch: frames to the node, control to the mesh; then the
    /// writer hears its batch was taken (flow control credit back).
    fn consume(&mut self, to: End, from: End, stream: StreamKind, data: Vec<Bytes>, link: u64) {
        let now = self.now_ms;
        let config = self.config.clone();
        let sim = self.nodes.get_mut(&to.0).expect("node");
        let reader = sim.readers.entry((to.1, from.0, stream)).or_insert_with(|| DataStream::new(&config, from.0));
        for chunk in &data {
            reader.push(chunk);
        }
        let mut items = Vec::new();
        let mut error = None;
        loop {
            match reader.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        for item in items {
            let sim = self.nodes.get_mut(&to.0).expect("node");
            let Some(mesh) = sim.mesh.as_mut() else { return };
            match item {
                // Every stream's header, as the shell passes them (`rt::driver`'s reader).
                DataItem::Header(header) => mesh.handle_header(now, to.1, header),
                DataItem::Control(control) => mesh.handle_control(now, to.1, control),
                DataItem::Frame(frame) => sim.received.push((link, frame)),
            }
        }
        if let Some(error) = error {
            if let Some(mesh) = self.mesh(to.0) {
                mesh.handle_stream_error(now, to.1, &error);
            }
        }
        let open = self.links.contains_key(&link);
        if let Some(mesh) = self.mesh(from.0).filter(|_| open) {
            mesh.handle_written(from.1, stream);
            self.ready(from, stream);
        }
        self.pump(to.0);
        self.pump(from.0);
    }

    /// A stalled node starts reading again.
    pub fn unstall(&mut self, node: NodeId) {
        let sim = self.nodes.get_mut(&node).expect("node");
        sim.stalled = false;
        for (link, from, stream, data) in std::mem::take(&mut sim.held) {
            let Some(l) = self.links.get(&link) else { continue };
            let to = if l.a == from { l.b } else { l.a };
            self.consume(to, from, stream, data, link);
        }
    }

    /// Writes the stream's next batch onto the network, if the mesh has one.
    fn ready(&mut self, at: End, stream: StreamKind) {
        let Some(link) = self.link_of(at) else { return };
        let Some(batch) = self.mesh(at.0).and_then(|m| m.take_batch(at.1, stream)) else { return };
        let delay = self.delay();
        let l = self.links.get_mut(&link).expect("found");
        let last = l.last_delivery.entry((at.0, stream)).or_insert(0);
        let deliver_at = (self.now_ms + delay).max(*last);
        *last = deliver_at;
        self.schedule(deliver_at, Action::Bytes { from: at, stream, data: batch, link });
    }

    /// Carries out a node's effects and keeps its events.
    fn pump(&mut self, node: NodeId) {
        loop {
            let now = self.now_ms;
            let Some(mesh) = self.mesh(node) else { return };
            if let Some(effect) = mesh.poll_effect() {
                match effect {
                    Effect::Dial { conn, node: to } => {
                        let at = now + 2 * self.delay();
                        let boot = self.nodes[&node].boot;
                        self.schedule(at, Action::Establish { from: (node, conn), boot, to });
                    }
                    Effect::Close { conn, .. } => {
                        if let Some(id) = self.link_of((node, conn)) {
                            let link = self.links.remove(&id).expect("found");
                            let other = if link.a == (node, conn) { link.b } else { link.a };
                            let at = now + self.delay();
                            let boot = self.nodes[&other.0].boot;
                            self.schedule(at, Action::Closed { at: other, boot, link: id });
                        }
                    }
                    Effect::Ready { conn, stream } => self.ready((node, conn), stream),
                }
                continue;
            }
            if let Some(event) = mesh.poll_event() {
                let sim = self.nodes.get_mut(&node).expect("node");
                if let Event::Frame(frame) = &event {
                    let link = u64::MAX; // control frames: checked per run, not per link
                    sim.received.push((link, frame.clone()));
                }
                sim.events.push((now, event));
                continue;
            }
            return;
        }
    }

    /// Whether every pair of running nodes has chosen one connection, the same one at both
    /// ends.
    pub fn all_connected(&self) -> bool {
        let running: BTreeSet<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.mesh.is_some()).map(|(id, _)| *id).collect();
        running.iter().all(|a| {
            let mesh = self.nodes[a].mesh.as_ref().expect("running");
            running.iter().filter(|b| *b != a).all(|b| {
                let theirs = self.nodes[b].mesh.as_ref().expect("running").chosen(*a);
                match (mesh.chosen(*b), theirs) {
                    (Some(mine), Some(theirs)) => {
                        let link = self.link_of((*a, mine));
                        link.is_some() && link == self.link_of((*b, theirs))
                    }
                    _ => false,
                }
            })
        })
    }

    /// A line per pair: chosen connections, links and SWIM's view (for failing seeds); with
    /// `SIM_EVENTS` set in the environment, every node's events before its lines.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (id, sim) in &self.nodes {
            let Some(mesh) = &sim.mesh else {
                out += &format!("node {id}: crashed\n");
                continue;
            };
            if std::env::var("SIM_EVENTS").is_ok() {
                for (at, e) in &sim.events {
                    if !matches!(e, crate::mesh::Event::Frame(_)) {
                        out += &format!("  node {id} at {at}: {e:?}\n");
                    }
                }
            }
            for other in self.nodes.keys().filter(|o| *o != id) {
                let chosen = mesh.chosen(*other);
                out += &format!(
                    "node {id} boot {} -> {other}: chosen {chosen:?} link {:?}; connections {:?}; dialing {:?}; live {:?}; queued {:?}\n",
                    mesh.boot(),
                    chosen.and_then(|c| self.link_of((*id, c))),
                    mesh.connections(*other),
                    mesh.dialing(*other),
                    mesh.live(),
                    self.queued(*id, *other)
                );
            }
        }
        out
    }

    /// Bytes queued at `from` for `to`, per class.
    pub fn queued(&self, from: NodeId, to: NodeId) -> [usize; 3] {
        let depths = self.nodes[&from].mesh.as_ref().map(|m| m.depths()).unwrap_or_default();
        depths.get(&to).map(|d| Class::ALL.map(|c| d.bytes(c))).unwrap_or_default()
    }

    /// Batches held by stalled nodes (bounded: one per stream).
    pub fn held(&self, node: NodeId) -> usize {
        self.nodes[&node].held.len()
    }
}
