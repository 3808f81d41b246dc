//! One node's view of the mesh, sans-IO: connections and the one chosen per pair, outbound
//! queues and the batches written from them, redials, and membership.
//!
//! Driven like quinn-proto's `Connection`: feed it what happened with `handle_*(now, …)`
//! (times in milliseconds on any monotonic clock, real or simulated), then take what it
//! decided with [`Mesh::poll_effect`] (dial, close, a stream has bytes to write) and
//! [`Mesh::poll_event`] (for the node: members up and down, connections, control frames),
//! and call [`Mesh::handle_timeout`] at [`Mesh::poll_timeout`]. The bytes of a stream are
//! taken with [`Mesh::take_batch`] when its writer is free.
//!
//! # One connection per pair
//! Both nodes dial whenever they have no connection, so whoever is first wins the race, and
//! the pair settles deterministically: only the lower-numbered node chooses. It chooses the
//! first connection on which it has read the peer's control header, says so with a `Chosen`
//! frame on it, and closes any other. The higher node writes the caller's frames only on
//! the connection it was told is chosen. So neither side ever writes a caller's frame on a
//! connection the other will close, and a lane's frames all travel one connection.
//!
//! # Runs of a node
//! Every stream header carries the sender's boot id. A header with a later boot than the
//! one known means the node restarted: what was queued for the old run is dropped, the old
//! run is reported down at once (without waiting for SWIM), and connections to it closed.

use crate::backoff::Backoff;
use crate::class::{Class, StreamKind};
use crate::config::MeshConfig;
use crate::frame::{self, Control, StreamHeader};
use crate::ids::{Boot, NodeId};
use crate::membership::{Change, Member, Swim};
use crate::queue::{Depth, PeerQueues, Queued, SendError};
use bytes::{BufMut, Bytes, BytesMut};
use rand::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A connection, named by the mesh (not by QUIC: a new connection always gets a new id).
pub type ConnId = u64;

/// Frames smaller than this are copied into the batch buffer; larger ones go to the stream
/// as they are (no copy).
const COPY_BYTES_MAX: usize = 4096;

/// Connection-scoped control bytes (SWIM's messages) waiting for a control stream that is not
/// being written; past it SWIM's messages are dropped, as SWIM expects of a lossy path.
const CONTROL_BYTES_MAX: usize = 256 * 1024;

/// Why the mesh closes a connection (sent as the QUIC application error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// The pair settled on another connection.
    Duplicate = 1,
    /// The peer restarted; this connection belongs to its earlier run.
    Stale = 2,
    /// The peer broke the stream format.
    Protocol = 3,
    /// Not a configured peer, or a stream header claiming another node's id.
    Refused = 4,
    /// This node is stopping.
    Shutdown = 5,
    /// The node id is held by a live earlier run: two processes cannot share one id.
    InUse = 6,
    /// SWIM declared the peer's run down, and what was queued for it is gone. If the run is
    /// alive after all, both ends start again on a new connection, whose `Connected` tells
    /// each of them that frames were lost.
    Down = 7,
}

/// What the mesh asks its shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Open a connection to `node`; report it with [`Mesh::handle_dialed`] or
    /// [`Mesh::handle_closed`].
    Dial {
        conn: ConnId,
        node: NodeId,
    },
    Close {
        conn: ConnId,
        code: CloseCode,
    },
    /// The stream has bytes to write: call [`Mesh::take_batch`] when its writer is free.
    Ready {
        conn: ConnId,
        stream: StreamKind,
    },
}

/// A frame from a peer, as the node receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: NodeId,
    /// The run of the sender that wrote it.
    pub boot: Boot,
    pub class: Class,
    pub lane: u16,
    /// When the sender queued it (its clock, microseconds since the epoch).
    pub stamp: u64,
    pub frame: Bytes,
}

/// What the node hears from the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// SWIM holds the node alive.
    Up { node: NodeId, boot: Boot },
    /// Declared down by SWIM, or replaced by a later run: what it held for us is gone, its
    /// connections are closed, and `send` to it fails until it is up again or a new
    /// connection of it opens.
    Down { node: NodeId, boot: Boot },
    /// A connection was chosen: frames flow. Frames sent before it on an earlier connection
    /// may have been lost (the caller repairs by sequence numbers).
    Connected { node: NodeId, boot: Boot },
    /// The chosen connection closed; frames wait in the queues for the next one.
    Disconnected { node: NodeId },
    /// `by` refused this node: it holds a live run of this node's id that started earlier,
    /// still connected. A restart meets this only until its stateless reset has closed the
    /// earlier run's connection (a moment); refusals that go on mean another process runs
    /// under this id.
    IdInUse { by: NodeId },
    /// A control-class frame (live and bulk frames go from their stream reader to the node
    /// directly: see [`DataStream`]).
    Frame(Inbound),
}

