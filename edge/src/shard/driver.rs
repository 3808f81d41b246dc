//! The shard's connection path: accepts, receives and sends for every connection of the shard
//! on its own io_uring rings ([`super::uring`]), beside the monoio runtime that runs the rest of
//! the shard (the inbox, where the store's answers come back, and the timers).
//!
//! - Accept: a multishot accept on the shard's listener per ring, straight into the ring's
//!   table of direct descriptors. A ring stops accepting a little before its table is full,
//!   and the driver opens another ring when every ring is full, up to the shard's share of
//!   `connections_max`. A connection never takes a slot in the process's descriptor table.
//! - Receive: one multishot receive per connection into the ring's provided buffers. The
//!   bytes go to the connection's [`Wire`] at once and the buffer goes back to the pool.
//! - Send: what a connection has queued leaves in one `sendmsg` (whole frames, payloads
//!   shared between recipients), one at a time per connection; a short send resumes where it
//!   stopped. An idle connection's emptied queue gives its room back when its next timer fires,
//!   not after every send (that would be an allocation per delivery); after a frame that a
//!   connection usually idles after (the `101`, the `welcome`, a REST answer), at once.
//! - Close: what is queued, the close frame (and TLS `close_notify`), then the receive is
//!   cancelled and the direct descriptor closed. The slot is freed when the receive, the send and the
//!   close have all completed, so no completion can find a reused slot (its generation
//!   would not match anyway).
//!
//! Wakeups: every ring signals one eventfd, polled by a small monoio task that wakes the
//! driver; anything else that has work for a connection (a fan-out, an answer, a close) puts it
//! on the shard's to-do list (its [`super::agenda::Agenda`]). The driver drains all completions and the whole
//! to-do list per turn, so a burst costs one wakeup, and submits each ring once per turn.

use super::agenda::{Agenda, Clock};
use super::conn::Phase;
use super::io::yield_now;
use super::transport::Tls;
use super::uring::{tag, untag, Completion, Gather, Op, Ring};
use super::wire::Wire;
use super::Local;
use crate::ws::{close_payload, Opcode};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Submission queue entries per ring (the completion queue is 4 times larger; the kernel
/// keeps what overflows it).
const RING_ENTRIES: u32 = 1024;
/// Provided buffers per ring, and their size. A message larger than a buffer arrives in
/// several completions.
const BUFFERS: u16 = 256;
const BUFFER_BYTES: usize = 2048;
/// The listener's backlog of connections waiting for accept.
pub const LISTEN_BACKLOG: u32 = 4096;
/// A ring stops accepting this many slots before its table is full. A multishot accept takes
/// the whole backlog at once, and the kernel goes on accepting until the cancel it is sent
/// at the end of the driver's turn, so a full backlog and then some must still find slots:
/// a connection accepted into a full table is dropped by the kernel.
const FILES_SPARE: u32 = LISTEN_BACKLOG + 1024;
/// Completions handled per ring per turn, before the others get theirs.
const REAP_MAX: usize = 4096;
/// Frames and bytes per send.
const SEND_FRAMES: usize = 512;
const SEND_BYTES: usize = 256 * 1024;
/// Gathers kept between sends: a burst of connects must not leave one per connection behind.
const SPARE_MAX: usize = 256;
/// The slot in the tag of a connection the driver refused (draining): only its close completes.
const NO_SLOT: u32 = 0xff_ffff;
/// A heartbeat ping: FIN and opcode 9, no payload, unmasked (a server's frame).
const PING_FRAME: [u8; 2] = [0x89, 0x00];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recv {
    Idle,
    Armed,
    Cancelling,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shut {
    Open,
    Closing,
    Closed,
}

/// A connection's socket: its ring, its slot in the ring's table and what is in flight on it.
struct Socket {
    wire: Wire,
    ring: usize,
    file: u32,
    recv: Recv,
    sending: bool,
    /// The close frame (and `close_notify`) are queued.
    farewell: bool,
    shut: Shut,
}

pub struct Driver {
    local: Rc<Local>,
    /// The real clock, read once a turn.
    clock: Clock,
    listener: std::net::TcpListener,
    eventfd: RawFd,
    rings: Vec<Ring>,
    rings_max: usize,
    files_per_ring: u32,
    /// Slots a ring keeps free while it accepts ([`FILES_SPARE`]).
    files_spare: u32,
    sockets: Sockets,
    completions: Vec<Completion>,
    /// Gathers between sends, boxed because a send pins its gather's address.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Gather>>,
    /// Connections whose receive may need arming again.
    rearm: Vec<u32>,
    /// No accept before this, on the shard's clock (after an accept error other than a full
    /// table).
    accept_after_ms: Option<u64>,
    draining: bool,
}

/// The open-files limit: what one ring's table may hold.
fn files_limit() -> u32 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // Safety: getrlimit writes the struct it is given.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        limit.rlim_cur.min(1 << 20) as u32
    } else {
        1024
    }
}

