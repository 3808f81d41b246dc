//! The in-memory state a shard rebuilds from its log: conversations (sequencer heads, floors,
//! members, cursors, a sparse seq index) and the dedup index.
//!
//! # Memory cost (x86-64, measured by `switchboard-bench store` and stated in docs/store.md)
//!
//! - Per stored message: one dedup entry (16 B at a load between 40% and 80%: 20 to 40 B, see
//!   [`crate::dedup`]) plus a sparse index entry every [`CHECKPOINT_EVERY`] seqs (16 B / 16 =
//!   1 B), plus the segment index (8 B per 4 KiB of log). About 22 to 42 B per message, and nothing
//!   else: bodies, senders and ids stay on disk.
//! - Per conversation: the 80-byte `Conv`, its 208-byte `ConvDetails` and an index slot, plus per member ~40 B
//!   (member set and the user → conversations index) and per cursor ~56 B.

use crate::dedup::{Dedup, Fingerprinter};
use crate::error::{Error, Result};
use crate::ids::{ConvKind, CursorKind, Location, Offset, Seq};
use crate::limits::CHECKPOINT_EVERY;
use crate::record::{ConvRecord, CursorRecord, MemberChange, Record};
use ahash::{HashMap, HashMapExt, HashSet, HashSetExt, RandomState};
use compact_str::CompactString;
use hashbrown::HashTable;
use std::collections::VecDeque;

/// A conversation's members, as handed to fan-out.
pub type MemberSet = HashSet<Box<str>>;

/// One conversation's sequencer and metadata.
///
/// What an append touches (id, kind, head, its location) sits in this small struct, a flat
/// array of which stays in cache; everything else (members, cursors, titles, the checkpoints
/// touched every 16th seq) is behind one pointer, in [`ConvDetails`], reached by `Deref`.
#[derive(Debug)]
pub struct Conv {
    /// Inline up to 24 bytes (`dm:alice:bob`), so the index's compare touches no other memory.
    pub id: CompactString,
    /// The last assigned seq (0: none yet).
    pub head: Seq,
    pub head_location: Option<Location>,
    /// The first retained seq: `floor..=head` can be read; below it is a `gap`.
    pub floor: Seq,
    pub kind: ConvKind,
    /// Seen records but not yet its metadata (only during recovery, before its snapshot).
    provisional: bool,
    details: Box<ConvDetails>,
}

// The hot part's budget: it is what an append reads, for every conversation of the shard.
const _: () = assert!(std::mem::size_of::<Conv>() <= 80);

/// The parts of a conversation that an append does not need.
#[derive(Debug)]
pub struct ConvDetails {
    pub members: HashSet<Box<str>>,
    /// An immutable copy of `members` for fan-out, made on first request after a change and
    /// shared (not copied) by every delivery until the next change.
    members_snapshot: Option<std::sync::Arc<MemberSet>>,
    /// user → (delivered, read).
    pub cursors: HashMap<Box<str>, (Seq, Seq)>,
    pub title: Box<str>,
    pub owner: Box<str>,
    /// The offset of the record that last set this conversation's metadata (creation or
    /// snapshot). Retention must carry the state forward before deleting below it.
    pub meta_since: Offset,
    /// Locations of seqs `checkpoint_first_seq + i * CHECKPOINT_EVERY`.
    checkpoints: VecDeque<Location>,
    checkpoint_first_seq: u64,
}

impl std::ops::Deref for Conv {
    type Target = ConvDetails;
    fn deref(&self) -> &ConvDetails {
        &self.details
    }
}

impl std::ops::DerefMut for Conv {
    fn deref_mut(&mut self) -> &mut ConvDetails {
        &mut self.details
    }
}

impl Conv {
    fn new(rec: &ConvRecord<'_>, at: Offset) -> Conv {
        Conv {
            id: CompactString::new(rec.conv),
            head: rec.head,
            head_location: rec.head_location,
            floor: rec.floor,
            kind: rec.kind,
            provisional: false,
            details: Box::new(ConvDetails {
                members: HashSet::new(),
                members_snapshot: None,
                cursors: HashMap::new(),
                title: rec.title.into(),
                owner: rec.owner.into(),
                meta_since: at,
                checkpoints: VecDeque::new(),
                checkpoint_first_seq: 0,
            }),
        }
    }

