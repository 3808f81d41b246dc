//! Batches: the unit of group commit, and of crash atomicity.
//!
//! Every `commit` writes one batch: all records staged since the previous commit, then one
//! fsync. A batch is valid only if its whole CRC matches, so a write torn by a crash is never
//! half-applied.
//!
//! # Batch frame
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 0..4 | magic | `SBB1` |
//! | 4..8 | `length` | u32 LE, the whole batch, this header included |
//! | 8..16 | `base_offset` | u64 LE, the offset of the first record |
//! | 16..20 | `count` | u32 LE, records in the batch (≥ 1) |
//! | 20..24 | `crc` | CRC32C of bytes 4..20 then 24..length, seeded with the store's salt |
//! | 24.. | records | `count` record frames ([`crate::record`]) back to back |
//!
//! # Why a torn tail can be told from corruption
//!
//! The log never has two batches in flight: batch *n + 1* is written only after batch *n*'s
//! fsync returned. So if any valid batch lies after an invalid one, the invalid one had been
//! fsynced before the crash and was damaged afterwards: that is corruption, reported as an
//! error. An invalid batch with nothing valid after it is a torn tail and is cut.

use crate::ids::Offset;
use crate::record::{self, crc, DecodeError};

pub const MAGIC: &[u8; 4] = b"SBB1";
pub const BATCH_HEADER_BYTES: usize = 24;

/// A parsed and verified batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub length: usize,
    pub base_offset: Offset,
    pub count: u32,
}

/// Why bytes at a position are not a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length: maybe a torn tail.
    Short,
    /// No magic, an impossible length or count, or a checksum mismatch.
    Invalid,
}

/// Starts a batch in `out` (an empty buffer); records are appended after it.
pub fn begin(out: &mut Vec<u8>, base_offset: Offset) {
    debug_assert!(out.is_empty());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&base_offset.0.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// Fills in the length, count and CRC of the batch that `begin` started.
pub fn finish(out: &mut [u8], count: u32, salt: u32) {
    assert!(count >= 1, "an empty batch is never written");
    let length = u32::try_from(out.len()).expect("batch larger than 4 GiB");
    out[4..8].copy_from_slice(&length.to_le_bytes());
    out[16..20].copy_from_slice(&count.to_le_bytes());
    let c = crc(salt, &[&out[4..20], &out[24..]]);
    out[20..24].copy_from_slice(&c.to_le_bytes());
}

/// Checks the batch at the start of `bytes` without copying: header sanity and the whole CRC.
pub fn check(bytes: &[u8], salt: u32, batch_bytes_max: usize) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Short);
    }
    if &bytes[0..4] != MAGIC {
        return Err(BatchError::Invalid);
    }
    let length = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let base_offset = Offset(u64::from_le_bytes(bytes[8..16].try_into().unwrap()));
    let count = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let min = BATCH_HEADER_BYTES + count as usize * record::RECORD_HEADER_BYTES;
    if count == 0 || length < min || length > batch_bytes_max {
        return Err(BatchError::Invalid);
    }
    if bytes.len() < length {
        return Err(BatchError::Short);
    }
    let stored = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
    if crc(salt, &[&bytes[4..20], &bytes[24..length]]) != stored {
        return Err(BatchError::Invalid);
    }
    Ok(BatchHeader { length, base_offset, count })
}

/// Iterates the record frames of a verified batch as `(position within the batch, frame)`.
pub fn frames(batch: &[u8], header: BatchHeader) -> Frames<'_> {
    Frames { batch: &batch[..header.length], position: BATCH_HEADER_BYTES, left: header.count }
}

pub struct Frames<'a> {
    batch: &'a [u8],
    position: usize,
    left: u32,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(usize, &'a [u8]), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let rest = &self.batch[self.position..];
        let len = match record::frame_len(rest) {
            Some(len) if len >= record::RECORD_HEADER_BYTES && len <= rest.len() => len,
            _ => {
                self.left = 0;
                return Some(Err(DecodeError::Truncated));
            }
        };
        let at = self.position;
        self.position += len;
        Some(Ok((at, &rest[..len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CursorKind, Seq};
    use crate::record::{CursorRecord, Record};

    fn sample(count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        begin(&mut out, Offset(40));
        for i in 0..count {
            let r = Record::Cursor(CursorRecord { conv: "c", user: "u", kind: CursorKind::Read, seq: Seq(i as u64) });
            record::encode(&r, 3, &mut out);
        }
        finish(&mut out, count, 3);
        out
    }

    #[test]
    fn batch_roundtrip_and_frames() {
        let b = sample(3);
        let h = check(&b, 3, 1 << 20).unwrap();
        assert_eq!(h, BatchHeader { length: b.len(), base_offset: Offset(40), count: 3 });
        let seqs: Vec<u64> = frames(&b, h)
            .map(|f| match record::decode(f.unwrap().1, 3, true).unwrap() {
                Record::Cursor(c) => c.seq.0,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let b = sample(2);
        for n in 0..b.len() {
            assert!(check(&b[..n], 3, 1 << 20).is_err());
        }
        for bit in 0..b.len() * 8 {
            let mut d = b.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(check(&d, 3, 1 << 20).is_err(), "bit {bit}");
        }
        assert_eq!(check(&b, 4, 1 << 20), Err(BatchError::Invalid));
    }
}
