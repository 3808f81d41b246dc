//! The owner's side of a request, sans-IO: what a [`Request`] does on the store shard that
//! sequences its conversation, given that shard and nothing else of the process. A store
//! thread runs it for [`super::ops::apply`]; `switchboard-sim` runs the same code over its
//! simulated disks, with group commits of its own.
//!
//! A write ([`Request::writes`]) stages its records and returns a [`Finish`]: what to deliver
//! and how to answer once the commit is known. The rule of DESIGN.md holds in each: the
//! answer and the deliveries come out of the `Finish`, which runs after the fsync, never
//! before. A read answers at once, from committed state (the store runs reads only when
//! nothing is staged).

use super::ops::{msg_frame, shown_id, stored_body, OpError};
use super::request::{Change, Origin, Outcome, Page, Request};
use super::{Addressed, Delivery, Reach};
use crate::cluster::fanout::Subscriptions;
use crate::proto::server::ServerFrame;
use crate::proto::ErrorCode;
use crate::ws::handshake::Encoding;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use switchboard_backplane::{Boot, NodeId};
use switchboard_store::record::MemberChange;
use switchboard_store::rt::Commit;
use switchboard_store::storage::Storage;
use switchboard_store::{
    ConvId, ConvKind, CursorKind, Error, InboxEntry, MemberSet, SendRequest, Seq, Shard, StoredMessage, UserId,
};

/// What a request's part on a store shard needs besides the shard.
pub struct On<'a> {
    /// The store shard's index on its node, which names its fan-out table.
    pub index: usize,
    /// The node that asked, and its run (this node and `Boot(0)` for a local call).
    pub from: NodeId,
    pub boot: Boot,
    /// Unix milliseconds: the timestamps of messages and member changes.
    pub now_ms: u64,
    /// When the request arrived, for the delivery latency histogram.
    pub started: Option<Instant>,
    /// The fan-out's subscriptions, on a node of a cluster.
    pub subs: Option<&'a Subscriptions>,
    /// Receipts are delivered in conversations of at most this many members.
    pub receipts_fanout_max: usize,
    pub group_members_max: usize,
}

/// A request's result on its owner, and the deliveries to make before it is answered, in
/// their order.
pub struct Finished {
    pub deliveries: Vec<Delivery>,
    pub result: Result<Outcome, OpError>,
}

impl Finished {
    fn answer(result: Result<Outcome, Error>) -> Finished {
        Finished { deliveries: Vec::new(), result: result.map_err(|e| OpError::from(&e)) }
    }
}

/// A write's second half, run with the outcome of the commit that holds its records.
pub type Finish = Box<dyn FnOnce(&Commit) -> Finished + Send>;

/// What running a request on a store shard gave.
pub enum Part {
    /// A read: answered now.
    Now(Finished),
    /// A write, staged in the shard's group.
    Staged(Finish),
}

/// Runs `request` on `shard`, the store shard of its conversation (or, for `Inbox`,
/// `Subscribe` and `Unsubscribe`, one of the store shards holding the user's).
pub fn on_shard<St: Storage>(shard: &mut Shard<St>, on: &On<'_>, request: Request) -> Part {
    match request {
        Request::Send { conv, sender, id, body, kind, except } => {
            let finish = send(shard, on, Message { conv, sender, id, body, kind, except });
            if cfg!(feature = "sim-bug-ack-before-commit") {
                return Part::Now(finish(&Commit::Durable));
            }
            Part::Staged(finish)
        }
        Request::Receipt { conv, user, seq, kind, except } => {
            Part::Staged(receipt(shard, on, conv, user, seq, kind, except))
        }
        Request::Create { conv, kind, title, owner, members } => {
            Part::Staged(create(shard, on, conv, kind, &title, owner, &members))
        }
        Request::Members { conv, actor, admin, add, remove } => {
            Part::Staged(change_members(shard, on, conv, actor, admin, &add, &remove))
        }
        Request::Typing { conv, user, except } => Part::Now(typing(shard, conv, user, except)),
        Request::Sync { conv, reader, after, limit } => {
            Part::Now(Finished::answer(shard.range(&conv, reader.as_ref(), after, limit as usize).map(Outcome::Range)))
        }
        Request::Inbox { user, after_ts } => Part::Now(Finished::answer(match after_ts {
            None => Ok(Outcome::Inbox(shard.inbox(&user))),
            Some(ts) => shard.inbox_since(&user, ts).map(Outcome::Inbox),
        })),
        Request::Subscribe { user } => {
            let entries = shard.inbox(&user);
            if let Some(subs) = on.subs {
                subs.subscribe(on.index, on.from, on.boot, user.as_str(), convs(&entries));
            }
            Part::Now(Finished::answer(Ok(Outcome::Inbox(entries))))
        }
        Request::Unsubscribe { user } => {
            if let Some(subs) = on.subs {
                let entries = shard.inbox(&user);
                subs.unsubscribe(on.index, on.from, on.boot, user.as_str(), convs(&entries));
            }
            Part::Now(Finished::answer(Ok(Outcome::Done)))
        }
        Request::Open { conv, user } => Part::Now(Finished::answer(
            shard
                .conv_info(&conv)
                .and_then(|info| member_or_forbidden(shard, &conv, &user, info.kind))
                .map(Outcome::Kind),
        )),
        Request::Info { conv, user, admin } => Part::Now(Finished::answer(
            shard
                .conv_info(&conv)
                .and_then(|info| if admin { Ok(info) } else { member_or_forbidden(shard, &conv, &user, info) })
                .map(Outcome::Info),
        )),
        Request::History { conv, reader, before, after, limit } => {
            let (r, limit) = (reader.as_ref(), limit as usize);
            let page = match after {
                Some(after) => shard.range(&conv, r, after, limit).map(Page::Forward),
                None => shard.history(&conv, r, before, limit).map(Page::Back),
            };
            Part::Now(Finished::answer(page.map(Outcome::History)))
        }
        Request::Register { .. } | Request::Unregister { .. } | Request::Presence { .. } => {
            let e = OpError::new(ErrorCode::Internal, "not a request for a store");
            Part::Now(Finished { deliveries: Vec::new(), result: Err(e) })
        }
    }
}

