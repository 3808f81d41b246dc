//! REST on the WebSocket port (PROTOCOL.md §6), HTTP/1.1 with keep-alive, the operator's
//! endpoints (`/healthz`, `/readyz`, `/metrics`), the chat page (`/`, [`crate::web`]) and its
//! development sign-in (`POST /dev/token`).
//!
//! Every `/v1` call needs `Authorization: Bearer <jwt>`; every read checks membership on the
//! conversation's sequencer. Errors are `{"code","message"}` with the matching status. Bodies
//! must come with `Content-Length` (at most [`BODY_BYTES_MAX`]); a request that cannot be
//! framed without doubt ([`crate::ws::handshake::body_length`]) is answered 400 and the
//! connection closed.

use super::conn::Conn;
use super::wire::HEADERS_MAX;
use super::Local;
use crate::auth::Identity;
use crate::node::ops::{self, shown_id, stored_body, OpError, Reply};
use crate::node::request::{Change, Page, Request as Op};
use crate::node::{Answer, ConnRef, Hub};
use crate::proto::client::PRESENCE_USERS_MAX;
use crate::proto::ErrorCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use switchboard_store::{Appended, ConvId, ConvInfo, ConvKind, Seq, UserId};

/// The largest request body.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// History pages: default and largest.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 1000;

pub struct Response {
    status: u16,
    content_type: &'static str,
    body: std::borrow::Cow<'static, [u8]>,
}

impl Response {
    fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, content_type: "application/json", body: body.into() }
    }

    fn value(status: u16, v: serde_json::Value) -> Response {
        Response::json(status, v.to_string().into_bytes())
    }

    fn error(code: ErrorCode, message: impl std::fmt::Display) -> Response {
        Response::value(error_code_status(code), json!({"code": code.as_str(), "message": message.to_string()}))
    }

    fn from_op(e: OpError) -> Response {
        let mut body = json!({"code": e.code.as_str(), "message": e.message});
        if let Some(ms) = e.retry_after_ms {
            body["retry_after_ms"] = json!(ms);
        }
        Response::value(error_code_status(e.code), body)
    }

    pub(super) fn bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A complete plain-text response that closes the connection.
pub fn plain(status: u16, text: &str) -> Vec<u8> {
    Response { status, content_type: "text/plain", body: text.as_bytes().to_vec().into() }.bytes(false)
}

/// A REST error (`{"code","message"}` with its status), closing the connection.
pub fn refusal(code: ErrorCode, message: impl std::fmt::Display) -> Vec<u8> {
    Response::error(code, message).bytes(false)
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Decodes `%XX` escapes (and `+` as a space, as forms write it).
pub fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What routing needs of a request.
pub(super) struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<String>,
    close: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a complete head. `Err`: the response to send before closing.
pub(super) fn parse_head(head: &[u8]) -> Result<(Request, usize), Response> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Response::error(ErrorCode::BadRequest, "incomplete request")),
        Err(e) => return Err(Response::error(ErrorCode::BadRequest, format!("malformed request: {e}"))),
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string)
    };
    let length =
        crate::ws::handshake::body_length(req.headers).map_err(|why| Response::error(ErrorCode::BadRequest, why))?;
    if length > BODY_BYTES_MAX {
        return Err(Response::error(ErrorCode::TooLarge, format!("bodies are at most {BODY_BYTES_MAX} bytes")));
    }
    let close = req.version == Some(0)
        || header("connection").is_some_and(|c| c.to_ascii_lowercase().split(',').any(|t| t.trim() == "close"));
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query,
        authorization: header("authorization"),
        close,
    };
    Ok((request, length))
}

/// Answers `request`: at once, or, when it needs the store, when the store's answer comes
/// back to this shard ([`Answer::Rest`]). No task is spawned: like a WebSocket command, the
/// request leaves as an operation with a [`Reply`], and its answer is an event of the shard.
/// The connection reads the next request after the answer is queued.
pub(super) fn answer(local: &Local, conn: &Conn, request: Request, body: Bytes) {
    let pending = Pending { hub: local.node.hub.clone(), to: conn.id, close: request.close };
    if let Routed::Now(response) = route(local, &request, body, &pending) {
        respond(local, conn, response, request.close);
    }
}

/// Queues `response` on `conn`, keeping the connection for another request unless the
/// client or the node's drain says otherwise.
pub(super) fn respond(local: &Local, conn: &Conn, response: Response, close: bool) {
    let keep_alive = !close && !local.is_draining();
    conn.answer_rest(response.bytes(keep_alive), keep_alive);
}

/// What a route made of a request.
enum Routed {
    /// The response, ready.
    Now(Response),
    /// An operation is under way; its answer makes the response.
    Later,
}

