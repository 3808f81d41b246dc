//! One connection's state shared by its wire (the bytes in and out, [`super::wire`]), the
//! shard's fan-out and the REST task that answers it: who it is, its outbound queue, its open
//! channels and whether it is closing.
//!
//! Nothing here touches a socket or reads a clock. Queuing a frame or closing marks the
//! connection on the shard's [`Agenda`] for its driver, which sends what is queued in one
//! vectored write and, on close, writes the close frame and releases the socket. Its
//! deadlines are in its [`TimerTable`]; what each one does when it falls due is
//! `Conn::deadline_passed` and `Conn::ping_due`.

use super::agenda::Agenda;
use super::timer::{Deadlines, Timer, TimerTable};
use crate::node::ConnRef;
use crate::outbox::{Outbox, Overflow, SLOW_CONSUMER_CLOSE};
use crate::ws::handshake::Encoding;
use crate::ws::Opcode;
use bytes::Bytes;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
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
    /// The shard's to-do list, timer queue and clock.
    agenda: Rc<Agenda>,
    /// When its deadline and its next ping fall due.
    pub(super) timers: TimerTable,
    /// The last time anything arrived (the heartbeat timeout), on the shard's monotonic clock.
    last_in_ms: Cell<u64>,
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
    /// A frame a connection usually idles after (the `101`, the `welcome`, a REST answer)
    /// was queued: the next time a write leaves the queue empty, its room goes back at once,
    /// not at the next timer, up to a heartbeat later. So a burst of new connections holds
    /// no queues, while a busy one keeps its queue between deliveries.
    idle_next: Cell<bool>,
}

/// What a connection keeps of a few conversations (most keep nothing).
#[derive(Default)]
struct Convs {
    /// Channels this connection has open (few), with the newest seq pushed of each.
    open: Vec<(Box<str>, u64)>,
    /// Channels whose `open` waits for the owner's answer: a `close` meanwhile takes it
    /// back, so that the answer, coming after, opens nothing.
    opening: Vec<Box<str>>,
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
    /// Its latest sends, as keys of (conversation, client id), on a node of a cluster (at
    /// most [`SENDS_REMEMBERED`]): a message that an edge's gap repair fetched from the store
    /// no longer knows its sending connection, which recognizes it by its id instead.
    sent: std::collections::VecDeque<u64>,
}

struct Synced {
    conv: Box<str>,
    upto: u64,
    at_ms: u64,
}

impl Convs {
    fn is_empty(&self) -> bool {
        self.open.is_empty()
            && self.opening.is_empty()
            && self.closed.is_empty()
            && self.synced.is_empty()
            && self.held.is_empty()
            && self.sent.is_empty()
    }
}

/// Sends a connection remembers for repaired deliveries ([`Conn::remember_send`]); past it,
/// the oldest is forgotten. A repair fills deliveries lost between nodes, so it concerns a
/// connection's latest messages; one that sent more than this since a lost delivery may be
/// pushed its own oldest ones back (clients know them by their id).
pub const SENDS_REMEMBERED: usize = 64;

/// Conversations watched after a sync, per connection; past it, the oldest is forgotten.
const SYNCED_REMEMBERED_MAX: usize = 64;

const CLOSED_REMEMBERED_MAX: usize = 16;

/// Frames held for a connection whose `welcome` waits; past it (or past the outbound queue's
/// bytes) the connection is closed as a slow consumer (4009), and the client resyncs. The
/// wait is bounded (the subscriptions answer or time out within seconds), so this is only
/// reached by a burst.
pub const HELD_FRAMES_MAX: usize = 1024;

impl Conn {
    /// A connection that opened now: its deadline is the handshake's.
    pub fn new(id: ConnRef, outbox_bytes_max: usize, agenda: Rc<Agenda>) -> Conn {
        let now = agenda.now().mono_ms;
        let auth_ms = agenda.deadlines.auth_ms;
        let conn = Conn {
            id,
            agenda,
            timers: TimerTable::default(),
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
            idle_next: Cell::new(false),
        };
        conn.set_timer(Timer::Deadline, now + auth_ms + 1);
        conn
    }

    fn set_timer(&self, timer: Timer, at: u64) {
        if let Some(at) = self.timers.set(timer, at) {
            self.agenda.timers.borrow_mut().push(at, self.id);
        }
    }

    /// Something arrived from the peer.
    pub(super) fn heard(&self) {
        self.last_in_ms.set(self.agenda.now().mono_ms);
    }