fn convs(entries: &[InboxEntry]) -> impl Iterator<Item = &str> {
    entries.iter().map(|e| e.conv.as_str())
}

fn member_or_forbidden<St: Storage, T>(shard: &Shard<St>, conv: &ConvId, user: &UserId, ok: T) -> Result<T, Error> {
    match shard.is_member(conv, user) {
        true => Ok(ok),
        false => Err(Error::Forbidden("not a member of this conversation")),
    }
}

/// A write's answer when the commit of its group failed: nothing of it is stored. A refusal is
/// no exception: it was decided against the state staged before it in the same group (a
/// member's removal, say), which is not stored either. (`switchboard-sim` found a send
/// refused as `forbidden` by a removal whose commit then failed: the member was still one.)
fn not_stored() -> Finished {
    let e = OpError::new(ErrorCode::Unavailable, "not stored; retry later");
    Finished { deliveries: Vec::new(), result: Err(e) }
}

/// Both encodings of one frame, for a delivery.
fn both(frame: &ServerFrame<'_>) -> (Bytes, Bytes) {
    (frame.encode(Encoding::Json), frame.encode(Encoding::Binary))
}

/// Who a message is delivered to, besides its conversation.
struct To {
    kind: ConvKind,
    audience: Arc<MemberSet>,
    except: Option<Origin>,
    addressed: Addressed,
    started: Option<Instant>,
}

fn message(conv: &ConvId, to: To, m: &StoredMessage) -> Delivery {
    let id = shown_id(&m.client_id, m.seq);
    let (json, bin) = both(&msg_frame(conv.as_str(), m, &id, stored_body(&m.body)));
    let reach = if to.kind == ConvKind::Channel { Reach::Channel { head: m.seq.0 } } else { Reach::Everyone };
    let (audience, except, addressed, started) = (to.audience, to.except, to.addressed, to.started);
    let conv = conv.as_str().into();
    Delivery { conv, audience, except, sent_as: None, reach, frame: "msg", json, bin, started, seq: m.seq.0, addressed }
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
    Delivery { conv, audience, except, sent_as: None, reach, frame: name, json, bin, started: None, seq: 0, addressed }
}

fn single(user: &str) -> Arc<MemberSet> {
    let mut s = MemberSet::default();
    s.insert(user.into());
    Arc::new(s)
}

/// A message to append: `send` from a connection, or `POST …/messages`.
struct Message {
    conv: ConvId,
    sender: UserId,
    id: String,
    body: Bytes,
    kind: String,
    /// The sending connection, which gets the `ack` and not the `msg`.
    except: Option<Origin>,
}

fn send<St: Storage>(shard: &mut Shard<St>, on: &On<'_>, s: Message) -> Finish {
    let req = SendRequest {
        conv: &s.conv,
        sender: &s.sender,
        client_id: s.id.as_bytes(),
        kind: &s.kind,
        body: &s.body,
        ts_ms: on.now_ms,
    };
    let result = shard.send(req);
    let audience = match &result {
        Ok(a) if !a.dup => shard.audience(&s.conv).ok(),
        _ => None,
    };
    let started = on.started;
    Box::new(move |commit: &Commit| match (commit, result) {
        (Commit::Failed(why), _) => {
            tracing::error!("commit failed: {why}");
            not_stored()
        }
        (Commit::Durable, Err(e)) => Finished::answer(Err(e)),
        (Commit::Durable, Ok(a)) => {
            let mut deliveries = Vec::new();
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
                deliveries.push(message(&s.conv, To { kind, audience, except: s.except, addressed, started }, &m));
            }
            Finished { deliveries, result: Ok(Outcome::Appended(a)) }
        }
    })
}