/// The response to a request that waited on the store, made on the connection's shard from
/// the store's answer (the store's thread does no rendering).
pub struct Finish(Box<dyn FnOnce() -> Response + Send>);

impl Finish {
    pub(super) fn response(self) -> Response {
        (self.0)()
    }
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finish")
    }
}

/// Where the answer to a request that waits on the store goes.
struct Pending {
    hub: Arc<Hub>,
    to: ConnRef,
    close: bool,
}

impl Pending {
    /// Starts an operation with `start`; `finish` makes the response from what it returns.
    /// An error, or a reply dropped unanswered (an overloaded store: [`Reply`]), becomes the
    /// error's response.
    fn call<T: Send + 'static>(
        &self,
        start: impl FnOnce(Reply<T>),
        finish: impl FnOnce(T) -> Response + Send + 'static,
    ) -> Routed {
        let (hub, to, close) = (self.hub.clone(), self.to, self.close);
        start(Reply::new(move |r: Result<T, OpError>| {
            let finish = Finish(Box::new(move || r.map_or_else(Response::from_op, finish)));
            hub.answer(to, Answer::Rest { finish, close });
        }));
        Routed::Later
    }
}

fn authenticate(local: &Local, req: &Request) -> Result<Identity, Response> {
    let token = req
        .authorization
        .as_deref()
        .and_then(bearer)
        .ok_or_else(|| Response::error(ErrorCode::Unauthorized, "Authorization: Bearer <jwt> is required"))?;
    local
        .node
        .verifier
        .verify(token, local.agenda.now().unix_ms / 1000)
        .map_err(|e| Response::error(ErrorCode::Unauthorized, e))
}

fn conv_id(s: &str) -> Result<ConvId, Response> {
    ConvId::new(&percent_decode(s)).map_err(|e| Response::error(ErrorCode::BadRequest, e))
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| Response::error(ErrorCode::BadRequest, format!("body: {e}")))
}

fn users(list: &[String]) -> Result<Vec<UserId>, Response> {
    list.iter().map(|u| UserId::new(u).map_err(|e| Response::error(ErrorCode::BadRequest, e))).collect()
}

/// The paths a node of role `store` answers (it serves no clients).
pub fn is_operator_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn route(local: &Local, req: &Request, body: Bytes, pending: &Pending) -> Routed {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    if method == "GET" {
        if let Some(a) = crate::web::asset(&req.path) {
            return Routed::Now(Response { status: 200, content_type: a.content_type, body: a.bytes.into() });
        }
    }
    let result = match (method, segments.as_slice()) {
        ("POST", ["dev", "token"]) => dev_token(local, &body).map(Routed::Now),
        ("GET", ["dev", "quic"]) => dev_quic(local).map(Routed::Now),
        ("GET", ["healthz"]) => Ok(Routed::Now(Response::value(200, json!({"status": "ok"})))),
        ("GET", ["readyz"]) if local.is_draining() => {
            Ok(Routed::Now(Response::value(503, json!({"status": "draining"}))))
        }
        ("GET", ["readyz"]) => Ok(Routed::Now(Response::value(200, json!({"status": "ready"})))),
        ("GET", ["metrics"]) => metrics(local, req).map(Routed::Now),
        (_, ["v1", ..]) => authenticate(local, req).and_then(|who| api(local, req, &segments[1..], who, body, pending)),
        _ => Err(Response::error(ErrorCode::NotFound, format!("no route for {method} {}", req.path))),
    };
    result.unwrap_or_else(Routed::Now)
}

/// How long a development token is valid.
const DEV_TOKEN_TTL_S: u64 = 24 * 3600;

/// `POST /dev/token` `{"user"}`: a token for any name, for the chat page's sign-in. Only a
/// node that checks tokens with the development secret it generated mints them: anyone who
/// can reach the port could otherwise sign in as anyone.
fn dev_token(local: &Local, body: &[u8]) -> Result<Response, Response> {
    let Some(secret) = &local.node.dev_secret else {
        return Err(Response::error(
            ErrorCode::Forbidden,
            "development sign-in is off: this node checks tokens with a configured secret or public key; \
             sign in with a token from whoever issues them",
        ));
    };
    #[derive(Deserialize)]
    struct DevTokenBody {
        user: String,
    }
    let b: DevTokenBody = parse_body(body)?;
    let user = UserId::new(&b.user).map_err(|e| Response::error(ErrorCode::BadRequest, e))?;
    let now_s = local.agenda.now().unix_ms / 1000;
    let token = crate::auth::mint_hs256(secret, &user, now_s, DEV_TOKEN_TTL_S, false);
    Ok(Response::value(200, json!({"user": user.as_str(), "token": token, "expires_in_s": DEV_TOKEN_TTL_S})))
}

