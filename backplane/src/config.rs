//! The mesh's settings, each with a limit's name and a reason.
//!
//! Failure detection is tuned for the promise that a node killed with SIGKILL is declared
//! down within 3 s on a LAN, without declaring down a node whose CPU is saturated:
//!
//! - every `probe_period_ms` (300) a node probes one member, in a shuffled round: with two
//!   other members each is probed at least every 3 periods (0.9 s) by each of them;
//! - a probe not answered within `probe_rtt_ms` (150) is retried through `indirect_probes`
//!   other members, and one unanswered by the end of the period makes the member *suspect*;
//! - a suspect that does not refute (by raising its incarnation) within
//!   `suspect_to_down_ms` (1,200) is declared down and the news is gossiped.
//!
//! Worst case from the kill: 0.9 + 0.3 + 1.2 = 2.4 s, typically 1.5–2 s. A node saturated
//! by a load test still runs its mesh thread every few milliseconds (Linux's scheduler gives
//! each runnable thread a slice within its latency target, 6–24 ms), so it answers probes
//! late by that much, far inside 150 ms, and refutes a suspicion with 1.2 s to spare.
//! memberlist's and foca's LAN defaults (1 s / 500 ms / 4–5 s) detect in 4–10 s.

use crate::class::Class;

#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Live lanes per connection (streams chosen by the caller's `lane_key`).
    pub lanes: u16,
    /// Bytes queued for one peer, per class, before `send` refuses with `Full`. This bounds
    /// what waits for a slow or absent peer; QUIC's send window bounds what is in flight.
    pub queue_bytes_max: [usize; 3],
    /// The largest frame per class; larger ones are refused at `send`.
    pub frame_bytes_max: [usize; 3],
    /// Bytes handed to one stream write at a time (several frames batched in one).
    pub batch_bytes_max: usize,
    /// Bytes of received frames waiting in the node's inbox per class before the mesh stops
    /// reading those streams (QUIC flow control then holds the sender).
    pub inbox_bytes_max: [usize; 3],
    /// QUIC keep-alive and idle timeout.
    pub keep_alive_ms: u64,
    pub idle_timeout_ms: u64,
    /// Redials: exponential from `redial_base_ms`, capped, each delay drawn uniformly below
    /// the current ceiling (full jitter).
    pub redial_base_ms: u64,
    pub redial_cap_ms: u64,
    /// SWIM (see the module doc).
    pub probe_period_ms: u64,
    pub probe_rtt_ms: u64,
    pub indirect_probes: usize,
    pub suspect_to_down_ms: u64,
}

impl Default for MeshConfig {
    fn default() -> Self {
        const MIB: usize = 1 << 20;
        MeshConfig {
            lanes: 8,
            queue_bytes_max: [MIB, 8 * MIB, 16 * MIB],
            frame_bytes_max: [64 * 1024, MIB, 4 * MIB],
            batch_bytes_max: 64 * 1024,
            inbox_bytes_max: [4 * MIB, 32 * MIB, 32 * MIB],
            keep_alive_ms: 1_000,
            idle_timeout_ms: 5_000,
            redial_base_ms: 100,
            redial_cap_ms: 2_000,
            probe_period_ms: 300,
            probe_rtt_ms: 150,
            indirect_probes: 2,
            suspect_to_down_ms: 1_200,
        }
    }
}

impl MeshConfig {
    pub fn queue_bytes_max(&self, class: Class) -> usize {
        self.queue_bytes_max[class.index()]
    }

    pub fn frame_bytes_max(&self, class: Class) -> usize {
        self.frame_bytes_max[class.index()]
    }

    pub fn inbox_bytes_max(&self, class: Class) -> usize {
        self.inbox_bytes_max[class.index()]
    }

    /// Settings that cannot work together, named.
    pub fn check(&self) -> Result<(), String> {
        if self.lanes == 0 || self.lanes > 1024 {
            return Err(format!("lanes must be 1..=1024, not {}", self.lanes));
        }
        for class in Class::ALL {
            let frame = self.frame_bytes_max(class);
            if frame > self.queue_bytes_max(class) || frame > self.inbox_bytes_max(class) {
                return Err(format!(
                    "{} frames of up to {frame} bytes must fit in the {} queue and inbox",
                    class.name(),
                    class.name()
                ));
            }
            if frame > u32::MAX as usize - crate::frame::ENVELOPE_BYTES {
                return Err(format!("{} frames must fit a u32 length", class.name()));
            }
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err("probe_rtt_ms must be below probe_period_ms".into());
        }
        if self.keep_alive_ms >= self.idle_timeout_ms {
            return Err("keep_alive_ms must be below idle_timeout_ms".into());
        }
        Ok(())
    }
}
