//! Times opening (recovering) a store shard's data folder: `cargo run --release --example
//! recover -- DIR [REPEATS]`. For profiling recovery; the benchmark proper is
//! `switchboard-bench store`.

use std::time::Instant;
use switchboard_store::storage::FsStorage;
use switchboard_store::{Shard, ShardConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: recover DIR [REPEATS]"));
    let repeats: usize = args.next().map_or(3, |r| r.parse().expect("REPEATS is a number"));
    for _ in 0..repeats {
        let t = Instant::now();
        let (shard, r) =
            Shard::open(FsStorage::open(&dir).expect("open folder"), ShardConfig::default()).expect("recover");
        let s = t.elapsed().as_secs_f64();
        println!(
            "{} records, {} bytes in {:.3} s: {:.2} GiB/s, {:.0} ns/record",
            r.records,
            r.bytes,
            s,
            r.bytes as f64 / s / (1u64 << 30) as f64,
            s * 1e9 / r.records as f64
        );
        drop(shard);
    }
}
