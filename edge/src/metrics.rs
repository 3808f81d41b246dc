//! Counters and latency histograms, rendered in the Prometheus text format at `/metrics`.
//!
//! Each shard writes only its own [`ShardMetrics`] (relaxed atomics; a histogram behind a
//! mutex that only its shard locks, except for the moment a scrape copies it), and a scrape
//! sums over shards.

use crate::proto::ErrorCode;
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Client frame types, in the order of PROTOCOL.md's table.
pub const FRAMES_IN: [&str; 10] =
    ["hello", "send", "receipt", "typing", "sync", "inbox", "open", "close", "presence", "ping"];
/// Server frame types, in the order of PROTOCOL.md's table.
pub const FRAMES_OUT: [&str; 15] = [
    "welcome",
    "ack",
    "msg",
    "receipt",
    "typing",
    "synced",
    "gap",
    "inbox",
    "notify",
    "presence",
    "joined",
    "left",
    "reconnect",
    "error",
    "pong",
];
/// The close codes a server sends (PROTOCOL.md §5).
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1007, 1009, 4001, 4003, 4008, 4009, 4010];
const ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Conflict,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

fn histogram() -> Mutex<Histogram<u64>> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Mutex::new(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds"))
}

pub struct ShardMetrics {
    pub connections: AtomicI64,
    /// Connections held (a socket in the shard's rings and its state), authenticated or not,
    /// until the last operation on them completes.
    pub sockets: AtomicI64,
    /// io_uring rings holding the shard's sockets.
    pub rings: AtomicI64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub frames_in: [AtomicU64; FRAMES_IN.len()],
    pub frames_out: [AtomicU64; FRAMES_OUT.len()],
    pub closes: [AtomicU64; CLOSE_CODES.len()],
    pub errors: [AtomicU64; ERROR_CODES.len()],
    /// Messages sent in answer to `sync` (resync volume).
    pub resync_messages: AtomicU64,
    /// Sends the kernel took only part of (the rest went in another).
    pub short_sends: AtomicU64,
    /// Append start → the write that put a `msg` on a recipient's socket, per recipient.
    pub delivery_us: Mutex<Histogram<u64>>,
    /// Append start → `ack` queued.
    pub ack_us: Mutex<Histogram<u64>>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            connections: AtomicI64::new(0),
            sockets: AtomicI64::new(0),
            rings: AtomicI64::new(0),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            frames_in: Default::default(),
            frames_out: Default::default(),
            closes: Default::default(),
            errors: Default::default(),
            resync_messages: AtomicU64::new(0),
            short_sends: AtomicU64::new(0),
            delivery_us: histogram(),
            ack_us: histogram(),
        }
    }
}

impl ShardMetrics {
    pub fn frame_in(&self, t: &str) {
        if let Some(i) = FRAMES_IN.iter().position(|&f| f == t) {
            self.frames_in[i].fetch_add(1, Relaxed);
        }
    }

    pub fn frame_out(&self, t: &str, n: u64) {
        if let Some(i) = FRAMES_OUT.iter().position(|&f| f == t) {
            self.frames_out[i].fetch_add(n, Relaxed);
        }
    }

    pub fn close(&self, code: u16) {
        if let Some(i) = CLOSE_CODES.iter().position(|&c| c == code) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|&c| c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros.max(1));
    }
}

/// Per store shard.
pub struct StoreMetrics {
    /// Job staged → its commit known (group commit: write + fsync).
    pub commit_us: Mutex<Histogram<u64>>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics { commit_us: histogram() }
    }
}

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub stores: Vec<StoreMetrics>,
}