/// Counters the mesh keeps (atomics, so metrics can read them from any thread).
#[derive(Default, Debug)]
pub struct Counters {
    pub frames_out: [AtomicU64; 3],
    pub bytes_out: [AtomicU64; 3],
    pub frames_in: [AtomicU64; 3],
    pub bytes_in: [AtomicU64; 3],
    /// Chosen connections after the first, per peer.
    pub reconnects: AtomicU64,
    /// Connections refused: not a configured peer, a header claiming another node's id, or
    /// a certificate the TLS layer refused (counted by the shell).
    pub refused: AtomicU64,
    /// Connections closed for breaking the stream format.
    pub protocol_errors: AtomicU64,
    /// Frames dropped from the queues of a peer that went down or restarted.
    pub dropped: AtomicU64,
    /// Connections of a later run refused while an earlier run of its id was alive and
    /// connected.
    pub in_use: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

struct OutStream {
    header_sent: bool,
    /// A batch is with the writer.
    busy: bool,
    /// A `Ready` effect is out and not yet answered with `take_batch`.
    ready: bool,
}

struct Conn {
    node: NodeId,
    peer_boot: Option<Boot>,
    /// Both sides write the caller's frames on it.
    chosen: bool,
    /// Connection-scoped control frames (SWIM, `Chosen`), encoded, before the caller's.
    control: VecDeque<Bytes>,
    control_bytes: usize,
    streams: BTreeMap<StreamKind, OutStream>,
}

struct Peer {
    depth: Arc<Depth>,
    queues: PeerQueues,
    chosen: Option<ConnId>,
    dialing: Option<ConnId>,
    redial_at_ms: Option<u64>,
    backoff: Backoff,
    /// The run SWIM holds alive, if any.
    member: Option<Member>,
    /// The latest run seen in a stream header.
    boot: Option<Boot>,
    ever_connected: bool,
}

pub struct Mesh {
    config: MeshConfig,
    me: NodeId,
    boot: Boot,
    peers: BTreeMap<NodeId, Peer>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    swim: Swim,
    rng: rand::rngs::SmallRng,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    counters: Arc<Counters>,
}

impl Mesh {
    /// A node `me` in run `boot` with these peers (itself excluded), dialing all of them at
    /// `now_ms`. `seed` drives every random choice (redial jitter, SWIM's probe order).
    pub fn new(config: MeshConfig, me: NodeId, boot: Boot, peers: &[NodeId], now_ms: u64, seed: u64) -> Mesh {
        config.check().expect("mesh configuration");
        let identity = Member { node: me, boot, renewal: 0 };
        let swim = Swim::new(identity, &config, peers.len() + 1, seed ^ 0x5317);
        let peers = peers
            .iter()
            .filter(|p| **p != me)
            .map(|p| {
                (
                    *p,
                    Peer {
                        depth: Arc::new(Depth::default()),
                        queues: PeerQueues::new(config.lanes),
                        chosen: None,
                        dialing: None,
                        redial_at_ms: Some(now_ms),
                        backoff: Backoff::new(config.redial_base_ms, config.redial_cap_ms),
                        member: None,
                        boot: None,
                        ever_connected: false,
                    },
                )
            })
            .collect();
        let mut mesh = Mesh {
            config,
            me,
            boot,
            peers,
            conns: BTreeMap::new(),
            next_conn: 1,
            swim,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            counters: Arc::new(Counters::default()),
        };
        mesh.handle_timeout(now_ms);
        mesh
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn boot(&self) -> Boot {
        self.boot
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Each peer's byte counts, for senders on other threads ([`Mesh::enqueue_reserved`]).
    pub fn depths(&self) -> BTreeMap<NodeId, Arc<Depth>> {
        self.peers.iter().map(|(node, peer)| (*node, peer.depth.clone())).collect()
    }

    /// The nodes SWIM holds alive, with their runs.
    pub fn live(&self) -> Vec<(NodeId, Boot)> {
        self.peers.iter().filter_map(|(node, p)| p.member.map(|m| (*node, m.boot))).collect()
    }

    /// The connection chosen for `node`, if any.
    pub fn chosen(&self, node: NodeId) -> Option<ConnId> {
        self.peers.get(&node).and_then(|p| p.chosen)
    }

    /// Every open connection to `node`: its id, the peer's run once its header was read, and
    /// whether it is the chosen one (for describing a failing simulation).
    pub fn connections(&self, node: NodeId) -> Vec<(ConnId, Option<Boot>, bool)> {
        self.conns.iter().filter(|(_, c)| c.node == node).map(|(id, c)| (*id, c.peer_boot, c.chosen)).collect()
    }

    /// The dial in progress to `node`, and when the next one is due, if any.
    pub fn dialing(&self, node: NodeId) -> (Option<ConnId>, Option<u64>) {
        self.peers.get(&node).map_or((None, None), |p| (p.dialing, p.redial_at_ms))
    }

    /// Whether frames to `node` are flowing on a chosen connection.
    pub fn is_connected(&self, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| p.chosen.is_some())
    }

    // ---- Sending -------------------------------------------------------------------------

    /// Queues `frame` for `node` on `class` (live frames on the lane `lane_key` picks).
    /// Never waits: a full queue, a peer that is down, or a frame over the class's limit is
    /// an error for the caller to handle.
    pub fn send(
        &mut self,
        node: NodeId,
        class: Class,
        lane_key: u64,
        frame: Bytes,
        stamp: u64,
    ) -> Result<(), SendError> {
        let peer = self.peers.get(&node).ok_or(SendError::UnknownNode)?;
        peer.depth.admit(class, frame.len(), &self.config)?;
        self.enqueue_reserved(node, class, lane_key, Queued { frame, stamp });
        Ok(())
    }

    /// Queues a frame whose room a sender already reserved on the peer's [`Depth`].
    pub fn enqueue_reserved(&mut self, node: NodeId, class: Class, lane_key: u64, item: Queued) {
        let stream = StreamKind::for_class(class, lane_key, self.config.lanes);
        let Some(peer) = self.peers.get_mut(&node) else { return };
        if peer.depth.is_down() {
            // It went down between the reservation and now: the frame goes as the queue did.
            peer.depth.release(class, item.frame.len());
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        let was_empty = peer.queues.push_reserved(stream, item);
        if was_empty {
            if let Some(conn) = peer.chosen {
                self.wake(conn, stream);
            }
        }
    }

    /// The next bytes for a stream whose writer is free, or `None` if it has nothing (its
    /// next `Ready` effect says when it has). Call [`Mesh::handle_written`] when they are
    /// written.
    pub fn take_batch(&mut self, conn_id: ConnId, stream: StreamKind) -> Option<Vec<Bytes>> {
        let conn = self.conns.get_mut(&conn_id)?;
        let out = conn.streams.entry(stream).or_insert(OutStream { header_sent: false, busy: false, ready: false });
        out.ready = false;
        if out.busy {
            return None;
        }
        let peer = self.peers.get_mut(&conn.node).expect("a connection's peer is configured");
        let mut chunks = Vec::new();
        let mut buf = BytesMut::new();
        if !out.header_sent {
            StreamHeader { kind: stream, node: self.me, boot: self.boot }.encode(&mut buf);
        }
        let class = stream.class();
        let (mut frames, mut bytes) = (0u64, 0usize);
        if stream == StreamKind::Control {
            while let Some(frame) = conn.control.pop_front() {
                buf.put_slice(&frame);
            }
            conn.control_bytes = 0;
        }
        while conn.chosen && bytes < self.config.batch_bytes_max {
            let Some(item) = peer.queues.pop(stream, &peer.depth) else { break };
            frames += 1;
            bytes += item.frame.len();
            if stream == StreamKind::Control {
                Control::App { stamp: item.stamp, frame: item.frame }.encode(&mut buf);
            } else if item.frame.len() < COPY_BYTES_MAX {
                buf.put_slice(&frame::data_envelope(item.stamp, item.frame.len()));
                buf.put_slice(&item.frame);
            } else {
                buf.put_slice(&frame::data_envelope(item.stamp, item.frame.len()));
                chunks.push(buf.split().freeze());
                chunks.push(item.frame);
            }
        }
        if !buf.is_empty() {
            chunks.push(buf.freeze());
        }
        if chunks.is_empty() {
            return None;
        }
        Counters::add(&self.counters.frames_out[class.index()], frames);
        Counters::add(&self.counters.bytes_out[class.index()], bytes as u64);
        out.header_sent = true;
        out.busy = true;
        Some(chunks)
    }

    /// The writer finished the last batch of `stream`; the caller takes the next at once.
    pub fn handle_written(&mut self, conn: ConnId, stream: StreamKind) {
        if let Some(out) = self.conns.get_mut(&conn).and_then(|c| c.streams.get_mut(&stream)) {
            out.busy = false;
        }
    }

    fn wake(&mut self, conn_id: ConnId, stream: StreamKind) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let out = conn.streams.entry(stream).or_insert(OutStream { header_sent: false, busy: false, ready: false });
        if !out.busy && !out.ready {
            out.ready = true;
            self.effects.push_back(Effect::Ready { conn: conn_id, stream });
        }
    }

    fn push_control(&mut self, conn_id: ConnId, control: Control) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let mut buf = BytesMut::new();
        control.encode(&mut buf);
        if matches!(control, Control::Swim(_)) && conn.control_bytes + buf.len() > CONTROL_BYTES_MAX {
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        conn.control_bytes += buf.len();
        conn.control.push_back(buf.freeze());
        self.wake(conn_id, StreamKind::Control);
    }

    // ---- Connections ---------------------------------------------------------------------

    /// A dial asked for by [`Effect::Dial`] completed its TLS handshake with `node`.
    pub fn handle_dialed(&mut self, _now_ms: u64, conn: ConnId) {
        let Some(node) = self.peers.iter().find(|(_, p)| p.dialing == Some(conn)).map(|(n, _)| *n) else {
            // Cancelled meanwhile (the pair settled on another connection).
            self.effects.push_back(Effect::Close { conn, code: CloseCode::Duplicate });
            return;
        };
        self.open(conn, node);
    }

    /// A peer dialed us; its certificate names `node`. Returns the connection's id, or
    /// `None` if `node` is not a configured peer (the connection is to be closed, code
    /// [`CloseCode::Refused`]).
    pub fn handle_accepted(&mut self, _now_ms: u64, node: NodeId) -> Option<ConnId> {
        if !self.peers.contains_key(&node) {
            Counters::add(&self.counters.refused, 1);
            return None;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.open(conn, node);
        Some(conn)
    }

    fn open(&mut self, conn: ConnId, node: NodeId) {
        self.conns.insert(
            conn,
            Conn {
                node,
                peer_boot: None,
                chosen: false,
                control: VecDeque::new(),
                control_bytes: 0,
                streams: BTreeMap::new(),
            },
        );
        // The control header goes out at once: the peer learns our run from it.
        self.wake(conn, StreamKind::Control);
    }

    /// The peer's header on one of its streams of `conn`.
    pub fn handle_header(&mut self, now_ms: u64, conn_id: ConnId, header: StreamHeader) {
        let Some(conn) = self.conns.get(&conn_id) else { return };
        let node = conn.node;
        if header.node != node {
            // The certificate says one node, the header another.
            self.handle_stream_error(now_ms, conn_id, &frame::StreamError::WrongNode { claimed: header.node.0 });
            return;
        }
        if let Some(known) = conn.peer_boot {
            if known != header.boot {
                Counters::add(&self.counters.protocol_errors, 1);
                self.close(now_ms, conn_id, CloseCode::Protocol);
            }
            return;
        }
        let in_use = self.earlier_run_connected(node, header.boot);
        let peer = self.peers.get_mut(&node).expect("a connection's peer is configured");
        match peer.boot {
            Some(latest) if header.boot < latest => {
                // A connection from a run that has since restarted.
                self.close(now_ms, conn_id, CloseCode::Stale);
                return;
            }
            // SWIM holds the earlier run alive and it still has a connection here: a second
            // process under the same id. (A restarted process answers the earlier run's
            // packets with a stateless reset, which closes that connection at once; a run
            // with no connection left is taken to be gone, as before.) The earlier run keeps
            // the id; the later one hears why and dials again.
            Some(_) if in_use => {
                Counters::add(&self.counters.in_use, 1);
                self.close(now_ms, conn_id, CloseCode::InUse);
                return;
            }
            Some(latest) if header.boot > latest => self.restarted(now_ms, node, header.boot),
            Some(_) => {}
            None => peer.boot = Some(header.boot),
        }
        self.conns.get_mut(&conn_id).expect("checked above").peer_boot = Some(header.boot);
        // A new connection of the run is proof that it is alive, whatever SWIM still holds:
        // frames for it are taken again (its `Down` closed the earlier connection). Both
        // ends start sending as soon as they see the new one, the higher node before it has
        // heard the choice, and neither end's answers may be refused meanwhile, its answers
        // to their subscriptions above all.
        self.peers.get_mut(&node).expect("configured").depth.set_down(false);
        self.swim.announce(now_ms, Member { node, boot: header.boot, renewal: 0 });
        self.route_swim(now_ms);
        if self.me < node && self.peers[&node].chosen.is_none() {
            self.push_control(conn_id, Control::Chosen);
            self.choose(now_ms, conn_id);
        }
    }

    /// A control frame from the peer on `conn`.
    pub fn handle_control(&mut self, now_ms: u64, conn_id: ConnId, control: Control) {
        let Some(conn) = self.conns.get(&conn_id) else { return };
        let node = conn.node;
        let Some(boot) = conn.peer_boot else {
            // Every control frame comes after the header on the same stream.
            self.handle_stream_error(now_ms, conn_id, &frame::StreamError::NoHeader);
            return;
        };
        match control {
            Control::Swim(data) => {
                self.swim.handle_data(now_ms, &data);
                self.route_swim(now_ms);
                self.apply_changes(now_ms);
            }
            // Only the lower node chooses.
            Control::Chosen if node < self.me => self.choose(now_ms, conn_id),
            Control::Chosen => self.handle_stream_error(now_ms, conn_id, &frame::StreamError::UnknownControl(2)),
            Control::App { stamp, frame } => {
                Counters::add(&self.counters.frames_in[Class::Control.index()], 1);
                Counters::add(&self.counters.bytes_in[Class::Control.index()], frame.len() as u64);
                self.events.push_back(Event::Frame(Inbound {
                    from: node,
                    boot,
                    class: Class::Control,
                    lane: 0,
                    stamp,
                    frame,
                }));
            }
        }
    }

    /// A reader of one of `conn`'s streams found the peer at fault: a header claiming
    /// another node's id is refused, anything else breaks the format.
    pub fn handle_stream_error(&mut self, now_ms: u64, conn: ConnId, error: &frame::StreamError) {
        if let frame::StreamError::WrongNode { .. } = error {
            Counters::add(&self.counters.refused, 1);
            self.close(now_ms, conn, CloseCode::Refused);
        } else {
            Counters::add(&self.counters.protocol_errors, 1);
            self.close(now_ms, conn, CloseCode::Protocol);
        }
    }

    fn choose(&mut self, now_ms: u64, conn_id: ConnId) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let (node, boot) = (conn.node, conn.peer_boot.expect("chosen after its header"));
        conn.chosen = true;
        let peer = self.peers.get_mut(&node).expect("a connection's peer is configured");
        let previous = peer.chosen.replace(conn_id);
        if peer.ever_connected {
            Counters::add(&self.counters.reconnects, 1);
        }
        peer.ever_connected = true;
        peer.backoff.reset();
        peer.redial_at_ms = None;
        let dialing = peer.dialing.take();
        let others: Vec<ConnId> =
            self.conns.iter().filter(|(id, c)| c.node == node && **id != conn_id).map(|(id, _)| *id).collect();
        for other in
            others.into_iter().chain(previous.filter(|p| *p != conn_id)).chain(dialing.filter(|d| *d != conn_id))
        {
            self.close(now_ms, other, CloseCode::Duplicate);
        }
        self.events.push_back(Event::Connected { node, boot });
        let waiting: Vec<StreamKind> = self.peers[&node].queues.nonempty().collect();
        for stream in waiting {
            self.wake(conn_id, stream);
        }
    }

    /// Whether SWIM holds a run of `node` earlier than `boot` alive and a connection of that
    /// run is open.
    fn earlier_run_connected(&self, node: NodeId, boot: Boot) -> bool {
        let Some(earlier) = self.peers[&node].member.filter(|m| m.boot < boot) else { return false };
        self.conns.values().any(|c| c.node == node && c.peer_boot == Some(earlier.boot))
    }

    /// The node restarted as `boot`: its earlier run is gone with everything queued for it.
    fn restarted(&mut self, now_ms: u64, node: NodeId, boot: Boot) {
        let peer = self.peers.get_mut(&node).expect("configured");
        peer.boot = Some(boot);
        if let Some(old) = peer.member.take() {
            self.events.push_back(Event::Down { node, boot: old.boot });
        }
        let dropped = peer.queues.clear(&peer.depth);
        Counters::add(&self.counters.dropped, dropped as u64);
        // Nothing is declared about the new run yet: frames for it queue.
        peer.depth.set_down(false);
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.node == node && c.peer_boot.is_some_and(|b| b < boot))
            .map(|(id, _)| *id)
            .collect();
        for conn in stale {
            self.close(now_ms, conn, CloseCode::Stale);
        }
    }

