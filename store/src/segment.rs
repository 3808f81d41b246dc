//! Segments: the log is a run of files, each named by the 20-digit offset of its first record
//! (commitlog), with a sparse index beside it.
//!
//! ```text
//! 00000000000000000000.log     records 0 .. 81234
//! 00000000000000000000.index   its sparse index, written when the segment is sealed
//! 00000000000000081234.log     the active segment
//! ```
//!
//! # Index file
//!
//! Written once, when a segment is sealed (rolled). It is never needed for correctness: a
//! missing or damaged index is rebuilt from the log. While it is valid it records where the
//! sealed segment ends, so a sealed segment cut short is reported as corruption rather than
//! mistaken for a torn tail.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SBI1` |
//! | 4..12 | end offset: one past the segment's last record (u64 LE) |
//! | 12..20 | end position: the segment's length in bytes (u64 LE) |
//! | 20..24 | entry count *n* (u32 LE) |
//! | 24..24+8n | entries: relative offset (u32 LE), position (u32 LE) of a batch start |
//! | last 4 | CRC32C of everything before it, seeded with the store's salt |

use crate::ids::Offset;
use crate::record::crc;

const INDEX_MAGIC: &[u8; 4] = b"SBI1";

pub fn log_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

pub fn index_name(base: Offset) -> String {
    format!("{:020}.index", base.0)
}

/// The base offset named by a segment file name, if it is one.
pub fn parse_log_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The base offset named by an index file name, if it is one.
pub fn parse_index_name(name: &str) -> Option<Offset> {
    parse_log_name(&format!("{}.log", name.strip_suffix(".index")?))
}

/// One segment as the log keeps it in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: Offset,
    /// One past the last record in the segment.
    pub end: Offset,
    /// Bytes in the file.
    pub len: u64,
    /// `(relative offset, position)` of batch starts, at least `index_interval_bytes` apart.
    pub index: Vec<(u32, u32)>,
    /// The newest record timestamp in the segment, for retention by age.
    pub max_ts_ms: u64,
}

impl Segment {
    /// Notes a batch that starts at `position` with the segment's `end` as its first offset.
    pub fn note_batch(&mut self, position: u64, interval_bytes: u64) {
        let last = self.index.last().map(|&(_, p)| p as u64);
        if last.is_none_or(|p| position >= p + interval_bytes) {
            self.index.push(((self.end.0 - self.base.0) as u32, position as u32));
        }
    }

    pub fn encode_index(&self, salt: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.index.len() * 8);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&self.end.0.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for &(o, p) in &self.index {
            out.extend_from_slice(&o.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
        }
        let c = crc(salt, &[&out]);
        out.extend_from_slice(&c.to_le_bytes());
        out
    }
}

/// What a valid index file says about its sealed segment.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedIndex {
    pub end: Offset,
    pub len: u64,
    pub entries: Vec<(u32, u32)>,
}

/// Parses an index file; `None` if it is damaged in any way (then it is rebuilt).
pub fn decode_index(bytes: &[u8], salt: u32) -> Option<SealedIndex> {
    if bytes.len() < 28 || &bytes[..4] != INDEX_MAGIC {
        return None;
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    if crc(salt, &[body]) != u32::from_le_bytes(tail.try_into().ok()?) {
        return None;
    }
    let n = u32::from_le_bytes(body[20..24].try_into().ok()?) as usize;
    if body.len() != 24 + n * 8 {
        return None;
    }
    let entries = body[24..]
        .chunks_exact(8)
        .map(|c| (u32::from_le_bytes(c[..4].try_into().unwrap()), u32::from_le_bytes(c[4..].try_into().unwrap())))
        .collect();
    Some(SealedIndex {
        end: Offset(u64::from_le_bytes(body[4..12].try_into().ok()?)),
        len: u64::from_le_bytes(body[12..20].try_into().ok()?),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(log_name(Offset(81234)), "00000000000000081234.log");
        assert_eq!(parse_log_name("00000000000000081234.log"), Some(Offset(81234)));
        assert_eq!(parse_log_name("0000000000000008123.log"), None);
        assert_eq!(parse_log_name("00000000000000081234.index"), None);
        assert_eq!(parse_log_name("9999999999999999999x.log"), None);
    }

    #[test]
    fn index_roundtrip_and_damage() {
        let s = Segment { base: Offset(10), end: Offset(99), len: 5000, index: vec![(0, 0), (40, 4200)], max_ts_ms: 0 };
        let b = s.encode_index(5);
        assert_eq!(decode_index(&b, 5), Some(SealedIndex { end: Offset(99), len: 5000, entries: s.index.clone() }));
        for i in 0..b.len() {
            assert_eq!(decode_index(&b[..i], 5), None);
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert_eq!(decode_index(&d, 5), None);
        }
    }
}
