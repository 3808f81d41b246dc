//! `switchboard-bench`: Switchboard's benchmark harness. Every performance claim of the project
//! is made with it; see docs/benchmarks.md for the commands and the recorded results.
//!
//! Each scenario prints its configuration and the host first, a table at the end, and with
//! `--json` one JSON object as the last line of stdout.

mod chat;
mod host;
mod redis;
mod store;

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
    /// Durable one-to-one messages through a real daemon: rate and delivery latency.
    Dm(chat::DmArgs),
    /// The daemon's memory per idle authenticated connection.
    Idle(chat::IdleArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Store(args) => store::run(args),
        Scenario::Dm(args) => chat::dm(args),
        Scenario::Idle(args) => chat::idle(args),
    }
}