/// A delivered or read cursor moves; other members hear of it in conversations of up to
/// `receipts_fanout_max` members.
fn receipt<St: Storage>(
    shard: &mut Shard<St>,
    on: &On<'_>,
    conv: ConvId,
    user: UserId,
    seq: Seq,
    kind: CursorKind,
    except: Origin,
) -> Finish {
    let moved = shard.move_cursor(&conv, &user, kind, seq);
    let audience = match moved {
        Ok(true) => shard.audience(&conv).ok().filter(|(_, a)| a.len() <= on.receipts_fanout_max),
        _ => None,
    };
    Box::new(move |commit: &Commit| match (commit, moved) {
        (Commit::Failed(_), _) => not_stored(),
        (Commit::Durable, Err(e)) => Finished::answer(Err(e)),
        (Commit::Durable, Ok(_)) => {
            let mut deliveries = Vec::new();
            if let Some((_, audience)) = audience {
                let kind = if kind == CursorKind::Read { "read" } else { "delivered" };
                let frame = ServerFrame::Receipt { conv: conv.as_str(), user: user.as_str(), seq: seq.0, kind };
                deliveries.push(to_everyone(&conv, audience, Some(except), &frame, "receipt", Addressed::Members));
            }
            Finished { deliveries, result: Ok(Outcome::Done) }
        }
    })
}

/// `typing`: checked against membership, forwarded to online members, never stored.
fn typing<St: Storage>(shard: &mut Shard<St>, conv: ConvId, user: UserId, except: Origin) -> Finished {
    if !shard.is_member(&conv, &user) {
        let e = if shard.conv_info(&conv).is_ok() { Error::Forbidden("not a member") } else { Error::NotFound };
        return Finished::answer(Err(e));
    }
    let mut deliveries = Vec::new();
    if let Ok((_, audience)) = shard.audience(&conv) {
        let frame = ServerFrame::Typing { conv: conv.as_str(), user: user.as_str() };
        deliveries.push(to_everyone(&conv, audience, Some(except), &frame, "typing", Addressed::Members));
    }
    Finished { deliveries, result: Ok(Outcome::Done) }
}

/// `POST /v1/conversations`: the conversation and its members; each member hears `joined`.
fn create<St: Storage>(
    shard: &mut Shard<St>,
    on: &On<'_>,
    conv: ConvId,
    kind: ConvKind,
    title: &str,
    owner: UserId,
    members: &[UserId],
) -> Finish {
    let created = shard.create(&conv, kind, title, &owner, members, on.now_ms);
    let audience = created.as_ref().ok().and_then(|_| shard.audience(&conv).ok());
    Box::new(move |commit: &Commit| match (commit, created) {
        (Commit::Failed(_), _) => not_stored(),
        (Commit::Durable, Err(e)) => Finished::answer(Err(e)),
        (Commit::Durable, Ok(_)) => {
            let mut deliveries = Vec::new();
            if let Some((_, audience)) = audience {
                let frame = ServerFrame::Joined { conv: conv.as_str(), kind: kind.as_str() };
                deliveries.push(to_everyone(&conv, audience, None, &frame, "joined", Addressed::Created));
            }
            Finished { deliveries, result: Ok(Outcome::Done) }
        }
    })
}

