//! Every limit of the store, in one place (TigerBeetle style), with the relations between them
//! checked at compile time.

use crate::ids::{CLIENT_ID_BYTES_MAX, CONV_ID_BYTES_MAX, USER_ID_BYTES_MAX};

/// Largest message body stored (PROTOCOL.md `message_bytes_max` can be configured lower).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest message `kind` string.
pub const KIND_BYTES_MAX: usize = 32;
/// Longest conversation title.
pub const TITLE_BYTES_MAX: usize = 1024;
/// Members named in one create call (more are added afterwards as sequenced changes).
pub const CREATE_MEMBERS_MAX: usize = 1000;
/// Users named in one members record (creation and retention snapshots use several).
pub const MEMBERS_PER_RECORD_MAX: usize = 1000;
/// Records of one sync or history page.
pub const PAGE_RECORDS_MAX: usize = 1000;
/// A batch above this is never written nor accepted on read. Large because a retention
/// snapshot of a big channel must be atomic, and so one batch.
pub const BATCH_BYTES_MAX: usize = 512 << 20;
/// Once the pending batch holds this much, the shard commits without waiting for more.
pub const COMMIT_BYTES_TARGET: usize = 4 << 20;
/// Every `CHECKPOINT_EVERY`-th seq of a conversation is remembered in memory, so that reaching
/// any seq costs at most this many record reads.
pub const CHECKPOINT_EVERY: u64 = 16;

/// The largest record the store writes: a message with every field at its maximum.
pub const RECORD_BYTES_MAX: usize = crate::record::RECORD_HEADER_BYTES
    + 8 * 4
    + 1
    + 5
    + CONV_ID_BYTES_MAX
    + USER_ID_BYTES_MAX * 2
    + CLIENT_ID_BYTES_MAX
    + KIND_BYTES_MAX
    + BODY_BYTES_MAX;

const _: () = assert!(CONV_ID_BYTES_MAX <= u8::MAX as usize, "ids are stored as short strings");
const _: () = assert!(KIND_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(RECORD_BYTES_MAX * 2 < COMMIT_BYTES_TARGET);
const _: () = assert!(COMMIT_BYTES_TARGET + RECORD_BYTES_MAX < BATCH_BYTES_MAX);
const _: () = assert!(MEMBERS_PER_RECORD_MAX * (USER_ID_BYTES_MAX + 1) < BODY_BYTES_MAX * 2);
const _: () = assert!(MEMBERS_PER_RECORD_MAX <= u16::MAX as usize);
const _: () = assert!(CREATE_MEMBERS_MAX <= MEMBERS_PER_RECORD_MAX);