    fn close(&mut self, now_ms: u64, conn: ConnId, code: CloseCode) {
        if self.conns.contains_key(&conn) || self.peers.values().any(|p| p.dialing == Some(conn)) {
            self.effects.push_back(Effect::Close { conn, code });
            self.handle_closed(now_ms, conn);
        }
    }

    /// The peer closed `conn` with [`CloseCode::InUse`]: it holds a live earlier run of this
    /// node's id.
    pub fn handle_refused_in_use(&mut self, now_ms: u64, conn_id: ConnId) {
        let by = self
            .conns
            .get(&conn_id)
            .map(|c| c.node)
            .or_else(|| self.peers.iter().find(|(_, p)| p.dialing == Some(conn_id)).map(|(n, _)| *n));
        if let Some(by) = by {
            self.events.push_back(Event::IdInUse { by });
        }
        self.handle_closed(now_ms, conn_id);
    }

    /// `conn` is gone (closed by either side, timed out, or a dial that failed).
    pub fn handle_closed(&mut self, now_ms: u64, conn_id: ConnId) {
        let conn = self.conns.remove(&conn_id);
        let Some((node, peer)) = self
            .peers
            .iter_mut()
            .find(|(n, p)| p.dialing == Some(conn_id) || conn.as_ref().is_some_and(|c| c.node == **n))
        else {
            return;
        };
        let node = *node;
        if peer.dialing == Some(conn_id) {
            peer.dialing = None;
        }
        if peer.chosen == Some(conn_id) {
            peer.chosen = None;
            self.events.push_back(Event::Disconnected { node });
            // A connection of the peer's run that came while this one was still chosen
            // (the peer saw the old one end first, and dialed again) was not chosen when
            // its header arrived; it is now, or the pair would wait on it forever.
            let latest = peer.boot;
            let waiting = self.conns.iter().find(|(_, c)| latest.is_some() && c.node == node && c.peer_boot == latest);
            if let Some((&next, _)) = waiting.filter(|_| self.me < node) {
                self.push_control(next, Control::Chosen);
                self.choose(now_ms, next);
                return;
            }
        }
        let connected = self.conns.values().any(|c| c.node == node);
        if peer.chosen.is_none() && peer.dialing.is_none() && !connected && peer.redial_at_ms.is_none() {
            peer.redial_at_ms = Some(now_ms + peer.backoff.next_ms(&mut self.rng));
        }
    }

