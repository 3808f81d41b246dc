//! The conversation operations as data: what a connection or a REST call asks of a
//! conversation's owner ([`Request`]) and what comes back ([`Outcome`]).
//!
//! [`super::ops::apply`] is the one function that runs a request on the node that owns the
//! conversation. Whether the request came from a shard of this process or across the
//! backplane from another node changes only the carrier: a local call, or a frame on the
//! mesh (`crate::cluster::route`). Nothing here holds a socket, a clock or a process-local
//! pointer, so the same values can be sent, logged, or driven by a simulator.

use super::ops::OpError;
use super::ConnRef;
use crate::proto::ErrorCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_backplane::NodeId;
use switchboard_store::{
    Appended, ConvId, ConvInfo, ConvKind, CursorKind, HistoryPage, InboxEntry, RangePage, Seq, UserId,
};

/// The connection a request came from, on whichever node: it gets the `ack`, not the `msg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node: u16,
    pub conn: ConnRef,
}

impl Origin {
    pub fn new(node: NodeId, conn: ConnRef) -> Origin {
        Origin { node: node.0, conn }
    }
}

/// One operation on one conversation (or, for `Inbox`, `Subscribe` and `Unsubscribe`, on a
/// user's conversations held by the node that gets it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// `send` or `POST …/messages`: answered with [`Outcome::Appended`] once durable.
    Send {
        conv: ConvId,
        sender: UserId,
        id: String,
        body: Bytes,
        kind: String,
        except: Option<Origin>,
    },
    /// A delivered or read cursor moves.
    Receipt {
        conv: ConvId,
        user: UserId,
        seq: Seq,
        kind: CursorKind,
        except: Origin,
    },
    /// Checked against membership, forwarded to online members, never stored.
    Typing {
        conv: ConvId,
        user: UserId,
        except: Origin,
    },
    /// One forward page after `after`; `reader: None` is a node filling a gap, not a user.
    Sync {
        conv: ConvId,
        reader: Option<UserId>,
        after: Seq,
        limit: u16,
    },
    /// The user's conversations held on the node that gets it, all its store shards together.
    Inbox {
        user: UserId,
        after_ts: Option<u64>,
    },
    /// The asking node has the user connected: from now on it gets every committed message
    /// of the user's conversations held here. Answered as `Inbox { after_ts: None }`.
    Subscribe {
        user: UserId,
    },
    /// The asking node's last connection of the user closed.
    Unsubscribe {
        user: UserId,
    },
    /// `open` of a channel: allowed for members; answers the kind.
    Open {
        conv: ConvId,
        user: UserId,
    },
    Create {
        conv: ConvId,
        kind: ConvKind,
        title: String,
        owner: UserId,
        members: Vec<UserId>,
    },
    Members {
        conv: ConvId,
        actor: UserId,
        admin: bool,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    },
    Info {
        conv: ConvId,
        user: UserId,
        admin: bool,
    },
    History {
        conv: ConvId,
        reader: Option<UserId>,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u16,
    },
    /// For the node holding the user's registry entry: the asking node has them connected.
    Register {
        user: UserId,
    },
    /// The asking node's last connection of the user closed at `at_ms`.
    Unregister {
        user: UserId,
        at_ms: u64,
    },
    /// Online and last-seen of users whose registry entries the node holds.
    Presence {
        users: Vec<UserId>,
    },
}

impl Request {
    /// Every type's name (the frame type or REST call, for metrics), in [`Request::kind`]
    /// order.
    pub const NAMES: [&'static str; 15] = [
        "send",
        "receipt",
        "typing",
        "sync",
        "inbox",
        "subscribe",
        "unsubscribe",
        "open",
        "create",
        "members",
        "info",
        "history",
        "register",
        "unregister",
        "presence",
    ];

