//! Records: what the log stores, as borrowed views over the bytes (no allocation to read one).
//!
//! # Record frame
//!
//! Every record inside a batch (see [`crate::batch`]) is framed on its own so that a history
//! read can fetch and verify one record without reading its whole batch:
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..4 | `length` | u32 LE, the whole frame, this header included |
//! | 4..8 | `crc` | CRC32C of bytes 8..length, seeded with the store's salt |
//! | 8 | `type` | 1 message, 2 conversation, 3 members, 4 cursor |
//! | 9.. | payload | by type, below |
//!
//! Integers are little-endian. A "short string" is a u8 length then that many bytes.
//!
//! ## 1: message (sequenced)
//! | field | size |
//! |---|---|
//! | seq | u64 |
//! | ts (ms since the epoch) | u64 |
//! | prev offset (`u64::MAX`: none) | u64 |
//! | prev position | u64 |
//! | membership effect: 0 none, 1 member added, 2 member removed | u8 |
//! | conv, sender, client id, kind, effect user | short strings |
//! | body | the rest, stored verbatim |
//!
//! `prev` points at the conversation's previous sequenced record, so a page of history costs
//! one read per record. Membership changes are sequenced messages of kind `system` whose
//! effect byte makes the store apply them, so authorization follows `seq`.
//!
//! ## 2: conversation (creation, or the snapshot carried forward by retention)
//! | field | size |
//! |---|---|
//! | kind: 1 dm, 2 group, 3 channel | u8 |
//! | ts | u64 |
//! | floor (first retained seq) | u64 |
//! | head (last assigned seq) | u64 |
//! | head offset, head position (`u64::MAX`: none) | u64, u64 |
//! | conv, owner | short strings |
//! | title | the rest, UTF-8 |
//!
//! It resets the conversation's members and cursors; the member and cursor records that follow
//! in the same batch fill them in again.
//!
//! ## 3: members (added without a seq: at creation and in snapshots)
//! | field | size |
//! |---|---|
//! | conv | short string |
//! | count | u16 |
//! | users | `count` short strings |
//!
//! ## 4: cursor moved
//! | field | size |
//! |---|---|
//! | kind: 1 delivered, 2 read | u8 |
//! | seq | u64 |
//! | conv, user | short strings |

use crate::ids::{ConvKind, CursorKind, Location, Offset, Position, Seq};

/// Bytes of the record frame header (length, crc, type).
pub const RECORD_HEADER_BYTES: usize = 9;

const TYPE_MESSAGE: u8 = 1;
const TYPE_CONV: u8 = 2;
const TYPE_MEMBERS: u8 = 3;
const TYPE_CURSOR: u8 = 4;
const NONE: u64 = u64::MAX;

/// What a membership-changing system message does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    Removed,
}

/// A sequenced record: a user's message or a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRecord<'a> {
    pub conv: &'a str,
    pub seq: Seq,
    pub ts_ms: u64,
    /// The conversation's previous sequenced record.
    pub prev: Option<Location>,
    pub sender: &'a str,
    /// Empty for system messages, which are never deduplicated.
    pub client_id: &'a [u8],
    pub kind: &'a str,
    pub body: &'a [u8],
    pub effect: Option<(MemberChange, &'a str)>,
}

/// A conversation's metadata: its creation, or a snapshot written by retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvRecord<'a> {
    pub conv: &'a str,
    pub kind: ConvKind,
    pub ts_ms: u64,
    pub floor: Seq,
    pub head: Seq,
    pub head_location: Option<Location>,
    pub owner: &'a str,
    pub title: &'a str,
}

/// Members added without a seq (creation, snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersRecord<'a> {
    pub conv: &'a str,
    pub users: Vec<&'a str>,
}

