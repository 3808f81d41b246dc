//! The disk's floor, measured in the `store` run on the files that run wrote, with no
//! Switchboard code: what reading the log and committing to it cost before any store work.
//!
//! - **Direct reads**: every log file read once with `O_DIRECT` (the device, no page cache),
//!   in reads of [`DIRECT_READ_BYTES`], [`DIRECT_QUEUE`] in flight, into buffers on huge pages,
//!   as recovery reads a segment that is not cached (`switchboard_store::storage::DirectReader`).
//!   No recovery that reads the disk beats it.
//! - **Buffered reads from a dropped cache**: the same files read with `read` on one thread,
//!   as `cat` does, right after their pages are dropped. This is what a cold recovery's reads
//!   cost in wall time and CPU (on a VM, the CPU includes giving the guest its memory back).
//! - **Bare commits**: [`COMMITS`] appends of [`COMMIT_BYTES`] to a new file, `pwrite` then
//!   `fdatasync` each, one at a time: the latency a group commit of that size cannot go below.

use crate::host;
use hdrhistogram::Histogram;
use serde_json::json;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use switchboard_store::anonymous::Buffer;

/// Bytes per direct read.
const DIRECT_READ_BYTES: usize = 4 << 20;
/// Direct reads in flight (a thread each).
const DIRECT_QUEUE: usize = 3;
/// Bytes per bare commit: a group commit's size at full load, in the order of magnitude.
const COMMIT_BYTES: usize = 256 << 10;
const COMMITS: usize = 400;

pub struct DiskFloor {
    log_bytes: u64,
    /// `None` where the filesystem refuses `O_DIRECT` (tmpfs).
    direct_gib_per_s: Option<f64>,
    buffered_cold_gib_per_s: f64,
    /// CPU seconds of the reading thread per GiB read.
    buffered_cold_cpu_s_per_gib: f64,
    commit_us: Histogram<u64>,
}

/// Measures the floor on `logs` (read only) and on a scratch file in a temporary folder in
/// `scratch`.
pub fn measure(logs: &[PathBuf], scratch: &Path) -> anyhow::Result<DiskFloor> {
    let log_bytes = logs.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).sum::<std::io::Result<u64>>()?;
    let gib = log_bytes as f64 / (1u64 << 30) as f64;
    let direct_gib_per_s = direct_read(logs)?.map(|s| gib / s);
    for f in logs {
        crate::store::drop_file_cache(f)?;
    }
    let (cpu, t) = (host::thread_cpu_s(), Instant::now());
    for f in logs {
        crate::store::read_through_cache(f)?;
    }
    let (wall, cpu) = (t.elapsed().as_secs_f64(), host::thread_cpu_s() - cpu);
    Ok(DiskFloor {
        log_bytes,
        direct_gib_per_s,
        buffered_cold_gib_per_s: gib / wall,
        buffered_cold_cpu_s_per_gib: cpu / gib,
        commit_us: bare_commits(scratch)?,
    })
}

/// Seconds to read every file whole with `O_DIRECT`; `None` if the filesystem refuses it.
/// (Also paired with each cold recovery in `store`, so that the two are read in the same
/// moment of a host whose disk varies from minute to minute.)
pub fn direct_read(files: &[PathBuf]) -> anyhow::Result<Option<f64>> {
    let mut reads = Vec::new();
    for path in files {
        let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => std::sync::Arc::new(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        reads.extend((0..len.div_ceil(DIRECT_READ_BYTES as u64)).map(|i| (file.clone(), i * DIRECT_READ_BYTES as u64)));
    }
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..DIRECT_QUEUE)
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    // As recovery reads: on huge pages, which this disk reads into at twice the
                    // speed or more (see `Buffer`).
                    let mut buf = Buffer::new(DIRECT_READ_BYTES)?;
                    while let Some((file, at)) = reads.get(next.fetch_add(1, Ordering::Relaxed)) {
                        // A short read at the end of a file is its end.
                        file.read_at(&mut buf, *at)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("direct reader panicked")?;
        }
        Ok(())
    })?;
    Ok(Some(t.elapsed().as_secs_f64()))
}

/// The latency of each of [`COMMITS`] appends of [`COMMIT_BYTES`], `pwrite` + `fdatasync`.
fn bare_commits(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    // A fresh folder of its own (removed at the end): what a killed run left cannot get in the way.
    let scratch = tempfile::tempdir_in(dir)?;
    let file = std::fs::OpenOptions::new().create_new(true).write(true).open(scratch.path().join("bare-commits"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let block = vec![0x5au8; COMMIT_BYTES];
    for i in 0..COMMITS {
        let t = Instant::now();
        file.write_all_at(&block, (i * COMMIT_BYTES) as u64)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(hist)
}

impl DiskFloor {
    fn commit_ms(&self, q: f64) -> f64 {
        self.commit_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn print(&self) {
        println!("the disk alone, on the same log files ({} MB), no Switchboard code:", self.log_bytes / 1_000_000);
        match self.direct_gib_per_s {
            Some(r) => println!(
                "  O_DIRECT reads, {} MiB x {DIRECT_QUEUE} in flight, on huge pages: {r:.2} GiB/s",
                DIRECT_READ_BYTES >> 20
            ),
            None => println!("  O_DIRECT reads: refused by this filesystem"),
        }
        println!(
            "  read() after dropping the cache (cat): {:.2} GiB/s, {:.2} CPU-s per GiB",
            self.buffered_cold_gib_per_s, self.buffered_cold_cpu_s_per_gib
        );
        println!(
            "  {} KiB pwrite + fdatasync, appending:  p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            COMMIT_BYTES >> 10,
            self.commit_ms(0.5),
            self.commit_ms(0.99),
            self.commit_ms(0.999)
        );
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "direct_read_gib_per_s": self.direct_gib_per_s,
            "buffered_cold_read_gib_per_s": self.buffered_cold_gib_per_s,
            "buffered_cold_read_cpu_s_per_gib": self.buffered_cold_cpu_s_per_gib,
            "bare_commit_bytes": COMMIT_BYTES,
            "bare_commit_p50_ms": self.commit_ms(0.5),
            "bare_commit_p99_ms": self.commit_ms(0.99),
            "bare_commit_p999_ms": self.commit_ms(0.999),
        })
    }
}