    /// Assigns the next seq. Asserted on every assignment: the sequencer is gap-free.
    pub fn advance(&mut self, seq: Seq, location: Location) {
        assert_eq!(seq.0, self.head.0 + 1, "seq must be gap-free");
        self.head = seq;
        self.head_location = Some(location);
        if seq.0.is_multiple_of(CHECKPOINT_EVERY) {
            if self.checkpoints.is_empty() {
                self.checkpoint_first_seq = seq.0;
            }
            self.checkpoints.push_back(location);
        }
    }

    /// The best place to start walking back to `seq`: a known location at or above it.
    pub fn start_for(&self, seq: Seq) -> Option<(Seq, Location)> {
        if seq > self.head || seq < self.floor {
            return None;
        }
        let k = seq.0.div_ceil(CHECKPOINT_EVERY) * CHECKPOINT_EVERY;
        if k < self.head.0 && k >= self.checkpoint_first_seq && !self.checkpoints.is_empty() {
            let i = ((k - self.checkpoint_first_seq) / CHECKPOINT_EVERY) as usize;
            if let Some(&loc) = self.checkpoints.get(i) {
                return Some((Seq(k), loc));
            }
        }
        self.head_location.map(|l| (self.head, l))
    }

    /// Raises the floor (retention) and forgets locations below it.
    pub fn raise_floor(&mut self, floor: Seq) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        if self.floor > self.head {
            self.head_location = None;
        }
        while !self.checkpoints.is_empty() && self.checkpoint_first_seq < floor.0 {
            self.checkpoints.pop_front();
            self.checkpoint_first_seq += CHECKPOINT_EVERY;
        }
    }

    /// The members as a shared, immutable set: cheap to hand to every delivery of a message.
    pub fn members_snapshot(&mut self) -> std::sync::Arc<MemberSet> {
        if self.details.members_snapshot.is_none() {
            let set: MemberSet = match self.id.strip_prefix("dm:").and_then(|rest| rest.split_once(':')) {
                Some((a, b)) if self.kind == ConvKind::Dm => [a, b].into_iter().map(Box::from).collect(),
                _ => self.members.clone(),
            };
            self.details.members_snapshot = Some(std::sync::Arc::new(set));
        }
        self.details.members_snapshot.clone().expect("made above")
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.is_member_of(&self.id, user)
    }

    /// Membership, given this conversation's id (the caller's copy is already in cache): a dm
    /// names both its members in its id, so that needs no lookup at all.
    pub fn is_member_of(&self, id: &str, user: &str) -> bool {
        if self.kind == ConvKind::Dm {
            if let Some((a, b)) = id.strip_prefix("dm:").and_then(|r| r.split_once(':')) {
                return a == user || b == user;
            }
        }
        self.members.contains(user)
    }

    pub fn cursor(&self, user: &str) -> (Seq, Seq) {
        self.cursors.get(user).copied().unwrap_or_default()
    }
}

/// Everything a shard keeps in memory.
#[derive(Default)]
pub struct State {
    /// Conversation id → slot in `convs`. Conversations are never removed, so slots are stable
    /// and a request hashes its conversation id once. The table holds only slots; the id it is
    /// compared with lives in the `Conv` itself, which the caller is about to use anyway: one
    /// cache miss per lookup rather than one for a separate key as well.
    index: HashTable<u32>,
    index_hasher: RandomState,
    convs: Vec<Conv>,
    pub dedup: Dedup,
    /// user → the slots of the conversations they are a member of (for `inbox`).
    user_convs: HashMap<Box<str>, HashSet<u32>>,
}

impl State {
    /// Sizes the tables for a log of about `records` records, so recovery does not rehash.
    pub fn reserve(&mut self, records: usize) {
        self.dedup.reserve(records);
    }

    /// Ends a replay: applies the dedup inserts that recovery queued.
    pub fn finish_replay(&mut self) {
        self.dedup.flush();
    }

    pub fn slot(&self, conv: &str) -> Option<u32> {
        self.slot_hashed(self.conv_hash(conv), conv)
    }