impl Driver {
    /// The driver of shard `local`, for up to `connections_max` connections on `listener`.
    pub fn new(
        local: Rc<Local>,
        clock: Clock,
        listener: std::net::TcpListener,
        connections_max: usize,
    ) -> std::io::Result<Driver> {
        // Safety: eventfd returns a new descriptor or -1.
        #[allow(unsafe_code)]
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if eventfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let files_per_ring = files_limit().min(connections_max as u32 + FILES_SPARE);
        // Under a small open-files limit, a quarter of each table is the margin.
        let files_spare = FILES_SPARE.min(files_per_ring / 4);
        let rings_max = connections_max.div_ceil((files_per_ring - files_spare) as usize).max(1);
        let mut d = Driver {
            local,
            clock,
            listener,
            eventfd,
            rings: Vec::new(),
            rings_max,
            files_per_ring,
            files_spare,
            sockets: Sockets::default(),
            completions: Vec::with_capacity(REAP_MAX),
            spare: Vec::new(),
            rearm: Vec::new(),
            accept_after_ms: None,
            draining: false,
        };
        d.add_ring()?;
        Ok(d)
    }

    fn add_ring(&mut self) -> std::io::Result<()> {
        let mut ring = Ring::new(RING_ENTRIES, self.files_per_ring, BUFFERS, BUFFER_BYTES, self.eventfd)?;
        ring.accept(self.listener.as_raw_fd());
        self.rings.push(ring);
        self.local.metrics().rings.store(self.rings.len() as i64, Relaxed);
        tracing::debug!("shard {}: ring {} of at most {}", self.local.index, self.rings.len(), self.rings_max);
        Ok(())
    }

