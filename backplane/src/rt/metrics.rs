//! The mesh's metrics, in Prometheus' text format (the daemon serves them at `/metrics`).

use crate::class::Class;
use crate::ids::NodeId;
use crate::mesh::Counters;
use crate::queue::Depth;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Metrics {
    pub counters: Arc<Counters>,
    pub depths: BTreeMap<NodeId, Arc<Depth>>,
    /// Smoothed round-trip time per peer, microseconds (0: not connected).
    pub rtt_us: BTreeMap<NodeId, AtomicU64>,
    pub peers_up: AtomicU64,
    /// Handshakes that failed: another CA, a name that is not the node dialed, no
    /// certificate, a node that is not a configured peer.
    pub tls_refused: AtomicU64,
    /// Send stamp → arrival in the inbox, microseconds (clocks of one host, or synchronized).
    pub lag_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Metrics {
    pub fn new(counters: Arc<Counters>, depths: BTreeMap<NodeId, Arc<Depth>>) -> Metrics {
        let rtt_us = depths.keys().map(|n| (*n, AtomicU64::new(0))).collect();
        Metrics {
            counters,
            depths,
            rtt_us,
            peers_up: AtomicU64::new(0),
            tls_refused: AtomicU64::new(0),
            lag_us: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        }
    }

    pub fn record_lag(&self, stamp_us: u64, now_us: u64) {
        if let Ok(mut lag) = self.lag_us.lock() {
            lag.saturating_record(now_us.saturating_sub(stamp_us).max(1));
        }
    }

    /// A copy of the send → receive lag, microseconds (the daemon renders it as a histogram
    /// with the same buckets as its other latencies).
    pub fn lag(&self) -> hdrhistogram::Histogram<u64> {
        self.lag_us.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Appends every metric, `switchboard_backplane_*` (the lag histogram aside: [`Self::lag`]).
    pub fn render(&self, out: &mut String) {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(out, "peers_up", "gauge", "Peers with a chosen connection.");
        let _ = writeln!(out, "switchboard_backplane_peers_up {}", load(&self.peers_up));
        for (name, values, help) in [
            ("frames_out_total", &c.frames_out, "Frames written to peers, by class."),
            ("bytes_out_total", &c.bytes_out, "Frame bytes written to peers, by class."),
            ("frames_in_total", &c.frames_in, "Frames read from peers, by class."),
            ("bytes_in_total", &c.bytes_in, "Frame bytes read from peers, by class."),
        ] {
            family(out, name, "counter", help);
            for class in Class::ALL {
                let _ = writeln!(
                    out,
                    "switchboard_backplane_{name}{{class=\"{}\"}} {}",
                    class.name(),
                    load(&values[class.index()])
                );
            }
        }
        for (name, value, help) in [
            ("reconnects_total", &c.reconnects, "Connections to peers dialed again after one was lost."),
            ("refused_total", &c.refused, "Streams refused: a bad header, another cluster, an unknown node."),
            ("protocol_errors_total", &c.protocol_errors, "Peers' streams closed for a framing error."),
            ("dropped_frames_total", &c.dropped, "Frames dropped: queued for a peer that went down or restarted."),
            ("id_in_use_refused_total", &c.in_use, "Later runs of a node id refused while the earlier one lives."),
            ("tls_refused_total", &self.tls_refused, "Handshakes refused: another CA, a wrong name, no certificate."),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "switchboard_backplane_{name} {}", load(value));
        }
        let rows = || self.depths.iter().flat_map(|(node, depth)| Class::ALL.map(|class| (node, depth, class)));
        family(out, "queue_bytes", "gauge", "Bytes queued for each peer, by class.");
        for (node, depth, class) in rows() {
            let labels = format!("peer=\"{node}\",class=\"{}\"", class.name());
            let _ = writeln!(out, "switchboard_backplane_queue_bytes{{{labels}}} {}", depth.bytes(class));
        }
        family(out, "queue_full_total", "counter", "Sends refused because a peer's queue was full, by class.");
        for (node, depth, class) in rows() {
            let labels = format!("peer=\"{node}\",class=\"{}\"", class.name());
            let full = load(&depth.refused_full[class.index()]);
            let _ = writeln!(out, "switchboard_backplane_queue_full_total{{{labels}}} {full}");
        }
        family(out, "rtt_seconds", "gauge", "Smoothed round-trip time to each peer (0: not connected).");
        for node in self.depths.keys() {
            let rtt = self.rtt_us.get(node).map(load).unwrap_or(0);
            let _ = writeln!(out, "switchboard_backplane_rtt_seconds{{peer=\"{node}\"}} {}", rtt as f64 / 1e6);
        }
    }
}

/// The `# HELP` and `# TYPE` lines of `switchboard_backplane_<name>`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP switchboard_backplane_{name} {help}\n# TYPE switchboard_backplane_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_with_its_labels() {
        let depth = Arc::new(Depth::default());
        depth.reserve(Class::Bulk, 100, 1000).unwrap();
        let metrics = Metrics::new(Arc::new(Counters::default()), [(NodeId(2), depth)].into_iter().collect());
        metrics.record_lag(1_000, 3_000);
        Counters::add(&metrics.counters.frames_out[Class::Live.index()], 7);
        let mut out = String::new();
        metrics.render(&mut out);
        assert_eq!(metrics.lag().len(), 1);
        for line in [
            "switchboard_backplane_peers_up 0",
            "switchboard_backplane_frames_out_total{class=\"live\"} 7",
            "switchboard_backplane_queue_bytes{peer=\"2\",class=\"bulk\"} 132",
            "switchboard_backplane_queue_full_total{peer=\"2\",class=\"live\"} 0",
            "switchboard_backplane_rtt_seconds{peer=\"2\"} 0",
            "switchboard_backplane_tls_refused_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from:\n{out}");
        }
    }
}
