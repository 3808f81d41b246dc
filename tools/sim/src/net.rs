//! The simulated backplane between nodes, with every fate drawn from the seed.
//!
//! As over the real mesh (QUIC streams), requests and answers are not lost one by one: what
//! is lost is a whole link's connection (a break, a cut, a crash), with everything in flight
//! on it, and the nodes at either end learn of the new connection and subscribe anew
//! (`owner_connected`). Deliveries alone can also be dropped one by one, as a full send queue
//! refuses them (the edge's gap repair fills the hole), and can arrive twice. Every packet
//! takes its own random delay, so packets overtake each other, except on one lane: as on the
//! mesh, where a conversation's or a user's frames share a stream, packets with the same lane
//! key between the same two nodes arrive in the order sent. A node's packets to itself are
//! the in-process path: at once, never lost.

use rand::rngs::SmallRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Net {
    /// Chance that one delivery is refused.
    pub delivery_loss: f64,
    /// Chance that one delivery arrives twice.
    pub duplication: f64,
    /// Delay range in virtual milliseconds.
    pub delay_ms: (u64, u64),
    /// Links cut (a partition), each as (lower id, higher id).
    cut: BTreeSet<(u16, u16)>,
    /// Each link's connection number: a packet sent on an earlier one is lost.
    epochs: BTreeMap<(u16, u16), u64>,
    /// The latest arrival on each (from, to, lane) stream.
    lanes: BTreeMap<(u16, u16, u64), u64>,
}

fn link(a: u16, b: u16) -> (u16, u16) {
    (a.min(b), a.max(b))
}

impl Net {
    pub fn calm() -> Net {
        Net { delay_ms: (1, 5), ..Net::default() }
    }

    /// No more refused or doubled deliveries, and short delays; cuts and connections stay.
    pub fn calm_down(&mut self) {
        (self.delivery_loss, self.duplication, self.delay_ms) = (0.0, 0.0, (1, 5));
    }

    pub fn epoch(&self, a: u16, b: u16) -> u64 {
        self.epochs.get(&link(a, b)).copied().unwrap_or(0)
    }

    /// The link's connection breaks: what is in flight on it is lost.
    pub fn break_link(&mut self, a: u16, b: u16) {
        *self.epochs.entry(link(a, b)).or_default() += 1;
    }

    pub fn cut(&mut self, a: u16, b: u16) {
        self.break_link(a, b);
        self.cut.insert(link(a, b));
    }

    pub fn is_cut(&self, a: u16, b: u16) -> bool {
        self.cut.contains(&link(a, b))
    }

    /// Heals every cut; returns the links healed.
    pub fn heal(&mut self) -> Vec<(u16, u16)> {
        std::mem::take(&mut self.cut).into_iter().collect()
    }

    /// When a packet sent at `now` from `from` to `to` on `lane` (none: its own stream)
    /// arrives: never, once, or twice. `delivery`: a fan-out delivery, which alone may be
    /// refused or doubled.
    pub fn arrivals(
        &mut self,
        rng: &mut SmallRng,
        now: u64,
        (from, to): (u16, u16),
        lane: Option<u64>,
        delivery: bool,
    ) -> Vec<u64> {
        if from == to {
            return vec![now];
        }
        if self.is_cut(from, to) || (delivery && self.delivery_loss > 0.0 && rng.gen_bool(self.delivery_loss)) {
            return Vec::new();
        }
        let (low, high) = self.delay_ms;
        let mut first = now + rng.gen_range(low..=high);
        if let Some(lane) = lane {
            // Same time, later event: the event queue keeps the order sent.
            let last = self.lanes.entry((from, to, lane)).or_default();
            first = first.max(*last);
            *last = first;
        }
        let mut at = vec![first];
        if delivery && self.duplication > 0.0 && rng.gen_bool(self.duplication) {
            at.push(now + rng.gen_range(low..=high * 2));
        }
        at
    }
}