    /// Runs until the shard's runtime stops.
    pub async fn run(mut self) {
        // Safety: `eventfd` is ours; the `signals` task takes it over (and closes it).
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(self.eventfd) };
        let agenda = self.local.agenda.clone();
        monoio::spawn(signals(owned, agenda.clone()));
        loop {
            self.local.turn(self.clock.now());
            self.todo();
            self.accepts();
            self.submit();
            // A ring with more completions than one turn takes, or with completions waiting in
            // the kernel for room: their eventfd signal was spent, so no waiting for one.
            let mut behind = false;
            for r in 0..self.rings.len() {
                self.completions.clear();
                self.rings[r].reap(&mut self.completions, REAP_MAX);
                behind |= self.completions.len() == REAP_MAX || self.rings[r].overflowed();
                let completions = std::mem::take(&mut self.completions);
                for c in &completions {
                    self.complete(r, *c);
                }
                self.completions = completions;
            }
            for slot in std::mem::take(&mut self.rearm) {
                self.arm(slot);
            }
            self.submit();
            // Wait for the next completion (the eventfd) or the next connection with news.
            // Not a busy loop: monoio takes in wakeups from other threads (the store's
            // answers to the shard's inbox) only when every task waits.
            if behind {
                yield_now().await;
            } else {
                agenda.woken().await;
            }
        }
    }

    fn submit(&mut self) {
        for ring in &mut self.rings {
            if let Err(e) = ring.submit() {
                tracing::error!("shard {}: io_uring submit: {e}", self.local.index);
            }
        }
    }

    fn socket(&mut self, slot: u32, generation: u32) -> Option<&mut Socket> {
        socket(&mut self.sockets, slot, generation)
    }

    /// Connections with news: queued frames, a close, an answer, an open window.
    fn todo(&mut self) {
        let list = self.local.agenda.take_todo();
        for id in &list {
            let Some(s) = self.socket(id.slot, id.generation) else {
                // No socket here: a QUIC connection's bytes go through the endpoint thread.
                self.local.quic_flush(*id);
                continue;
            };
            s.wire.conn.unschedule();
            self.serve(id.slot);
        }
        self.local.agenda.give_back_todo(list);
    }

    /// Keeps every ring with room accepting, opens a ring when all are full, and stops
    /// accepting when the shard drains.
    fn accepts(&mut self) {
        if self.local.is_draining() {
            if !self.draining {
                self.draining = true;
                self.rings.iter_mut().filter(|r| r.accepting).for_each(Ring::cancel_accept);
            }
            return;
        }
        let now = self.local.agenda.now().mono_ms;
        if self.accept_after_ms.is_some_and(|t| now < t) {
            return;
        }
        self.accept_after_ms = None;
        let listener = self.listener.as_raw_fd();
        let mut room = false;
        for ring in &mut self.rings {
            let has_room = ring.files_used + self.files_spare < ring.files;
            if has_room && !ring.accepting {
                ring.accept(listener);
            } else if !has_room && ring.accepting {
                ring.cancel_accept();
            }
            room |= has_room;
        }
        if !room && self.rings.len() < self.rings_max {
            if let Err(e) = self.add_ring() {
                tracing::warn!("shard {}: cannot open another ring: {e}", self.local.index);
                self.accept_after_ms = Some(now + 1_000);
            }
        }
    }

    fn complete(&mut self, r: usize, c: Completion) {
        let (op, slot, generation) = untag(c.user_data);
        match op {
            Some(Op::Accept) => self.accepted(r, c),
            Some(Op::Recv) => self.received(r, slot, generation, c),
            Some(Op::Send) => self.sent(r, slot, generation, c),
            Some(Op::Close) => {
                self.rings[r].files_used -= 1;
                if let Some(s) = self.socket(slot, generation) {
                    s.shut = Shut::Closed;
                    self.release(slot);
                }
            }
            Some(Op::Cancel) | None => {}
        }
    }

    fn accepted(&mut self, r: usize, c: Completion) {
        if !c.more() {
            self.rings[r].accept_ended(c.user_data);
        }
        if c.result < 0 {
            let e = std::io::Error::from_raw_os_error(-c.result);
            if c.result != -libc::ECANCELED {
                tracing::warn!("shard {}: accept: {e}", self.local.index);
                self.accept_after_ms = Some(self.local.agenda.now().mono_ms + 50);
            }
            return;
        }
        let file = c.result as u32;
        let ring = &mut self.rings[r];
        ring.files_used += 1;
        if self.draining {
            return ring.close(file, tag(Op::Close, NO_SLOT, 0));
        }
        let tls = match &self.local.node.tls {
            None => None,
            Some(config) => match Tls::new(config.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    tracing::warn!("tls: {e}");
                    return ring.close(file, tag(Op::Close, NO_SLOT, 0));
                }
            },
        };
        let id = self.local.reserve();
        let conn = self.local.new_conn(id);
        self.local.insert(conn.clone());
        let slot = id.slot as usize;
        self.local.metrics().sockets.fetch_add(1, Relaxed);
        let wire = Wire::new(conn, tls);
        *self.sockets.entry(slot) =
            Some(Socket { wire, ring: r, file, recv: Recv::Idle, sending: false, farewell: false, shut: Shut::Open });
        self.arm(id.slot);
    }

    /// Arms the connection's receive if it wants to read and none is armed; cancels it if it
    /// is paused.
    fn arm(&mut self, slot: u32) {
        let Some(Some(s)) = self.sockets.get_mut(slot) else { return };
        let generation = s.wire.conn.id.generation;
        let ring = &mut self.rings[s.ring];
        match (s.recv, s.wire.wants_read() && s.shut == Shut::Open) {
            (Recv::Idle, true) => {
                s.recv = Recv::Armed;
                ring.recv(s.file, tag(Op::Recv, slot, generation));
            }
            (Recv::Armed, false) if s.shut == Shut::Open && s.wire.conn.closing().is_none() => {
                // Paused on the window: stop reading until answers come back.
                s.recv = Recv::Cancelling;
                ring.cancel(tag(Op::Recv, slot, generation));
            }
            _ => {}
        }
    }

    fn received(&mut self, r: usize, slot: u32, generation: u32, c: Completion) {
        let buffer = c.buffer();
        let local = self.local.clone();
        let ring = &mut self.rings[r];
        let Some(s) = socket(&mut self.sockets, slot, generation) else {
            if let Some(bid) = buffer {
                ring.recycle(bid);
            }
            return;
        };
        if !c.more() {
            s.recv = Recv::Idle;
            self.rearm.push(slot);
        }
        match c.result {
            n if n > 0 => {
                let bid = buffer.expect("a receive with bytes names its buffer");
                s.wire.received(&local, ring.buffer(bid, n as usize));
                ring.recycle(bid);
            }
            // The peer closed its side.
            0 => s.wire.conn.abort(),
            e if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
            _ => s.wire.conn.abort(),
        }
        if let Some(bid) = buffer.filter(|_| c.result <= 0) {
            ring.recycle(bid);
        }
        self.serve(slot);
        self.release(slot);
    }

    /// Everything a connection may need after news: decode what waits, arm or pause the
    /// receive, send what is queued, close.
    fn serve(&mut self, slot: u32) {
        let local = self.local.clone();
        let Some(Some(s)) = self.sockets.get_mut(slot) else { return };
        if s.wire.conn.closing().is_none() {
            s.wire.process(&local);
        }
        self.arm(slot);
        self.flush(slot);
    }

    /// Starts a send of what is queued, or the next step of a close.
    fn flush(&mut self, slot: u32) {
        let Some(Some(s)) = self.sockets.get_mut(slot) else { return };
        let conn = s.wire.conn.clone();
        let closing = conn.closing();
        if conn.aborted() {
            // The peer is gone, or the socket failed: nothing more is written, and a send
            // stuck on a peer that stopped reading is cancelled. A close the node had decided
            // is counted here when its frame never went out (a slow consumer that never read
            // again is cut so), or it would be missing from the counts.
            if let Some((code, _)) = closing.filter(|&(code, _)| code != 0 && !s.farewell && s.shut == Shut::Open) {
                if matches!(conn.phase(), Phase::WebSocket | Phase::Echo) {
                    self.local.metrics().close(code);
                }
            }
            return self.close(slot);
        }
        if s.sending || s.shut != Shut::Open {
            return;
        }
        let mut gather = self.spare.pop().unwrap_or_default();
        conn.outbox().take_into(&mut gather.entries, SEND_BYTES, SEND_FRAMES);
        let ping = conn.take_ping() && closing.is_none();
        let drained = conn.outbox().is_empty();
        let farewell = closing.is_some() && drained && !s.farewell;
        let close_frame = match closing {
            Some((code, reason)) if farewell && code != 0 && matches!(conn.phase(), Phase::WebSocket | Phase::Echo) => {
                self.local.metrics().close(code);
                let mut frame = bytes::BytesMut::new();
                crate::ws::encode(Opcode::Close, &close_payload(code, reason), &mut frame);
                Some(frame)
            }
            _ => None,
        };
        if farewell {
            s.farewell = true;
        }
        match &mut s.wire.tls {
            None => {
                if ping {
                    gather.raw.extend_from_slice(&PING_FRAME);
                }
                if let Some(frame) = close_frame {
                    gather.raw.extend_from_slice(&frame);
                }
            }
            Some(tls) => {
                // Encryption copies anyway: the frames go through the session, then out.
                let mut ok = true;
                for e in &gather.entries {
                    for part in e.parts() {
                        ok &= tls.encrypt(part).is_ok();
                    }
                }
                record_delivery(&self.local, &gather);
                gather.entries.clear();
                if ping {
                    ok &= tls.encrypt(&PING_FRAME).is_ok();
                }
                if let Some(frame) = close_frame {
                    ok &= tls.encrypt(&frame).is_ok();
                }
                if farewell {
                    tls.send_close_notify();
                }
                ok &= tls.take_output(&mut gather.raw).is_ok();
                if !ok {
                    conn.abort();
                }
            }
        }
        if gather.total() == 0 {
            let done = closing.is_some() && drained && s.farewell;
            self.recycle(gather);
            if done {
                self.close(slot);
            }
            return;
        }
        s.sending = true;
        let generation = conn.id.generation;
        self.rings[s.ring].send(s.file, gather, tag(Op::Send, slot, generation));
    }

    fn sent(&mut self, r: usize, slot: u32, generation: u32, c: Completion) {
        let Some(mut gather) = self.rings[r].sent(c.user_data) else { return };
        let Some(s) = socket(&mut self.sockets, slot, generation) else { return };
        if c.result < 0 {
            s.sending = false;
            s.wire.conn.abort();
            self.recycle(gather);
            self.flush(slot);
            return self.release(slot);
        }
        if !gather.advance(c.result as usize) {
            // A short send: the rest, from where the kernel stopped.
            self.local.metrics().short_sends.fetch_add(1, Relaxed);
            let file = s.file;
            return self.rings[r].send(file, gather, c.user_data);
        }
        s.sending = false;
        let conn = &s.wire.conn;
        if conn.outbox().is_empty() && conn.take_idle_next() {
            conn.outbox().release_if_empty();
        }
        record_delivery(&self.local, &gather);
        self.recycle(gather);
        self.flush(slot);
        self.release(slot);
    }

    /// Keeps a finished gather for the next send, up to [`SPARE_MAX`] of them.
    fn recycle(&mut self, mut gather: Box<Gather>) {
        if self.spare.len() < SPARE_MAX {
            gather.clear();
            self.spare.push(gather);
        }
    }

    /// Cancels what is in flight on the socket and closes its direct descriptor. The kernel
    /// closes the socket (a FIN after what was sent) when the cancelled operations let go of
    /// it. Not `shutdown`: io_uring always hands that to a worker thread.
    fn close(&mut self, slot: u32) {
        let Some(Some(s)) = self.sockets.get_mut(slot) else { return };
        if s.shut != Shut::Open {
            return;
        }
        s.shut = Shut::Closing;
        let generation = s.wire.conn.id.generation;
        let ring = &mut self.rings[s.ring];
        if s.recv == Recv::Armed {
            s.recv = Recv::Cancelling;
            ring.cancel(tag(Op::Recv, slot, generation));
        }
        if s.sending {
            ring.cancel(tag(Op::Send, slot, generation));
        }
        ring.close(s.file, tag(Op::Close, slot, generation));
    }

    /// Frees the slot once nothing is in flight on it: called at the end of each of the
    /// receive, the send and the close, whichever comes last.
    fn release(&mut self, slot: u32) {
        let Some(Some(s)) = self.sockets.get_mut(slot) else { return };
        if s.shut != Shut::Closed || s.recv != Recv::Idle || s.sending {
            return;
        }
        let s = self.sockets.remove(slot).expect("checked above");
        self.local.remove(&s.wire.conn);
        self.local.metrics().sockets.fetch_sub(1, Relaxed);
    }
}

