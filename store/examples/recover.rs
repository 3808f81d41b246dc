//! Times opening (recovering) store shards' data folders, all at once on a thread each as the
//! daemon opens them: `cargo run --release --example recover -- [--repeats N] [--cold]
//! [--reads auto|mapped|direct] DIR [DIR ...]`. `--cold` drops the folders' files from the page
//! cache before each open; `--reads` picks how segments are read (`LogConfig::recovery_reads`).
//! For profiling recovery and comparing its ways of reading; the benchmark proper is
//! `switchboard-bench store`.

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;
use switchboard_store::{RecoveryReads, Shard, ShardConfig};

// The daemon's allocator, so that recovery's allocations cost what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut repeats, mut cold, mut config) = (3, false, ShardConfig::default());
    let mut dirs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeats" => repeats = args.next().and_then(|r| r.parse().ok()).expect("--repeats N"),
            "--cold" => cold = true,
            "--reads" => {
                config.log.recovery_reads = match args.next().as_deref() {
                    Some("auto") => RecoveryReads::Auto,
                    Some("mapped") => RecoveryReads::Mapped,
                    Some("direct") => RecoveryReads::Direct,
                    _ => panic!("--reads auto|mapped|direct"),
                }
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    assert!(!dirs.is_empty(), "usage: recover [--repeats N] [--cold] [--reads auto|mapped|direct] DIR [DIR ...]");
    for _ in 0..repeats {
        if cold {
            for dir in &dirs {
                for file in std::fs::read_dir(dir).expect("read the folder") {
                    let f = std::fs::File::open(file.expect("list the folder").path()).expect("open a file");
                    // Safety: advice on a descriptor we own.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                }
            }
        }
        let t = Instant::now();
        let opened = Shard::open_at_once(&dirs, &config).expect("recover");
        let s = t.elapsed().as_secs_f64();
        let (records, bytes) = opened.iter().fold((0, 0), |(r, b), (_, rec)| (r + rec.records, b + rec.bytes));
        let direct: usize = opened.iter().map(|(_, rec)| rec.segments_read_direct).sum();
        println!(
            "{records} records, {bytes} bytes in {s:.3} s: {:.2} GiB/s, {:.0} ns/record ({direct} segments read direct)",
            bytes as f64 / s / (1u64 << 30) as f64,
            s * 1e9 / records as f64
        );
    }
}