/// A member's delivered or read cursor moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorRecord<'a> {
    pub conv: &'a str,
    pub user: &'a str,
    pub kind: CursorKind,
    pub seq: Seq,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Message(MessageRecord<'a>),
    Conv(ConvRecord<'a>),
    Members(MembersRecord<'a>),
    Cursor(CursorRecord<'a>),
}

impl<'a> Record<'a> {
    /// The conversation this record belongs to.
    pub fn conv(&self) -> &'a str {
        match self {
            Record::Message(m) => m.conv,
            Record::Conv(c) => c.conv,
            Record::Members(m) => m.conv,
            Record::Cursor(c) => c.conv,
        }
    }
}

/// Why bytes are not a record. Only ever seen on damaged files: the CRC passed but the payload
/// is malformed, or a read landed where no record starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is truncated")]
    Truncated,
    #[error("record has an unknown type {0}")]
    UnknownType(u8),
    #[error("record field {0} is invalid")]
    Invalid(&'static str),
    #[error("record checksum mismatch")]
    Checksum,
}

/// The salted CRC32C used for every record and batch: a per-store random salt means a client
/// cannot embed bytes in a message body that pass as a valid frame of this store.
pub fn crc(salt: u32, parts: &[&[u8]]) -> u32 {
    parts.iter().fold(salt, |c, p| crc32c::crc32c_append(c, p))
}

fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    debug_assert!(s.len() <= u8::MAX as usize);
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn put_location(out: &mut Vec<u8>, l: Option<Location>) {
    let (o, p) = l.map_or((NONE, NONE), |l| (l.offset.0, l.position.0));
    out.extend_from_slice(&o.to_le_bytes());
    out.extend_from_slice(&p.to_le_bytes());
}

fn kind_byte(k: ConvKind) -> u8 {
    match k {
        ConvKind::Dm => 1,
        ConvKind::Group => 2,
        ConvKind::Channel => 3,
    }
}

/// Appends the framed record to `out` and returns the frame's length.
///
/// Every string field must already be validated (ids, ≤ 255 bytes); the store does that before
/// it stages anything, so this only asserts.
pub fn encode(record: &Record<'_>, salt: u32, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match record {
        Record::Message(m) => {
            out.push(TYPE_MESSAGE);
            out.extend_from_slice(&m.seq.0.to_le_bytes());
            out.extend_from_slice(&m.ts_ms.to_le_bytes());
            put_location(out, m.prev);
            let (effect, user) = match m.effect {
                None => (0, ""),
                Some((MemberChange::Added, u)) => (1, u),
                Some((MemberChange::Removed, u)) => (2, u),
            };
            out.push(effect);
            for s in [m.conv.as_bytes(), m.sender.as_bytes(), m.client_id, m.kind.as_bytes(), user.as_bytes()] {
                put_short(out, s);
            }
            out.extend_from_slice(m.body);
        }
        Record::Conv(c) => {
            out.push(TYPE_CONV);
            out.push(kind_byte(c.kind));
            for v in [c.ts_ms, c.floor.0, c.head.0] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            put_location(out, c.head_location);
            put_short(out, c.conv.as_bytes());
            put_short(out, c.owner.as_bytes());
            out.extend_from_slice(c.title.as_bytes());
        }
        Record::Members(m) => {
            out.push(TYPE_MEMBERS);
            put_short(out, m.conv.as_bytes());
            assert!(m.users.len() <= u16::MAX as usize);
            out.extend_from_slice(&(m.users.len() as u16).to_le_bytes());
            for u in &m.users {
                put_short(out, u.as_bytes());
            }
        }
        Record::Cursor(c) => {
            out.push(TYPE_CURSOR);
            out.push(match c.kind {
                CursorKind::Delivered => 1,
                CursorKind::Read => 2,
            });
            out.extend_from_slice(&c.seq.0.to_le_bytes());
            put_short(out, c.conv.as_bytes());
            put_short(out, c.user.as_bytes());
        }
    }
    let len = out.len() - start;
    let len32 = u32::try_from(len).expect("record larger than 4 GiB");
    let checksum = crc(salt, &[&out[start + 8..]]);
    out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    len
}

/// A cursor over a payload that never reads out of bounds.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn short(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn short_str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.short()?;
        // Ids are ASCII: check that inline and skip the general validator (recovery decodes
        // millions of these a second).
        if bytes.is_ascii() {
            // Safety: all bytes are ASCII, which is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid(what))
    }
    fn location(&mut self) -> Result<Option<Location>, DecodeError> {
        let (o, p) = (self.u64()?, self.u64()?);
        Ok((o != NONE).then_some(Location { offset: Offset(o), position: Position(p) }))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// Reads the frame length from the first 4 bytes, if there are 4.
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    bytes.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
}

/// A record's timestamp, read straight from its frame without decoding it (0 for records
/// without one, or a frame too short to hold it).
pub fn ts_of(frame: &[u8]) -> u64 {
    let at = match frame.get(8) {
        Some(&TYPE_MESSAGE) => 17, // after the type and the seq
        Some(&TYPE_CONV) => 10,    // after the type and the conversation kind
        _ => return 0,
    };
    frame.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// A record's ids, read without decoding the rest of it: what recovery's scan hashes ahead of
/// the replay (`state::ReplayDigester`). A message's kind, effect user and body are skipped,
/// not checked: every read decodes the whole record again, and one that does not decode is
/// reported corrupt then.
pub struct Ids<'a> {
    pub conv: &'a str,
    /// For a message; `None` for any other record.
    pub message: Option<MessageIds<'a>>,
}

pub struct MessageIds<'a> {
    pub seq: Seq,
    /// Whether it adds or removes a member.
    pub member_change: bool,
    pub sender: &'a str,
    pub client_id: &'a [u8],
}

