//! `switchboard-bench`: Switchboard's benchmark harness. Every performance claim of the project
//! is made with it; see docs/benchmarks.md for the commands and the recorded results.
//!
//! Each scenario prints its configuration and the host first, a progress bar on stderr while it
//! runs (on a terminal), a table at the end, with `--json` one JSON object as the last line of
//! stdout, and with `--chart DIR` SVG charts.

mod all;
mod chart;
mod cluster;
mod daemon;
mod density;
mod disk_floor;
mod fanout;
mod gate;
mod host;
mod jetstream;
mod kernel_floor;
mod mesh;
mod nats;
mod one_to_one;
mod quicclient;
mod redis;
mod store;
mod storm;
mod wsclient;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchboard-bench", version, about = "Switchboard's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Durable appends to the store (group commit, fsync) against Redis XADD with appendfsync always.
    Store(store::Args),
    /// Durable one-to-one messages through a real daemon, open loop: the highest rate that
    /// keeps p99 under the bound, and the latency at 70% of it.
    OneToOne(one_to_one::Args),
    /// Idle authenticated connections: connect rate, server memory per connection, all alive.
    Density(density::Args),
    /// Groups of 10, 100 and 1,000 and an open channel: deliveries per second and latency to
    /// the last recipient.
    Fanout(fanout::Args),
    /// Every client loses the server at once (SIGKILL, restart); all must come back and resync
    /// without missing an acknowledged message.
    Storm(storm::Args),
    /// The kernel's own cost, with no server code, of a small send per loopback TCP connection
    /// and of a connection with one request and response: the floor under the edge's
    /// deliveries and connections per server CPU-second on this host.
    KernelFloor(kernel_floor::Args),
    /// Three nodes of the backplane on loopback exchanging 100-byte frames, open loop,
    /// against one TLS 1.3 TCP connection per pair; then live latency under bulk saturation.
    Mesh(mesh::Args),
    /// Every scenario in turn, their results in one JSON object.
    All(all::Args),
    /// One worker process of `density` (started by it).
    #[command(hide = true)]
    DensityWorker(density::WorkerArgs),
    /// One node of `mesh` (started by it).
    #[command(hide = true)]
    MeshNode(mesh::node::NodeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Store(args) => store::run(args),
        Scenario::OneToOne(args) => one_to_one::run(args),
        Scenario::Density(args) => density::run(args),
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Storm(args) => storm::run(args),
        Scenario::KernelFloor(args) => kernel_floor::run(args),
        Scenario::All(args) => all::run(args),
        Scenario::DensityWorker(args) => density::worker(args),
        Scenario::Mesh(args) => mesh::run(args),
        Scenario::MeshNode(args) => mesh::node::run(args),
    }
}
