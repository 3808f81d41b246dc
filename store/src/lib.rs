//! Switchboard's store: the log that is the source of truth.
//!
//! Durable first, delivered second: a message is appended and fsynced (group commit) before
//! its `ack` and before any push. Every reliability property of Switchboard (dedup by client
//! id, gap-free per-conversation `seq`, resync by seq, crash safety) rests on this crate.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`ids`] | user, conversation and client message ids; `Seq`, `Offset`, `Position` |
//! | [`limits`] | every `_MAX`, checked against each other at compile time |
//! | [`record`] | the record types and their byte layout |
//! | [`batch`] | the group-commit batch frame, and why a torn tail can be told from corruption |
//! | [`segment`] | segment files named by base offset, their sparse index files |
//! | [`storage`] | the file interface: real files, and a simulated disk with faults |
//! | [`log`] | staging, commit (write + fsync), poison, recovery, reads by location |
//! | [`dedup`] | the dedup index: fingerprint → seq, huge pages, incremental growth |
//! | [`state`] | what a shard rebuilds in memory: sequencers, members, cursors |
//! | [`shard`] | the per-core store: appends, reads, retention, on one log |
//! | [`router`] | which shard owns a conversation |
//! | [`rt`] | the threads that drive shards in production, with group commit |
//!
//! Nothing here knows about sockets or JSON; the edge gives records their wire form.

pub mod anonymous;
pub mod batch;
pub mod dedup;
pub mod error;
pub mod ids;
pub mod limits;
pub mod log;
mod prefetch;
pub mod record;
pub mod router;
pub mod rt;
pub mod segment;
pub mod shard;
pub mod state;
pub mod storage;

pub use error::{Error, Fault, Result};
pub use ids::{ClientId, ConvId, ConvKind, CursorKind, Location, Offset, Position, Seq, UserId};
pub use log::{Fsync, LogConfig, Recovery, RecoveryReads};
pub use shard::{
    Appended, ConvInfo, HistoryPage, InboxEntry, RangePage, Retention, SendRequest, Shard, ShardConfig, StoredMessage,
};
pub use state::MemberSet;
