//! A store shard: the sequencers, dedup, membership, cursors and reads of the conversations
//! that hash to it, over one log. Owned by one thread; no locks.
//!
//! # How to drive it
//!
//! 1. Call the write methods ([`Shard::send`], [`Shard::create`], [`Shard::change_members`],
//!    [`Shard::move_cursor`]) for every request that has arrived. Each validates, assigns seqs
//!    and stages records; its answer is **not yet durable**.
//! 2. Call [`Shard::commit`]: one write and one fsync for everything staged (group commit).
//!    Only after it returns `Ok` may the answers of step 1 be sent (`ack`) or their messages
//!    pushed. If it fails, the shard is poisoned: answer `unavailable` to all of them.
//! 3. Serve reads. Reads see only committed state, so they are served with nothing staged.
//!
//! Requests that arrive during step 2 wait in the caller's queue and form the next batch. A
//! driver that writes asynchronously (io_uring) splits step 2 into [`Shard::begin_commit`] and
//! [`Shard::finish_commit`] and runs step 1 for the next batch in between.

use crate::error::{Error, Result};
use crate::ids::{ClientId, ConvId, ConvKind, CursorKind, Seq, UserId};
use crate::limits::*;
use crate::log::{recovery_helpers_pay, Log, LogConfig, Recovery};
use crate::record::{ConvRecord, CursorRecord, MemberChange, MembersRecord, MessageRecord, Record};
use crate::state::{Conv, MemberSet, State};
use crate::storage::{FsStorage, Storage};
use bytes::Bytes;
use std::path::PathBuf;

/// A shard's configuration.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub log: LogConfig,
    pub retention: Retention,
    /// From this log size on, recovery rebuilds the dedup index on a helper thread while it
    /// parses and replays the log, if `log.recovery_helpers` allows helpers at all.
    pub parallel_dedup_rebuild_bytes_min: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            log: LogConfig::default(),
            retention: Retention::default(),
            parallel_dedup_rebuild_bytes_min: 64 << 20,
        }
    }
}

/// Which sealed segments [`Shard::retain`] deletes. `None` keeps everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Delete sealed segments whose newest record is older than this.
    pub age_ms_max: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub bytes_max: Option<u64>,
}

/// A message to append.
#[derive(Clone, Copy, Debug)]
pub struct SendRequest<'a> {
    pub conv: &'a ConvId,
    pub sender: &'a UserId,
    /// The client's message id, 1 to 64 bytes: the deduplication key.
    pub client_id: &'a [u8],
    /// `text` unless the client says otherwise; `system` is reserved for the server.
    pub kind: &'a str,
    /// Stored verbatim (PROTOCOL.md: the JSON text of the `body` value).
    pub body: &'a [u8],
    pub ts_ms: u64,
}

/// The answer to an append. Durable only once the following `commit` succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    pub seq: Seq,
    pub ts_ms: u64,
    /// This client id was already stored: `seq` and `ts_ms` are the original's.
    pub dup: bool,
}

/// A stored message as read back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    pub seq: Seq,
    pub ts_ms: u64,
    pub sender: String,
    /// Empty for system messages.
    pub client_id: Vec<u8>,
    pub kind: String,
    pub body: Bytes,
}

/// One page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// Pass as `before` for the next (older) page; `None` at the oldest retained message.
    pub next_before: Option<Seq>,
}

/// One forward page for resync: `gap`, then `messages` in seq order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RangePage {
    /// Seqs `from..=to` are gone (retention) and will never arrive.
    pub gap: Option<(Seq, Seq)>,
    pub messages: Vec<StoredMessage>,
    /// The last seq this page covers (the gap included): the next `after`.
    pub upto: Seq,
    pub head: Seq,
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvInfo {
    pub kind: ConvKind,
    pub title: String,
    pub owner: String,
    pub head: Seq,
    pub floor: Seq,
    pub members_count: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxEntry {
    pub conv: String,
    pub kind: ConvKind,
    pub head: Seq,
    pub delivered: Seq,
    pub read: Seq,
}

/// What one retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub conversations_carried: usize,
}