/// Sockets by connection slot, in chunks: growing never copies the sockets, and never leaves
/// a doubled vector's unused half behind (a socket is most of a connection's memory).
#[derive(Default)]
struct Sockets {
    chunks: Vec<Option<Box<[Option<Socket>]>>>,
    /// Sockets per chunk, by chunk.
    counts: Vec<u32>,
}

const CHUNK: usize = 1024;

impl Sockets {
    fn get_mut(&mut self, slot: u32) -> Option<&mut Option<Socket>> {
        let (c, i) = (slot as usize / CHUNK, slot as usize % CHUNK);
        self.chunks.get_mut(c)?.as_mut().map(|chunk| &mut chunk[i])
    }

    /// The place for a new socket in `slot`.
    fn entry(&mut self, slot: usize) -> &mut Option<Socket> {
        let (c, i) = (slot / CHUNK, slot % CHUNK);
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
            self.counts.resize(c + 1, 0);
        }
        self.counts[c] += 1;
        let chunk = self.chunks[c].get_or_insert_with(|| (0..CHUNK).map(|_| None).collect());
        &mut chunk[i]
    }

    /// Takes the socket out of `slot`; a chunk left empty is freed.
    fn remove(&mut self, slot: u32) -> Option<Socket> {
        let (c, i) = (slot as usize / CHUNK, slot as usize % CHUNK);
        let s = self.chunks.get_mut(c)?.as_mut()?[i].take()?;
        self.counts[c] -= 1;
        if self.counts[c] == 0 {
            self.chunks[c] = None;
        }
        Some(s)
    }
}