/// `GET /dev/quic`: where QUIC and WebTransport are served and, for the development
/// certificate, its SHA-256, which a browser needs to trust it (`serverCertificateHashes`).
/// Public: any client that connects is shown the certificate anyway.
fn dev_quic(local: &Local) -> Result<Response, Response> {
    let Some(q) = &local.node.quic else {
        return Err(Response::error(ErrorCode::NotFound, "QUIC is off on this node (quic_listen is empty)"));
    };
    let dev = q.dev.as_ref();
    Ok(Response::value(
        200,
        json!({
            "addr": q.addr.to_string(),
            "port": q.addr.port(),
            "path": crate::quic::WEBTRANSPORT_PATH,
            "alpn": ["switchboard/1", "switchboard/1+bin", "h3"],
            "cert_sha256": dev.map(|d| crate::quic::hex(&d.sha256)),
            "cert_not_after_s": dev.map(|d| d.not_after_s),
        }),
    ))
}

fn metrics(local: &Local, req: &Request) -> Result<Response, Response> {
    if !local.node.metrics_open {
        let who = authenticate(local, req)?;
        if !who.admin {
            return Err(Response::error(ErrorCode::Forbidden, "metrics need an admin token on this listener"));
        }
    }
    let depths: Vec<usize> = local.node.hub.shards.iter().map(|p| p.len()).collect();
    let mut text = local.node.hub.metrics.render(&depths);
    if let Some(backplane) = &local.node.backplane {
        backplane.metrics().render(&mut text);
        crate::cluster::metrics::render(&local.node, &mut text);
    }
    Ok(Response { status: 200, content_type: "text/plain; version=0.0.4", body: text.into_bytes().into() })
}

#[derive(Deserialize)]
struct CreateBody {
    kind: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct MembersBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    /// Admin tokens may send as another user.
    #[serde(default, borrow)]
    from: Option<std::borrow::Cow<'a, str>>,
}

fn api(
    local: &Local,
    req: &Request,
    path: &[&str],
    who: Identity,
    body: Bytes,
    p: &Pending,
) -> Result<Routed, Response> {
    let node = &local.node;
    let method = req.method.as_str();
    match (method, path) {
        ("GET", ["presence"]) => {
            let list: Vec<String> =
                req.param("users").unwrap_or("").split(',').filter(|u| !u.is_empty()).map(str::to_string).collect();
            if list.is_empty() || list.len() > PRESENCE_USERS_MAX {
                return Err(Response::error(ErrorCode::BadRequest, format!("users: 1 to {PRESENCE_USERS_MAX}")));
            }
            let ids = users(&list)?;
            let shown = ids.clone();
            Ok(p.call(
                |reply| node.presence(ids, reply),
                move |seen| {
                    let frame = crate::node::presence::frame(&shown, &seen, None, crate::ws::handshake::Encoding::Json);
                    Response::json(200, frame.to_vec())
                },
            ))
        }
        ("POST", ["conversations"]) => {
            let b: CreateBody = parse_body(&body)?;
            let kind = match b.kind.as_str() {
                "group" => ConvKind::Group,
                "channel" => ConvKind::Channel,
                _ => return Err(Response::error(ErrorCode::BadRequest, "kind must be \"group\" or \"channel\"")),
            };
            let members = users(&b.members)?;
            if kind == ConvKind::Group && members.len() + 1 > node.config.group_members_max {
                return Err(Response::error(
                    ErrorCode::TooLarge,
                    format!("a group has at most {} members", node.config.group_members_max),
                ));
            }
            let prefix = if kind == ConvKind::Group { "g" } else { "c" };
            let conv = ConvId::new(&format!("{prefix}_{:016x}", rand::random::<u64>())).expect("valid id");
            let (c, owner) = (conv.clone(), who.user.clone());
            let op = Op::Create { conv: c, kind, title: b.title, owner, members };
            Ok(p.call(|reply| node.call(op, reply), move |()| Response::value(201, json!({"conv": conv.as_str()}))))
        }
        (_, ["conversations"]) => Err(Response::error(ErrorCode::BadRequest, "POST /v1/conversations")),
        ("GET", ["conversations", conv]) => {
            let conv = conv_id(conv)?;
            let op = Op::Info { conv: conv.clone(), user: who.user, admin: who.admin };
            Ok(p.call(
                |reply| node.call(op, reply),
                move |info: ConvInfo| {
                    Response::value(
                        200,
                        json!({
                            "conv": conv.as_str(),
                            "kind": info.kind.as_str(),
                            "title": info.title,
                            "head": info.head.0,
                            "members_count": info.members_count,
                        }),
                    )
                },
            ))
        }
        ("POST", ["conversations", conv, "members"]) => {
            let conv = conv_id(conv)?;
            let b: MembersBody = parse_body(&body)?;
            let (add, remove) = (users(&b.add)?, users(&b.remove)?);
            let op = Op::Members { conv, actor: who.user, admin: who.admin, add, remove };
            Ok(p.call(
                |reply| node.call(op, reply),
                |changes: Vec<Change>| {
                    let list: Vec<_> =
                        changes.iter().map(|(u, event, seq)| json!({"user": u, "event": event, "seq": seq})).collect();
                    Response::value(200, json!({ "changes": list }))
                },
            ))
        }
        ("GET", ["conversations", conv, "messages"]) => history(local, req, conv_id(conv)?, who, p),
        ("POST", ["conversations", conv, "messages"]) => {
            let conv = conv_id(conv)?;
            let m: MessageBody<'_> = parse_body(&body)?;
            switchboard_store::ClientId::check(m.id.as_bytes())
                .map_err(|e| Response::error(ErrorCode::BadRequest, e))?;
            if m.body.get().len() > node.config.message_bytes_max {
                return Err(Response::error(ErrorCode::TooLarge, "body is over message_bytes_max"));
            }
            let kind = m.kind.as_deref().unwrap_or("text").to_string();
            if kind.is_empty() || kind.len() > crate::proto::client::KIND_BYTES_MAX || kind == "system" {
                return Err(Response::error(ErrorCode::BadRequest, "kind must be 1 to 32 bytes, not \"system\""));
            }
            let sender = match m.from.as_deref() {
                Some(f) if who.admin => UserId::new(f).map_err(|e| Response::error(ErrorCode::BadRequest, e))?,
                Some(_) => return Err(Response::error(ErrorCode::Forbidden, "only admin tokens send as another user")),
                None => who.user,
            };
            let op = Op::Send {
                conv,
                sender,
                id: m.id.into_owned(),
                body: body.slice_ref(m.body.get().as_bytes()),
                kind,
                except: None,
            };
            Ok(p.call(
                |reply| node.call(op, reply),
                |a: Appended| Response::value(200, json!({"seq": a.seq.0, "dup": a.dup})),
            ))
        }
        _ => Err(Response::error(ErrorCode::NotFound, format!("no route for {method} {}", req.path))),
    }
}