    /// How long nothing arrived, at `now`.
    fn silent_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_in_ms.get())
    }

    /// The connection said `hello`: from now on it is pinged once a heartbeat, and over
    /// WebSocket closed when silent for two (over QUIC, QUIC's idle timeout does that: a
    /// client need not answer pings). The first ping comes half a heartbeat to a whole one
    /// from now, the spread taken from the connection's slot, so that a shard's
    /// connections, which often open in one burst, are pinged spread over half the
    /// heartbeat rather than all in one tick.
    pub(super) fn authenticated(&self) {
        let (now, hb) = (self.agenda.now().mono_ms, self.agenda.deadlines.heartbeat_ms.max(2));
        let spread = hb / 2 + u64::from(self.id.slot).wrapping_mul(2_654_435_761) % (hb / 2);
        self.set_timer(Timer::Ping, now + spread);
        match self.phase() {
            Phase::Quic => self.timers.stop(Timer::Deadline),
            _ => self.set_timer(Timer::Deadline, self.last_in_ms.get() + 2 * hb + 1),
        }
    }

    /// The connection's deadline came: closes it if the deadline of its phase has passed,
    /// or sets the timer again for when it will. The phase's deadline: the request head or
    /// `hello` within the handshake deadline, a REST connection idle for at most
    /// `rest_idle_ms`, a WebSocket silent for at most two heartbeats; a connection that was
    /// closed but is still there four heartbeats later (its peer reads nothing, so its close
    /// cannot be written) is cut.
    pub(super) fn deadline_passed(&self, now: u64) {
        let d: Deadlines = self.agenda.deadlines;
        self.outbox.borrow_mut().release_if_empty();
        let silent = self.silent_ms(now);
        let wait_for = |limit: u64| self.set_timer(Timer::Deadline, self.last_in_ms.get() + limit + 1);
        if self.closing().is_some() {
            // Its linger ([`Conn::close`]) is over.
            return self.abort();
        }
        // The handshake's deadline is the only one set before a `hello` or a first request.
        let authenticated = self.user().is_some();
        match self.phase() {
            Phase::Handshake => self.abort(),
            Phase::Rest if silent > d.rest_idle_ms => self.close(0, ""),
            Phase::Rest => wait_for(d.rest_idle_ms),
            Phase::WebSocket | Phase::Quic if !authenticated => {
                self.close(crate::session::UNAUTHENTICATED_CLOSE, "hello timeout")
            }
            Phase::WebSocket if silent > 2 * d.heartbeat_ms => {
                self.close(crate::ws::close_code::GOING_AWAY, "heartbeat timeout")
            }
            Phase::WebSocket => wait_for(2 * d.heartbeat_ms),
            Phase::Quic | Phase::Echo => {}
        }
    }

    /// The heartbeat ping came due: the driver writes it with the next send (unless the
    /// connection is closing), and the next is one heartbeat on; after a stall, one ping
    /// catches up, not one per missed turn. An idle connection gives back its emptied
    /// outbound queue here, and forgets syncs answered more than a heartbeat ago.
    pub(super) fn ping_due(&self, at: u64, now: u64) {
        let hb = self.agenda.deadlines.heartbeat_ms.max(2);
        self.outbox.borrow_mut().release_if_empty();
        self.forget_synced_before(now.saturating_sub(hb));
        if self.closing().is_some() {
            return;
        }
        self.ping_due.set(true);
        self.schedule();
        let missed = now.saturating_sub(at) / hb;
        self.set_timer(Timer::Ping, at + (missed + 1) * hb);
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
    pub fn upgraded(&self, encoding: Encoding, echo: bool) {
        self.encoding.set(encoding);
        self.phase.set(if echo { Phase::Echo } else { Phase::WebSocket });
    }

    /// A QUIC connection: frames from the first, in `encoding`.
    pub fn over_quic(&self, encoding: Encoding) {
        self.encoding.set(encoding);
        self.phase.set(Phase::Quic);
    }

    /// A REST request came: the idle limit is now the deadline (it comes later than the
    /// handshake's, so the timer is moved when that one comes up).
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
        self.push_then_idle(frame);
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
            self.agenda.schedule(self.id);
        }
    }

    /// The driver took the connection off the to-do list, to write what it has.
    pub fn unschedule(&self) {
        self.scheduled.set(false);
    }

    /// Queues one protocol frame (already in this connection's encoding).
    pub fn push(&self, payload: Bytes) {
        self.push_timed(payload, None)
    }

    /// Queues a frame that the connection usually idles after (its `welcome`).
    pub fn push_then_idle(&self, payload: Bytes) {
        self.push(payload);
        self.idle_next.set(true);
    }

    /// Whether the connection idles after what was just written, clearing it.
    pub(super) fn take_idle_next(&self) -> bool {
        self.idle_next.replace(false)
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
            self.idle_next.set(true);
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

    /// What waits to be written, for the driver.
    pub fn outbox(&self) -> std::cell::RefMut<'_, Outbox> {
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
        // A peer that reads nothing, so that the close cannot be written, is cut when this
        // comes (`deadline_passed`).
        self.set_timer(Timer::Deadline, self.agenda.now().mono_ms + 4 * self.agenda.deadlines.heartbeat_ms + 1);
        self.schedule();
    }

    /// The peer is gone (or the socket failed): nothing more is written.
    /// A close decided before stays (the first close wins): its code is still counted.
    pub(super) fn abort(&self) {
        self.aborted.set(true);
        if self.closing.get().is_none() {
            self.closing.set(Some((0, "")));
        }
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

    /// The client asked to `open` a channel; the owner's answer opens it
    /// ([`Conn::open_channel`]) unless a `close` came first.
    pub fn opening(&self, conv: &str) {
        let mut channels = self.convs.borrow_mut();
        let ch = channels.get_or_insert_with(Box::default);
        if !ch.opening.iter().any(|c| &**c == conv) {
            ch.opening.push(conv.into());
        }
    }

    /// The owner allowed an `open`: returns whether it newly opened the channel (not if
    /// it was open already, nor if the client closed it while the answer was on its way:
    /// found by switchboard-sim, an `open` then a `close` got full pushes after both).
    pub fn open_channel(&self, conv: &str) -> bool {
        if self.has_open(conv) {
            return false;
        }
        let mut channels = self.convs.borrow_mut();
        let ch = channels.get_or_insert_with(Box::default);
        let Some(i) = ch.opening.iter().position(|c| &**c == conv) else { return false };
        ch.opening.swap_remove(i);
        ch.closed.retain(|(c, _)| &**c != conv);
        ch.open.push((conv.into(), 0));
        true
    }

    /// Returns whether it was open. An `open` still waiting for its answer is taken back.
    pub fn close_channel(&self, conv: &str) -> bool {
        let mut channels = self.convs.borrow_mut();
        let Some(ch) = channels.as_mut() else { return false };
        ch.opening.retain(|c| &**c != conv);
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

    /// The newest seq of a closed channel this connection saw while it had it open (0: none).
    pub fn seen_before(&self, conv: &str) -> u64 {
        let channels = self.convs.borrow();
        let closed = channels.as_ref().and_then(|ch| ch.closed.iter().find(|(c, _)| &**c == conv));
        closed.map_or(0, |(_, seen)| *seen)
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

    /// The connection sent the message of `key` ([`super::Local::send_key`]).
    pub fn remember_send(&self, key: u64) {
        let mut convs = self.convs.borrow_mut();
        let sent = &mut convs.get_or_insert_with(Box::default).sent;
        if sent.len() == SENDS_REMEMBERED {
            sent.pop_front();
        }
        sent.push_back(key);
    }

    /// Whether the connection sent the message of `key` (among its latest sends).
    pub fn sent(&self, key: u64) -> bool {
        self.convs.borrow().as_ref().is_some_and(|c| c.sent.contains(&key))
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

/// Fires the timers of shard `shard` that are due at the agenda's time: for each connection
/// whose queue entry came up (`get` finds it, if it is still there), its deadline
/// ([`Conn::deadline_passed`]) and its ping ([`Conn::ping_due`]), then queues its next. The
/// work is the connections that are due, not all of them.
pub(super) fn expire(agenda: &Agenda, shard: u16, get: impl Fn(ConnRef) -> Option<Rc<Conn>>) {
    let now = agenda.now().mono_ms;
    loop {
        let due = agenda.timers.borrow_mut().pop_due(now, shard);
        let Some((at, id)) = due else { break };
        let Some(c) = get(id).filter(|c| c.timers.take_entry(at)) else { continue };
        let fired: Vec<(Timer, u64)> = c.timers.expired(now).collect();
        for (timer, due) in fired {
            match timer {
                Timer::Deadline => c.deadline_passed(now),
                Timer::Ping => c.ping_due(due, now),
            }
        }
        if let Some(next) = c.timers.requeue() {
            agenda.timers.borrow_mut().push(next, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::agenda::Now;

    const HB: u64 = 1_000;
    const AUTH: u64 = 5_000;

    /// A shard's agenda on a clock of the test's own, at 1 ms.
    fn agenda() -> Rc<Agenda> {
        let deadlines = Deadlines { heartbeat_ms: HB, auth_ms: AUTH, rest_idle_ms: 60_000 };
        Rc::new(Agenda::new(Now { mono_ms: 1, unix_ms: 1_700_000_000_000, at: Instant::now() }, deadlines))
    }

    fn conn(agenda: &Rc<Agenda>, slot: u32) -> Rc<Conn> {
        Rc::new(Conn::new(ConnRef { shard: 0, slot, generation: 0 }, 1 << 20, agenda.clone()))
    }

    /// Moves the clock to `mono_ms` and fires what is due among `conns`.
    fn at(agenda: &Agenda, conns: &[Rc<Conn>], mono_ms: u64) {
        agenda.advance(Now { mono_ms, ..agenda.now() });
        expire(agenda, 0, |id| conns.get(id.slot as usize).filter(|c| c.id == id).cloned());
    }

    fn hello(c: &Conn, user: &str) {
        c.upgraded(Encoding::Json, false);
        c.set_user(UserId::new(user).unwrap());
        c.authenticated();
    }

    fn close_code(c: &Conn) -> Option<u16> {
        c.closing().map(|(code, _)| code)
    }

    /// Found by switchboard-sim: an `open` whose answer came after the client's `close`
    /// opened the channel anyway, and the connection got full pushes it had closed.
    #[test]
    fn a_close_before_the_answer_to_an_open_takes_the_open_back() {
        let agenda = agenda();
        let c = conn(&agenda, 0);
        assert!(!c.open_channel("c"), "no open was asked for");
        c.opening("c");
        c.close_channel("c");
        assert!(!c.open_channel("c") && !c.has_open("c"), "the close took it back");
        c.opening("c");
        assert!(c.open_channel("c") && c.has_open("c"));
        c.saw("c", 7);
        c.close_channel("c");
        assert_eq!(c.seen_before("c"), 7);
        c.opening("c");
        assert!(c.open_channel("c"), "opened again");
    }

    /// A connection knows its latest sends, and forgets the oldest past the limit.
    #[test]
    fn a_connection_remembers_its_latest_sends() {
        let agenda = agenda();
        let c = conn(&agenda, 0);
        assert!(!c.sent(7));
        for key in 0..SENDS_REMEMBERED as u64 + 1 {
            c.remember_send(key);
        }
        assert!(!c.sent(0), "the oldest is forgotten");
        assert!((1..=SENDS_REMEMBERED as u64).all(|k| c.sent(k)));
    }

    /// Turned every 10 ms for three heartbeats, every connection is pinged once a heartbeat,
    /// and a burst of connections opened together is pinged spread over half of it; after a
    /// stall of five heartbeats, one ping catches up, not five.
    #[test]
    fn pings_come_once_a_heartbeat_spread_over_it() {
        let agenda = agenda();
        let conns: Vec<Rc<Conn>> = (0..1_000).map(|slot| conn(&agenda, slot)).collect();
        conns.iter().for_each(|c| hello(c, "ann"));
        let mut first_tick = vec![None; conns.len()];
        let mut pings = vec![0; conns.len()];
        let mut ping_ticks = |tick: u64, pings: &mut Vec<u32>| {
            for (i, c) in conns.iter().enumerate() {
                if c.take_ping() {
                    pings[i] += 1;
                    first_tick[i].get_or_insert(tick);
                }
                c.heard(); // the client answers: no heartbeat timeout
            }
        };
        for tick in 1..=300u64 {
            at(&agenda, &conns, 1 + tick * 10);
            ping_ticks(tick, &mut pings);
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
        let queued = agenda.timers.borrow().len();
        assert!(queued <= 2 * conns.len(), "{queued} entries for {} connections", conns.len());
        // A stall of five heartbeats (the clients' words wait in the kernel, and are read
        // first): one ping each, and the next a heartbeat later.
        agenda.advance(Now { mono_ms: agenda.now().mono_ms + 5 * HB, ..agenda.now() });
        conns.iter().for_each(|c| c.heard());
        at(&agenda, &conns, agenda.now().mono_ms);
        assert!(conns.iter().all(|c| c.take_ping() && !c.take_ping()), "one ping each after the stall");
        conns.iter().for_each(|c| c.heard());
        at(&agenda, &conns, agenda.now().mono_ms + HB / 4);
        assert!(conns.iter().all(|c| !c.take_ping()), "no second ping right after");
        assert!(conns.iter().all(|c| c.closing().is_none()), "none timed out: each answered");
    }

    /// Deadlines follow the connection's phase: the handshake's, `hello`'s, the heartbeat
    /// timeout (moved by every arrival), and a closed connection's linger.
    #[test]
    fn each_phase_has_its_deadline() {
        let agenda = agenda();
        let conns: Vec<Rc<Conn>> = (0..5).map(|slot| conn(&agenda, slot)).collect();
        let [head, no_hello, talker, silent, closed] = [0, 1, 2, 3, 4].map(|i| conns[i].clone());
        no_hello.upgraded(Encoding::Json, false);
        hello(&talker, "ann");
        hello(&silent, "bob");
        hello(&closed, "cy");
        closed.close(1000, "bye");
        for t in (100..=AUTH + 100).step_by(100) {
            at(&agenda, &conns, t);
            talker.heard();
            match t {
                2_000 => assert!(silent.closing().is_none(), "silent exactly two heartbeats: not yet"),
                2_100 => {
                    assert_eq!(close_code(&silent), Some(crate::ws::close_code::GOING_AWAY), "silent two heartbeats");
                    assert!(!closed.aborted(), "a closed connection lingers four heartbeats");
                }
                4_000 => assert!(!closed.aborted()),
                4_100 => assert!(closed.aborted() && !silent.aborted(), "then it is cut; the later close lingers on"),
                5_000 => assert!(head.closing().is_none() && no_hello.closing().is_none(), "not before the deadline"),
                5_100 => assert!(!no_hello.aborted(), "its close is written first"),
                _ => {}
            }
        }
        assert!(head.aborted(), "no request head within the handshake deadline: cut");
        assert_eq!(close_code(&no_hello), Some(crate::session::UNAUTHENTICATED_CLOSE));
        assert!(talker.closing().is_none(), "every arrival moves the heartbeat timeout");
        at(&agenda, &conns, 2_100 + 4 * HB);
        assert!(!silent.aborted(), "four heartbeats from its close, not from its last word");
        at(&agenda, &conns, 2_100 + 4 * HB + 1);
        assert!(silent.aborted());
    }

    /// The deadlines are on the monotonic clock: the wall clock jumping ahead (an NTP step,
    /// a resumed VM) by many heartbeats closes nothing.
    #[test]
    fn a_wall_clock_step_closes_nothing() {
        let agenda = agenda();
        let conns: Vec<Rc<Conn>> = (0..100).map(|slot| conn(&agenda, slot)).collect();
        conns.iter().for_each(|c| hello(c, "ann"));
        let now = agenda.now();
        agenda.advance(Now { mono_ms: now.mono_ms + 10, unix_ms: now.unix_ms + 100 * HB, ..now });
        expire(&agenda, 0, |id| conns.get(id.slot as usize).cloned());
        assert!(conns.iter().all(|c| c.closing().is_none()));
    }

    /// After a sync page up to 2, pushes of 1 and 2 (a repair that trailed the page) are
    /// skipped and 3 is not; the watch ends at the first push past the page, and a watch
    /// older than the cut-off is forgotten with the box it lived in.
    #[test]
    fn a_push_a_sync_page_already_gave_is_skipped_once_until_one_passes_it() {
        let c = Conn::new(ConnRef { shard: 0, slot: 0, generation: 0 }, 1 << 20, agenda());
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
        let c = Conn::new(ConnRef { shard: 0, slot: 0, generation: 0 }, 1 << 20, agenda());
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

        let slow = Conn::new(ConnRef { shard: 0, slot: 1, generation: 0 }, 1 << 20, agenda());
        slow.await_welcome();
        for _ in 0..HELD_FRAMES_MAX {
            slow.push(Bytes::from_static(b"m"));
        }
        assert_eq!(slow.closing(), None);
        slow.push(Bytes::from_static(b"m"));
        assert_eq!(slow.closing().map(|(code, _)| code), Some(SLOW_CONSUMER_CLOSE));
        // And by bytes: no more than the outbound queue would take.
        let big = Conn::new(ConnRef { shard: 0, slot: 2, generation: 0 }, 1000, agenda());
        big.await_welcome();
        big.push(Bytes::from(vec![b'x'; 600]));
        assert_eq!(big.closing(), None);
        big.push(Bytes::from(vec![b'x'; 600]));
        assert_eq!(big.closing().map(|(code, _)| code), Some(SLOW_CONSUMER_CLOSE));
    }
}
