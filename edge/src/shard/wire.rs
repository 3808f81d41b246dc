//! One connection's bytes in, as far as they go: the HTTP request head (within the handshake
//! deadline and the head limit), then either the WebSocket upgrade and frames through the
//! decoder into the [`Session`], or REST requests answered one at a time (keep-alive,
//! pipelined requests wait their turn).
//!
//! The wire never reads a socket: the driver hands it what a receive brought
//! ([`Wire::received`]), and what it has to say goes into the connection's outbox. Between
//! bursts it holds no buffer: `pending` is released whenever it has been decoded to the end.

use super::conn::{Conn, Phase, IN_FLIGHT_MAX};
use super::transport::Tls;
use super::Local;
use crate::auth::Identity;
use crate::session::{Replied, Session, Step, FORBIDDEN_CLOSE};
use crate::ws::handshake::{self, HeadLimits, Refusal, Upgrade};
use crate::ws::{Decoder, Event, Limits, Opcode};
use bytes::{Buf, Bytes, BytesMut};
use std::rc::Rc;

/// Headers in a request head, at most.
pub const HEADERS_MAX: usize = 32;

/// Where the end of the request head is, if it has arrived.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

// Nearly every connection spends its life in `Frames`: boxing it would add an allocation to
// each, not save one.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Waiting for a complete request head.
    Head,
    /// A REST request whose body is still arriving: `end` is where its head ends.
    Body { request: Box<super::http::Request>, end: usize, length: usize },
    /// A REST request is being answered; the next waits.
    Answering,
    /// WebSocket frames.
    Frames { session: Session, decoder: Decoder, echo: bool },
}

pub struct Wire {
    pub conn: Rc<Conn>,
    pub tls: Option<Box<Tls>>,
    /// Bytes received and not yet decoded.
    pending: BytesMut,
    state: State,
    /// Reading stopped for the in-flight window ([`IN_FLIGHT_MAX`]).
    paused: bool,
}

impl Wire {
    pub fn new(conn: Rc<Conn>, tls: Option<Box<Tls>>) -> Wire {
        Wire { conn, tls, pending: BytesMut::new(), state: State::Head, paused: false }
    }

    /// Whether the socket should be read.
    pub fn wants_read(&self) -> bool {
        !self.paused && self.conn.closing().is_none()
    }

    /// Bytes from the socket; the driver then has them worked through ([`Wire::process`]).
    pub fn received(&mut self, local: &Rc<Local>, bytes: &[u8]) {
        if self.conn.closing().is_some() {
            return;
        }
        self.conn.heard();
        match &mut self.tls {
            None => self.pending.extend_from_slice(bytes),
            Some(tls) => match tls.feed(bytes, &mut self.pending) {
                Ok(true) => {}
                // close_notify, or a TLS error (its alert goes out before the socket closes).
                Ok(false) | Err(_) => return self.conn.close(0, ""),
            },
        }
        // Pipelined REST requests wait while one is answered: bounded like one request.
        let cfg = &local.node.config;
        if self.pending.len() > cfg.head_bytes_max + super::http::BODY_BYTES_MAX {
            self.conn.close(0, "");
        }
    }

    /// Works through the pending bytes as far as the state allows.
    pub fn process(&mut self, local: &Rc<Local>) {
        if self.paused && self.conn.in_flight() < IN_FLIGHT_MAX {
            self.paused = false;
        }
        while self.conn.closing().is_none() && !self.paused {
            let progressed = match self.state {
                State::Head => self.head(local),
                State::Body { .. } => self.body(local),
                State::Answering => match self.conn.take_answered() {
                    Some(true) => {
                        self.state = State::Head;
                        true
                    }
                    Some(false) => {
                        self.conn.close(0, "");
                        false
                    }
                    None => false,
                },
                State::Frames { .. } => {
                    self.frames(local);
                    false
                }
            };
            if !progressed {
                break;
            }
        }
        if self.pending.is_empty() {
            // Even with no room left, an emptied buffer still holds the allocation its split
            // payloads came from: drop it, so an idle connection holds no read buffer at all.
            self.pending = BytesMut::new();
        }
    }

    /// Refuses the request with `response`, then closes.
    fn refuse(&mut self, response: impl Into<Bytes>) -> bool {
        self.conn.push_raw(response);
        self.conn.close(0, "");
        self.pending.clear();
        false
    }