/// `GET …/messages`: newest first through `cursor`, or oldest first from `after`.
fn history(local: &Local, req: &Request, conv: ConvId, who: Identity, p: &Pending) -> Result<Routed, Response> {
    let bad = |m: &str| Response::error(ErrorCode::BadRequest, m);
    let limit = match req.param("limit") {
        None => PAGE_DEFAULT,
        Some(l) => {
            l.parse::<usize>().ok().filter(|l| (1..=PAGE_MAX).contains(l)).ok_or_else(|| bad("limit: 1 to 1000"))?
        }
    };
    // Cursors are opaque to clients: `b<seq>` pages back below seq, `a<seq>` forward after it.
    let (mut before, mut after) = (None, None);
    if let Some(a) = req.param("after") {
        after = Some(Seq(a.parse().map_err(|_| bad("after: a seq"))?));
    }
    if let Some(c) = req.param("cursor") {
        let n = c.get(1..).and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| bad("unknown cursor"))?;
        match c.as_bytes()[0] {
            b'b' => before = Some(Seq(n)),
            b'a' => after = Some(Seq(n)),
            _ => return Err(bad("unknown cursor")),
        }
    }
    let reader = if who.admin { None } else { Some(who.user) };
    let op = Op::History { conv: conv.clone(), reader, before, after, limit: limit as u16 };
    Ok(p.call(|reply| local.node.call(op, reply), move |page: Page| page_response(&conv, page)))
}

/// A page of history as `{"messages","next_cursor"[,"gap"]}`.
fn page_response(conv: &ConvId, page: Page) -> Response {
    let (messages, next, gap) = match page {
        Page::Back(p) => (p.messages, p.next_before.map(|s| format!("b{}", s.0)), None),
        Page::Forward(p) => (p.messages, p.more.then(|| format!("a{}", p.upto.0)), p.gap),
    };
    let mut out = b"{\"messages\":[".to_vec();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let id = shown_id(&m.client_id, m.seq);
        out.extend_from_slice(&ops::msg_frame(conv.as_str(), m, &id, stored_body(&m.body)).to_json());
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    out.extend_from_slice(serde_json::to_string(&next).expect("serializes").as_bytes());
    if let Some((from, to)) = gap {
        out.extend_from_slice(format!(",\"gap\":{{\"from\":{},\"to\":{}}}", from.0, to.0).as_bytes());
    }
    out.push(b'}');
    Response::json(200, out)
}

/// The HTTP status of each error code (PROTOCOL.md §6: "a matching HTTP status").
fn error_code_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::TooLarge => 413,
        ErrorCode::RateLimited => 429,
        ErrorCode::Conflict => 409,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}
