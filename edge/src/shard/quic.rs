//! The shard's side of a QUIC connection: the session and the connection state are the same
//! as a WebSocket's ([`Conn`], [`Session`], `wire::step`); only the bytes travel
//! through a [`Link`] to the QUIC endpoint thread instead of through the shard's rings.
//!
//! Frames in wait here while the connection's requests fill its window
//! ([`IN_FLIGHT_MAX`]), as a WebSocket's bytes wait unread; each one taken in is counted
//! back to the link, which lets the endpoint thread read on. Frames out leave the
//! connection's queue one batch at a time: the next batch waits for the last one's
//! `Written`, so the endpoint thread holds at most one batch per connection.

use super::conn::{Conn, IN_FLIGHT_MAX};
use super::Local;
use crate::node::ConnRef;
use crate::proto::server::ServerFrame;
use crate::quic::framing::prefix;
use crate::quic::link::{Link, Out, QuicEvent};
use crate::session::Session;
use crate::ws::handshake::Encoding;
use ahash::HashMap;
use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Frames and bytes per batch handed to the endpoint thread.
const BATCH_FRAMES: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

struct Wire {
    conn: Rc<Conn>,
    link: Arc<Link>,
    session: Session,
    /// Frames that came while the window was full.
    waiting: VecDeque<Bytes>,
    /// A batch is on the endpoint thread.
    writing: bool,
    /// The close went with the last batch.
    farewell: bool,
}

/// The shard's QUIC connections, by slot, and the slot of each link.
#[derive(Default)]
pub struct Wires {
    by_slot: HashMap<u32, Wire>,
    slots: HashMap<u64, ConnRef>,
}

impl Local {
    pub(super) fn quic(&self, event: QuicEvent) {
        match event {
            QuicEvent::Opened { link, encoding, token } => self.quic_opened(link, encoding, token),
            QuicEvent::Frame { link, frame } => {
                if let Some(id) = self.quic_slot(link) {
                    if let Some(w) = self.quic.borrow_mut().by_slot.get_mut(&id.slot) {
                        w.waiting.push_back(frame);
                    }
                    self.quic_take_in(id);
                }
            }
            QuicEvent::Written { link } => {
                if let Some(id) = self.quic_slot(link) {
                    if let Some(w) = self.quic.borrow_mut().by_slot.get_mut(&id.slot) {
                        w.writing = false;
                    }
                    self.quic_flush(id);
                }
            }
            QuicEvent::Violation { link, code, reason } => {
                if let Some(c) = self.quic_slot(link).and_then(|id| self.get(id)) {
                    c.close(code, reason);
                }
            }
            QuicEvent::Gone { link } => {
                let Some(id) = self.quic.borrow_mut().slots.remove(&link) else { return };
                let wire = self.quic.borrow_mut().by_slot.remove(&id.slot);
                if let Some(w) = wire {
                    w.conn.abort();
                    self.metrics().sockets.fetch_sub(1, Relaxed);
                    self.remove(&w.conn);
                }
            }
        }
    }

    fn quic_slot(&self, link: u64) -> Option<ConnRef> {
        self.quic.borrow().slots.get(&link).copied()
    }

    fn quic_opened(&self, link: Arc<Link>, encoding: Encoding, token: Option<String>) {
        if self.is_draining() {
            return link.abort(crate::session::DRAINING_CLOSE, "server draining");
        }
        let id = self.reserve();
        let conn = self.new_conn(id);
        conn.over_quic(encoding);
        self.insert(conn.clone());
        self.metrics().sockets.fetch_add(1, Relaxed);
        let now = self.agenda.now();
        let from_url = token.map(|t| self.node.verifier.verify(&t, now.unix_ms / 1000));
        let session = Session::new(encoding, self.node.limits, from_url, now.unix_ms);
        let mut wires = self.quic.borrow_mut();
        wires.slots.insert(link.id, id);
        let wire = Wire { conn, link, session, waiting: VecDeque::new(), writing: false, farewell: false };
        wires.by_slot.insert(id.slot, wire);
    }

    /// Takes in waiting frames while the connection's window has room.
    fn quic_take_in(&self, id: ConnRef) {
        loop {
            let mut wires = self.quic.borrow_mut();
            let Some(w) = wires.by_slot.get_mut(&id.slot).filter(|w| w.conn.id == id) else { return };
            let conn = w.conn.clone();
            if conn.closing().is_some() {
                let dropped: usize = w.waiting.drain(..).map(|f| f.len()).sum();
                w.link.taken(dropped);
                return;
            }
            if conn.in_flight() >= IN_FLIGHT_MAX {
                return;
            }
            let Some(frame) = w.waiting.pop_front() else { return };
            w.link.taken(frame.len());
            conn.heard();
            let binary = w.session.encoding() == Encoding::Binary;
            // The session stays in the table while it works: nothing it leads to reaches
            // back into the table (what it queues is sent at the driver's next turn).
            super::wire::step(self, &conn, &mut w.session, &frame, binary);
            drop(wires);
        }
    }

    /// The driver's turn for a QUIC connection: take in what waits, hand the next batch to
    /// the endpoint thread (with the heartbeat ping and, once all is out, the close).
    pub(super) fn quic_flush(&self, id: ConnRef) {
        let Some(conn) = self.get(id) else { return };
        conn.unschedule();
        self.quic_take_in(id);
        let mut wires = self.quic.borrow_mut();
        let Some(w) = wires.by_slot.get_mut(&id.slot).filter(|w| w.conn.id == id) else { return };
        if conn.aborted() {
            // A peer that neither reads nor writes: cut it (its `Gone` frees the slot).
            return w.link.abort(crate::ws::close_code::GOING_AWAY, "");
        }
        if w.writing || w.farewell {
            return;
        }
        let mut entries = Vec::new();
        conn.outbox().take_into(&mut entries, BATCH_BYTES, BATCH_FRAMES);
        let mut out = Out::default();
        let now = Instant::now();
        for e in &entries {
            e.parts().iter().for_each(|p| out.bytes.extend_from_slice(p));
            if let Some(started) = e.started {
                crate::metrics::ShardMetrics::record(&self.metrics().delivery_us, (now - started).as_micros() as u64);
            }
        }
        let closing = conn.closing();
        if conn.take_ping() && closing.is_none() {
            let ping = ServerFrame::Ping.encode(conn.encoding());
            out.bytes.extend_from_slice(&prefix(ping.len()));
            out.bytes.extend_from_slice(&ping);
            self.metrics().frame_out("ping", 1);
        }
        if let Some((code, reason)) = closing.filter(|_| conn.outbox().is_empty()) {
            self.metrics().close(code);
            out.close = Some((code, reason));
            w.farewell = true;
        }
        if out.bytes.is_empty() && out.close.is_none() {
            return;
        }
        w.writing = true;
        w.link.put(out);
    }
}
