//! One TCP connection: read the HTTP request head (within the handshake deadline), then
//! either upgrade to a WebSocket session or serve REST on it.
//!
//! A WebSocket connection is two tasks. The reader owns the read half, the decoder and the
//! [`Session`]; the writer owns the write half and drains the connection's outbox in vectored
//! writes. They share the [`Conn`], which is also what fan-out finds in the shard's maps. A
//! close from anywhere (the client, a violation, a full outbox, the heartbeat sweep, a drain)
//! sets the close code once and wakes both: the writer writes what is due and the close
//! frame, then shuts the socket; the reader stops.

use super::io::{Batch, Notify};
use super::transport::{self, Tls, Transport, READ_CHUNK_MIN};
use super::Local;
use crate::auth::Identity;
use crate::node::{now_ms, ConnRef};
use crate::outbox::{Outbox, Overflow, SLOW_CONSUMER_CLOSE};
use crate::proto::server::ServerFrame;
use crate::session::{Replied, Session, Step, FORBIDDEN_CLOSE};
use crate::ws::handshake::{self, Encoding, HeadLimits, Refusal, Upgrade};
use crate::ws::{close_payload, Decoder, Event, Limits, Opcode};
use bytes::{Buf, Bytes, BytesMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use switchboard_store::UserId;

/// The most one vectored write takes from the outbox.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Frames per vectored write: two iovecs each (header, payload), and the kernel refuses more
/// than `IOV_MAX` (1,024) iovecs in one `writev` with EINVAL.
const WRITE_BATCH_FRAMES: usize = 512;
/// Requests a connection may have waiting on the store. Past it, the connection's socket is
/// not read until answers come back: a client that pipelines without reading slows down
/// instead of overflowing its own outbound queue with answers (each answer is small, so the
/// window's answers fit the queue many times over).
pub const IN_FLIGHT_MAX: u32 = 256;

/// Headers in a request head, at most.
pub const HEADERS_MAX: usize = 32;

/// A connection's state shared by its reader, its writer and the shard's fan-out.
pub struct Conn {
    pub id: ConnRef,
    pub encoding: Encoding,
    pub opened_ms: u64,
    /// The last time anything arrived (presence and the heartbeat timeout).
    pub last_in_ms: Cell<u64>,
    websocket: bool,
    user: OnceCell<UserId>,
    outbox: RefCell<Outbox>,
    writer: Notify,
    reader: Notify,
    closing: Cell<Option<(u16, &'static str)>>,
    /// Requests waiting on the store, and the wakeup for a reader paused on the window.
    in_flight: Cell<u32>,
    window: Notify,
    /// Channels this connection has open (few), with the newest seq pushed of each.
    open: RefCell<Vec<(Box<str>, u64)>>,
    /// Channels closed since their last `notify`, with the newest seq this connection saw
    /// while it had them open: a `notify` is only due for something newer.
    closed: RefCell<Vec<(Box<str>, u64)>>,
}

/// Closed channels remembered per connection.
const CLOSED_REMEMBERED_MAX: usize = 16;

impl Conn {
    fn new(id: ConnRef, encoding: Encoding, outbox_bytes_max: usize, websocket: bool) -> Conn {
        let now = now_ms();
        Conn {
            id,
            encoding,
            opened_ms: now,
            last_in_ms: Cell::new(now),
            websocket,
            user: OnceCell::new(),
            outbox: RefCell::new(Outbox::new(outbox_bytes_max)),
            writer: Notify::default(),
            reader: Notify::default(),
            closing: Cell::new(None),
            in_flight: Cell::new(0),
            window: Notify::default(),
            open: RefCell::new(Vec::new()),
            closed: RefCell::new(Vec::new()),
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        self.user.get()
    }

    pub fn is_websocket(&self) -> bool {
        self.websocket
    }

    fn data_opcode(&self) -> Opcode {
        match self.encoding {
            Encoding::Json => Opcode::Text,
            Encoding::Binary => Opcode::Binary,
        }
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

    fn enqueue(&self, opcode: Opcode, payload: Bytes, started: Option<Instant>) {
        if self.closing.get().is_some() {
            return;
        }
        let pushed = self.outbox.borrow_mut().push_timed(opcode, payload, started);
        match pushed {
            Ok(()) => self.writer.notify(),
            Err(Overflow) => self.close(SLOW_CONSUMER_CLOSE, "slow consumer: outbound queue full"),
        }
    }

    /// Closes with `code` (the first close wins). A slow consumer's queue is dropped: it would
    /// never drain, and the client resyncs anyway.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.closing.get().is_some() {
            return;
        }
        self.closing.set(Some((code, reason)));
        if code == SLOW_CONSUMER_CLOSE {
            self.outbox.borrow_mut().clear();
        }
        self.writer.notify();
        self.reader.notify();
    }

    pub fn started_request(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub fn finished_request(&self) {
        let n = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(n);
        if n == IN_FLIGHT_MAX / 2 {
            self.window.notify();
        }
    }

    pub fn has_open(&self, conv: &str) -> bool {
        self.open.borrow().iter().any(|(c, _)| &**c == conv)
    }

    /// Returns whether it was newly opened.
    pub fn open_channel(&self, conv: &str) -> bool {
        if self.has_open(conv) {
            return false;
        }
        self.closed.borrow_mut().retain(|(c, _)| &**c != conv);
        self.open.borrow_mut().push((conv.into(), 0));
        true
    }

    /// Returns whether it was open.
    pub fn close_channel(&self, conv: &str) -> bool {
        let mut open = self.open.borrow_mut();
        let Some(i) = open.iter().position(|(c, _)| &**c == conv) else { return false };
        let entry = open.swap_remove(i);
        let mut closed = self.closed.borrow_mut();
        if closed.len() == CLOSED_REMEMBERED_MAX {
            closed.remove(0);
        }
        closed.push(entry);
        true
    }

    /// A channel message was pushed here in full.
    pub fn saw(&self, conv: &str, seq: u64) {
        if let Some((_, seen)) = self.open.borrow_mut().iter_mut().find(|(c, _)| &**c == conv) {
            *seen = (*seen).max(seq);
        }
    }

    /// Whether a `notify` of `head` tells this connection something new (and forgets what it
    /// saw before closing the channel: from now on, `notify` is its news).
    pub fn needs_notify(&self, conv: &str, head: u64) -> bool {
        if self.has_open(conv) {
            return false;
        }
        let mut closed = self.closed.borrow_mut();
        match closed.iter().position(|(c, _)| &**c == conv) {
            Some(i) => closed.swap_remove(i).1 < head,
            None => true,
        }
    }

    pub fn take_open(&self) -> Vec<Box<str>> {
        self.closed.borrow_mut().clear();
        self.open.borrow_mut().drain(..).map(|(c, _)| c).collect()
    }
}

/// Where the end of the request head is, if it has arrived.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Serves one accepted connection to its end.
pub async fn serve(local: Rc<Local>, stream: TcpStream) {
    let cfg = &local.node.config;
    let deadline = Instant::now() + Duration::from_millis(cfg.auth_timeout_ms);
    let tls = local.node.tls.clone();
    let mut stream = match monoio::time::timeout_at(deadline.into(), Transport::accept(stream, tls)).await {
        Ok(Ok(t)) => t,
        _ => return,
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK_MIN);
    // The request head, under the handshake deadline and the head limit: a slowloris socket
    // holds a few KiB for a few seconds, no more.
    while head_end(&buf).is_none() {
        if buf.len() >= cfg.head_bytes_max {
            let _ = stream.write_all(Refusal::HeadTooLarge.response()).await;
            return;
        }
        match monoio::time::timeout_at(deadline.into(), stream.read_more(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    let path = {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(_) => req.path.unwrap_or("").split('?').next().unwrap_or("").to_string(),
            Err(httparse::Error::TooManyHeaders) => {
                let _ = stream.write_all(Refusal::HeadTooLarge.response()).await;
                return;
            }
            Err(_) => {
                let _ = stream.write_all(Refusal::BadRequest("malformed request").response()).await;
                return;
            }
        }
    };
    if path == "/v1/echo" && !cfg.echo_endpoint {
        let _ = stream.write_all(super::http::plain(404, "the echo endpoint is off (--echo-endpoint)")).await;
        return;
    }
    if path == "/v1/ws" || path == "/v1/echo" {
        websocket(local, stream, buf).await
    } else {
        super::http::serve(local, stream, buf).await
    }
}

/// The token that came with the upgrade request, if any: `?token=` or `Authorization: Bearer`.
fn upgrade_token(upgrade: &Upgrade) -> Option<String> {
    let from_query = upgrade
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(super::http::percent_decode));
    from_query.or_else(|| upgrade.authorization.as_deref().and_then(super::http::bearer).map(str::to_string))
}

async fn websocket(local: Rc<Local>, mut stream: Transport, mut buf: BytesMut) {
    let node = local.node.clone();
    let cfg = &node.config;
    let limits = HeadLimits { head_bytes_max: cfg.head_bytes_max, headers_max: HEADERS_MAX };
    let (upgrade, used) = match handshake::parse(&buf, limits) {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(refusal) => {
            let _ = stream.write_all(refusal.response()).await;
            return;
        }
    };
    let echo = upgrade.path == "/v1/echo";
    if local.is_draining() {
        let _ = stream.write_all(super::http::plain(503, "draining")).await;
        return;
    }
    let origin_refused = !cfg.allowed_origins.is_empty()
        && upgrade.origin.as_ref().is_some_and(|o| !cfg.allowed_origins.iter().any(|a| a == o));
    let from_upgrade: Option<Result<Identity, _>> = upgrade_token(&upgrade).map(|t| node.verifier.verify(&t));
    if stream.write_all(handshake::switching_protocols(&upgrade)).await.is_err() {
        return;
    }
    buf.advance(used);

    let conn = Rc::new(Conn::new(local.reserve(), upgrade.encoding, cfg.outbox_bytes_max, !echo));
    local.insert(conn.clone());
    let Transport { stream, tls, mut inbound } = stream;
    let (mut reader, writer) = stream.into_split();
    let writer = monoio::spawn(write_loop(local.clone(), conn.clone(), writer, tls));
    if origin_refused {
        conn.close(FORBIDDEN_CLOSE, "origin not allowed");
    }
    let mut session = Session::new(upgrade.encoding, node.limits, from_upgrade, now_ms());
    let mut decoder =
        Decoder::new(Limits { frame_bytes_max: cfg.frame_bytes_max, message_bytes_max: cfg.frame_bytes_max });
    'read: while conn.closing.get().is_none() {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => {
                    conn.last_in_ms.set(now_ms());
                    on_event(&local, &conn, &mut session, echo, event);
                    if conn.closing.get().is_some() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(v) => {
                    conn.close(v.code, v.reason);
                    break 'read;
                }
            }
        }
        while conn.in_flight.get() >= IN_FLIGHT_MAX {
            monoio::select! {
                _ = conn.window.notified() => {},
                _ = conn.reader.notified() => break 'read,
            }
        }
        let n = monoio::select! {
            r = inbound.read_more(&mut reader, &mut buf) => r,
            _ = conn.reader.notified() => break 'read,
        };
        match n {
            Ok(0) | Err(_) => {
                // The peer went away without a close frame: nothing to say to it.
                conn.closing.set(Some((0, "")));
                conn.writer.notify();
                break;
            }
            Ok(_) => {}
        }
    }
    let _ = writer.await;
    local.remove(&conn);
}

fn on_event(local: &Local, conn: &Rc<Conn>, session: &mut Session, echo: bool, event: Event) {
    match event {
        // The echo endpoint answers each message with the same bytes and opcode.
        Event::Text(payload) if echo => conn.enqueue(Opcode::Text, payload, None),
        Event::Binary(payload) if echo => conn.enqueue(Opcode::Binary, payload, None),
        Event::Text(payload) => step(local, conn, session, &payload, false),
        Event::Binary(payload) => step(local, conn, session, &payload, true),
        Event::Ping(payload) => conn.push_control(Opcode::Pong, payload),
        Event::Pong(_) => {}
        Event::Close(code) => {
            // Answer with the client's code (RFC 6455 §5.5.1), or 1000 when it gave none.
            let code = code.map(|(c, _)| c).unwrap_or(crate::ws::close_code::NORMAL);
            conn.close(code, "");
        }
    }
}

fn step(local: &Local, conn: &Rc<Conn>, session: &mut Session, payload: &Bytes, binary: bool) {
    match session.on_message(payload, binary, &local.node.verifier, now_ms()) {
        Step::Nothing => {}
        Step::Reply(frame, replied) => {
            let m = local.metrics();
            match replied {
                Replied::Pong => {
                    m.frame_in("ping");
                    m.frame_out("pong", 1);
                }
                Replied::Error(code) => {
                    m.error(code);
                    m.frame_out("error", 1);
                }
            }
            conn.push(frame)
        }
        Step::Welcome { identity, req } => {
            local.metrics().frame_in("hello");
            let _ = conn.user.set(identity.user);
            local.register(conn);
            let user = conn.user().expect("just set");
            let session_id = format!("{}-{}", local.node.name, local.node.next_session());
            let welcome = ServerFrame::Welcome {
                user: user.as_str(),
                session: &session_id,
                node: &local.node.name,
                heartbeat_ms: local.node.config.heartbeat_ms,
                req: req.as_deref(),
            };
            local.metrics().frame_out("welcome", 1);
            conn.push(welcome.encode(conn.encoding));
        }
        Step::Command(cmd) => local.command(conn, cmd),
        Step::Close(code, reason) => conn.close(code, reason),
    }
}

/// Drains the outbox into the socket until the connection closes.
async fn write_loop(local: Rc<Local>, conn: Rc<Conn>, mut w: OwnedWriteHalf<TcpStream>, tls: Option<Tls>) {
    let mut batch = Batch::default();
    loop {
        let taken = conn.outbox.borrow_mut().take_into(&mut batch.entries, WRITE_BATCH_BYTES, WRITE_BATCH_FRAMES);
        if taken == 0 {
            if let Some((code, reason)) = conn.closing.get() {
                if code != 0 {
                    local.metrics().close(code);
                    let mut frame = BytesMut::new();
                    crate::ws::encode(Opcode::Close, &close_payload(code, reason), &mut frame);
                    let _ = transport::write_all(&mut w, tls.as_ref(), frame.to_vec()).await;
                }
                break;
            }
            conn.writer.notified().await;
            continue;
        }
        let res = match &tls {
            None => {
                batch.prepare();
                let (res, b) = w.write_vectored_all(batch).await;
                batch = b;
                res.map(drop)
            }
            // Encryption copies anyway: the frames go through the session, then out.
            Some(t) => {
                let mut wrote = Ok(());
                for e in &batch.entries {
                    for part in e.parts() {
                        if let Err(err) = std::io::Write::write_all(&mut t.borrow_mut().writer(), part) {
                            wrote = Err(err);
                        }
                    }
                }
                match wrote {
                    Ok(()) => transport::flush_tls(&mut w, t).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = res {
            tracing::debug!("write failed, closing: {e}");
            conn.closing.set(Some((0, "")));
            conn.reader.notify();
            break;
        }
        let now = Instant::now();
        let metrics = local.metrics();
        for e in &batch.entries {
            if let Some(started) = e.started {
                crate::metrics::ShardMetrics::record(&metrics.delivery_us, (now - started).as_micros() as u64);
            }
        }
        batch.clear();
    }
    if let Some(t) = &tls {
        t.borrow_mut().send_close_notify();
        let _ = transport::flush_tls(&mut w, t).await;
    }
    let _ = w.shutdown().await;
    conn.reader.notify();
}