    /// The index's hash of a conversation id, for [`State::prefetch_conv`] and
    /// [`State::slot_hashed`].
    pub fn conv_hash(&self, conv: &str) -> u64 {
        self.index_hasher.hash_one(conv)
    }

    /// `slot`, with the id's hash already computed.
    pub fn slot_hashed(&self, hash: u64, conv: &str) -> Option<u32> {
        self.slot_hashed_bytes(hash, conv.as_bytes())
    }

    /// `slot_hashed`, for an id still in its record's bytes.
    fn slot_hashed_bytes(&self, hash: u64, conv: &[u8]) -> Option<u32> {
        self.index.find(hash, |&slot| self.convs[slot as usize].id.as_bytes() == conv).copied()
    }

    /// Asks for the conversation with this id hash to be brought into cache, without touching
    /// it: every slot whose index tag matches the hash is prefetched (almost always one). A
    /// lookup would compare ids, and so wait for the very miss a prefetch is meant to overlap.
    pub fn prefetch_conv(&self, hash: u64) {
        self.index.find(hash, |&slot| {
            crate::prefetch::read(&self.convs[slot as usize]);
            false
        });
    }

    pub fn get(&self, conv: &str) -> Option<&Conv> {
        self.slot(conv).map(|i| &self.convs[i as usize])
    }

    pub fn at(&self, slot: u32) -> &Conv {
        &self.convs[slot as usize]
    }

