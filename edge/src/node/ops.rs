//! The conversation side of every request: the store jobs that run on a conversation's
//! sequencer (its store shard thread), and what their finishers send where once the commit is
//! known. [`apply`] runs a [`Request`] here, whether it came from a shard of this process or
//! from another node; the callers differ only in the [`Reply`] they pass.
//!
//! The rule of DESIGN.md holds in each write job: the answer and the fan-out leave from the
//! finisher, which the store runs after the fsync, never before.

use super::request::{Origin, Outcome, Page, Request};
use super::{Addressed, Delivery, Hub, Node, Reach, Store};
use crate::proto::server::ServerFrame;
use crate::proto::ErrorCode;
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;
use switchboard_backplane::{Boot, NodeId};
use switchboard_store::record::MemberChange;
use switchboard_store::rt::{Commit, Finisher};
use switchboard_store::storage::FsStorage;
use switchboard_store::{
    Appended, ConvId, ConvInfo, ConvKind, CursorKind, Error, Fault, InboxEntry, MemberSet, SendRequest, Seq, Shard,
    StoredMessage, UserId,
};

/// Why a request failed, as the client will read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
    /// With `unavailable`: when a retry may succeed (PROTOCOL.md's `retry_after_ms`).
    pub retry_after_ms: Option<u64>,
}

/// How long a client waits before it retries a request the store refused (overloaded, or a
/// commit that failed): long enough for a queue to drain or a group commit to pass, short
/// enough to feel immediate. Clients add their own jitter.
pub const UNAVAILABLE_RETRY_MS: u64 = 1_000;

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        let retry_after_ms = (code == ErrorCode::Unavailable).then_some(UNAVAILABLE_RETRY_MS);
        OpError { code, message: message.into(), retry_after_ms }
    }

    /// The `error` frame that tells the client, with the request's `id` or `req`.
    pub fn frame<'a>(&'a self, id: Option<&'a str>, req: Option<&'a str>) -> ServerFrame<'a> {
        ServerFrame::Error { code: self.code, message: &self.message, id, req, retry_after_ms: self.retry_after_ms }
    }
}

impl From<&Error> for OpError {
    fn from(e: &Error) -> OpError {
        let code = match e {
            Error::NotFound => ErrorCode::NotFound,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Conflict => ErrorCode::Conflict,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::BadRequest(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        };
        if e.fault() == Fault::Storage {
            tracing::error!("store: {e}");
            return OpError::new(code, "the store cannot take writes now; retry later");
        }
        OpError::new(code, e.to_string())
    }
}

/// Where a request's result goes. Dropped unanswered (the store queue was full, or its
/// thread is gone), it answers `unavailable` itself: no request is ever left hanging.
pub struct Reply<T> {
    f: Option<ReplyFn<T>>,
}

type ReplyFn<T> = Box<dyn FnOnce(Result<T, OpError>) + Send>;

impl<T> Reply<T> {
    pub fn new(f: impl FnOnce(Result<T, OpError>) + Send + 'static) -> Reply<T> {
        Reply { f: Some(Box::new(f)) }
    }

    pub fn send(mut self, result: Result<T, OpError>) {
        if let Some(f) = self.f.take() {
            f(result)
        }
    }
}

impl<T: Send + 'static> Reply<T> {
    /// A reply for whatever outcome an owner sends, of which this one wants one kind.
    pub fn expecting(self) -> Reply<Outcome>
    where
        T: TryFrom<Outcome, Error = OpError>,
    {
        Reply::new(move |r: Result<Outcome, OpError>| self.send(r.and_then(T::try_from)))
    }

    /// A reply that turns a `U` into the `T` this one wants.
    pub fn map<U>(self, f: impl FnOnce(U) -> T + Send + 'static) -> Reply<U> {
        Reply::new(move |r: Result<U, OpError>| self.send(r.map(f)))
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f(Err(OpError::new(ErrorCode::Unavailable, "the store is overloaded; retry later")))
        }
    }
}

type S = Shard<FsStorage>;

fn write(store: &Store, job: impl FnOnce(&mut S) -> Finisher + Send + 'static) {
    // A full queue drops the job, and with it the reply, which answers `unavailable`.
    let _ = store.write(Box::new(job));
}

fn read(store: &Store, job: impl FnOnce(&mut S) + Send + 'static) {
    let _ = store.read(Box::new(job));
}

