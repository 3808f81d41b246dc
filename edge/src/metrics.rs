//! Counters and latency histograms, rendered in the Prometheus text format at `/metrics`.
//!
//! Each shard writes only its own [`ShardMetrics`] (relaxed atomics; a histogram behind a
//! mutex that only its shard locks, except for the moment a scrape copies it), and a scrape
//! sums over shards.

use crate::proto::ErrorCode;
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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

fn recorder() -> Mutex<Histogram<u64>> {
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
            delivery_us: recorder(),
            ack_us: recorder(),
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
        StoreMetrics { commit_us: recorder() }
    }
}

pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub stores: Vec<StoreMetrics>,
    /// QUIC connections whose link is alive (`quic::link::Link`): from the open stream until
    /// its tasks and its shard have all let go of it.
    pub quic_links: Arc<AtomicI64>,
}

impl Metrics {
    pub fn new(shards: usize, stores: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            stores: (0..stores).map(|_| StoreMetrics::default()).collect(),
            quic_links: Arc::default(),
        }
    }

    /// The Prometheus text exposition. `queue_depths` are the shards' inbox lengths now.
    pub fn render(&self, queue_depths: &[usize]) -> String {
        let mut o = String::new();
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| self.shards.iter().map(f).sum::<u64>();
        let mut per_shard = |name: &str, help: &str, pick: &dyn Fn(&ShardMetrics) -> &AtomicI64| {
            family(&mut o, name, "gauge", help);
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", pick(s).load(Relaxed));
            }
        };
        per_shard("switchboard_connections", "Authenticated client connections, per shard.", &|s| &s.connections);
        per_shard(
            "switchboard_sockets",
            "Sockets and QUIC connections held (authenticated or not, until their last operation completes), per shard.",
            &|s| &s.sockets,
        );
        per_shard("switchboard_rings", "io_uring rings holding the shard's sockets.", &|s| &s.rings);
        family(
            &mut o,
            "switchboard_quic_connections",
            "gauge",
            "QUIC connections held, until every task of theirs ended.",
        );
        let _ = writeln!(o, "switchboard_quic_connections {}", self.quic_links.load(Relaxed));
        let total = |o: &mut String, name: &str, help: &str, n: u64| {
            family(o, name, "counter", help);
            let _ = writeln!(o, "{name} {n}");
        };
        total(&mut o, "switchboard_connects_total", "Connections that said hello.", sum(&|s| s.connects.load(Relaxed)));
        let disconnects = sum(&|s| s.disconnects.load(Relaxed));
        total(&mut o, "switchboard_disconnects_total", "Authenticated connections that ended.", disconnects);
        family(&mut o, "switchboard_frames_in_total", "counter", "Client frames received, by type.");
        for (i, t) in FRAMES_IN.iter().enumerate() {
            let _ =
                writeln!(o, "switchboard_frames_in_total{{type=\"{t}\"}} {}", sum(&|s| s.frames_in[i].load(Relaxed)));
        }
        family(&mut o, "switchboard_frames_out_total", "counter", "Server frames queued to clients, by type.");
        for (i, t) in FRAMES_OUT.iter().enumerate() {
            let n = sum(&|s| s.frames_out[i].load(Relaxed));
            let _ = writeln!(o, "switchboard_frames_out_total{{type=\"{t}\"}} {n}");
        }
        family(&mut o, "switchboard_closes_total", "counter", "Connections the server closed, by close code.");
        for (i, c) in CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(o, "switchboard_closes_total{{code=\"{c}\"}} {}", sum(&|s| s.closes[i].load(Relaxed)));
        }
        family(&mut o, "switchboard_errors_total", "counter", "error frames and REST errors answered, by code.");
        for (i, c) in ERROR_CODES.iter().enumerate() {
            let n = sum(&|s| s.errors[i].load(Relaxed));
            let _ = writeln!(o, "switchboard_errors_total{{code=\"{}\"}} {n}", c.as_str());
        }
        let resync = sum(&|s| s.resync_messages.load(Relaxed));
        total(&mut o, "switchboard_resync_messages_total", "Messages sent in answer to sync.", resync);
        let short = sum(&|s| s.short_sends.load(Relaxed));
        total(&mut o, "switchboard_short_sends_total", "Socket sends the kernel took only part of.", short);
        family(&mut o, "switchboard_shard_queue_depth", "gauge", "Events waiting in each shard's inbox.");
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
        histogram(
            &mut o,
            "switchboard_delivery_latency_seconds",
            "Append start to the write that put a msg on a recipient's socket, per recipient.",
            &merged(&|s| &s.delivery_us),
        );
        histogram(
            &mut o,
            "switchboard_ack_latency_seconds",
            "Append start to the ack queued.",
            &merged(&|s| &s.ack_us),
        );
        let mut commits = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("valid bounds");
        for s in &self.stores {
            let _ = commits.add(&*s.commit_us.lock().unwrap_or_else(|p| p.into_inner()));
        }
        histogram(
            &mut o,
            "switchboard_store_commit_latency_seconds",
            "A job staged to its group commit (write and fsync) known.",
            &commits,
        );
        o
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Bucket bounds of every latency histogram, in seconds: the same everywhere, so that the
/// buckets of all nodes add up (`histogram_quantile` over `sum by (le)`).
pub const LATENCY_BUCKETS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram recorded in microseconds, as a Prometheus histogram in seconds
/// (cumulative buckets, `_sum`, `_count`). A summary's quantiles could not be aggregated
/// across nodes; buckets can.
pub fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    family(o, name, "histogram", help);
    for le in LATENCY_BUCKETS_S {
        let n = if h.is_empty() { 0 } else { h.count_between(0, (le * 1e6) as u64) };
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(o, "{name}_sum {}", h.mean() * h.len() as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {}", h.len());
}