impl Metrics {
    pub fn new(shards: usize, stores: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            stores: (0..stores).map(|_| StoreMetrics::default()).collect(),
        }
    }

    /// The Prometheus text exposition. `queue_depths` are the shards' inbox lengths now.
    pub fn render(&self, queue_depths: &[usize]) -> String {
        let mut o = String::new();
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| self.shards.iter().map(f).sum::<u64>();
        let mut per_shard = |name: &str, pick: &dyn Fn(&ShardMetrics) -> &AtomicI64| {
            let _ = writeln!(o, "# TYPE {name} gauge");
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", pick(s).load(Relaxed));
            }
        };
        per_shard("switchboard_connections", &|s| &s.connections);
        per_shard("switchboard_sockets", &|s| &s.sockets);
        per_shard("switchboard_rings", &|s| &s.rings);
        let _ = writeln!(o, "# TYPE switchboard_connects_total counter");
        let _ = writeln!(o, "switchboard_connects_total {}", sum(&|s| s.connects.load(Relaxed)));
        let _ = writeln!(o, "# TYPE switchboard_disconnects_total counter");
        let _ = writeln!(o, "switchboard_disconnects_total {}", sum(&|s| s.disconnects.load(Relaxed)));
        o.push_str("# TYPE switchboard_frames_in_total counter\n");
        for (i, t) in FRAMES_IN.iter().enumerate() {
            let _ =
                writeln!(o, "switchboard_frames_in_total{{type=\"{t}\"}} {}", sum(&|s| s.frames_in[i].load(Relaxed)));
        }
        o.push_str("# TYPE switchboard_frames_out_total counter\n");
        for (i, t) in FRAMES_OUT.iter().enumerate() {
            let n = sum(&|s| s.frames_out[i].load(Relaxed));
            let _ = writeln!(o, "switchboard_frames_out_total{{type=\"{t}\"}} {n}");
        }
        o.push_str("# TYPE switchboard_closes_total counter\n");
        for (i, c) in CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(o, "switchboard_closes_total{{code=\"{c}\"}} {}", sum(&|s| s.closes[i].load(Relaxed)));
        }
        o.push_str("# TYPE switchboard_errors_total counter\n");
        for (i, c) in ERROR_CODES.iter().enumerate() {
            let n = sum(&|s| s.errors[i].load(Relaxed));
            let _ = writeln!(o, "switchboard_errors_total{{code=\"{}\"}} {n}", c.as_str());
        }
        o.push_str("# TYPE switchboard_resync_messages_total counter\n");
        let _ = writeln!(o, "switchboard_resync_messages_total {}", sum(&|s| s.resync_messages.load(Relaxed)));
        o.push_str("# TYPE switchboard_short_sends_total counter\n");
        let _ = writeln!(o, "switchboard_short_sends_total {}", sum(&|s| s.short_sends.load(Relaxed)));
        o.push_str("# TYPE switchboard_shard_queue_depth gauge\n");
        for (i, d) in queue_depths.iter().enumerate() {
            let _ = writeln!(o, "switchboard_shard_queue_depth{{shard=\"{i}\"}} {d}");
        }
        let merged = |pick: &dyn Fn(&ShardMetrics) -> &Mutex<Histogram<u64>>| {
            let mut all = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("valid bounds");
            for s in &self.shards {
                let _ = all.add(&*pick(s).lock().unwrap_or_else(|p| p.into_inner()));
            }
            all
        };
        summary(&mut o, "switchboard_delivery_latency_seconds", &merged(&|s| &s.delivery_us));
        summary(&mut o, "switchboard_ack_latency_seconds", &merged(&|s| &s.ack_us));
        let mut commits = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("valid bounds");
        for s in &self.stores {
            let _ = commits.add(&*s.commit_us.lock().unwrap_or_else(|p| p.into_inner()));
        }
        summary(&mut o, "switchboard_store_commit_latency_seconds", &commits);
        o
    }
}

/// A histogram as a Prometheus summary (quantiles in seconds).
pub(crate) fn summary(o: &mut String, name: &str, h: &Histogram<u64>) {
    let _ = writeln!(o, "# TYPE {name} summary");
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e6 };
        let _ = writeln!(o, "{name}{{quantile=\"{q}\"}} {v}");
    }
    let _ = writeln!(o, "{name}_sum {}", h.mean() * h.len() as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {}", h.len());
}