fn record_commit(hub: &Hub, store_index: usize, staged: Instant) {
    if let Some(m) = hub.metrics.stores.get(store_index) {
        crate::metrics::ShardMetrics::record(&m.commit_us, staged.elapsed().as_micros() as u64);
    }
}

/// The id a message shows: the client's, or `system:<seq>` for the server's own messages.
pub fn shown_id(client_id: &[u8], seq: Seq) -> Cow<'_, str> {
    if client_id.is_empty() {
        Cow::Owned(format!("system:{}", seq.0))
    } else {
        String::from_utf8_lossy(client_id)
    }
}

/// A stored message as the `msg` frame carries it.
pub fn msg_frame<'a>(conv: &'a str, m: &'a StoredMessage, id: &'a str, body: &'a RawValue) -> ServerFrame<'a> {
    ServerFrame::Msg { conv, seq: m.seq.0, id, from: &m.sender, ts: m.ts_ms, kind: &m.kind, body }
}

/// A body read back from the store as a JSON value. Bodies are checked on the way in, so a
/// failure here means damage that the log's checksums did not catch: logged, shown as `null`.
pub fn stored_body(body: &[u8]) -> &RawValue {
    match std::str::from_utf8(body).ok().and_then(|s| serde_json::from_str::<&RawValue>(s).ok()) {
        Some(v) => v,
        None => {
            tracing::error!("a stored body is not JSON; delivering null");
            serde_json::from_str("null").expect("null is JSON")
        }
    }
}

/// Both encodings of one frame, for a delivery.
fn both(frame: &ServerFrame<'_>) -> (Bytes, Bytes) {
    (frame.encode(Encoding::Json), frame.encode(Encoding::Binary))
}

/// What `deliver_message` needs besides the message.
struct To {
    store: usize,
    kind: ConvKind,
    audience: Arc<MemberSet>,
    except: Option<Origin>,
    addressed: Addressed,
}

fn deliver_message(hub: &Hub, conv: &ConvId, to: To, m: &StoredMessage, started: Option<Instant>) {
    let id = shown_id(&m.client_id, m.seq);
    let (json, bin) = both(&msg_frame(conv.as_str(), m, &id, stored_body(&m.body)));
    let reach = if to.kind == ConvKind::Channel { Reach::Channel { head: m.seq.0 } } else { Reach::Everyone };
    let (audience, except, addressed) = (to.audience, to.except, to.addressed);
    let conv = conv.as_str().into();
    let d = Delivery { conv, audience, except, reach, frame: "msg", json, bin, started, seq: m.seq.0, addressed };
    hub.deliver(to.store, d);
}

/// A frame (not a message) for every connection of `audience`, except `except`'s.
fn to_everyone(
    conv: &ConvId,
    audience: Arc<MemberSet>,
    except: Option<Origin>,
    frame: &ServerFrame<'_>,
    name: &'static str,
    addressed: Addressed,
) -> Delivery {
    let (json, bin) = both(frame);
    let conv = conv.as_str().into();
    let reach = Reach::Everyone;
    Delivery { conv, audience, except, reach, frame: name, json, bin, started: None, seq: 0, addressed }
}

fn single(user: &str) -> Arc<MemberSet> {
    let mut s = MemberSet::default();
    s.insert(user.into());
    Arc::new(s)
}

/// A message to append: `send` from a connection, or `POST …/messages`.
pub struct Message {
    pub conv: ConvId,
    pub sender: UserId,
    pub id: String,
    pub body: Bytes,
    pub kind: String,
    /// The sending connection, which gets the `ack` and not the `msg`.
    pub except: Option<Origin>,
    pub started: Instant,
}