    /// Closes every connection (the node is stopping).
    pub fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.effects.push_back(Effect::Close { conn, code: CloseCode::Shutdown });
        }
        for peer in self.peers.values_mut() {
            peer.redial_at_ms = None;
        }
    }

    // ---- Time and membership -------------------------------------------------------------

    pub fn poll_timeout(&self) -> Option<u64> {
        let redial = self.peers.values().filter_map(|p| p.redial_at_ms).min();
        [redial, self.swim.poll_timeout()].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.swim.handle_timeout(now_ms);
        self.route_swim(now_ms);
        self.apply_changes(now_ms);
        let due: Vec<NodeId> =
            self.peers.iter().filter(|(_, p)| p.redial_at_ms.is_some_and(|at| at <= now_ms)).map(|(n, _)| *n).collect();
        for node in due {
            let peer = self.peers.get_mut(&node).expect("listed above");
            peer.redial_at_ms = None;
            if peer.chosen.is_some() || peer.dialing.is_some() || self.conns.values().any(|c| c.node == node) {
                continue;
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            self.peers.get_mut(&node).expect("listed above").dialing = Some(conn);
            self.effects.push_back(Effect::Dial { conn, node });
        }
    }

    /// SWIM's outgoing messages onto the connections to their members' runs; a member with
    /// no connection loses the message, which is how SWIM learns it is unreachable.
    fn route_swim(&mut self, _now_ms: u64) {
        while let Some((to, data)) = self.swim.poll_send() {
            let target = self
                .conns
                .iter()
                .filter(|(_, c)| c.node == to.node && c.peer_boot == Some(to.boot))
                .max_by_key(|(_, c)| c.chosen)
                .map(|(id, _)| *id);
            if let Some(conn) = target {
                self.push_control(conn, Control::Swim(data));
            }
        }
    }

    fn apply_changes(&mut self, now_ms: u64) {
        while let Some(change) = self.swim.poll_change() {
            match change {
                Change::Up(member) => self.member_up(now_ms, member),
                Change::Down(member) => self.member_down(now_ms, member),
                Change::Renamed { from, to } => {
                    self.member_down(now_ms, from);
                    // Both alive: the later run is up (a restart may already have taken the
                    // earlier one down, on its stream header).
                    if self.swim.live().any(|m| m == to) {
                        self.member_up(now_ms, to);
                    }
                }
            }
        }
    }

    fn member_up(&mut self, now_ms: u64, member: Member) {
        let Some(peer) = self.peers.get_mut(&member.node) else { return };
        if peer.boot.is_some_and(|b| member.boot < b) {
            return; // gossip about an earlier run
        }
        match peer.boot {
            // Heard of through gossip before any stream of its own: its first run we know.
            None => peer.boot = Some(member.boot),
            Some(b) if member.boot > b => self.restarted(now_ms, member.node, member.boot),
            Some(_) => {}
        }
        let peer = self.peers.get_mut(&member.node).expect("checked above");
        match peer.member {
            Some(current) if current == member => return,
            Some(current) => self.events.push_back(Event::Down { node: member.node, boot: current.boot }),
            None => {}
        }
        peer.member = Some(member);
        peer.depth.set_down(false);
        self.events.push_back(Event::Up { node: member.node, boot: member.boot });
    }

    /// The run is down: what was queued for it is dropped, and its connections closed. A
    /// run that was declared down while alive (a partition, a false suspicion, a renewal)
    /// and stayed connected would otherwise carry on as if nothing was lost, with no
    /// `Connected` to tell either end to repair; and the node would have forgotten what the
    /// run had asked of it (its subscriptions) without the run knowing.
    fn member_down(&mut self, now_ms: u64, member: Member) {
        let Some(peer) = self.peers.get_mut(&member.node) else { return };
        if peer.member != Some(member) {
            return;
        }
        peer.member = None;
        peer.depth.set_down(true);
        let dropped = peer.queues.clear(&peer.depth);
        Counters::add(&self.counters.dropped, dropped as u64);
        self.events.push_back(Event::Down { node: member.node, boot: member.boot });
        let of_run: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.node == member.node && c.peer_boot == Some(member.boot))
            .map(|(id, _)| *id)
            .collect();
        for conn in of_run {
            self.close(now_ms, conn, CloseCode::Down);
        }
    }

    // ---- Outputs -------------------------------------------------------------------------

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// The reader of one inbound live or bulk stream: checks its header against the connection
/// and turns its bytes into [`Inbound`] frames. It runs beside the stream (no shared state),
/// so a busy lane is read without a round trip through the mesh.
pub struct DataStream {
    node: NodeId,
    reader: frame::StreamReader,
}

