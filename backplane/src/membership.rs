//! Failure detection: SWIM, by the sans-IO `foca` crate, with its timers kept here as data
//! (due times in a sorted map) so that the caller's clock, real or simulated, drives them.
//!
//! foca's messages travel on the mesh's own connections (the control stream), not on a
//! socket of their own: a probe to a node with no connection is lost, which is exactly the
//! evidence SWIM needs, and the mesh needs no second port or second trust model.

use crate::config::MeshConfig;
use crate::ids::{Boot, NodeId};
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;
use swim_rand::SeedableRng;

/// A member as SWIM knows it: the node, its run, and how many times this run rejoined after
/// being declared down while alive (a false suspicion it learnt of too late).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    pub boot: Boot,
    pub renewal: u32,
}

impl foca::Identity for Member {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Member { renewal: self.renewal.wrapping_add(1), ..*self })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    /// The later run wins; within a run, the later renewal.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, self.renewal) > (adversary.boot, adversary.renewal)
    }
}

/// What SWIM decided; the mesh turns these into its own events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Up(Member),
    Down(Member),
    /// A later identity took the node's place with no change of liveness (both alive or
    /// both down): a restart noticed through gossip, or a renewal after a false suspicion.
    Renamed {
        from: Member,
        to: Member,
    },
}

type Engine = Foca<Member, PostcardCodec, swim_rand::rngs::SmallRng, NoCustomBroadcast>;

pub struct Swim {
    foca: Engine,
    runtime: AccumulatingRuntime<Member>,
    timers: BTreeMap<(u64, u64), Timer<Member>>,
    timer_seq: u64,
    /// SWIM messages to send: (to, bytes).
    outbox: Vec<(Member, Bytes)>,
    changes: Vec<Change>,
    /// Messages from peers that foca could not decode (a metric; never a panic).
    pub rejected: u64,
}

impl Swim {
    pub fn new(me: Member, config: &MeshConfig, cluster_size: usize, seed: u64) -> Swim {
        let mut swim = foca::Config::new_lan(NonZeroU32::new(cluster_size.max(1) as u32).expect("nonzero"));
        swim.probe_period = Duration::from_millis(config.probe_period_ms);
        swim.probe_rtt = Duration::from_millis(config.probe_rtt_ms);
        swim.num_indirect_probes = NonZeroUsize::new(config.indirect_probes.max(1)).expect("nonzero");
        swim.suspect_to_down_after = Duration::from_millis(config.suspect_to_down_ms);
        // Down members are told again every few seconds that they are down, so a node that
        // was cut off learns it and rejoins (renews) soon after the partition heals.
        swim.periodic_announce_to_down_members =
            Some(foca::PeriodicParams { frequency: Duration::from_secs(3), num_members: NonZeroUsize::MIN });
        let rng = swim_rand::rngs::SmallRng::seed_from_u64(seed);
        Swim {
            foca: Foca::new(me, swim, rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            outbox: Vec::new(),
            changes: Vec::new(),
            rejected: 0,
        }
    }

    pub fn identity(&self) -> Member {
        *self.foca.identity()
    }

    /// A connection to `member` came up: introduce ourselves.
    pub fn announce(&mut self, now_ms: u64, member: Member) {
        let _ = self.foca.announce(member, &mut self.runtime);
        self.drain(now_ms);
    }

    pub fn handle_data(&mut self, now_ms: u64, data: &[u8]) {
        if self.foca.handle_data(data, &mut self.runtime).is_err() {
            self.rejected += 1;
        }
        self.drain(now_ms);
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let timer = entry.remove();
            let _ = self.foca.handle_timer(timer, &mut self.runtime);
            self.drain(now_ms);
        }
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.keys().next().map(|(due, _)| *due)
    }

    pub fn poll_send(&mut self) -> Option<(Member, Bytes)> {
        self.outbox.pop()
    }

    pub fn poll_change(&mut self) -> Option<Change> {
        if self.changes.is_empty() {
            None
        } else {
            Some(self.changes.remove(0))
        }
    }

    /// The members SWIM holds alive now.
    pub fn live(&self) -> impl Iterator<Item = Member> + '_ {
        self.foca.iter_members().map(|m| *m.id())
    }

    fn drain(&mut self, now_ms: u64) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.outbox.insert(0, (to, data));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.insert((now_ms + after.as_millis() as u64, self.timer_seq), timer);
        }
        while let Some(note) = self.runtime.to_notify() {
            match note {
                OwnedNotification::MemberUp(member) => self.changes.push(Change::Up(member)),
                OwnedNotification::MemberDown(member) => self.changes.push(Change::Down(member)),
                OwnedNotification::Rename(from, to) => self.changes.push(Change::Renamed { from, to }),
                _ => {}
            }
        }
    }
}