pub fn send(hub: &Arc<Hub>, store: &Store, store_index: usize, s: Message, reply: Reply<Appended>) {
    let hub = hub.clone();
    write(store, move |shard: &mut S| {
        let staged = Instant::now();
        let ts_ms = super::now_ms();
        let req = SendRequest {
            conv: &s.conv,
            sender: &s.sender,
            client_id: s.id.as_bytes(),
            kind: &s.kind,
            body: &s.body,
            ts_ms,
        };
        let result = shard.send(req);
        let audience = match &result {
            Ok(a) if !a.dup => shard.audience(&s.conv).ok(),
            _ => None,
        };
        Box::new(move |commit: &Commit| {
            record_commit(&hub, store_index, staged);
            match (commit, result) {
                (_, Err(e)) => reply.send(Err(OpError::from(&e))),
                (Commit::Failed(why), Ok(_)) => {
                    tracing::error!("commit failed: {why}");
                    reply.send(Err(OpError::new(ErrorCode::Unavailable, "not stored; retry later")))
                }
                (Commit::Durable, Ok(a)) => {
                    if let Some((kind, audience)) = audience {
                        let m = StoredMessage {
                            seq: a.seq,
                            ts_ms: a.ts_ms,
                            sender: s.sender.as_str().to_string(),
                            client_id: s.id.into_bytes(),
                            kind: s.kind,
                            body: s.body,
                        };
                        // A dm's first message (seq 1: creating it takes no seq) created it: its
                        // members are news to the other nodes.
                        let created = kind == ConvKind::Dm && a.seq == Seq(1);
                        let addressed = if created { Addressed::Created } else { Addressed::Members };
                        let to = To { store: store_index, kind, audience, except: s.except, addressed };
                        deliver_message(&hub, &s.conv, to, &m, Some(s.started));
                    }
                    reply.send(Ok(a))
                }
            }
        })
    });
}

/// A delivered or read cursor moves; other members hear of it in groups of up to
/// `receipts_fanout_max` members.
#[allow(clippy::too_many_arguments)]
fn receipt(
    hub: &Arc<Hub>,
    (store, index): (&Store, usize),
    user: UserId,
    conv: ConvId,
    seq: Seq,
    kind: CursorKind,
    except: Origin,
    reply: Reply<()>,
) {
    let hub = hub.clone();
    write(store, move |shard: &mut S| {
        let moved = shard.move_cursor(&conv, &user, kind, seq);
        let audience = match moved {
            Ok(true) => shard.audience(&conv).ok().filter(|(_, a)| a.len() <= hub.receipts_fanout_max),
            _ => None,
        };
        Box::new(move |commit: &Commit| match (commit, moved) {
            (_, Err(e)) => reply.send(Err(OpError::from(&e))),
            (Commit::Failed(_), Ok(_)) => reply.send(Err(OpError::new(ErrorCode::Unavailable, "not stored"))),
            (Commit::Durable, Ok(_)) => {
                if let Some((_, audience)) = audience {
                    let kind = if kind == CursorKind::Read { "read" } else { "delivered" };
                    let frame = ServerFrame::Receipt { conv: conv.as_str(), user: user.as_str(), seq: seq.0, kind };
                    hub.deliver(
                        index,
                        to_everyone(&conv, audience, Some(except), &frame, "receipt", Addressed::Members),
                    );
                }
                reply.send(Ok(()))
            }
        })
    });
}

/// `typing`: checked against membership, forwarded to online members, never stored.
fn typing(
    hub: &Arc<Hub>,
    (store, index): (&Store, usize),
    user: UserId,
    conv: ConvId,
    except: Origin,
    reply: Reply<()>,
) {
    let hub = hub.clone();
    read(store, move |shard: &mut S| {
        if !shard.is_member(&conv, &user) {
            let e = if shard.conv_info(&conv).is_ok() { Error::Forbidden("not a member") } else { Error::NotFound };
            return reply.send(Err(OpError::from(&e)));
        }
        if let Ok((_, audience)) = shard.audience(&conv) {
            let frame = ServerFrame::Typing { conv: conv.as_str(), user: user.as_str() };
            hub.deliver(index, to_everyone(&conv, audience, Some(except), &frame, "typing", Addressed::Members));
        }
        reply.send(Ok(()))
    });
}

/// `open`: allowed for members.
fn check_member(store: &Store, user: UserId, conv: ConvId, reply: Reply<ConvKind>) {
    read(store, move |shard: &mut S| {
        let result = match shard.conv_info(&conv) {
            Ok(info) if shard.is_member(&conv, &user) => Ok(info.kind),
            Ok(_) => Err(OpError::new(ErrorCode::Forbidden, "not a member of this conversation")),
            Err(e) => Err(OpError::from(&e)),
        };
        reply.send(result)
    });
}

