//! One connection's state shared by its wire (the bytes in and out, [`super::wire`]), the
//! shard's fan-out and the REST task that answers it: who it is, its outbound queue, its open
//! channels and whether it is closing.
//!
//! Nothing here touches a socket. Queuing a frame or closing marks the connection for the
//! shard's driver (`driver::schedule`), which sends what is queued in one vectored
//! write and, on close, writes the close frame and releases the socket.

use super::driver;
use crate::node::{now_ms, ConnRef};
use crate::outbox::{Outbox, Overflow, SLOW_CONSUMER_CLOSE};
use crate::ws::handshake::Encoding;
use crate::ws::Opcode;
use bytes::Bytes;
use std::cell::{Cell, OnceCell, RefCell};
use std::time::Instant;
use switchboard_store::UserId;

/// Requests a connection may have waiting on the store. Past it, the connection's socket is
/// not read until answers come back: a client that pipelines without reading slows down
/// instead of overflowing its own outbound queue with answers (each answer is small, so the
/// window's answers fit the queue many times over).
pub const IN_FLIGHT_MAX: u32 = 256;

/// What the connection is speaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before its first request head is complete (the handshake deadline applies).
    Handshake,
    /// REST with keep-alive: between or inside requests.
    Rest,
    /// The protocol over WebSocket.
    WebSocket,
    /// `/v1/echo`: every message comes back.
    Echo,
    /// The protocol over QUIC or WebTransport: frames length-prefixed, written by the QUIC
    /// endpoint thread ([`super::quic`]).
    Quic,
}

pub struct Conn {
    pub id: ConnRef,
    pub opened_ms: u64,
    /// The last time anything arrived (presence and the heartbeat timeout).
    pub last_in_ms: Cell<u64>,
    encoding: Cell<Encoding>,
    phase: Cell<Phase>,
    user: OnceCell<UserId>,
    outbox: RefCell<Outbox>,
    closing: Cell<Option<(u16, &'static str)>>,
    /// The peer is gone or the socket failed: nothing more is written.
    aborted: Cell<bool>,
    /// Requests waiting on the store.
    in_flight: Cell<u32>,
    /// In the driver's to-do list.
    scheduled: Cell<bool>,
    /// A REST answer was queued; `Some(keep_alive)` until the driver has seen it.
    answered: Cell<Option<bool>>,
    /// Boxed: most connections never open a channel or sync.
    convs: RefCell<Option<Box<Convs>>>,
    /// A heartbeat ping is due: the driver writes it with the next send. It is not queued,
    /// so an idle connection's emptied queue stays given back (it would be allocated again
    /// by every round's ping otherwise).
    ping_due: Cell<bool>,
    /// Said `hello`, and its `welcome` waits (in a cluster, for the user's subscriptions):
    /// frames for it are held, so that none goes out before the `welcome`.
    welcoming: Cell<bool>,
}

/// What a connection keeps of a few conversations (most keep nothing).
#[derive(Default)]
struct Convs {
    /// Channels this connection has open (few), with the newest seq pushed of each.
    open: Vec<(Box<str>, u64)>,
    /// Channels closed since their last `notify`, with the newest seq this connection saw
    /// while it had them open: a `notify` is only due for something newer.
    closed: Vec<(Box<str>, u64)>,
    /// Conversations a `sync` page just covered: the page's `upto`, and when it went out.
    /// A push at or below `upto` is one this connection already has (across nodes, an edge's
    /// gap repair can deliver after a connection's own sync was answered).
    synced: Vec<Synced>,
    /// Frames that came while the `welcome` waited, in order (at most [`HELD_FRAMES_MAX`],
    /// and no more bytes than the outbound queue takes), and their bytes.
    held: Vec<Bytes>,
    held_bytes: usize,
}

struct Synced {
    conv: Box<str>,
    upto: u64,
    at_ms: u64,
}

impl Convs {
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty() && self.synced.is_empty() && self.held.is_empty()
    }
}

/// Conversations watched after a sync, per connection; past it, the oldest is forgotten.
const SYNCED_REMEMBERED_MAX: usize = 64;

const CLOSED_REMEMBERED_MAX: usize = 16;

/// Frames held for a connection whose `welcome` waits; past it (or past the outbound queue's
/// bytes) the connection is closed as a slow consumer (4009), and the client resyncs. The
/// wait is bounded (the subscriptions answer or time out within seconds), so this is only
/// reached by a burst.
pub const HELD_FRAMES_MAX: usize = 1024;

