//! The backplane between the simulated nodes, with every fate drawn from the seed.
//!
//! It is the mesh's real sans-IO core (`switchboard_backplane::mesh::Mesh`: one connection
//! per pair, a conversation's or a user's frames on one lane, queues bounded in bytes, SWIM,
//! the runs of a node) on the backplane's simulated QUIC (`switchboard_backplane::sim`:
//! delays, streams racing each other, partitions, idle timeouts, stateless resets after a
//! restart), carrying the cluster's real frames (`cluster::wire`, postcard). What is lost is
//! what the mesh loses: whatever was in flight on a connection that closed, and whatever was
//! queued for a run declared down or replaced.
//!
//! On top, two faults the mesh does not make itself, drawn for deliveries only: one refused
//! (a full queue refuses it, and the owner's fan-out drops it; the edge's gap repair fills the
//! hole) and one sent twice. A node's frames to itself are the in-process path, which the
//! world carries at once, never lost.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::Rng;
use switchboard_backplane::mesh::{Event, Inbound};
use switchboard_backplane::queue::SendError;
use switchboard_backplane::sim::SimNet;
use switchboard_backplane::{Boot, Class, MeshConfig, NodeId};

/// The live class's queue per peer, and its largest frame, in the simulator: far below the
/// defaults (8 MiB and 1 MiB), so that a node that stops reading fills its peers' queues for
/// it within a stall of a few hundred virtual ms, and what a full queue refuses is refused
/// by the mesh itself. The simulator's frames are all well under it.
pub const LIVE_QUEUE_BYTES: usize = 4 * 1024;

/// The mesh's settings in the simulator: the defaults' limits but the live queue's, with
/// timers short enough that a seed's few virtual seconds see connections time out, SWIM
/// declare nodes down and up again, and redials back off.
pub fn mesh_config() -> MeshConfig {
    let d = MeshConfig::default();
    let live = Class::Live.index();
    let (mut queue_bytes_max, mut frame_bytes_max) = (d.queue_bytes_max, d.frame_bytes_max);
    (queue_bytes_max[live], frame_bytes_max[live]) = (LIVE_QUEUE_BYTES, LIVE_QUEUE_BYTES);
    MeshConfig {
        queue_bytes_max,
        frame_bytes_max,
        keep_alive_ms: 100,
        idle_timeout_ms: 400,
        redial_base_ms: 10,
        redial_cap_ms: 200,
        probe_period_ms: 100,
        probe_rtt_ms: 40,
        suspect_to_down_ms: 300,
        ..d
    }
}

pub struct Net {
    pub sim: SimNet,
    /// Chance that one delivery is refused.
    pub refusal: f64,
    /// Chance that one delivery is sent twice.
    pub duplication: f64,
    /// Frames the mesh itself refused (a full queue).
    pub full: u64,
}

/// What became of a frame handed to the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Taken,
    /// Refused by a full queue (or drawn as refused, for a delivery): the sender knows.
    Refused,
    /// The mesh holds the peer down.
    Down,
}

/// What one node heard from the mesh since it was last asked.
pub struct Heard {
    pub events: Vec<Event>,
    pub frames: Vec<Inbound>,
}

impl Net {
    pub fn new(seed: u64, nodes: u16) -> Net {
        let mut sim = SimNet::new(seed, nodes, mesh_config());
        sim.delay_ms = (1, 5);
        Net { sim, refusal: 0.0, duplication: 0.0, full: 0 }
    }

    /// No more refused or doubled deliveries, short delays, no partitions; connections
    /// that closed are redialled by the meshes.
    pub fn calm_down(&mut self) {
        (self.refusal, self.duplication, self.sim.delay_ms) = (0.0, 0.0, (1, 5));
        self.sim.heal_all();
    }

    /// The run of `node`'s mesh now, if it is up.
    pub fn boot(&self, node: u16) -> Option<Boot> {
        self.sim.nodes[&NodeId(node)].mesh.as_ref().map(|m| m.boot())
    }

    /// Sends `frame` from `from` to `to` on `lane_key`'s lane, at the network's time.
    /// `delivery`: a fan-out delivery, which alone may be refused (as by a full queue, which
    /// the sender hears of) or doubled.
    pub fn send(
        &mut self,
        rng: &mut SmallRng,
        from: u16,
        to: u16,
        lane_key: u64,
        frame: Bytes,
        delivery: bool,
    ) -> Sent {
        if delivery && self.refusal > 0.0 && rng.gen_bool(self.refusal) {
            return Sent::Refused;
        }
        let doubled = delivery && self.duplication > 0.0 && rng.gen_bool(self.duplication);
        let sent = match self.sim.send(NodeId(from), NodeId(to), Class::Live, lane_key, frame.clone()) {
            Ok(()) => Sent::Taken,
            // As the daemon's senders tell them apart: a full queue is a refusal the fan-out
            // repairs (and keeps the joins of), a peer down is not.
            Err(SendError::Full(_) | SendError::TooLarge(_)) => {
                self.full += 1;
                Sent::Refused
            }
            Err(SendError::Down | SendError::UnknownNode) => Sent::Down,
        };
        if sent == Sent::Taken && doubled {
            // The copy's own fate is the fault's: it may be refused in its turn.
            let _ = self.sim.send(NodeId(from), NodeId(to), Class::Live, lane_key, frame);
        }
        sent
    }

    /// `node` stops reading its live and bulk streams (a node whose inbox is full), or reads
    /// again: its peers' queues for it fill meanwhile, and then refuse.
    pub fn stall(&mut self, node: u16, stalled: bool) {
        match stalled {
            true => self.sim.nodes.get_mut(&NodeId(node)).expect("a node of the cluster").stalled = true,
            false => self.sim.unstall(NodeId(node)),
        }
    }

    /// The most bytes any node's mesh holds queued for one peer now, per class.
    pub fn queued_most(&self) -> [usize; 3] {
        let mut most = [0; 3];
        for depth in self.sim.nodes.values().filter_map(|n| n.mesh.as_ref()).flat_map(|m| m.depths().into_values()) {
            for (m, class) in most.iter_mut().zip(Class::ALL) {
                *m = (*m).max(depth.bytes(class));
            }
        }
        most
    }

    /// What `node` received and learnt since the last call, in order.
    pub fn heard(&mut self, node: u16) -> Heard {
        let sim = self.sim.nodes.get_mut(&NodeId(node)).expect("a node of the cluster");
        let events = std::mem::take(&mut sim.events).into_iter().map(|(_, e)| e).collect();
        let frames = std::mem::take(&mut sim.received).into_iter().map(|(_, f)| f).collect();
        Heard { events, frames }
    }
}