/// `POST /v1/conversations`: the conversation and its members; each member hears `joined`.
#[allow(clippy::too_many_arguments)]
fn create(
    hub: &Arc<Hub>,
    (store, index): (&Store, usize),
    conv: ConvId,
    kind: ConvKind,
    title: String,
    owner: UserId,
    members: Vec<UserId>,
    reply: Reply<()>,
) {
    let hub = hub.clone();
    write(store, move |shard: &mut S| {
        let created = shard.create(&conv, kind, &title, &owner, &members, super::now_ms());
        let audience = created.as_ref().ok().and_then(|_| shard.audience(&conv).ok());
        Box::new(move |commit: &Commit| match (commit, created) {
            (_, Err(e)) => reply.send(Err(OpError::from(&e))),
            (Commit::Failed(_), Ok(_)) => reply.send(Err(OpError::new(ErrorCode::Unavailable, "not stored"))),
            (Commit::Durable, Ok(_)) => {
                if let Some((_, audience)) = audience {
                    let frame = ServerFrame::Joined { conv: conv.as_str(), kind: kind.as_str() };
                    hub.deliver(index, to_everyone(&conv, audience, None, &frame, "joined", Addressed::Created));
                }
                reply.send(Ok(()))
            }
        })
    });
}

/// `POST /v1/conversations/{conv}/members`, by the owner or an admin. Each change is a
/// sequenced `system` message, delivered to the members as of that message (so a removed
/// member does not get its own removal), and the user concerned hears `joined` or `left`.
#[allow(clippy::too_many_arguments)]
fn change_members(
    hub: &Arc<Hub>,
    (store, index): (&Store, usize),
    conv: ConvId,
    actor: UserId,
    admin: bool,
    add: Vec<UserId>,
    remove: Vec<UserId>,
    group_members_max: usize,
    reply: Reply<Vec<(String, &'static str, u64)>>,
) {
    let hub = hub.clone();
    write(store, move |shard: &mut S| {
        let mut done = Vec::new();
        let outcome = (|| -> Result<(), Error> {
            let info = shard.conv_info(&conv)?;
            if info.owner != actor.as_str() && !admin {
                return Err(Error::Forbidden("only the owner or an admin changes members"));
            }
            if info.kind == ConvKind::Group && info.members_count + add.len() > group_members_max {
                return Err(Error::TooLarge("group member list"));
            }
            if info.kind == ConvKind::Channel {
                // A channel's messages reach only connections that have it open, and the rest
                // as a coalesced notify: one audience for the whole call keeps a bulk change
                // linear instead of copying the member set once per change.
                let changes = shard.change_members(&conv, &actor, &add, &remove, super::now_ms())?;
                let (kind, audience) = shard.audience(&conv)?;
                done.extend(changes.into_iter().map(|(u, c, a)| (u, c, a, kind, audience.clone())));
                return Ok(());
            }
            let changes = add.iter().map(|u| (u, true)).chain(remove.iter().map(|u| (u, false)));
            for (user, adding) in changes {
                let (a, r) =
                    if adding { (std::slice::from_ref(user), &[][..]) } else { (&[][..], std::slice::from_ref(user)) };
                for (u, change, appended) in shard.change_members(&conv, &actor, a, r, super::now_ms())? {
                    let (kind, audience) = shard.audience(&conv)?;
                    done.push((u, change, appended, kind, audience));
                }
            }
            Ok(())
        })();
        Box::new(move |commit: &Commit| match (commit, outcome) {
            (Commit::Failed(_), _) => reply.send(Err(OpError::new(ErrorCode::Unavailable, "not stored"))),
            (Commit::Durable, outcome) => {
                let mut summary = Vec::new();
                for (user, change, a, kind, audience) in done {
                    let event = if change == MemberChange::Added { "member_added" } else { "member_removed" };
                    let body = format!(r#"{{"event":"{event}","user":"{user}"}}"#);
                    let m = StoredMessage {
                        seq: a.seq,
                        ts_ms: a.ts_ms,
                        sender: actor.as_str().to_string(),
                        client_id: Vec::new(),
                        kind: "system".into(),
                        body: Bytes::from(body),
                    };
                    let (frame, name) = if change == MemberChange::Added {
                        (ServerFrame::Joined { conv: conv.as_str(), kind: kind.as_str() }, "joined")
                    } else {
                        (ServerFrame::Left { conv: conv.as_str(), kind: kind.as_str() }, "left")
                    };
                    let to_user = Addressed::User(user.as_str().into());
                    let joined_or_left = to_everyone(&conv, single(user.as_str()), None, &frame, name, to_user);
                    let added = change == MemberChange::Added;
                    let addressed = Addressed::Change { user: user.as_str().into(), added };
                    let to = To { store: index, kind, audience, except: None, addressed };
                    // A new member hears `joined` before the message that added them; a removed
                    // one hears `left` (and, as a non-member, not the message).
                    if added {
                        hub.deliver(index, joined_or_left);
                        deliver_message(&hub, &conv, to, &m, None);
                    } else {
                        deliver_message(&hub, &conv, to, &m, None);
                        hub.deliver(index, joined_or_left);
                    }
                    summary.push((user.as_str().to_string(), event, a.seq.0));
                }
                match outcome {
                    // Changes made before a failure are durable and were delivered; the
                    // error says where it stopped.
                    Err(e) if summary.is_empty() => reply.send(Err(OpError::from(&e))),
                    Err(e) => reply.send(Err(OpError::new(
                        OpError::from(&e).code,
                        format!("{e} (after {} changes were applied)", summary.len()),
                    ))),
                    Ok(()) => reply.send(Ok(summary)),
                }
            }
        })
    });
}

/// `GET /v1/conversations/{conv}`, for members and admins.
fn info(store: &Store, user: UserId, admin: bool, conv: ConvId, reply: Reply<ConvInfo>) {
    read(store, move |shard: &mut S| {
        let result = match shard.conv_info(&conv) {
            Ok(info) if admin || shard.is_member(&conv, &user) => Ok(info),
            Ok(_) => Err(OpError::new(ErrorCode::Forbidden, "not a member of this conversation")),
            Err(e) => Err(OpError::from(&e)),
        };
        reply.send(result)
    });
}

/// Applies the retention policy on one store shard: sealed segments past it are deleted,
/// conversation state carried forward first (the store commits that itself).
pub fn retain(store: &Store, store_index: usize) {
    read(store, move |shard: &mut S| match shard.retain(super::now_ms()) {
        Ok(r) if r.segments_deleted > 0 => tracing::info!(
            store = store_index,
            segments = r.segments_deleted,
            bytes = r.bytes_deleted,
            carried = r.conversations_carried,
            "retention deleted old segments"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(store = store_index, "retention: {e}"),
    });
}

fn history(
    store: &Store,
    reader: Option<UserId>,
    conv: ConvId,
    before: Option<Seq>,
    after: Option<Seq>,
    limit: usize,
    reply: Reply<Page>,
) {
    read(store, move |shard: &mut S| {
        let r = reader.as_ref();
        let result = match after {
            Some(after) => shard.range(&conv, r, after, limit).map(Page::Forward),
            None => shard.history(&conv, r, before, limit).map(Page::Back),
        };
        reply.send(result.map_err(|e| OpError::from(&e)))
    });
}

/// Runs `request` on this node, which owns its conversation (or, for the per-user requests,
/// holds some of the user's conversations). `from` and `boot` name the node that asked, and
/// its run: this one for a local call.
pub fn apply(node: &Node, from: NodeId, boot: Boot, request: Request, reply: Reply<Outcome>) {
    let hub = &node.hub;
    let registry = node.registry.as_ref();
    match request {
        Request::Register { user } => {
            registry.inspect(|r| r.hold(&node.presence, &user, from));
            return reply.send(Ok(Outcome::Done));
        }
        Request::Unregister { user, at_ms } => {
            registry.inspect(|r| r.release(&node.presence, &user, from, at_ms));
            return reply.send(Ok(Outcome::Done));
        }
        Request::Presence { users } => {
            return reply.send(Ok(Outcome::Presence(users.iter().map(|u| node.presence.get(u.as_str())).collect())));
        }
        _ if node.stores.is_empty() => {
            return reply.send(Err(OpError::new(ErrorCode::Unavailable, "this node holds no store")));
        }
        _ => {}
    }
    match request {
        Request::Send { conv, sender, id, body, kind, except } => {
            let (store, index) = node.store_for(&conv);
            let started = Instant::now();
            let m = Message { conv, sender, id, body, kind, except, started };
            send(hub, store, index, m, reply.map(Outcome::Appended))
        }
        Request::Receipt { conv, user, seq, kind, except } => {
            let on = node.store_for(&conv);
            receipt(hub, on, user, conv, seq, kind, except, reply.map(|()| Outcome::Done))
        }
        Request::Typing { conv, user, except } => {
            let on = node.store_for(&conv);
            typing(hub, on, user, conv, except, reply.map(|()| Outcome::Done))
        }
        Request::Sync { conv, reader, after, limit } => {
            let (store, _) = node.store_for(&conv);
            read(store, move |shard: &mut S| {
                let page = shard.range(&conv, reader.as_ref(), after, limit as usize);
                reply.send(page.map(Outcome::Range).map_err(|e| OpError::from(&e)))
            })
        }
        Request::Inbox { user, after_ts } => {
            gather(&node.stores, reply, Outcome::Inbox, move |_, shard| match after_ts {
                None => Ok(shard.inbox(&user)),
                Some(ts) => shard.inbox_since(&user, ts).map_err(|e| OpError::from(&e)),
            })
        }
        Request::Subscribe { user } => {
            let fanout = hub.fanout.clone();
            gather(&node.stores, reply, Outcome::Inbox, move |i, shard| {
                let entries = shard.inbox(&user);
                if let Some(f) = &fanout {
                    f.subs.subscribe(i, from, boot, user.as_str(), entries.iter().map(|e| e.conv.as_str()));
                }
                Ok(entries)
            })
        }
        Request::Unsubscribe { user } => {
            let fanout = hub.fanout.clone();
            gather(
                &node.stores,
                reply,
                |_| Outcome::Done,
                move |i, shard| {
                    if let Some(f) = &fanout {
                        let entries = shard.inbox(&user);
                        f.subs.unsubscribe(i, from, boot, user.as_str(), entries.iter().map(|e| e.conv.as_str()));
                    }
                    Ok(Vec::new())
                },
            )
        }
        Request::Open { conv, user } => check_member(node.store_for(&conv).0, user, conv, reply.map(Outcome::Kind)),
        Request::Create { conv, kind, title, owner, members } => {
            let on = node.store_for(&conv);
            create(hub, on, conv, kind, title, owner, members, reply.map(|()| Outcome::Done))
        }
        Request::Members { conv, actor, admin, add, remove } => {
            let on = node.store_for(&conv);
            let max = node.config.group_members_max;
            let reply = reply.map(|changes: Vec<(String, &str, u64)>| {
                Outcome::Changes(changes.into_iter().map(|(u, e, s)| (u, e.to_string(), s)).collect())
            });
            change_members(hub, on, conv, actor, admin, add, remove, max, reply)
        }
        Request::Info { conv, user, admin } => {
            info(node.store_for(&conv).0, user, admin, conv, reply.map(Outcome::Info))
        }
        Request::History { conv, reader, before, after, limit } => {
            let (store, _) = node.store_for(&conv);
            history(store, reader, conv, before, after, limit as usize, reply.map(Outcome::History))
        }
        Request::Register { .. } | Request::Unregister { .. } | Request::Presence { .. } => {
            unreachable!("answered above")
        }
    }
}

/// A user's entries from every store shard of this node, answered once. A part that never
/// runs (its queue was full) drops its hold on the reply, which then answers `unavailable`.
fn gather(
    stores: &[Store],
    reply: Reply<Outcome>,
    done: fn(Vec<InboxEntry>) -> Outcome,
    part: impl Fn(usize, &mut S) -> Result<Vec<InboxEntry>, OpError> + Send + Sync + 'static,
) {
    struct Gather {
        left: usize,
        entries: Vec<InboxEntry>,
        error: Option<OpError>,
        reply: Option<Reply<Outcome>>,
    }
    let g = Gather { left: stores.len(), entries: Vec::new(), error: None, reply: Some(reply) };
    let (state, part) = (Arc::new(std::sync::Mutex::new(g)), Arc::new(part));
    for (i, store) in stores.iter().enumerate() {
        let (state, part) = (state.clone(), part.clone());
        read(store, move |shard: &mut S| {
            let result = part(i, shard);
            let mut g = state.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(entries) => g.entries.extend(entries),
                Err(e) => g.error = Some(e),
            }
            g.left -= 1;
            if g.left == 0 {
                let reply = g.reply.take().expect("answered once");
                match g.error.take() {
                    Some(e) => reply.send(Err(e)),
                    None => reply.send(Ok(done(std::mem::take(&mut g.entries)))),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_when_to_retry_and_other_errors_do_not() {
        assert_eq!(OpError::new(ErrorCode::Unavailable, "x").retry_after_ms, Some(UNAVAILABLE_RETRY_MS));
        assert_eq!(OpError::new(ErrorCode::Forbidden, "x").retry_after_ms, None);
        // A reply dropped unanswered (a full store queue) answers unavailable, with the delay.
        let (tx, rx) = std::sync::mpsc::channel();
        drop(Reply::<()>::new(move |r| tx.send(r).unwrap()));
        let e = rx.recv().unwrap().unwrap_err();
        assert_eq!((e.code, e.retry_after_ms), (ErrorCode::Unavailable, Some(UNAVAILABLE_RETRY_MS)));
    }
}
