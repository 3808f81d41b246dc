//! The shell around the owner's side of every request: which store thread's queue a
//! [`Request`] goes to, and where the deliveries and the answer of its part there
//! ([`super::owner`]) go once known. [`apply`] runs a request here, whether it came from a
//! shard of this process or from another node; the callers differ only in the [`Reply`] they
//! pass.
//!
//! The rule of DESIGN.md holds in each write job: the answer and the fan-out leave from the
//! finisher, which the store runs after the fsync, never before.

use super::owner::{self, Finished, On, Part};
use super::request::{Outcome, Request};
use super::{Hub, Node, Store};
use crate::proto::server::ServerFrame;
use crate::proto::ErrorCode;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;
use switchboard_backplane::{Boot, NodeId};
use switchboard_store::rt::{Commit, Finisher};
use switchboard_store::storage::FsStorage;
use switchboard_store::{Error, Fault, InboxEntry, Seq, Shard, StoredMessage};

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

/// Runs `request` on this node, which owns its conversation (or, for the per-user requests,
/// holds some of the user's conversations). `from` and `boot` name the node that asked, and
/// its run: this one for a local call. The store thread runs the owner's part of it
/// ([`owner::on_shard`]); this is only its shell: which queue, the clock, and where the
/// deliveries and the answer go.
pub fn apply(node: &Node, from: NodeId, boot: Boot, request: Request, reply: Reply<Outcome>) {
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
    let at = Shell {
        hub: node.hub.clone(),
        from,
        boot,
        started: Instant::now(),
        group_members_max: node.config.group_members_max,
    };
    let Some(conv) = request.conv() else { return gather(&node.stores, at, request, reply) };
    let (store, index) = node.store_for(conv);
    if request.writes() {
        let timed = matches!(request, Request::Send { .. });
        write(store, move |shard: &mut S| {
            let staged = Instant::now();
            let finish: owner::Finish = match owner::on_shard(shard, &at.on(index), request) {
                Part::Staged(finish) => finish,
                Part::Now(finished) => Box::new(move |_: &Commit| finished),
            };
            Box::new(move |commit: &Commit| {
                if timed {
                    record_commit(&at.hub, index, staged);
                }
                at.finish(index, finish(commit), reply)
            })
        })
    } else {
        read(store, move |shard: &mut S| {
            let finished = match owner::on_shard(shard, &at.on(index), request) {
                Part::Now(finished) => finished,
                Part::Staged(_) => {
                    tracing::error!("a read job staged a write");
                    let e = OpError::new(ErrorCode::Internal, "a read staged a write");
                    Finished { deliveries: Vec::new(), result: Err(e) }
                }
            };
            at.finish(index, finished, reply)
        })
    }
}

/// What a store thread needs to run a request's part and send its results on.
struct Shell {
    hub: Arc<Hub>,
    from: NodeId,
    boot: Boot,
    /// When the request arrived.
    started: Instant,
    group_members_max: usize,
}

impl Shell {
    /// The owner's inputs on store shard `index`, at the store thread's time.
    fn on(&self, index: usize) -> On<'_> {
        On {
            index,
            from: self.from,
            boot: self.boot,
            now_ms: super::now_ms(),
            started: Some(self.started),
            subs: self.hub.fanout.as_ref().map(|f| &f.subs),
            receipts_fanout_max: self.hub.receipts_fanout_max,
            group_members_max: self.group_members_max,
        }
    }

    /// Delivers what the part produced, in order, then answers.
    fn finish(&self, index: usize, finished: Finished, reply: Reply<Outcome>) {
        for d in finished.deliveries {
            self.hub.deliver(index, d);
        }
        reply.send(finished.result)
    }
}

/// A per-user request (`Inbox`, `Subscribe`, `Unsubscribe`) on every store shard of this
/// node, answered once with their entries together. A part that never runs (its queue was
/// full) drops its hold on the reply, which then answers `unavailable`.
fn gather(stores: &[Store], at: Shell, request: Request, reply: Reply<Outcome>) {
    struct Gather {
        left: usize,
        entries: Vec<InboxEntry>,
        error: Option<OpError>,
        reply: Option<Reply<Outcome>>,
    }
    let done_only = matches!(request, Request::Unsubscribe { .. });
    let g = Gather { left: stores.len(), entries: Vec::new(), error: None, reply: Some(reply) };
    let (state, at) = (Arc::new(std::sync::Mutex::new(g)), Arc::new((at, request)));
    for (i, store) in stores.iter().enumerate() {
        let (state, at) = (state.clone(), at.clone());
        read(store, move |shard: &mut S| {
            let (shell, request) = &*at;
            let result = match owner::on_shard(shard, &shell.on(i), request.clone()) {
                Part::Now(finished) => finished.result,
                Part::Staged(_) => Err(OpError::new(ErrorCode::Internal, "a per-user request staged a write")),
            };
            let mut g = state.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(Outcome::Inbox(entries)) => g.entries.extend(entries),
                Ok(_) => {}
                Err(e) => g.error = Some(e),
            }
            g.left -= 1;
            if g.left == 0 {
                let reply = g.reply.take().expect("answered once");
                match (g.error.take(), done_only) {
                    (Some(e), _) => reply.send(Err(e)),
                    (None, true) => reply.send(Ok(Outcome::Done)),
                    (None, false) => reply.send(Ok(Outcome::Inbox(std::mem::take(&mut g.entries)))),
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
