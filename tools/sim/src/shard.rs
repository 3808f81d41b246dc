//! Each simulated node's edge shard: the daemon's real `shard::Local` (who is connected, the
//! fan-out into connections, the `welcome` and what is held until it, eviction, the outbound
//! queues with their limit), run without a thread, an inbox or a socket. The simulator is
//! its shell: it passes the virtual time of each turn, hands it the events its inbox would
//! carry, and plays the driver, which writes each connection's queue to its client.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_edge::auth::Verifier;
use switchboard_edge::config::Config;
use switchboard_edge::metrics::Metrics;
use switchboard_edge::node::mailbox::{mailbox, Mailbox};
use switchboard_edge::node::presence::Presence;
use switchboard_edge::node::{ConnRef, Hub, Node, ShardEvent};
use switchboard_edge::shard::agenda::Now;
use switchboard_edge::shard::conn::Conn;
use switchboard_edge::shard::Local;

/// One node's shard core, and the slots of its connections.
pub struct Shard {
    pub local: Rc<Local>,
    /// Kept so that the hub's postbox has a receiver; nothing the core runs here posts to it
    /// (what the daemon's inbox carries, the simulator hands to `Local::handle` itself).
    _inbox: Mailbox<ShardEvent>,
}

/// The time of a turn at virtual `now_ms`: the shard's clocks are the simulator's.
pub fn now(epoch: Instant, now_ms: u64, start_unix_ms: u64) -> Now {
    Now { mono_ms: now_ms + 1, unix_ms: start_unix_ms + now_ms, at: epoch + Duration::from_millis(now_ms) }
}

impl Shard {
    /// Shard 0 of node `me`, a process that starts at `now`, with the default settings.
    pub fn new(me: u16, verifier: Verifier, now: Now, seed: u64) -> Shard {
        let config = Config::default();
        let (postbox, inbox) = mailbox(1024);
        let hub = Arc::new(Hub {
            me,
            shards: vec![postbox],
            metrics: Metrics::new(1, 0),
            receipts_fanout_max: config.receipts_fanout_max,
            fanout: None,
        });
        let node = Node::new(config, format!("node-{me}"), verifier, Vec::new(), hub, Presence::default());
        Shard { local: Rc::new(Local::new(0, Arc::new(node), now, seed)), _inbox: inbox }
    }

    /// A new connection in its slot.
    pub fn open(&self) -> Rc<Conn> {
        let conn = self.local.new_conn(self.local.reserve());
        self.local.insert(conn.clone());
        conn
    }

    /// The connections the driver would write to next (each taken off the to-do list), by
    /// slot: the shard lists them in the order it queued their frames, which follows a
    /// delivery's member set, a `HashSet` with the process's random keys (what each
    /// connection is queued, and its order, does not depend on it; a replay must not either).
    pub fn to_write(&self) -> Vec<ConnRef> {
        let mut todo = self.local.agenda.take_todo();
        todo.sort_unstable_by_key(|id| (id.slot, id.generation));
        todo
    }
}

/// Everything queued on `conn`, taken as a writer that wrote it all.
pub fn written(conn: &Conn) -> Vec<u8> {
    conn.unschedule();
    let mut outbox = conn.outbox();
    let mut slices = Vec::new();
    outbox.gather(&mut slices, usize::MAX);
    let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
    drop(slices);
    outbox.advance(bytes.len());
    bytes
}