impl Conn {
    pub fn new(id: ConnRef, outbox_bytes_max: usize) -> Conn {
        let now = now_ms();
        Conn {
            id,
            opened_ms: now,
            last_in_ms: Cell::new(now),
            encoding: Cell::new(Encoding::Json),
            phase: Cell::new(Phase::Handshake),
            user: OnceCell::new(),
            outbox: RefCell::new(Outbox::new(outbox_bytes_max)),
            closing: Cell::new(None),
            aborted: Cell::new(false),
            in_flight: Cell::new(0),
            scheduled: Cell::new(false),
            answered: Cell::new(None),
            convs: RefCell::new(None),
            ping_due: Cell::new(false),
            welcoming: Cell::new(false),
        }
    }

    /// Pings if one of this connection's heartbeat turns passed between the shard's last
    /// sweep (`swept_ms`) and this one. Turn k falls at `opened + spread + k × heartbeat`,
    /// the spread (half a heartbeat to a whole one) taken from the connection's slot, so that
    /// a shard's connections, which often open in one burst, are pinged spread over half the
    /// heartbeat rather than all in one tick, and none right after it opened. It needs no
    /// state of its own, and after a stall it catches up with one ping, not one per missed
    /// turn.
    pub(super) fn ping_if_due(&self, swept_ms: u64, now_ms: u64, heartbeat_ms: u64) {
        let hb = heartbeat_ms.max(2);
        let spread = hb / 2 + u64::from(self.id.slot).wrapping_mul(2_654_435_761) % (hb / 2);
        let first = self.opened_ms + spread;
        let turn = |t: u64| if t < first { 0 } else { (t - first) / hb + 1 };
        if turn(now_ms) > turn(swept_ms) {
            self.ping_due.set(true);
            self.schedule();
        }
    }

    /// Whether a ping is due, clearing it: the driver writes it.
    pub(super) fn take_ping(&self) -> bool {
        self.ping_due.replace(false)
    }

    pub fn user(&self) -> Option<&UserId> {
        self.user.get()
    }

    pub(super) fn set_user(&self, user: UserId) {
        let _ = self.user.set(user);
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding.get()
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// The upgrade went through: frames from now on, in `encoding`.
    pub(super) fn upgraded(&self, encoding: Encoding, echo: bool) {
        self.encoding.set(encoding);
        self.phase.set(if echo { Phase::Echo } else { Phase::WebSocket });
    }

    /// A QUIC connection: frames from the first, in `encoding`.
    pub(super) fn over_quic(&self, encoding: Encoding) {
        self.encoding.set(encoding);
        self.phase.set(Phase::Quic);
    }

    pub(super) fn serving_rest(&self) {
        self.phase.set(Phase::Rest);
    }

    pub fn closing(&self) -> Option<(u16, &'static str)> {
        self.closing.get()
    }

    fn data_opcode(&self) -> Opcode {
        match self.encoding.get() {
            Encoding::Json => Opcode::Text,
            Encoding::Binary => Opcode::Binary,
        }
    }

    /// The `welcome` will come later (`welcome`): until then frames are held.
    pub fn await_welcome(&self) {
        self.welcoming.set(true);
    }

    /// Queues the `welcome`, then what was held while it waited, in order.
    pub fn welcome(&self, frame: Bytes) {
        self.welcoming.set(false);
        self.push(frame);
        let held = self.convs.borrow_mut().as_mut().map(|c| {
            c.held_bytes = 0;
            std::mem::take(&mut c.held)
        });
        let held = held.unwrap_or_default();
        for payload in held {
            self.push(payload);
        }
    }

    fn hold(&self, payload: Bytes) {
        let bytes_max = self.outbox.borrow().bytes_max();
        let mut convs = self.convs.borrow_mut();
        let c = convs.get_or_insert_with(Box::default);
        if c.held.len() == HELD_FRAMES_MAX || c.held_bytes + payload.len() > bytes_max {
            (c.held, c.held_bytes) = (Vec::new(), 0);
            drop(convs);
            return self.close(SLOW_CONSUMER_CLOSE, "slow consumer: too much waited for the welcome");
        }
        c.held_bytes += payload.len();
        c.held.push(payload);
    }

    /// Hands the connection to the driver's next turn.
    pub(super) fn schedule(&self) {
        if !self.scheduled.replace(true) {
            driver::schedule(self.id);
        }
    }

    pub(super) fn unschedule(&self) {
        self.scheduled.set(false);
    }

    /// Queues one protocol frame (already in this connection's encoding).
    pub fn push(&self, payload: Bytes) {
        self.push_timed(payload, None)
    }

    pub fn push_timed(&self, payload: Bytes, started: Option<Instant>) {
        self.enqueue(self.data_opcode(), payload, started)
    }

    pub fn push_control(&self, opcode: Opcode, payload: Bytes) {
        self.enqueue(opcode, payload, None)
    }

    pub(super) fn enqueue(&self, opcode: Opcode, payload: Bytes, started: Option<Instant>) {
        if self.closing.get().is_some() {
            return;
        }
        if self.welcoming.get() && opcode == self.data_opcode() {
            return self.hold(payload);
        }
        let pushed = if self.phase.get() == Phase::Quic {
            if opcode != self.data_opcode() {
                // WebSocket control frames have no meaning on QUIC.
                return;
            }
            self.outbox.borrow_mut().push_length_prefixed(payload, started)
        } else {
            self.outbox.borrow_mut().push_timed(opcode, payload, started)
        };
        match pushed {
            Ok(()) => self.schedule(),
            Err(Overflow) => self.close(SLOW_CONSUMER_CLOSE, "slow consumer: outbound queue full"),
        }
    }

    /// Queues bytes as they are (an HTTP response).
    pub(super) fn push_raw(&self, bytes: impl Into<Bytes>) {
        if self.closing.get().is_none() {
            self.outbox.borrow_mut().push_raw(bytes.into());
            self.schedule();
        }
    }

    /// The REST answer to the request in progress (`keep_alive`: serve the next one after).
    pub(super) fn answer_rest(&self, response: Vec<u8>, keep_alive: bool) {
        self.answered.set(Some(keep_alive));
        self.push_raw(response);
    }

    pub(super) fn take_answered(&self) -> Option<bool> {
        self.answered.take()
    }

    pub(super) fn outbox(&self) -> std::cell::RefMut<'_, Outbox> {
        self.outbox.borrow_mut()
    }

