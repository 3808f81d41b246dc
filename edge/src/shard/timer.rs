//! Connection deadlines, as quinn-proto keeps them: a timer table per connection (when each
//! of its timers is due) and one queue per shard of when the next connection wakes. Nothing
//! here reads a clock; every time is passed in, in milliseconds of the shard's monotonic
//! clock ([`super::agenda::Now`]).
//!
//! A connection has at most one live entry in the queue, at its earliest timer
//! (`TimerTable::queued`). Moving a timer later leaves that entry be: when it comes up the
//! connection's timers are looked at again and the next wake is queued then, so a deadline
//! that moves with every message (the heartbeat timeout) costs nothing per message. Moving
//! one earlier queues a new entry; the old one no longer matches `queued` when it comes up,
//! and is dropped. Entries of connections that are gone are dropped the same way (their
//! generation differs), and the queue is compacted when such entries outnumber the live ones.

use crate::node::ConnRef;
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The shard's timing rules, from the node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub heartbeat_ms: u64,
    /// From the connection's opening to its request head or its `hello`.
    pub auth_ms: u64,
    /// A REST connection with no request for this long is closed.
    pub rest_idle_ms: u64,
}

/// A connection's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The deadline of its phase: the request head or `hello` within the handshake deadline,
    /// a REST connection's idle limit, the heartbeat timeout, a closed connection's linger.
    Deadline,
    /// Its next heartbeat ping.
    Ping,
}

impl Timer {
    pub const ALL: [Timer; 2] = [Timer::Deadline, Timer::Ping];
}

/// When each timer of one connection is due (0: not set), and the time of its entry in the
/// shard's queue (0: none; `FIRING` while its timers fire).
#[derive(Default)]
pub struct TimerTable {
    at: [Cell<u64>; 2],
    queued: Cell<u64>,
}

/// `queued` while the connection's timers fire: what they set is queued once, after.
const FIRING: u64 = u64::MAX;

impl TimerTable {
    pub fn get(&self, timer: Timer) -> Option<u64> {
        Some(self.at[timer as usize].get()).filter(|&t| t != 0)
    }

    /// Sets `timer` to fall due at `at` (at least 1); returns the time to queue the
    /// connection at, if its queue entry must move earlier (or it has none).
    #[must_use]
    pub fn set(&self, timer: Timer, at: u64) -> Option<u64> {
        let at = at.max(1);
        self.at[timer as usize].set(at);
        let queued = self.queued.get();
        (queued == 0 || (at < queued && queued != FIRING)).then(|| {
            self.queued.set(at);
            at
        })
    }

    pub fn stop(&self, timer: Timer) {
        self.at[timer as usize].set(0);
    }

    /// The queue entry at `at` came up: whether it is this table's live entry (if it is,
    /// the caller fires what is due, then queues the next entry with
    /// [`TimerTable::requeue`]).
    pub fn take_entry(&self, at: u64) -> bool {
        if self.queued.get() != at {
            return false;
        }
        self.queued.set(FIRING);
        true
    }

    /// Whether the queue entry at `at` is this table's live one.
    pub fn holds_entry(&self, at: u64) -> bool {
        self.queued.get() == at
    }

    /// The timers due at `now`, with the time each was due, each stopped.
    pub fn expired(&self, now: u64) -> impl Iterator<Item = (Timer, u64)> + '_ {
        Timer::ALL.into_iter().filter_map(move |t| {
            let at = self.get(t).filter(|&at| at <= now)?;
            self.stop(t);
            Some((t, at))
        })
    }

    /// After its timers fired: the time of the connection's next entry, if a timer is set.
    #[must_use]
    pub fn requeue(&self) -> Option<u64> {
        let next = Timer::ALL.into_iter().filter_map(|t| self.get(t)).min();
        self.queued.set(next.unwrap_or(0));
        next
    }
}

/// The shard's queue of connection wake-ups, earliest first.
#[derive(Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl TimerQueue {
    pub fn push(&mut self, at: u64, id: ConnRef) {
        self.heap.push(Reverse((at, id.slot, id.generation)));
    }

    /// The next entry due at `now`, taken off the queue.
    pub fn pop_due(&mut self, now: u64, shard: u16) -> Option<(u64, ConnRef)> {
        let Reverse((at, ..)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((at, slot, generation)) = self.heap.pop()?;
        Some((at, ConnRef { shard, slot, generation }))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries `live` says are some connection's live entry.
    pub fn retain(&mut self, shard: u16, mut live: impl FnMut(u64, ConnRef) -> bool) {
        self.heap.retain(|Reverse((at, slot, generation))| {
            live(*at, ConnRef { shard, slot: *slot, generation: *generation })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ConnRef = ConnRef { shard: 0, slot: 7, generation: 3 };

    /// Drives one table and the queue the way the shard does, returning what fired when.
    fn run(table: &TimerTable, queue: &mut TimerQueue, until: u64) -> Vec<(u64, Timer)> {
        let mut fired = Vec::new();
        for now in 0..=until {
            while let Some((at, id)) = queue.pop_due(now, 0) {
                assert_eq!(id, ID);
                if !table.take_entry(at) {
                    continue;
                }
                fired.extend(table.expired(now).map(|(t, at)| {
                    assert_eq!(at, now, "fired when due");
                    (now, t)
                }));
                if let Some(next) = table.requeue() {
                    queue.push(next, id);
                }
            }
        }
        fired
    }

    /// A deadline moved later costs no entry; one moved earlier does, and the entry it
    /// replaced is dropped when it comes up; each timer fires once, when it is due.
    #[test]
    fn each_timer_fires_once_at_its_time_however_it_moved() {
        let (table, mut queue) = (TimerTable::default(), TimerQueue::default());
        let set = |queue: &mut TimerQueue, t, at| {
            if let Some(q) = table.set(t, at) {
                queue.push(q, ID);
            }
        };
        set(&mut queue, Timer::Deadline, 100);
        set(&mut queue, Timer::Deadline, 150);
        set(&mut queue, Timer::Deadline, 200);
        assert_eq!(queue.len(), 1, "moved later: still the one entry, at 100");
        set(&mut queue, Timer::Ping, 50);
        assert_eq!(queue.len(), 2, "earlier: a new entry");
        let fired = run(&table, &mut queue, 300);
        assert_eq!(fired, [(50, Timer::Ping), (200, Timer::Deadline)]);
        assert!(queue.is_empty(), "nothing left over");
        assert!(table.get(Timer::Deadline).is_none() && table.get(Timer::Ping).is_none());
    }

    /// A stopped timer does not fire, and a connection with nothing set has no entry.
    #[test]
    fn a_stopped_timer_does_not_fire() {
        let (table, mut queue) = (TimerTable::default(), TimerQueue::default());
        queue.push(table.set(Timer::Deadline, 10).unwrap(), ID);
        table.stop(Timer::Deadline);
        assert_eq!(run(&table, &mut queue, 20), []);
        assert!(queue.is_empty());
        assert_eq!(table.requeue(), None);
    }

    /// Entries that no table claims are compacted away.
    #[test]
    fn retain_drops_dead_entries() {
        let mut queue = TimerQueue::default();
        for generation in 0..10 {
            queue.push(5, ConnRef { generation, ..ID });
        }
        queue.retain(0, |_, id| id.generation == 9);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop_due(5, 0), Some((5, ConnRef { generation: 9, ..ID })));
    }
}
