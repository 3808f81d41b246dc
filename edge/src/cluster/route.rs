//! The mesh carrier of [`Request`]s: a request for a conversation another node owns goes to
//! that node as a frame, and its [`Reply`] waits here for the answer with the same id.
//!
//! No request waits forever and none is answered with an `ack` its owner did not make: an
//! owner that is down, a full queue, or no answer within [`ANSWER_WAIT_MS`] answers
//! `unavailable` with `retry_after_ms`. A `send` that was stored but whose answer was lost is
//! answered `dup` with its original seq when the client retries it (dedup on the owner).

use super::placement::Placement;
use super::waiting::Waiting;
use super::wire::{self, Wire};
use crate::node::ops::{OpError, Reply};
use crate::node::request::{Outcome, Page, Request};
use crate::proto::ErrorCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use switchboard_backplane::queue::SendError;
use switchboard_backplane::rt::Handle;
use switchboard_backplane::{Class, NodeId};
use switchboard_store::ConvId;

/// How long a forwarded request waits for its answer.
pub const ANSWER_WAIT_MS: u64 = 5_000;

/// The largest answer sent: under the bulk class's frame limit, with room for the envelope.
/// A longer page is cut short and says `more`.
const ANSWER_BYTES_MAX: usize = 3 << 20;

/// Why a request got `unavailable` without reaching its owner, for `/metrics`.
pub const CAUSES: [&str; 4] = ["down", "full", "timeout", "too_large"];

#[derive(Default, Debug)]
pub struct RouteMetrics {
    /// Requests sent to their owners, by type ([`Request::kind`]).
    pub forwarded: [AtomicU64; Request::NAMES.len()],
    /// `unavailable` answers by cause (see [`CAUSES`]).
    pub unavailable: [AtomicU64; 4],
    /// Requests from other nodes applied here.
    pub served: AtomicU64,
}

pub struct Router {
    me: NodeId,
    placement: Placement,
    store_nodes: Vec<NodeId>,
    mesh: Handle,
    /// The requests sent, by id, each with its reply ([`Waiting`]).
    pending: Mutex<Waiting<Reply<Outcome>, Instant>>,
    pub metrics: RouteMetrics,
}

impl Router {
    pub fn new(mesh: Handle, placement: Placement, store_nodes: Vec<NodeId>) -> Router {
        let me = mesh.me();
        let (pending, metrics) = (Mutex::default(), RouteMetrics::default());
        Router { me, placement, store_nodes, mesh, pending, metrics }
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn owner(&self, conv: &ConvId) -> NodeId {
        self.placement.owner(conv)
    }

    pub fn store_nodes(&self) -> &[NodeId] {
        &self.store_nodes
    }

    /// The store nodes other than this one.
    pub fn remote_store_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.store_nodes.iter().copied().filter(move |n| *n != self.me)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Waiting<Reply<Outcome>, Instant>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self, cause: usize, message: String) -> OpError {
        self.metrics.unavailable[cause].fetch_add(1, Ordering::Relaxed);
        OpError::new(ErrorCode::Unavailable, message)
    }

    /// Sends `request` to `node`; `reply` hears its answer or why there is none.
    pub fn forward(&self, node: NodeId, request: Request, reply: Reply<Outcome>) {
        self.metrics.forwarded[request.kind()].fetch_add(1, Ordering::Relaxed);
        let key = request.lane_key();
        let deadline = Instant::now() + Duration::from_millis(ANSWER_WAIT_MS);
        // The id is taken first, so an answer that comes at once finds its reply waiting.
        let id = self.pending().insert(node, deadline, reply);
        let frame = wire::encode(&Wire::Request { id, request });
        if let Err(e) = self.mesh.send(node, Class::Live, key, frame) {
            let Some(reply) = self.pending().remove(id) else { return };
            let (cause, why) = match e {
                SendError::Full(_) => (1, format!("node {node} is not keeping up; retry later")),
                SendError::TooLarge(_) => (3, "the request is too large to forward".to_string()),
                SendError::Down | SendError::UnknownNode => (0, format!("node {node}, which holds it, is down")),
            };
            reply.send(Err(self.unavailable(cause, why)));
        }
    }

    /// An answer came back.
    pub fn answered(&self, from: NodeId, id: u64, result: Result<Outcome, OpError>) {
        // The lock is let go before the reply runs: a reply may forward again.
        let reply = self.pending().answered(from, id);
        if let Some(reply) = reply {
            reply.send(result);
        }
    }

    /// `node` went down: what it was asked will not be answered.
    pub fn down(&self, node: NodeId) {
        let gone = self.pending().down(node);
        for reply in gone {
            reply.send(Err(self.unavailable(0, format!("node {node}, which holds it, went down; retry"))));
        }
    }

    /// Answers `unavailable` to every request past its deadline.
    pub fn sweep(&self, now: Instant) {
        let late = self.pending().expired(now);
        for (node, reply) in late {
            let why = format!("node {node} did not answer in time; retry");
            reply.send(Err(self.unavailable(2, why)));
        }
    }

    /// Requests waiting for their answers (for `/metrics`).
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    /// The reply for a request that `from` sent: its answer goes back on the request's lane.
    pub fn answer_to(&self, from: NodeId, id: u64, key: u64) -> Reply<Outcome> {
        let mesh = self.mesh.clone();
        Reply::new(move |result: Result<Outcome, OpError>| {
            let frame = answer_frame(id, result);
            // Big answers (pages) go in the bulk class, so they never hold up live traffic.
            let class = if frame.len() > 16 << 10 { Class::Bulk } else { Class::Live };
            if let Err(e) = mesh.send(from, class, key, frame) {
                // The asker times out and says unavailable; a stored send is found by dedup.
                tracing::warn!(node = %from, "an answer was not sent: {e}");
            }
        })
    }
}

/// An answer as a frame, a page cut short (with `more`) where it would not fit.
fn answer_frame(id: u64, mut result: Result<Outcome, OpError>) -> bytes::Bytes {
    loop {
        let frame = wire::encode(&Wire::Answer { id, result: result.map_err(Into::into) });
        if frame.len() <= ANSWER_BYTES_MAX {
            return frame;
        }
        let Some(Ok(Wire::Answer { result: r, .. })) = wire::decode(&frame) else { unreachable!("just encoded") };
        result = r.map_err(Into::into).and_then(|o| halve(o).ok_or_else(too_large));
    }
}

fn too_large() -> OpError {
    OpError::new(ErrorCode::TooLarge, "the answer is too large to send between nodes")
}

/// The first half of a page, marked as having more; `None` for what cannot be cut.
fn halve(o: Outcome) -> Option<Outcome> {
    match o {
        Outcome::Range(mut page) if page.messages.len() > 1 => {
            page.messages.truncate(page.messages.len() / 2);
            page.upto = page.messages.last().expect("one left").seq;
            page.more = true;
            Some(Outcome::Range(page))
        }
        Outcome::History(Page::Back(mut page)) if page.messages.len() > 1 => {
            page.messages.truncate(page.messages.len() / 2);
            page.next_before = page.messages.last().map(|m| m.seq);
            Some(Outcome::History(Page::Back(page)))
        }
        Outcome::History(Page::Forward(page)) => match halve(Outcome::Range(page))? {
            Outcome::Range(page) => Some(Outcome::History(Page::Forward(page))),
            _ => None,
        },
        _ => None,
    }
}