/// What a [`DataStream`] yields.
#[derive(Debug)]
pub enum DataItem {
    /// The stream's header: the control stream's goes to [`Mesh::handle_header`].
    Header(StreamHeader),
    Control(Control),
    Frame(Inbound),
}

impl DataStream {
    /// A stream on a connection whose certificate names `node`.
    pub fn new(config: &MeshConfig, node: NodeId) -> DataStream {
        DataStream { node, reader: frame::StreamReader::new(config.lanes, config.frame_bytes_max) }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.reader.push(data);
    }

    pub fn next_item(&mut self) -> Result<Option<DataItem>, frame::StreamError> {
        let Some(item) = self.reader.next_item()? else { return Ok(None) };
        match (item, self.reader.header()) {
            (frame::Item::Header(header), _) => {
                if header.node != self.node {
                    return Err(frame::StreamError::WrongNode { claimed: header.node.0 });
                }
                Ok(Some(DataItem::Header(header)))
            }
            (frame::Item::Frame(body), Some(header)) if header.kind == StreamKind::Control => {
                Ok(Some(DataItem::Control(Control::decode(body)?)))
            }
            (frame::Item::Frame(body), Some(header)) => {
                let (stamp, frame) = frame::split_data(body)?;
                let lane = match header.kind {
                    StreamKind::Lane(lane) => lane,
                    _ => 0,
                };
                Ok(Some(DataItem::Frame(Inbound {
                    from: header.node,
                    boot: header.boot,
                    class: header.kind.class(),
                    lane,
                    stamp,
                    frame,
                })))
            }
            (frame::Item::Frame(_), None) => unreachable!("the reader yields its header first"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(me: u16) -> Mesh {
        Mesh::new(MeshConfig::default(), NodeId(me), Boot(10), &[NodeId(1), NodeId(2), NodeId(3)], 0, 1)
    }

    fn header(node: u16, boot: u64) -> StreamHeader {
        StreamHeader { kind: StreamKind::Control, node: NodeId(node), boot: Boot(boot) }
    }

    fn effects(mesh: &mut Mesh) -> Vec<Effect> {
        std::iter::from_fn(|| mesh.poll_effect()).collect()
    }

    #[test]
    fn send_refuses_at_once_and_says_why() {
        let mut m = mesh(1);
        let config = MeshConfig::default();
        assert_eq!(m.send(NodeId(9), Class::Live, 0, Bytes::new(), 0), Err(SendError::UnknownNode));
        assert_eq!(m.send(NodeId(1), Class::Live, 0, Bytes::new(), 0), Err(SendError::UnknownNode), "itself");
        let big = Bytes::from(vec![0u8; config.frame_bytes_max(Class::Control) + 1]);
        assert_eq!(m.send(NodeId(2), Class::Control, 0, big, 0), Err(SendError::TooLarge(Class::Control)));
        // No connection yet: frames queue until the class's budget is spent.
        let frame = Bytes::from(vec![0u8; 60 * 1024]);
        let mut sent = 0;
        while m.send(NodeId(2), Class::Control, 0, frame.clone(), 0).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, config.queue_bytes_max(Class::Control) / (frame.len() + crate::queue::ENTRY_BYTES));
        assert_eq!(m.send(NodeId(2), Class::Control, 0, frame.clone(), 0), Err(SendError::Full(Class::Control)));
        // Another peer, another budget.
        assert_eq!(m.send(NodeId(3), Class::Control, 0, frame, 0), Ok(()));
    }

    #[test]
    fn the_lower_node_chooses_and_the_higher_waits_to_be_told() {
        let (mut low, mut high) = (mesh(1), mesh(2));
        effects(&mut low);
        effects(&mut high);
        let a = low.handle_accepted(0, NodeId(2)).unwrap();
        let b = high.handle_accepted(0, NodeId(1)).unwrap();
        low.handle_header(1, a, header(2, 20));
        assert!(low.is_connected(NodeId(2)), "the lower node chooses on the header");
        high.handle_header(1, b, header(1, 10));
        assert!(!high.is_connected(NodeId(1)), "the higher node waits for Chosen");
        high.handle_control(2, b, Control::Chosen);
        assert!(high.is_connected(NodeId(1)));
        // Chosen from a higher node breaks the protocol: the connection is closed.
        let c = low.handle_accepted(3, NodeId(3)).unwrap();
        low.handle_header(3, c, header(3, 30));
        effects(&mut low);
        low.handle_control(4, c, Control::Chosen);
        assert!(effects(&mut low).contains(&Effect::Close { conn: c, code: CloseCode::Protocol }));
        assert!(!low.is_connected(NodeId(3)));
    }

    #[test]
    fn a_header_claiming_another_node_or_an_earlier_run_is_refused() {
        let mut m = mesh(1);
        effects(&mut m);
        let conn = m.handle_accepted(0, NodeId(2)).unwrap();
        m.handle_header(0, conn, header(3, 30));
        assert!(effects(&mut m).contains(&Effect::Close { conn, code: CloseCode::Refused }));
        assert_eq!(m.counters().refused.load(Ordering::Relaxed), 1);
        assert_eq!(m.handle_accepted(0, NodeId(7)), None, "not a configured peer");
        // Run 20 of node 2, then a connection from its run 19: stale.
        let newer = m.handle_accepted(1, NodeId(2)).unwrap();
        m.handle_header(1, newer, header(2, 20));
        let older = m.handle_accepted(2, NodeId(2)).unwrap();
        m.handle_header(2, older, header(2, 19));
        assert!(effects(&mut m).contains(&Effect::Close { conn: older, code: CloseCode::Stale }));
        // A later run drops what was queued for the one before.
        m.send(NodeId(2), Class::Live, 0, Bytes::from_static(b"for run 20"), 0).unwrap();
        let later = m.handle_accepted(3, NodeId(2)).unwrap();
        m.handle_header(3, later, header(2, 21));
        assert_eq!(m.depths()[&NodeId(2)].bytes(Class::Live), 0);
    }

    #[test]
    fn a_later_run_waits_while_the_earlier_one_is_alive_and_connected() {
        let mut m = mesh(1);
        let first = m.handle_accepted(0, NodeId(2)).unwrap();
        m.handle_header(0, first, header(2, 20));
        let run_20 = Member { node: NodeId(2), boot: Boot(20), renewal: 0 };
        m.member_up(0, run_20);
        m.send(NodeId(2), Class::Live, 0, Bytes::from_static(b"for run 20"), 0).unwrap();
        effects(&mut m);
        std::iter::from_fn(|| m.poll_event()).for_each(drop);
        // Run 21 while run 20 is alive: a second process under id 2, or a restart that came
        // back before run 20 was declared down. Refused, and run 20 keeps what it had.
        let second = m.handle_accepted(1, NodeId(2)).unwrap();
        m.handle_header(1, second, header(2, 21));
        assert!(effects(&mut m).contains(&Effect::Close { conn: second, code: CloseCode::InUse }));
        assert_eq!(m.counters().in_use.load(Ordering::Relaxed), 1);
        assert!(m.depths()[&NodeId(2)].bytes(Class::Live) > 0, "run 20's frames kept");
        assert!(std::iter::from_fn(|| m.poll_event()).all(|e| !matches!(e, Event::Down { .. })), "run 20 stays up");
        // With no connection left (a restart resets the earlier run's), or declared down,
        // run 20 gives way: run 21 is a restart.
        m.handle_closed(2, first);
        let third = m.handle_accepted(2, NodeId(2)).unwrap();
        m.handle_header(2, third, header(2, 21));
        assert!(!effects(&mut m).iter().any(|e| matches!(e, Effect::Close { conn, .. } if *conn == third)));
        assert_eq!(m.counters().in_use.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_run_declared_down_loses_its_connection_and_a_new_one_takes_frames_again() {
        let mut m = mesh(1);
        let first = m.handle_accepted(0, NodeId(2)).unwrap();
        m.handle_header(0, first, header(2, 20));
        let run_20 = Member { node: NodeId(2), boot: Boot(20), renewal: 0 };
        m.member_up(0, run_20);
        effects(&mut m);
        std::iter::from_fn(|| m.poll_event()).for_each(drop);
        // Declared down while connected (a partition, a false suspicion): the connection
        // closes, so both ends see a new one and know that frames were lost.
        m.member_down(1, run_20);
        assert!(effects(&mut m).contains(&Effect::Close { conn: first, code: CloseCode::Down }));
        let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(events.contains(&Event::Down { node: NodeId(2), boot: Boot(20) }), "{events:?}");
        assert!(events.contains(&Event::Disconnected { node: NodeId(2) }), "{events:?}");
        assert_eq!(m.send(NodeId(2), Class::Live, 0, Bytes::from_static(b"x"), 1), Err(SendError::Down));
        // The run is alive: its new connection takes frames at once, before SWIM says so.
        let second = m.handle_accepted(2, NodeId(2)).unwrap();
        m.handle_header(2, second, header(2, 20));
        assert_eq!(m.send(NodeId(2), Class::Live, 0, Bytes::from_static(b"x"), 2), Ok(()));
        assert!(
            std::iter::from_fn(|| m.poll_event()).any(|e| e == Event::Connected { node: NodeId(2), boot: Boot(20) })
        );
    }

    #[test]
    fn a_connection_that_came_while_another_was_chosen_is_chosen_when_that_one_closes() {
        let mut m = mesh(1);
        let old = m.handle_accepted(0, NodeId(2)).unwrap();
        m.handle_header(0, old, header(2, 20));
        // The peer saw the old connection end first and dialed again; here it is still open.
        let new = m.handle_accepted(1, NodeId(2)).unwrap();
        m.handle_header(1, new, header(2, 20));
        assert_eq!(m.chosen(NodeId(2)), Some(old));
        effects(&mut m);
        m.handle_closed(2, old);
        assert_eq!(m.chosen(NodeId(2)), Some(new), "or the pair waits on it for good");
        assert!(m.is_connected(NodeId(2)));
    }

    #[test]
    fn the_refused_run_hears_who_refused_it() {
        let mut m = mesh(2);
        effects(&mut m);
        let conn = m.handle_accepted(0, NodeId(1)).unwrap();
        m.handle_refused_in_use(1, conn);
        assert_eq!(m.poll_event(), Some(Event::IdInUse { by: NodeId(1) }));
    }

    #[test]
    fn swim_messages_for_a_control_stream_nobody_writes_are_bounded() {
        let mut m = mesh(1);
        let conn = m.handle_accepted(0, NodeId(2)).unwrap();
        m.handle_header(0, conn, header(2, 20));
        for _ in 0..10_000 {
            m.push_control(conn, Control::Swim(Bytes::from(vec![0u8; 1000])));
        }
        assert!(m.conns[&conn].control_bytes <= CONTROL_BYTES_MAX);
        assert!(m.counters().dropped.load(Ordering::Relaxed) > 0);
    }
}