pub struct Shard<S: Storage> {
    log: Log<S>,
    state: State,
    retention: Retention,
}

/// For sizing tables at open: a 100-byte message takes about this much log.
const AVERAGE_RECORD_BYTES_GUESS: u64 = 160;

fn system_body(change: MemberChange, user: &str) -> String {
    let event = match change {
        MemberChange::Added => "member_added",
        MemberChange::Removed => "member_removed",
    };
    // User ids are [A-Za-z0-9._@-]: nothing to escape.
    format!(r#"{{"event":"{event}","user":"{user}"}}"#)
}

impl Shard<FsStorage> {
    /// Opens the shards in `dirs` all at once, a thread each, as the daemon does (a restart
    /// takes as long as the largest shard, not the sum of them), with recovery's helper threads
    /// only where cores are left over for them ([`recovery_helpers_pay`]).
    pub fn open_at_once(dirs: &[PathBuf], config: &ShardConfig) -> Result<Vec<(Shard<FsStorage>, Recovery)>> {
        let mut config = config.clone();
        config.log.recovery_helpers = recovery_helpers_pay(dirs.len());
        std::thread::scope(|threads| {
            let opening: Vec<_> = dirs
                .iter()
                .map(|dir| {
                    let config = config.clone();
                    threads.spawn(move || Shard::open(FsStorage::open(dir)?, config))
                })
                .collect();
            opening.into_iter().map(|o| o.join().expect("a shard's recovery panicked")).collect()
        })
    }
}

impl<S: Storage> Shard<S> {
    /// Opens the shard's log, rebuilding all state from it.
    pub fn open(mut storage: S, config: ShardConfig) -> Result<(Shard<S>, Recovery)> {
        let mut state = State::default();
        // Size the dedup table once for the log's records, instead of rehashing all the way up.
        let mut log_bytes = 0;
        for name in storage.list()? {
            if crate::segment::parse_log_name(&name).is_some() {
                log_bytes += storage.len(&name)?;
            }
        }
        state.reserve((log_bytes / AVERAGE_RECORD_BYTES_GUESS) as usize);
        if config.log.recovery_helpers && log_bytes >= config.parallel_dedup_rebuild_bytes_min {
            state.dedup.build_in_background();
        }
        let (log, recovery) = Log::open(storage, config.log, &mut state)?;
        state.finish_replay();
        state.check_complete()?;
        Ok((Shard { log, state, retention: config.retention }, recovery))
    }

    /// Commits everything staged: one write, one fsync. See the module doc.
    pub fn commit(&mut self) -> Result<u32> {
        self.log.commit()
    }

    /// The two halves of `commit`, for a driver that does the write and fsync itself
    /// (io_uring) and stages the next batch meanwhile: see [`Log::begin_commit`].
    pub fn begin_commit(&mut self) -> Result<Option<crate::log::Flush>> {
        self.log.begin_commit()
    }

    pub fn finish_commit(&mut self, result: std::io::Result<()>) -> Result<u32> {
        self.log.finish_commit(result)
    }

    /// Background work for a shard with nothing else to do: a step of the dedup table's
    /// migration, if one runs. Returns whether there is more.
    pub fn idle_work(&mut self) -> bool {
        self.state.dedup.migrate_idle()
    }

    /// Whether enough is staged that waiting for more requests is pointless.
    pub fn wants_commit(&self) -> bool {
        self.log.pending_bytes() >= COMMIT_BYTES_TARGET
    }

    pub fn staged_count(&self) -> u32 {
        self.log.pending_count()
    }

    fn conv(&self, conv: &ConvId) -> Result<&Conv> {
        self.state.get(conv.as_str()).ok_or(Error::NotFound)
    }

    fn slot(&self, conv: &ConvId) -> Result<u32> {
        self.state.slot(conv.as_str()).ok_or(Error::NotFound)
    }

    /// Appends a message, or returns the original for a retried client id.
    pub fn send(&mut self, req: SendRequest<'_>) -> Result<Appended> {
        self.send_with(req, None)
    }

    /// `send`, given what `prefetch` already computed for this request: the hash of its
    /// conversation id and its dedup fingerprint.
    fn send_with(&mut self, req: SendRequest<'_>, known: Option<(u64, u64)>) -> Result<Appended> {
        // Before the dedup lookup, which would answer a retry `dup` (or, for a message of the
        // failed batch, `Corrupt`) from a store that has stopped (found by sequencer_ops).
        if self.log.is_poisoned() {
            return Err(Error::Poisoned("writes stop after a failed write or fsync, until restart".into()));
        }
        if req.body.len() > BODY_BYTES_MAX {
            return Err(Error::TooLarge("body"));
        }
        ClientId::check(req.client_id).map_err(|e| Error::BadRequest(e.to_string()))?;
        if req.kind.is_empty() || req.kind.len() > KIND_BYTES_MAX || req.kind == "system" {
            return Err(Error::BadRequest(format!("kind must be 1 to {KIND_BYTES_MAX} bytes and not \"system\"")));
        }
        let hash = known.map_or_else(|| self.state.conv_hash(req.conv.as_str()), |k| k.0);
        let slot = match self.state.slot_hashed(hash, req.conv.as_str()) {
            Some(slot) => slot,
            None => self.create_dm_for(req.conv, req.sender, req.ts_ms)?,
        };
        let conv = self.state.at(slot);
        if !conv.is_member_of(req.conv.as_str(), req.sender.as_str()) {
            return Err(Error::Forbidden("not a member of this conversation"));
        }
        let fp = match known {
            Some((_, fp)) => fp,
            None => self.state.dedup.fingerprint(req.conv.as_str(), req.sender.as_str(), req.client_id),
        };
        if self.state.dedup.has(fp) {
            for seq in self.state.dedup.candidates(fp) {
                let Some(m) = self.read_one(req.conv, seq)? else { continue };
                if m.sender == req.sender.as_str() && m.client_id == req.client_id {
                    if m.body != req.body || m.kind != req.kind {
                        return Err(Error::Conflict);
                    }
                    return Ok(Appended { seq, ts_ms: m.ts_ms, dup: true });
                }
            }
        }
        let conv = self.state.at(slot);
        let seq = Seq(conv.head.0 + 1);
        let rec = Record::Message(MessageRecord {
            conv: req.conv.as_str(),
            seq,
            ts_ms: req.ts_ms,
            prev: conv.head_location,
            sender: req.sender.as_str(),
            client_id: req.client_id,
            kind: req.kind,
            body: req.body,
            effect: None,
        });
        let location = self.log.stage(&rec, req.ts_ms)?;
        self.state.at_mut(slot).advance(seq, location);
        if !cfg!(feature = "sim-bug-no-dedup") {
            self.state.dedup.insert(fp, seq);
        }
        Ok(Appended { seq, ts_ms: req.ts_ms, dup: false })
    }

    /// Appends many messages, exactly as `send` one by one, while asking the memory ahead for
    /// what the next few will touch (their conversation, their dedup slot): the cache misses
    /// of a group overlap instead of being paid one after another.
    pub fn send_many(&mut self, reqs: &[SendRequest<'_>], out: &mut Vec<Result<Appended>>) {
        const AHEAD: usize = 4;
        let mut ahead = std::collections::VecDeque::with_capacity(AHEAD + 1);
        for r in reqs.iter().take(AHEAD) {
            ahead.push_back(self.prefetch(r));
        }
        for (i, &req) in reqs.iter().enumerate() {
            if let Some(r) = reqs.get(i + AHEAD) {
                ahead.push_back(self.prefetch(r));
            }
            let known = ahead.pop_front();
            out.push(self.send_with(req, known));
        }
    }

    /// Asks for what a send will touch to be brought into cache, without waiting for it;
    /// returns the hashes it computed (conversation id, dedup fingerprint) so the send need not
    /// compute them again.
    fn prefetch(&self, req: &SendRequest<'_>) -> (u64, u64) {
        let hash = self.state.conv_hash(req.conv.as_str());
        self.state.prefetch_conv(hash);
        let fp = self.state.dedup.fingerprint(req.conv.as_str(), req.sender.as_str(), req.client_id);
        self.state.dedup.prefetch(fp);
        (hash, fp)
    }

    /// A dm conversation exists implicitly: the first send by one of its two users creates it.
    fn create_dm_for(&mut self, conv: &ConvId, sender: &UserId, ts_ms: u64) -> Result<u32> {
        match conv.dm_members() {
            Some((a, b)) if &a == sender || &b == sender => self.create(conv, ConvKind::Dm, "", sender, &[a, b], ts_ms),
            Some(_) => Err(Error::Forbidden("not a member of this conversation")),
            None => Err(Error::NotFound),
        }
    }

    /// Creates a conversation with `owner` and `members` (no seqs: creation is not a message).
    pub fn create(
        &mut self,
        conv: &ConvId,
        kind: ConvKind,
        title: &str,
        owner: &UserId,
        members: &[UserId],
        ts_ms: u64,
    ) -> Result<u32> {
        if self.state.slot(conv.as_str()).is_some() {
            return Err(Error::BadRequest(format!("conversation {conv} already exists")));
        }
        if title.len() > TITLE_BYTES_MAX {
            return Err(Error::TooLarge("title"));
        }
        let mut all: Vec<&str> = members.iter().map(UserId::as_str).chain([owner.as_str()]).collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > CREATE_MEMBERS_MAX {
            return Err(Error::TooLarge("member list"));
        }
        let dm = conv.dm_members();
        if (kind == ConvKind::Dm) != dm.is_some() {
            return Err(Error::BadRequest("dm conversations are named dm:<a>:<b> and only they".into()));
        }
        if let Some((a, b)) = dm {
            if all != [a.as_str(), b.as_str()] && !(a == b && all == [a.as_str()]) {
                return Err(Error::BadRequest("a dm has exactly its two users as members".into()));
            }
        }
        let rec = ConvRecord {
            conv: conv.as_str(),
            kind,
            ts_ms,
            floor: Seq(1),
            head: Seq(0),
            head_location: None,
            owner: owner.as_str(),
            title,
        };
        let at = self.log.stage(&Record::Conv(rec), ts_ms)?;
        self.log.stage(&Record::Members(MembersRecord { conv: conv.as_str(), users: all.clone() }), ts_ms)?;
        let slot = self.state.apply_conv(&rec, at.offset);
        for u in all {
            self.state.add_member(slot, u);
        }
        Ok(slot)
    }

    /// Adds and removes members; each change is a sequenced `system` message. Changes that
    /// would do nothing (adding a member, removing a non-member) are skipped.
    pub fn change_members(
        &mut self,
        conv: &ConvId,
        actor: &UserId,
        add: &[UserId],
        remove: &[UserId],
        ts_ms: u64,
    ) -> Result<Vec<(UserId, MemberChange, Appended)>> {
        let slot = self.slot(conv)?;
        if self.state.at(slot).kind == ConvKind::Dm {
            return Err(Error::Forbidden("dm membership cannot change"));
        }
        let mut done = Vec::new();
        let changes =
            add.iter().map(|u| (u, MemberChange::Added)).chain(remove.iter().map(|u| (u, MemberChange::Removed)));
        for (user, change) in changes {
            let c = self.state.at(slot);
            let member = c.is_member(user.as_str());
            if member == (change == MemberChange::Added) {
                continue;
            }
            let seq = Seq(c.head.0 + 1);
            let body = system_body(change, user.as_str());
            let rec = Record::Message(MessageRecord {
                conv: conv.as_str(),
                seq,
                ts_ms,
                prev: c.head_location,
                sender: actor.as_str(),
                client_id: b"",
                kind: "system",
                body: body.as_bytes(),
                effect: Some((change, user.as_str())),
            });
            let location = self.log.stage(&rec, ts_ms)?;
            self.state.at_mut(slot).advance(seq, location);
            match change {
                MemberChange::Added => self.state.add_member(slot, user.as_str()),
                MemberChange::Removed => self.state.remove_member(slot, user.as_str()),
            }
            done.push((user.clone(), change, Appended { seq, ts_ms, dup: false }));
        }
        Ok(done)
    }

    /// Moves a member's delivered or read cursor forward. Returns `false` (and stores nothing)
    /// when `seq` is not beyond the stored cursor: cursors are monotonic.
    pub fn move_cursor(&mut self, conv: &ConvId, user: &UserId, kind: CursorKind, seq: Seq) -> Result<bool> {
        let slot = self.slot(conv)?;
        let c = self.state.at(slot);
        if !c.is_member(user.as_str()) {
            return Err(Error::Forbidden("not a member of this conversation"));
        }
        if seq > c.head {
            return Err(Error::BadRequest(format!("seq {} is beyond the conversation's head {}", seq.0, c.head.0)));
        }
        let (delivered, read) = c.cursor(user.as_str());
        let current = if kind == CursorKind::Delivered { delivered } else { read };
        if seq <= current {
            return Ok(false);
        }
        let rec = CursorRecord { conv: conv.as_str(), user: user.as_str(), kind, seq };
        self.log.stage(&Record::Cursor(rec), 0)?;
        self.state.replay_cursor(slot, &rec);
        Ok(true)
    }

    fn check_readable(&self) -> Result<()> {
        assert_eq!(self.log.pending_count(), 0, "reads see only committed state: commit first");
        assert!(!self.log.is_flushing(), "reads see only committed state: finish the commit first");
        if self.log.is_poisoned() {
            return Err(Error::Poisoned("reads stop with writes until restart".into()));
        }
        Ok(())
    }

    pub fn conv_info(&self, conv: &ConvId) -> Result<ConvInfo> {
        let c = self.conv(conv)?;
        Ok(ConvInfo {
            kind: c.kind,
            title: c.title.to_string(),
            owner: c.owner.to_string(),
            head: c.head,
            floor: c.floor,
            members_count: c.members.len(),
        })
    }

    /// The conversation's kind and its members as a shared set, for fan-out: copied once per
    /// membership change, not per message. Reflects everything staged so far.
    pub fn audience(&mut self, conv: &ConvId) -> Result<(ConvKind, std::sync::Arc<MemberSet>)> {
        let slot = self.slot(conv)?;
        let c = self.state.at_mut(slot);
        Ok((c.kind, c.members_snapshot()))
    }

    pub fn is_member(&self, conv: &ConvId, user: &UserId) -> bool {
        self.state.get(conv.as_str()).is_some_and(|c| c.is_member(user.as_str()))
    }

    /// Members, sorted.
    pub fn members(&self, conv: &ConvId) -> Result<Vec<String>> {
        let mut m: Vec<String> = self.conv(conv)?.members.iter().map(|u| u.to_string()).collect();
        m.sort_unstable();
        Ok(m)
    }

    pub fn cursor(&self, conv: &ConvId, user: &UserId) -> Result<(Seq, Seq)> {
        Ok(self.conv(conv)?.cursor(user.as_str()))
    }

    /// The user's conversations on this shard with head and cursors, sorted by conversation.
    pub fn inbox(&self, user: &UserId) -> Vec<InboxEntry> {
        let mut out: Vec<InboxEntry> = self
            .state
            .conversations_of(user.as_str())
            .map(|c| {
                let (delivered, read) = c.cursor(user.as_str());
                InboxEntry { conv: c.id.to_string(), kind: c.kind, head: c.head, delivered, read }
            })
            .collect();
        out.sort_by(|a, b| a.conv.cmp(&b.conv));
        out
    }

    /// [`Shard::inbox`], keeping only conversations whose newest retained message is newer
    /// than `after_ts_ms` (one record read per conversation of the user).
    pub fn inbox_since(&mut self, user: &UserId, after_ts_ms: u64) -> Result<Vec<InboxEntry>> {
        self.check_readable()?;
        let mut out = self.inbox(user);
        let mut keep = Vec::with_capacity(out.len());
        for e in out.drain(..) {
            let conv = ConvId::new(&e.conv).expect("stored ids are valid");
            if self.read_one(&conv, e.head)?.is_some_and(|m| m.ts_ms > after_ts_ms) {
                keep.push(e);
            }
        }
        Ok(keep)
    }

    fn check_reader(&self, conv: &ConvId, reader: Option<&UserId>) -> Result<()> {
        let c = self.conv(conv)?;
        match reader {
            Some(u) if !c.is_member(u.as_str()) => Err(Error::Forbidden("not a member of this conversation")),
            _ => Ok(()),
        }
    }

    /// Reads seqs `top` down to `bottom` (inclusive, newest first) by walking the chain of
    /// `prev` pointers from the nearest known location at or above `top`: at most
    /// `top - bottom + CHECKPOINT_EVERY` record reads, never a scan.
    fn read_down(&mut self, conv: &ConvId, top: Seq, bottom: Seq) -> Result<Vec<StoredMessage>> {
        let c = self.conv(conv)?;
        debug_assert!(bottom >= c.floor && top <= c.head && bottom <= top);
        let Some((mut seq, mut at)) = c.start_for(top) else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity((top.0 - bottom.0 + 1) as usize);
        loop {
            let rec = self.log.read(at)?;
            let m = match rec {
                Record::Message(m) if m.conv == conv.as_str() && m.seq == seq => m,
                _ => {
                    return Err(Error::corrupt(
                        "log",
                        at.position.0,
                        format!("expected {conv} seq {} at offset {}", seq.0, at.offset.0),
                    ))
                }
            };
            if seq <= top {
                out.push(StoredMessage {
                    seq,
                    ts_ms: m.ts_ms,
                    sender: m.sender.to_string(),
                    client_id: m.client_id.to_vec(),
                    kind: m.kind.to_string(),
                    body: Bytes::copy_from_slice(m.body),
                });
            }
            if seq <= bottom {
                return Ok(out);
            }
            match m.prev {
                Some(prev) => at = prev,
                None => {
                    return Err(Error::corrupt(
                        "log",
                        at.position.0,
                        format!("{conv} seq {} has no predecessor", seq.0),
                    ))
                }
            }
            seq.0 -= 1;
        }
    }

    /// One message by seq, or `None` if it is below the floor or beyond the head.
    fn read_one(&mut self, conv: &ConvId, seq: Seq) -> Result<Option<StoredMessage>> {
        let c = self.conv(conv)?;
        if seq < c.floor || seq > c.head {
            return Ok(None);
        }
        Ok(self.read_down(conv, seq, seq)?.pop())
    }

    /// History, newest first: up to `limit` messages below `before` (from the head if `None`).
    pub fn history(
        &mut self,
        conv: &ConvId,
        reader: Option<&UserId>,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<HistoryPage> {
        self.check_readable()?;
        self.check_reader(conv, reader)?;
        let c = self.conv(conv)?;
        let limit = limit.clamp(1, PAGE_RECORDS_MAX) as u64;
        let top = match before {
            Some(b) => Seq(b.0.saturating_sub(1).min(c.head.0)),
            None => c.head,
        };
        if top < c.floor || top.0 == 0 {
            return Ok(HistoryPage { messages: Vec::new(), next_before: None });
        }
        let bottom = Seq(top.0.saturating_sub(limit - 1).max(c.floor.0));
        let messages = self.read_down(conv, top, bottom)?;
        let floor = self.conv(conv)?.floor;
        Ok(HistoryPage { messages, next_before: (bottom > floor).then_some(bottom) })
    }

    /// Resync: messages after `after`, oldest first, up to `limit`; a `gap` first if part of
    /// that range is gone.
    pub fn range(&mut self, conv: &ConvId, reader: Option<&UserId>, after: Seq, limit: usize) -> Result<RangePage> {
        self.check_readable()?;
        self.check_reader(conv, reader)?;
        let c = self.conv(conv)?;
        let (head, floor) = (c.head, c.floor);
        let limit = limit.clamp(1, PAGE_RECORDS_MAX) as u64;
        let mut from = Seq(after.0 + 1);
        let mut gap = None;
        if from < floor {
            gap = Some((from, Seq(floor.0 - 1)));
            from = floor;
        }
        if from > head {
            let upto = Seq(head.0.max(after.0));
            return Ok(RangePage { gap, messages: Vec::new(), upto, head, more: false });
        }
        let upto = Seq((from.0 + limit - 1).min(head.0));
        let mut messages = self.read_down(conv, upto, from)?;
        messages.reverse();
        Ok(RangePage { gap, messages, upto, head, more: upto < head })
    }

    /// Deletes sealed segments that the retention policy no longer keeps. Conversations whose
    /// metadata lived there are carried forward first (a snapshot, committed before anything is
    /// deleted), so membership, cursors and floors survive; deleted seqs become a `gap`.
    pub fn retain(&mut self, now_ms: u64) -> Result<RetentionReport> {
        self.check_readable()?;
        let sealed = self.log.sealed_segments();
        let mut total = self.log.total_bytes();
        let mut count = 0;
        for s in sealed {
            let old = self.retention.age_ms_max.is_some_and(|age| s.max_ts_ms.saturating_add(age) < now_ms);
            let big = self.retention.bytes_max.is_some_and(|max| total > max);
            if !(old || big) {
                break;
            }
            total -= s.len;
            count += 1;
        }
        if count == 0 {
            return Ok(RetentionReport::default());
        }
        let cut = self.log.sealed_segments()[count - 1].end;
        let bytes_deleted: u64 = self.log.sealed_segments()[..count].iter().map(|s| s.len).sum();
        // Forget what the deleted segments hold: floors rise, dedup entries go.
        // slot → the new floor; records come in log order, so the last seen is the highest.
        let mut floors: ahash::HashMap<u32, Seq> = Default::default();
        let mut gone: Vec<(u64, Seq)> = Vec::new();
        for i in 0..count {
            let state = &self.state;
            self.log.scan_segment(i, |_, rec| {
                if let Record::Message(m) = rec {
                    if let Some(slot) = state.slot(m.conv) {
                        floors.insert(slot, Seq(m.seq.0 + 1));
                    }
                    let dedup = &state.dedup;
                    if !m.client_id.is_empty() {
                        gone.push((dedup.fingerprint(m.conv, m.sender, m.client_id), m.seq));
                    }
                }
            })?;
        }
        // Carry forward every conversation whose metadata is in the deleted range.
        let carried: Vec<u32> = (0..self.state.conversations().count() as u32)
            .filter(|&slot| self.state.at(slot).meta_since < cut)
            .collect();
        for (&slot, &floor) in &floors {
            self.state.at_mut(slot).raise_floor(floor);
        }
        for &slot in &carried {
            self.stage_snapshot(slot, now_ms)?;
        }
        self.log.commit()?;
        for (fp, seq) in gone {
            self.state.dedup.remove(fp, seq);
        }
        self.log.drop_front(count)?;
        Ok(RetentionReport { segments_deleted: count, bytes_deleted, conversations_carried: carried.len() })
    }

    /// Stages one conversation's whole state: a conversation record, its members, its cursors.
    fn stage_snapshot(&mut self, slot: u32, now_ms: u64) -> Result<()> {
        let c = self.state.at(slot);
        let id = &*c.id;
        let rec = ConvRecord {
            conv: id,
            kind: c.kind,
            ts_ms: now_ms,
            floor: c.floor,
            head: c.head,
            head_location: c.head_location,
            owner: &c.owner,
            title: &c.title,
        };
        let at = self.log.stage(&Record::Conv(rec), now_ms)?;
        let mut members: Vec<&str> = c.members.iter().map(|m| &**m).collect();
        members.sort_unstable();
        for chunk in members.chunks(MEMBERS_PER_RECORD_MAX) {
            self.log.stage(&Record::Members(MembersRecord { conv: id, users: chunk.to_vec() }), now_ms)?;
        }
        for (user, &(delivered, read)) in &c.cursors {
            for (kind, seq) in [(CursorKind::Delivered, delivered), (CursorKind::Read, read)] {
                if seq.0 > 0 {
                    self.log.stage(&Record::Cursor(CursorRecord { conv: id, user, kind, seq }), now_ms)?;
                }
            }
        }
        self.state.at_mut(slot).meta_since = at.offset;
        Ok(())
    }

    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    pub fn log_mut(&mut self) -> &mut Log<S> {
        &mut self.log
    }

    pub fn state(&self) -> &State {
        &self.state
    }
}