    /// Closes with `code` after what is queued (the first close wins): for a WebSocket, a
    /// close frame follows; code 0 means none. A slow consumer's queue is dropped: it would
    /// never drain, and the client resyncs anyway.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.closing.get().is_some() {
            return;
        }
        self.closing.set(Some((code, reason)));
        if code == SLOW_CONSUMER_CLOSE {
            self.outbox.borrow_mut().clear();
        }
        self.schedule();
    }

    /// The peer is gone (or the socket failed): nothing more is written.
    pub(super) fn abort(&self) {
        self.aborted.set(true);
        self.closing.set(Some((0, "")));
        self.outbox.borrow_mut().clear();
        self.schedule();
    }

    pub(super) fn aborted(&self) -> bool {
        self.aborted.get()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    pub fn started_request(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn finished_request(&self) {
        let n = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(n);
        if n == IN_FLIGHT_MAX / 2 {
            // A reader paused on the window reads again.
            self.schedule();
        }
    }

    pub fn has_open(&self, conv: &str) -> bool {
        self.convs.borrow().as_ref().is_some_and(|ch| ch.open.iter().any(|(c, _)| &**c == conv))
    }

    /// Returns whether it was newly opened.
    pub fn open_channel(&self, conv: &str) -> bool {
        if self.has_open(conv) {
            return false;
        }
        let mut channels = self.convs.borrow_mut();
        let ch = channels.get_or_insert_with(Box::default);
        ch.closed.retain(|(c, _)| &**c != conv);
        ch.open.push((conv.into(), 0));
        true
    }

    /// Returns whether it was open.
    pub fn close_channel(&self, conv: &str) -> bool {
        let mut channels = self.convs.borrow_mut();
        let Some(ch) = channels.as_mut() else { return false };
        let Some(i) = ch.open.iter().position(|(c, _)| &**c == conv) else { return false };
        let entry = ch.open.swap_remove(i);
        if ch.closed.len() == CLOSED_REMEMBERED_MAX {
            ch.closed.remove(0);
        }
        ch.closed.push(entry);
        true
    }

    /// A channel message was pushed here in full.
    pub fn saw(&self, conv: &str, seq: u64) {
        let mut channels = self.convs.borrow_mut();
        let open = channels.as_mut().map(|ch| &mut ch.open);
        if let Some((_, seen)) = open.and_then(|o| o.iter_mut().find(|(c, _)| &**c == conv)) {
            *seen = (*seen).max(seq);
        }
    }

    /// Whether a `notify` of `head` tells this connection something new (and forgets what it
    /// saw before closing the channel: from now on, `notify` is its news).
    pub fn needs_notify(&self, conv: &str, head: u64) -> bool {
        if self.has_open(conv) {
            return false;
        }
        let mut channels = self.convs.borrow_mut();
        let Some(ch) = channels.as_mut() else { return true };
        match ch.closed.iter().position(|(c, _)| &**c == conv) {
            Some(i) => ch.closed.swap_remove(i).1 < head,
            None => true,
        }
    }

    /// A `sync` page up to `upto` of `conv` went out on this connection.
    pub fn synced(&self, conv: &str, upto: u64, now_ms: u64) {
        if upto == 0 {
            return;
        }
        let mut convs = self.convs.borrow_mut();
        let watched = &mut convs.get_or_insert_with(Box::default).synced;
        match watched.iter_mut().find(|w| &*w.conv == conv) {
            Some(w) => {
                w.upto = w.upto.max(upto);
                w.at_ms = now_ms;
            }
            None => {
                if watched.len() == SYNCED_REMEMBERED_MAX {
                    watched.remove(0);
                }
                watched.push(Synced { conv: conv.into(), upto, at_ms: now_ms });
            }
        }
    }

    /// Whether a push of `conv` at `seq` is one a sync page already gave this connection.
    /// The first push past the page ends the watch: the edge pushes a conversation's
    /// messages in seq order, so every later push is past it too.
    /// (`seq` 0 is a frame that is not a message: never one.)
    pub fn already_synced(&self, conv: &str, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        let mut convs = self.convs.borrow_mut();
        let Some(c) = convs.as_mut() else { return false };
        let Some(i) = c.synced.iter().position(|w| &*w.conv == conv) else { return false };
        if seq <= c.synced[i].upto {
            return true;
        }
        c.synced.swap_remove(i);
        false
    }

    /// Forgets syncs answered before `before_ms` (a late repair comes well within a
    /// heartbeat), and the whole box when nothing is left in it.
    pub fn forget_synced_before(&self, before_ms: u64) {
        let mut convs = self.convs.borrow_mut();
        let Some(c) = convs.as_mut() else { return };
        c.synced.retain(|w| w.at_ms >= before_ms);
        if c.is_empty() {
            *convs = None;
        }
    }

    pub fn take_open(&self) -> Vec<Box<str>> {
        let ch = self.convs.borrow_mut().take();
        ch.map(|ch| ch.open.into_iter().map(|(c, _)| c).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Swept every 10 ms for three heartbeats, every connection is pinged once a heartbeat,
    /// and a burst of connections opened together is pinged spread over half of it.
    #[test]
    fn pings_come_once_a_heartbeat_spread_over_it() {
        let hb = 1_000;
        let conns: Vec<Conn> =
            (0..1_000).map(|slot| Conn::new(ConnRef { shard: 0, slot, generation: 0 }, 1 << 20)).collect();
        let opened = conns[0].opened_ms;
        let mut first_tick = vec![None; conns.len()];
        let mut pings = vec![0; conns.len()];
        let mut swept = opened;
        for tick in 1..=300u64 {
            let now = opened + tick * 10;
            for (i, c) in conns.iter().enumerate() {
                c.ping_if_due(swept, now, hb);
                if c.take_ping() {
                    pings[i] += 1;
                    first_tick[i].get_or_insert(tick);
                }
            }
            swept = now;
        }
        assert!(pings.iter().all(|p| (2..=3).contains(p)), "{pings:?}");
        assert!(pings.iter().filter(|p| **p == 3).count() > 900, "most had three turns in three heartbeats");
        let mut per_tick = std::collections::HashMap::new();
        for t in first_tick.iter().flatten() {
            *per_tick.entry(*t).or_insert(0) += 1;
        }
        assert!(per_tick.len() > 45, "first pings fell in {} of 50 ticks", per_tick.len());
        assert!(per_tick.keys().all(|t| (50..=100).contains(t)), "first pings half a heartbeat to one after opening");
        assert!(per_tick.values().all(|n| *n < 60), "{per_tick:?}");
        // A stall of five heartbeats catches up with one ping, not five.
        let now = swept + 5 * hb;
        let caught_up = conns
            .iter()
            .filter(|c| {
                c.ping_if_due(swept, now, hb);
                c.take_ping() && !c.take_ping()
            })
            .count();
        assert_eq!(caught_up, conns.len());
    }

    /// After a sync page up to 2, pushes of 1 and 2 (a repair that trailed the page) are
    /// skipped and 3 is not; the watch ends at the first push past the page, and a watch
    /// older than the cut-off is forgotten with the box it lived in.
    #[test]
    fn a_push_a_sync_page_already_gave_is_skipped_once_until_one_passes_it() {
        let c = Conn::new(ConnRef { shard: 0, slot: 0, generation: 0 }, 1 << 20);
        assert!(!c.already_synced("dm:a:b", 1), "nothing synced yet");
        c.synced("dm:a:b", 0, 100);
        assert!(c.convs.borrow().is_none(), "an empty page watches nothing");
        c.synced("dm:a:b", 2, 100);
        assert!(!c.already_synced("g:other", 1), "another conversation");
        assert!(!c.already_synced("dm:a:b", 0), "seq 0 is not a message");
        assert!(c.already_synced("dm:a:b", 1));
        assert!(c.already_synced("dm:a:b", 2));
        assert!(!c.already_synced("dm:a:b", 3));
        assert!(!c.already_synced("dm:a:b", 2), "the watch ended at 3");
        c.synced("g:x", 5, 100);
        c.synced("g:x", 4, 200);
        assert!(c.already_synced("g:x", 5), "a later, shorter page keeps the longer reach");
        c.forget_synced_before(201);
        assert!(!c.already_synced("g:x", 1));
        assert!(c.convs.borrow().is_none(), "nothing left: the box is given back");
        for i in 0..SYNCED_REMEMBERED_MAX + 1 {
            c.synced(&format!("g:{i}"), 1, 300);
        }
        assert!(!c.already_synced("g:0", 1), "the oldest was forgotten past the limit");
        assert!(c.already_synced(&format!("g:{SYNCED_REMEMBERED_MAX}"), 1));
    }

    /// What is queued, as bytes on the wire.
    fn queued(c: &Conn) -> Vec<u8> {
        let outbox = c.outbox();
        let mut slices = Vec::new();
        outbox.gather(&mut slices, usize::MAX);
        slices.iter().flat_map(|s| s.to_vec()).collect()
    }

    /// Frames that come while the welcome waits go out after it, in order; a WebSocket
    /// control frame is not held; past the limit the connection closes as a slow consumer.
    #[test]
    fn nothing_goes_out_before_the_welcome() {
        let c = Conn::new(ConnRef { shard: 0, slot: 0, generation: 0 }, 1 << 20);
        c.await_welcome();
        c.push(Bytes::from_static(b"msg-1"));
        c.push_control(Opcode::Pong, Bytes::from_static(b"pong"));
        c.push(Bytes::from_static(b"msg-2"));
        assert_eq!(queued(&c), [&[0x8a, 4][..], b"pong"].concat(), "only the control frame");
        c.welcome(Bytes::from_static(b"welcome"));
        let wire = queued(&c);
        let at = |needle: &[u8]| wire.windows(needle.len()).position(|w| w == needle).unwrap();
        assert!(at(b"pong") < at(b"welcome") && at(b"welcome") < at(b"msg-1") && at(b"msg-1") < at(b"msg-2"));
        c.push(Bytes::from_static(b"msg-3"));
        assert!(queued(&c).ends_with(b"msg-3"), "after the welcome, frames go as they come");

        let slow = Conn::new(ConnRef { shard: 0, slot: 1, generation: 0 }, 1 << 20);
        slow.await_welcome();
        for _ in 0..HELD_FRAMES_MAX {
            slow.push(Bytes::from_static(b"m"));
        }
        assert_eq!(slow.closing(), None);
        slow.push(Bytes::from_static(b"m"));
        assert_eq!(slow.closing().map(|(code, _)| code), Some(SLOW_CONSUMER_CLOSE));
        // And by bytes: no more than the outbound queue would take.
        let big = Conn::new(ConnRef { shard: 0, slot: 2, generation: 0 }, 1000);
        big.await_welcome();
        big.push(Bytes::from(vec![b'x'; 600]));
        assert_eq!(big.closing(), None);
        big.push(Bytes::from(vec![b'x'; 600]));
        assert_eq!(big.closing().map(|(code, _)| code), Some(SLOW_CONSUMER_CLOSE));
    }
}
