//! `switchboard-sim --seed S` replays one run; `switchboard-sim --seeds N` runs seeds
//! `first..first+N` and ends with the line `N seeds, F failures`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a Switchboard cluster under faults")]
struct Args {
    /// Run this one seed and print what it did.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Succeed only if some seed fails: for showing that a deliberate bug is caught.
    #[arg(long)]
    expect_failures: bool,
    /// With `--seed`: print every event.
    #[arg(long)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let mut world = switchboard_sim::world::World::new(seed);
        world.verbose = args.verbose;
        let r = world.run();
        println!(
            "seed {seed}: trace {:016x}, {} events, {} acks ({} dup), {} read receipts answered, {} pushes, {} crashes, {} link breaks, {} gap repairs, {} evictions, {} bits flipped, {} stores refused to open on one, {} slow nodes, {} frames refused by a full queue (the most queued for a peer: {} live bytes), {} channel messages pushed in full, {} notify read, {} connections closed by their shard",
            r.trace, r.stats.events, r.acks, r.dup_acks, r.receipts, r.pushes, r.stats.crashes, r.stats.breaks, r.stats.repairs, r.stats.evictions, r.stats.flips, r.stats.corruptions, r.stats.slow_nodes, r.stats.full, r.stats.queued_most[1], r.stats.channel_pushes, r.stats.notifies, r.stats.server_closes
        );
        for v in &r.violations {
            println!("  {v}");
        }
        std::process::exit(if r.violations.is_empty() { 0 } else { 1 });
    }
    let (mut failures, mut first_failure, mut acks, mut receipts, mut crashes) = (0, None, 0, 0, 0);
    let (mut flips, mut corruptions, mut full, mut live_most) = (0, 0, 0, 0);
    // A panic is a failure of its seed, reported as one (`--seed` shows where it was).
    std::panic::set_hook(Box::new(|_| {}));
    for seed in args.first..args.first + args.seeds {
        let r = match std::panic::catch_unwind(|| switchboard_sim::run(seed)) {
            Ok(r) => r,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                failures += 1;
                first_failure.get_or_insert(seed);
                println!("seed {seed} FAILED: panicked: {}", why.unwrap_or_default());
                continue;
            }
        };
        acks += r.acks;
        receipts += r.receipts;
        crashes += r.stats.crashes;
        flips += r.stats.flips;
        corruptions += r.stats.corruptions;
        full += r.stats.full;
        live_most = live_most.max(r.stats.queued_most[1]);
        if !r.violations.is_empty() {
            failures += 1;
            first_failure.get_or_insert(seed);
            println!("seed {seed} FAILED: {}", r.violations[0]);
        }
    }
    println!(
        "({acks} acknowledged messages, {receipts} read receipts answered, {crashes} node crashes, \
         {flips} bits flipped, {corruptions} stores refused to open on one, {full} frames refused by a full \
         mesh queue, in all; the most queued for one peer: {live_most} live bytes)"
    );
    if let Some(s) = first_failure {
        println!("first failing seed: {s} (replay: switchboard-sim --seed {s})");
    }
    println!("{} seeds, {failures} failures", args.seeds);
    let ok = if args.expect_failures { failures > 0 } else { failures == 0 };
    std::process::exit(if ok { 0 } else { 1 });
}
