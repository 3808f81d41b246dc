//! Times opening (recovering) store shards' data folders, all at once on a thread each as the
//! daemon opens them: `cargo run --release --example recover -- [--repeats N] DIR [DIR ...]`.
//! For profiling recovery; the benchmark proper is `switchboard-bench store`.

use std::path::PathBuf;
use std::time::Instant;
use switchboard_store::{Shard, ShardConfig};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut repeats = 3;
    if args.first().map(String::as_str) == Some("--repeats") {
        repeats = args.get(1).and_then(|r| r.parse().ok()).expect("--repeats N");
        args.drain(..2);
    }
    assert!(!args.is_empty(), "usage: recover [--repeats N] DIR [DIR ...]");
    let dirs: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
    for _ in 0..repeats {
        let t = Instant::now();
        let opened = Shard::open_at_once(&dirs, &ShardConfig::default()).expect("recover");
        let s = t.elapsed().as_secs_f64();
        let (records, bytes) = opened.iter().fold((0, 0), |(r, b), (_, rec)| (r + rec.records, b + rec.bytes));
        println!(
            "{records} records, {bytes} bytes in {s:.3} s: {:.2} GiB/s, {:.0} ns/record",
            bytes as f64 / s / (1u64 << 30) as f64,
            s * 1e9 / records as f64
        );
    }
}