/// [`Ids`] of one framed record (its CRC already checked, with its batch's).
pub fn ids(bytes: &[u8]) -> Result<Ids<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES || frame_len(bytes) != Some(bytes.len()) {
        return Err(DecodeError::Truncated);
    }
    if bytes[8] != TYPE_MESSAGE {
        return decode(bytes, 0, false).map(|rec| Ids { conv: rec.conv(), message: None });
    }
    // The fields in `decode`'s order, up to the client id.
    let mut r = Reader { bytes: &bytes[9..] };
    let seq = Seq(r.u64()?);
    r.take(8 + 16)?; // the timestamp and the previous message's location
    let member_change = match r.u8()? {
        0 => false,
        1 | 2 => true,
        _ => return Err(DecodeError::Invalid("effect")),
    };
    let conv = r.short_str("conv")?;
    let sender = r.short_str("sender")?;
    let client_id = r.short()?;
    Ok(Ids { conv, message: Some(MessageIds { seq, member_change, sender, client_id }) })
}

/// Decodes one framed record, checking its CRC when `verify` is set (a batch whose own CRC
/// passed needs no second check). `bytes` must be exactly one frame.
pub fn decode(bytes: &[u8], salt: u32, verify: bool) -> Result<Record<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES || frame_len(bytes) != Some(bytes.len()) {
        return Err(DecodeError::Truncated);
    }
    if verify {
        let stored = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        if crc(salt, &[&bytes[8..]]) != stored {
            return Err(DecodeError::Checksum);
        }
    }
    let mut r = Reader { bytes: &bytes[9..] };
    match bytes[8] {
        TYPE_MESSAGE => {
            let seq = Seq(r.u64()?);
            let ts_ms = r.u64()?;
            let prev = r.location()?;
            let effect = r.u8()?;
            let conv = r.short_str("conv")?;
            let sender = r.short_str("sender")?;
            let client_id = r.short()?;
            let kind = r.short_str("kind")?;
            let user = r.short_str("effect user")?;
            let effect = match effect {
                0 => None,
                1 => Some((MemberChange::Added, user)),
                2 => Some((MemberChange::Removed, user)),
                _ => return Err(DecodeError::Invalid("effect")),
            };
            let body = r.rest();
            Ok(Record::Message(MessageRecord { conv, seq, ts_ms, prev, sender, client_id, kind, body, effect }))
        }
        TYPE_CONV => {
            let kind = match r.u8()? {
                1 => ConvKind::Dm,
                2 => ConvKind::Group,
                3 => ConvKind::Channel,
                _ => return Err(DecodeError::Invalid("conversation kind")),
            };
            let ts_ms = r.u64()?;
            let floor = Seq(r.u64()?);
            let head = Seq(r.u64()?);
            let head_location = r.location()?;
            let conv = r.short_str("conv")?;
            let owner = r.short_str("owner")?;
            let title = std::str::from_utf8(r.rest()).map_err(|_| DecodeError::Invalid("title"))?;
            Ok(Record::Conv(ConvRecord { conv, kind, ts_ms, floor, head, head_location, owner, title }))
        }
        TYPE_MEMBERS => {
            let conv = r.short_str("conv")?;
            let count = r.u16()? as usize;
            let mut users = Vec::with_capacity(count.min(r.bytes.len()));
            for _ in 0..count {
                users.push(r.short_str("member")?);
            }
            Ok(Record::Members(MembersRecord { conv, users }))
        }
        TYPE_CURSOR => {
            let kind = match r.u8()? {
                1 => CursorKind::Delivered,
                2 => CursorKind::Read,
                _ => return Err(DecodeError::Invalid("cursor kind")),
            };
            let seq = Seq(r.u64()?);
            let conv = r.short_str("conv")?;
            let user = r.short_str("user")?;
            Ok(Record::Cursor(CursorRecord { conv, user, kind, seq }))
        }
        t => Err(DecodeError::UnknownType(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(r: &Record<'_>) {
        let mut out = vec![0xAA];
        let n = encode(r, 7, &mut out);
        assert_eq!(n, out.len() - 1);
        assert_eq!(&decode(&out[1..], 7, true).unwrap(), r);
        // What recovery's scan reads without decoding is what decoding gives.
        let ids = ids(&out[1..]).unwrap();
        assert_eq!(ids.conv, r.conv());
        match (r, ids.message) {
            (Record::Message(m), Some(i)) => {
                assert_eq!(
                    (i.seq, i.sender, i.client_id, i.member_change),
                    (m.seq, m.sender, m.client_id, m.effect.is_some())
                );
            }
            (Record::Message(_), None) => panic!("a message without message ids"),
            (_, i) => assert!(i.is_none()),
        }
        // A different salt (another store's bytes) never verifies.
        assert_eq!(decode(&out[1..], 8, true), Err(DecodeError::Checksum));
    }

    #[test]
    fn every_record_type_roundtrips() {
        let loc = Some(Location { offset: Offset(9), position: Position(4096) });
        roundtrip(&Record::Message(MessageRecord {
            conv: "dm:a:b",
            seq: Seq(3),
            ts_ms: 1_700_000_000_000,
            prev: loc,
            sender: "a",
            client_id: b"uuid-1",
            kind: "text",
            body: br#"{"text":"hi"}"#,
            effect: None,
        }));
        roundtrip(&Record::Message(MessageRecord {
            conv: "g1",
            seq: Seq(1),
            ts_ms: 1,
            prev: None,
            sender: "owner",
            client_id: b"",
            kind: "system",
            body: b"{}",
            effect: Some((MemberChange::Removed, "bob")),
        }));
        roundtrip(&Record::Conv(ConvRecord {
            conv: "g1",
            kind: ConvKind::Channel,
            ts_ms: 5,
            floor: Seq(10),
            head: Seq(12),
            head_location: loc,
            owner: "o",
            title: "Ünïcode title",
        }));
        roundtrip(&Record::Members(MembersRecord { conv: "g1", users: vec!["a", "b", "c"] }));
        roundtrip(&Record::Cursor(CursorRecord { conv: "g1", user: "a", kind: CursorKind::Read, seq: Seq(4) }));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, whatever the salt or verification, nor the
        /// reading of ids.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), verify: bool) {
            let _ = decode(&bytes, 0, verify);
            let _ = ids(&bytes);
        }

        /// Any single flipped bit in a record is caught by its checksum or its length.
        #[test]
        fn flipped_bit_is_detected(body in proptest::collection::vec(any::<u8>(), 0..200), bit in 0usize..2000) {
            let r = Record::Message(MessageRecord {
                conv: "c", seq: Seq(1), ts_ms: 2, prev: None, sender: "s", client_id: b"i",
                kind: "text", body: &body, effect: None,
            });
            let mut out = Vec::new();
            encode(&r, 1, &mut out);
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&out, 1, true).is_err());
        }
    }
}