    /// Which of [`Request::NAMES`] it is (an index, for counters kept per type).
    pub fn kind(&self) -> usize {
        match self {
            Request::Send { .. } => 0,
            Request::Receipt { .. } => 1,
            Request::Typing { .. } => 2,
            Request::Sync { .. } => 3,
            Request::Inbox { .. } => 4,
            Request::Subscribe { .. } => 5,
            Request::Unsubscribe { .. } => 6,
            Request::Open { .. } => 7,
            Request::Create { .. } => 8,
            Request::Members { .. } => 9,
            Request::Info { .. } => 10,
            Request::History { .. } => 11,
            Request::Register { .. } => 12,
            Request::Unregister { .. } => 13,
            Request::Presence { .. } => 14,
        }
    }

    /// Whether it stages records on its owner, and so is answered only after a group commit
    /// (the others read committed state).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Request::Send { .. } | Request::Receipt { .. } | Request::Create { .. } | Request::Members { .. }
        )
    }

    /// The conversation it is about, which decides its owner; `None` for the per-user ones,
    /// which go to every store node.
    pub fn conv(&self) -> Option<&ConvId> {
        match self {
            Request::Send { conv, .. }
            | Request::Receipt { conv, .. }
            | Request::Typing { conv, .. }
            | Request::Sync { conv, .. }
            | Request::Open { conv, .. }
            | Request::Create { conv, .. }
            | Request::Members { conv, .. }
            | Request::Info { conv, .. }
            | Request::History { conv, .. } => Some(conv),
            Request::Inbox { .. }
            | Request::Subscribe { .. }
            | Request::Unsubscribe { .. }
            | Request::Register { .. }
            | Request::Unregister { .. }
            | Request::Presence { .. } => None,
        }
    }

    /// What orders it on the mesh: requests with the same key travel on one stream, in order.
    /// A conversation's requests share its key with its deliveries; a user's per-user requests
    /// share the user's (so an `Unsubscribe` never overtakes its `Subscribe`).
    pub fn lane_key(&self) -> u64 {
        match self {
            Request::Inbox { user, .. }
            | Request::Subscribe { user }
            | Request::Unsubscribe { user }
            | Request::Register { user }
            | Request::Unregister { user, .. } => lane_key(user.as_str()),
            Request::Presence { users } => users.first().map_or(0, |u| lane_key(u.as_str())),
            other => lane_key(other.conv().expect("the others name a conversation").as_str()),
        }
    }
}

/// A stable key for a conversation's or user's stream on the mesh (FNV-1a).
pub fn lane_key(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// One member change that `Request::Members` applied: user, event, its seq.
pub type Change = (String, String, u64);

/// A page of history: newest first below `before`, or oldest first after `after`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Page {
    Back(HistoryPage),
    Forward(RangePage),
}

/// What a request produced on its owner.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Appended(Appended),
    /// Done, with nothing to say (`receipt`, `typing`, `create`, `Unsubscribe`).
    Done,
    Range(RangePage),
    Inbox(Vec<InboxEntry>),
    Kind(ConvKind),
    Info(ConvInfo),
    Changes(Vec<Change>),
    History(Page),
    /// Per user asked: online, last seen.
    Presence(Vec<(bool, Option<u64>)>),
}

/// Each caller wants one kind of outcome; an owner that answered another kind is a bug on one
/// of the two nodes, and the caller hears `internal`.
macro_rules! outcome_into {
    ($($t:ty => $v:ident),*) => {$(
        impl TryFrom<Outcome> for $t {
            type Error = OpError;
            fn try_from(o: Outcome) -> Result<$t, OpError> {
                match o {
                    Outcome::$v(x) => Ok(x),
                    other => Err(wrong(&other)),
                }
            }
        }
    )*};
}
outcome_into!(Appended => Appended, RangePage => Range, Vec<InboxEntry> => Inbox, ConvKind => Kind,
    ConvInfo => Info, Vec<Change> => Changes, Page => History, Vec<(bool, Option<u64>)> => Presence);

impl TryFrom<Outcome> for () {
    type Error = OpError;
    fn try_from(o: Outcome) -> Result<(), OpError> {
        match o {
            Outcome::Done => Ok(()),
            other => Err(wrong(&other)),
        }
    }
}

fn wrong(o: &Outcome) -> OpError {
    tracing::error!("the owner answered with the wrong kind of outcome: {o:?}");
    OpError::new(ErrorCode::Internal, "the conversation's node answered something unexpected")
}