/// `POST /v1/conversations/{conv}/members`, by the owner or an admin. Each change is a
/// sequenced `system` message, delivered to the members as of that message (so a removed
/// member does not get its own removal), and the user concerned hears `joined` or `left`.
fn change_members<St: Storage>(
    shard: &mut Shard<St>,
    on: &On<'_>,
    conv: ConvId,
    actor: UserId,
    admin: bool,
    add: &[UserId],
    remove: &[UserId],
) -> Finish {
    let mut done = Vec::new();
    let outcome = (|| -> Result<(), Error> {
        let info = shard.conv_info(&conv)?;
        if info.owner != actor.as_str() && !admin {
            return Err(Error::Forbidden("only the owner or an admin changes members"));
        }
        if info.kind == ConvKind::Group && info.members_count + add.len() > on.group_members_max {
            return Err(Error::TooLarge("group member list"));
        }
        if info.kind == ConvKind::Channel {
            // A channel's messages reach only connections that have it open, and the rest
            // as a coalesced notify: one audience for the whole call keeps a bulk change
            // linear instead of copying the member set once per change.
            let changes = shard.change_members(&conv, &actor, add, remove, on.now_ms)?;
            let (kind, audience) = shard.audience(&conv)?;
            done.extend(changes.into_iter().map(|(u, c, a)| (u, c, a, kind, audience.clone())));
            return Ok(());
        }
        let changes = add.iter().map(|u| (u, true)).chain(remove.iter().map(|u| (u, false)));
        for (user, adding) in changes {
            let (a, r) =
                if adding { (std::slice::from_ref(user), &[][..]) } else { (&[][..], std::slice::from_ref(user)) };
            for (u, change, appended) in shard.change_members(&conv, &actor, a, r, on.now_ms)? {
                let (kind, audience) = shard.audience(&conv)?;
                done.push((u, change, appended, kind, audience));
            }
        }
        Ok(())
    })();
    Box::new(move |commit: &Commit| {
        if let Commit::Failed(_) = commit {
            return not_stored();
        }
        let (mut deliveries, mut summary): (Vec<Delivery>, Vec<Change>) = (Vec::new(), Vec::new());
        for (user, change, a, kind, audience) in done {
            let added = change == MemberChange::Added;
            let event = if added { "member_added" } else { "member_removed" };
            let m = StoredMessage {
                seq: a.seq,
                ts_ms: a.ts_ms,
                sender: actor.as_str().to_string(),
                client_id: Vec::new(),
                kind: "system".into(),
                body: Bytes::from(format!(r#"{{"event":"{event}","user":"{user}"}}"#)),
            };
            let (frame, name) = if added {
                (ServerFrame::Joined { conv: conv.as_str(), kind: kind.as_str() }, "joined")
            } else {
                (ServerFrame::Left { conv: conv.as_str(), kind: kind.as_str() }, "left")
            };
            let to_user = Addressed::User(user.as_str().into());
            let joined_or_left = to_everyone(&conv, single(user.as_str()), None, &frame, name, to_user);
            let addressed = Addressed::Change { user: user.as_str().into(), added };
            let msg = message(&conv, To { kind, audience, except: None, addressed, started: None }, &m);
            // A new member hears `joined` before the message that added them; a removed one
            // hears `left` (and, as a non-member, not the message).
            match added {
                true => deliveries.extend([joined_or_left, msg]),
                false => deliveries.extend([msg, joined_or_left]),
            }
            summary.push((user.as_str().to_string(), event.to_string(), a.seq.0));
        }
        let result = match outcome {
            // Changes made before a failure are durable and are delivered; the error says
            // where it stopped.
            Err(e) if summary.is_empty() => Err(OpError::from(&e)),
            Err(e) => {
                let message = format!("{e} (after {} changes were applied)", summary.len());
                Err(OpError::new(OpError::from(&e).code, message))
            }
            Ok(()) => Ok(Outcome::Changes(summary)),
        };
        Finished { deliveries, result }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::storage::{SimDisk, SimStorage};
    use switchboard_store::{ShardConfig, UserId};

    fn on() -> On<'static> {
        let (from, boot, started, subs) = (NodeId(1), Boot(0), None, None);
        On { index: 0, from, boot, now_ms: 1, started, subs, receipts_fanout_max: 10, group_members_max: 10 }
    }

    fn staged(part: Part) -> Finish {
        match part {
            Part::Staged(finish) => finish,
            Part::Now(_) => panic!("a write answered before its commit"),
        }
    }

    /// Found by switchboard-sim: a send refused as `forbidden` by a removal staged before
    /// it in the same group, whose fsync then failed; the member was told it was not one.
    #[test]
    fn a_write_in_a_group_whose_commit_failed_is_answered_unavailable_even_if_refused() {
        let (mut shard, _) = Shard::open(SimStorage(SimDisk::new(1)), ShardConfig::default()).unwrap();
        let (g, ann, bob) = (ConvId::new("g").unwrap(), UserId::new("ann").unwrap(), UserId::new("bob").unwrap());
        shard.create(&g, ConvKind::Group, "g", &ann, &[ann.clone(), bob.clone()], 1).unwrap();
        shard.commit().unwrap();
        let remove =
            Request::Members { conv: g.clone(), actor: ann, admin: false, add: vec![], remove: vec![bob.clone()] };
        let removal = staged(on_shard(&mut shard, &on(), remove));
        let send = Request::Send {
            conv: g,
            sender: bob,
            id: "m1".into(),
            body: Bytes::from_static(b"{}"),
            kind: "text".into(),
            except: None,
        };
        let send = staged(on_shard(&mut shard, &on(), send));
        let failed = Commit::Failed("fsync failed".into());
        for finished in [removal(&failed), send(&failed)] {
            assert!(finished.deliveries.is_empty());
            assert_eq!(finished.result.err().map(|e| e.code), Some(ErrorCode::Unavailable));
        }
    }
}