/// The socket in `slot`, if it is still the connection of that generation.
fn socket(sockets: &mut Sockets, slot: u32, generation: u32) -> Option<&mut Socket> {
    let s = sockets.get_mut(slot)?.as_mut()?;
    (s.wire.conn.id.generation == generation).then_some(s)
}

/// Delivery latency of the frames that carry a start time, as they go to the kernel.
fn record_delivery(local: &Local, gather: &Gather) {
    let now = Instant::now();
    let metrics = local.metrics();
    for e in &gather.entries {
        if let Some(started) = e.started {
            crate::metrics::ShardMetrics::record(&metrics.delivery_us, (now - started).as_micros() as u64);
        }
    }
}

/// Wakes the driver whenever a ring posts completions (the rings signal one eventfd).
///
/// monoio waits for readiness (a poll on its own ring, in the kernel) only through its
/// sockets, but the poll itself works on any descriptor, so the eventfd is handed to it as a
/// `TcpStream` (never read or written as one). Reading the eventfd through io_uring instead would cost a worker-thread
/// handoff per wakeup: an eventfd read does not support the non-blocking attempt io_uring
/// needs to keep it inline.
async fn signals(eventfd: OwnedFd, agenda: Rc<Agenda>) {
    use std::os::fd::IntoRawFd;
    let fd = eventfd.as_raw_fd();
    // Safety: the descriptor is ours (moved in); the socket type is used only to poll it.
    #[allow(unsafe_code)]
    let std = unsafe { std::net::TcpStream::from_raw_fd(eventfd.into_raw_fd()) };
    let socket = match monoio::net::TcpStream::from_std(std) {
        Ok(s) => s,
        Err(e) => return tracing::error!("eventfd: {e}"),
    };
    loop {
        if let Err(e) = socket.readable(false).await {
            tracing::error!("eventfd poll: {e}");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut count = 0u64;
        // Safety: an 8-byte read into a u64 from the (non-blocking) eventfd; it resets it.
        #[allow(unsafe_code)]
        unsafe {
            libc::read(fd, &mut count as *mut u64 as *mut libc::c_void, 8)
        };
        agenda.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::conn::Conn;

    /// The per-connection byte budget of docs/architecture.md: a socket in its chunk and the
    /// shared connection state (an `Rc` allocation, 16 bytes of counts more). Growing either
    /// must be a decision, with the document changed beside it.
    #[test]
    fn a_connection_fits_its_budget() {
        assert!(std::mem::size_of::<Socket>() <= 320, "Socket is {} bytes", std::mem::size_of::<Socket>());
        assert!(std::mem::size_of::<Conn>() <= 184, "Conn is {} bytes", std::mem::size_of::<Conn>());
    }
}