    /// A complete head routes the connection; returns whether the state moved on.
    fn head(&mut self, local: &Rc<Local>) -> bool {
        let cfg = &local.node.config;
        let Some(end) = head_end(&self.pending) else {
            if self.pending.len() >= cfg.head_bytes_max {
                return match self.conn.phase() {
                    Phase::Handshake => self.refuse(Refusal::HeadTooLarge.response()),
                    _ => self.refuse(super::http::plain(431, "request head too large")),
                };
            }
            return false;
        };
        let path = {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.pending[..end]) {
                Ok(_) => req.path.unwrap_or("").split('?').next().unwrap_or("").to_string(),
                Err(httparse::Error::TooManyHeaders) => return self.refuse(Refusal::HeadTooLarge.response()),
                Err(_) => return self.refuse(Refusal::BadRequest("malformed request").response()),
            }
        };
        if !local.node.serves_clients && !super::http::is_operator_path(&path) {
            return self.refuse(store_only(&local.node));
        }
        if path == "/v1/echo" && !cfg.echo_endpoint {
            return self.refuse(super::http::plain(404, "the echo endpoint is off (--echo-endpoint)"));
        }
        if path == "/v1/ws" || path == "/v1/echo" {
            return self.upgrade(local);
        }
        match super::http::parse_head(&self.pending[..end]) {
            Ok((request, length)) => {
                self.conn.serving_rest();
                self.state = State::Body { request: Box::new(request), end, length };
                true
            }
            Err(response) => self.refuse(response.bytes(false)),
        }
    }

    /// A REST request with its whole body goes to a task; the connection waits for its answer.
    fn body(&mut self, local: &Rc<Local>) -> bool {
        let State::Body { end, length, .. } = &self.state else { return false };
        let (end, length) = (*end, *length);
        if self.pending.len() < end + length {
            return false;
        }
        let State::Body { request, .. } = std::mem::replace(&mut self.state, State::Answering) else {
            unreachable!("checked above")
        };
        let mut whole = self.pending.split_to(end + length);
        let body = whole.split_off(end).freeze();
        super::http::answer(local, &self.conn, *request, body);
        true
    }

    fn upgrade(&mut self, local: &Rc<Local>) -> bool {
        let node = &local.node;
        let cfg = &node.config;
        let limits = HeadLimits { head_bytes_max: cfg.head_bytes_max, headers_max: HEADERS_MAX };
        let (upgrade, used) = match handshake::parse(&self.pending, limits) {
            Ok(Some(u)) => u,
            Ok(None) => return false,
            Err(refusal) => return self.refuse(refusal.response()),
        };
        if local.is_draining() {
            return self.refuse(super::http::plain(503, "draining"));
        }
        let echo = upgrade.path == "/v1/echo";
        let origin_refused = !cfg.allowed_origins.is_empty()
            && upgrade.origin.as_ref().is_some_and(|o| !cfg.allowed_origins.iter().any(|a| a == o));
        let from_upgrade: Option<Result<Identity, _>> =
            upgrade_token(&upgrade).map(|t| node.verifier.verify(&t, local.agenda.now().unix_ms / 1000));
        self.conn.push_raw(handshake::switching_protocols(&upgrade));
        self.pending.advance(used);
        self.conn.upgraded(upgrade.encoding, echo);
        let session = Session::new(upgrade.encoding, node.limits, from_upgrade, local.agenda.now().unix_ms);
        let decoder =
            Decoder::new(Limits { frame_bytes_max: cfg.frame_bytes_max, message_bytes_max: cfg.frame_bytes_max });
        self.state = State::Frames { session, decoder, echo };
        if origin_refused {
            self.conn.close(FORBIDDEN_CLOSE, "origin not allowed");
        }
        true
    }

    /// Decodes frames until the bytes run out, the window fills or the connection closes.
    fn frames(&mut self, local: &Rc<Local>) {
        let State::Frames { session, decoder, echo } = &mut self.state else { return };
        let conn = &self.conn;
        while conn.closing().is_none() {
            if conn.in_flight() >= IN_FLIGHT_MAX {
                self.paused = true;
                return;
            }
            match decoder.decode(&mut self.pending) {
                Ok(Some(event)) => on_event(local, conn, session, *echo, event),
                Ok(None) => return,
                Err(v) => return conn.close(v.code, v.reason),
            }
        }
        self.pending.clear();
    }
}

/// The answer of a node of role `store` to a client: where clients are served instead.
fn store_only(node: &crate::node::Node) -> Vec<u8> {
    let urls = node.cluster_view.client_urls();
    let elsewhere = if urls.is_empty() { "no other node is known yet".to_string() } else { urls.join(", ") };
    let message = format!("node {} has role store and serves no clients; connect to {elsewhere}", node.config.node_id);
    super::http::refusal(crate::proto::error::ErrorCode::NotFound, message)
}

/// The token that came with the upgrade request, if any: `?token=` or `Authorization: Bearer`.
fn upgrade_token(upgrade: &Upgrade) -> Option<String> {
    let from_query = upgrade
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(super::http::percent_decode));
    from_query.or_else(|| upgrade.authorization.as_deref().and_then(super::http::bearer).map(str::to_string))
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

/// One whole message into the session, and what it leads to (QUIC frames come here too).
pub(super) fn step(local: &Local, conn: &Rc<Conn>, session: &mut Session, payload: &Bytes, binary: bool) {
    match session.on_message(payload, binary, &local.node.verifier, local.agenda.now().unix_ms) {
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
            let bytes = local.hello(conn, identity.user, req.as_deref());
            let user = conn.user().expect("just set");
            match &local.node.interest {
                // In a cluster it waits until the other store nodes subscribed the user here.
                Some(interest) => {
                    conn.await_welcome();
                    let first = interest.connected(user, conn.id, bytes);
                    local.node.user_connected(user, first);
                }
                None => {
                    local.node.user_connected(user, true);
                    local.metrics().frame_out("welcome", 1);
                    conn.push_then_idle(bytes);
                }
            }
        }
        Step::Command(cmd) => local.command(conn, cmd),
        Step::Close(code, reason) => conn.close(code, reason),
    }
}