    pub fn at_mut(&mut self, slot: u32) -> &mut Conv {
        &mut self.convs[slot as usize]
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Conv> {
        self.convs.iter()
    }

    /// The conversations `user` is a member of.
    pub fn conversations_of(&self, user: &str) -> impl Iterator<Item = &Conv> {
        self.user_convs.get(user).into_iter().flatten().map(|&i| &self.convs[i as usize])
    }

    fn insert(&mut self, conv: Conv) -> u32 {
        let slot = u32::try_from(self.convs.len()).expect("more than 4 billion conversations in one shard");
        let hash = self.index_hasher.hash_one(conv.id.as_str());
        let (convs, hasher) = (&self.convs, &self.index_hasher);
        self.index.insert_unique(hash, slot, |&s| hasher.hash_one(convs[s as usize].id.as_str()));
        self.convs.push(conv);
        slot
    }

    pub fn add_member(&mut self, slot: u32, user: &str) {
        let c = &mut self.convs[slot as usize];
        c.members_snapshot = None;
        if c.members.insert(user.into()) {
            self.user_convs.entry(user.into()).or_default().insert(slot);
        }
    }

    pub fn remove_member(&mut self, slot: u32, user: &str) {
        let c = &mut self.convs[slot as usize];
        c.members_snapshot = None;
        c.members.remove(user);
        c.cursors.remove(user);
        if let Some(set) = self.user_convs.get_mut(user) {
            set.remove(&slot);
            if set.is_empty() {
                self.user_convs.remove(user);
            }
        }
    }

    /// Sets a conversation's metadata from a creation or snapshot record, and returns its slot.
    /// A snapshot resets members and cursors: the records after it in the same batch list them
    /// again.
    pub fn apply_conv(&mut self, rec: &ConvRecord<'_>, at: Offset) -> u32 {
        let Some(slot) = self.slot(rec.conv) else { return self.insert(Conv::new(rec, at)) };
        let c = &mut self.convs[slot as usize];
        c.kind = rec.kind;
        c.title = rec.title.into();
        c.owner = rec.owner.into();
        c.meta_since = at;
        c.provisional = false;
        c.cursors.clear();
        if rec.head >= c.head {
            c.head = rec.head;
            c.head_location = rec.head_location;
        }
        c.raise_floor(rec.floor);
        let old_members: Vec<Box<str>> = c.members.iter().cloned().collect();
        for m in old_members {
            self.remove_member(slot, &m);
        }
        slot
    }

    /// Moves a cursor forward (never back: receipts are monotonic).
    pub fn replay_cursor(&mut self, slot: u32, c: &CursorRecord<'_>) {
        let entry = self.convs[slot as usize].cursors.entry(c.user.into()).or_default();
        let cursor = match c.kind {
            CursorKind::Delivered => &mut entry.0,
            CursorKind::Read => &mut entry.1,
        };
        *cursor = (*cursor).max(c.seq);
    }

    /// Prefetches what replaying a record will touch: its conversation and, for a message with a
    /// client id, its dedup slot.
    pub fn prefetch_replay(&self, frame: &[u8], digest: &ReplayDigest) {
        if let Some(hash) = digest.conv_hash() {
            self.prefetch_conv(hash);
        }
        // The id that the replay compares with the slot's: the scan read it on the other core.
        if let Some(id) = digest.plain().and_then(|p| frame.get(p.conv_at as usize)) {
            crate::prefetch::read(id);
        }
        if let Some(fp) = digest.fingerprint() {
            self.dedup.prefetch(fp);
        }
    }

    /// Replays a plain message (no membership change) of a known conversation from its digest,
    /// without decoding it: checks its seq follows its conversation's head, advances the head,
    /// queues its dedup entry. Returns false for anything else (the caller decodes the record
    /// and calls `replay`, which also reports what is wrong).
    fn replay_plain(&mut self, location: Location, frame: &[u8], digest: &ReplayDigest) -> bool {
        let (Some(p), Some(hash)) = (digest.plain(), digest.conv_hash()) else { return false };
        let Some(conv) = frame.get(p.conv_at as usize..p.conv_at as usize + p.conv_len as usize) else {
            return false;
        };
        let Some(slot) = self.slot_hashed_bytes(hash, conv) else { return false };
        self.replay_seq(slot, p.seq, location, digest.fingerprint()).is_ok()
    }

    /// Advances a conversation's head to a replayed message's `seq` and queues its dedup entry
    /// (`fp`, for a message with a client id), if `seq` follows the head; if not, changes
    /// nothing and returns the head.
    fn replay_seq(&mut self, slot: u32, seq: Seq, location: Location, fp: Option<u64>) -> std::result::Result<(), Seq> {
        let conv = &mut self.convs[slot as usize];
        if seq.0 != conv.head.0 + 1 {
            return Err(conv.head);
        }
        conv.advance(seq, location);
        if let Some(fp) = fp {
            self.dedup.queue(fp, seq);
        }
        Ok(())
    }

    /// Replays one record during recovery. Anything that breaks an invariant is corruption.
    pub fn replay(&mut self, location: Location, rec: &Record<'_>, digest: ReplayDigest) -> Result<()> {
        let bad =
            |why: String| Error::corrupt("log", location.position.0, format!("offset {}: {why}", location.offset.0));
        match rec {
            Record::Conv(c) => {
                self.apply_conv(c, location.offset);
            }
            Record::Members(m) => {
                let slot =
                    self.slot(m.conv).ok_or_else(|| bad(format!("members of unknown conversation {}", m.conv)))?;
                for u in &m.users {
                    self.add_member(slot, u);
                }
            }
            Record::Cursor(c) => {
                let slot =
                    self.slot(c.conv).ok_or_else(|| bad(format!("cursor in unknown conversation {}", c.conv)))?;
                if !cfg!(feature = "sim-bug-no-cursor-replay") {
                    self.replay_cursor(slot, c);
                }
            }
            Record::Message(m) => {
                if m.seq.0 == 0 {
                    return Err(bad(format!("{} has seq 0", m.conv)));
                }
                // Messages may precede their conversation's snapshot when retention deleted the
                // segment that held its creation: such a conversation is provisional until then.
                let hash = digest.conv_hash().unwrap_or_else(|| self.conv_hash(m.conv));
                let slot = match self.slot_hashed(hash, m.conv) {
                    Some(slot) => slot,
                    None => {
                        let placeholder = ConvRecord {
                            conv: m.conv,
                            kind: ConvKind::Group,
                            ts_ms: 0,
                            floor: m.seq,
                            head: Seq(m.seq.0 - 1),
                            head_location: None,
                            owner: "",
                            title: "",
                        };
                        self.insert(Conv { provisional: true, ..Conv::new(&placeholder, location.offset) })
                    }
                };
                let fp = (!m.client_id.is_empty()).then(|| {
                    digest.fingerprint().unwrap_or_else(|| self.dedup.fingerprint(m.conv, m.sender, m.client_id))
                });
                if let Err(head) = self.replay_seq(slot, m.seq, location, fp) {
                    return Err(bad(format!("{} seq {} after head {}", m.conv, m.seq.0, head.0)));
                }
                match m.effect {
                    Some((MemberChange::Added, u)) => self.add_member(slot, u),
                    Some((MemberChange::Removed, u)) => self.remove_member(slot, u),
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// After recovery: every conversation must have found its metadata.
    pub fn check_complete(&self) -> Result<()> {
        match self.convs.iter().find(|c| c.provisional) {
            Some(c) => Err(Error::corrupt("log", 0, format!("conversation {} has messages but no metadata", c.id))),
            None => Ok(()),
        }
    }
}

impl crate::log::Replay for State {
    type Digester = ReplayDigester;
    fn digester(&self) -> ReplayDigester {
        ReplayDigester { conv_hasher: self.index_hasher.clone(), fingerprinter: self.dedup.fingerprint_hasher() }
    }
    fn record_digested(&mut self, at: Location, frame: &[u8], digest: &ReplayDigest) -> Result<bool> {
        Ok(self.replay_plain(at, frame, digest))
    }
    fn record(&mut self, at: Location, rec: &Record<'_>, digest: ReplayDigest) -> Result<()> {
        self.replay(at, rec, digest)
    }
    fn prefetch(&mut self, frame: &[u8], digest: &ReplayDigest) {
        self.prefetch_replay(frame, digest);
    }
}

/// What the replay of a record needs worked out: done by the recovery scan, from the record
/// alone. The replay computes what is missing (the default: nothing worked out).
///
/// 0 marks what is missing, not `Option`s: the replay reads one digest per record, written on
/// another core, so its size is memory traffic on the thread that bounds a shard's recovery
/// (32 bytes, against 56 with `Option`s). A fingerprint is never 0 and a seq never 0; a
/// conversation id whose hash is 0 is only hashed again by the replay.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayDigest {
    conv_hash: u64,
    /// For a message with a client id.
    fingerprint: u64,
    /// For a message without a membership change, its seq and where its conversation id lies in
    /// its frame: all its replay needs besides the above.
    plain_seq: u64,
    conv_at: u16,
    conv_len: u8,
}

const _: () = assert!(std::mem::size_of::<ReplayDigest>() == 32);

impl ReplayDigest {
    fn conv_hash(&self) -> Option<u64> {
        (self.conv_hash != 0).then_some(self.conv_hash)
    }

    fn fingerprint(&self) -> Option<u64> {
        (self.fingerprint != 0).then_some(self.fingerprint)
    }

    fn plain(&self) -> Option<PlainMessage> {
        (self.plain_seq != 0).then_some(PlainMessage {
            seq: Seq(self.plain_seq),
            conv_at: self.conv_at,
            conv_len: self.conv_len,
        })
    }
}

/// A message's seq, and where its conversation id lies in its frame.
#[derive(Clone, Copy, Debug)]
struct PlainMessage {
    seq: Seq,
    conv_at: u16,
    conv_len: u8,
}

/// The state's hashers, lent to the recovery scan.
pub struct ReplayDigester {
    conv_hasher: RandomState,
    fingerprinter: Fingerprinter,
}

impl crate::log::Digest for ReplayDigester {
    type Out = ReplayDigest;
    fn digest(&self, frame: &[u8]) -> ReplayDigest {
        let Ok(ids) = crate::record::ids(frame) else { return ReplayDigest::default() };
        let mut digest = ReplayDigest { conv_hash: self.conv_hasher.hash_one(ids.conv), ..ReplayDigest::default() };
        if let Some(m) = &ids.message {
            if !m.client_id.is_empty() {
                digest.fingerprint = self.fingerprinter.fingerprint(ids.conv, m.sender, m.client_id);
            }
            // (`conv` borrows from `frame`.)
            let at = ids.conv.as_ptr() as usize - frame.as_ptr() as usize;
            if let (false, Ok(conv_at), Ok(conv_len)) =
                (m.member_change, u16::try_from(at), u8::try_from(ids.conv.len()))
            {
                (digest.plain_seq, digest.conv_at, digest.conv_len) = (m.seq.0, conv_at, conv_len);
            }
        }
        digest
    }
}
