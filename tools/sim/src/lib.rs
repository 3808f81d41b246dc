//! `switchboard-sim`: the deterministic whole-cluster simulator (FoundationDB's simulator,
//! TigerBeetle's VOPR). One thread, one `u64` seed, virtual time: the seed draws the workload
//! and every fault, so a failing seed replays exactly (`switchboard-sim --seed S`).
//!
//! | module | what it holds |
//! |---|---|
//! | [`world`] | the nodes (real store shards, the owner's real side of each request and fan-out core, the edge's real tracking core), the clients, the faults, the event loop |
//! | [`net`] | the backplane: the mesh's real cores on simulated QUIC, with refused and doubled deliveries on top |
//! | [`shard`] | each node's real edge shard (`shard::Local`), and the driver's part, played: its queues written to the clients |
//! | [`check`] | the checkers, apart from the code under test |
//! | [`wire`] | the clients' WebSocket and QUIC frames, split at random points, and their reading of the server's |

pub mod check;
pub mod net;
pub mod shard;
pub mod wire;
pub mod world;

pub use world::Report;

/// Runs one seed.
pub fn run(seed: u64) -> Report {
    world::World::new(seed).run()
}
