//! A connection's outbound queue: WebSocket frames waiting to be written, bounded in bytes.
//!
//! Each entry is a frame header (inline, at most 10 bytes) and a payload `Bytes` that every
//! recipient of a fan-out shares: queuing a message for a recipient copies nothing. A writer
//! gathers the queue into one vectored write ([`Outbox::gather`]) and reports how much the
//! kernel took ([`Outbox::advance`]), short writes included. A push that would take the queue
//! past its limit is refused: the connection is a slow consumer and is closed with 4009 (the
//! client resyncs), so the sender never waits on a socket and memory stays bounded.

use crate::ws::{frame_header, Opcode, FRAME_HEADER_BYTES_MAX};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;

/// The close code for a connection whose queue overflowed (PROTOCOL.md §5).
pub const SLOW_CONSUMER_CLOSE: u16 = 4009;

pub(crate) struct Entry {
    header: [u8; FRAME_HEADER_BYTES_MAX],
    header_len: u8,
    payload: Bytes,
    /// When the work behind this frame began (a send's append), for the delivery latency
    /// histogram; `None` for frames nobody times.
    pub(crate) started: Option<std::time::Instant>,
}

impl Entry {
    fn len(&self) -> usize {
        self.header_len as usize + self.payload.len()
    }

    /// The frame's two parts, as the kernel will write them.
    pub(crate) fn parts(&self) -> [&[u8]; 2] {
        [&self.header[..self.header_len as usize], &self.payload[..]]
    }
}

/// The queue would pass its limit: close the connection with [`SLOW_CONSUMER_CLOSE`].
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

pub struct Outbox {
    entries: VecDeque<Entry>,
    /// Bytes queued, headers included, less what was already written of the front entry.
    bytes: usize,
    bytes_max: usize,
    /// Bytes of the front entry already written.
    front_written: usize,
}

impl Outbox {
    pub fn new(bytes_max: usize) -> Outbox {
        Outbox { entries: VecDeque::new(), bytes: 0, bytes_max, front_written: 0 }
    }

    /// The limit, in bytes.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Queues one frame whose payload may be shared with other connections.
    pub fn push(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), Overflow> {
        self.push_timed(opcode, payload, None)
    }

    /// [`Outbox::push`], remembering when the work behind the frame began.
    pub fn push_timed(
        &mut self,
        opcode: Opcode,
        payload: Bytes,
        started: Option<std::time::Instant>,
    ) -> Result<(), Overflow> {
        let mut header = [0; FRAME_HEADER_BYTES_MAX];
        let header_len = frame_header(opcode, payload.len(), &mut header) as u8;
        self.push_entry(Entry { header, header_len, payload, started })
    }

    /// Queues one frame of a QUIC stream: a u32 big-endian length, then the payload
    /// (PROTOCOL.md §1).
    pub fn push_length_prefixed(
        &mut self,
        payload: Bytes,
        started: Option<std::time::Instant>,
    ) -> Result<(), Overflow> {
        let mut header = [0; FRAME_HEADER_BYTES_MAX];
        let prefix = crate::quic::framing::prefix(payload.len());
        header[..prefix.len()].copy_from_slice(&prefix);
        self.push_entry(Entry { header, header_len: prefix.len() as u8, payload, started })
    }

    fn push_entry(&mut self, entry: Entry) -> Result<(), Overflow> {
        if self.bytes + entry.len() > self.bytes_max {
            return Err(Overflow);
        }
        self.bytes += entry.len();
        self.entries.push_back(entry);
        Ok(())
    }

    /// Queues bytes that go out as they are, with no frame header: an HTTP response on the
    /// same connection before (or instead of) the WebSocket. Never refused: the bytes are
    /// the server's own, and bounded.
    pub fn push_raw(&mut self, bytes: Bytes) {
        let entry = Entry { header: [0; FRAME_HEADER_BYTES_MAX], header_len: 0, payload: bytes, started: None };
        self.bytes += entry.len();
        self.entries.push_back(entry);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back the queue's room when nothing is queued: an idle connection holds no
    /// outbound buffer (the next frame allocates it again).
    pub fn release_if_empty(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// Drops everything queued (the connection is closing and will not read it).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.front_written = 0;
    }

    /// Moves whole frames, at most `bytes_max` bytes and `entries_max` frames of them (at least
    /// one), out of the queue into `out`, for a writer that will write all of them. Their bytes no longer count against
    /// the queue's limit: the writer's batch is bounded by `bytes_max` instead.
    pub(crate) fn take_into(&mut self, out: &mut Vec<Entry>, bytes_max: usize, entries_max: usize) -> usize {
        assert_eq!(self.front_written, 0, "take_into and gather/advance do not mix");
        let mut taken = 0;
        while let Some(e) = self.entries.front() {
            if taken > 0 && (taken + e.len() > bytes_max || out.len() >= entries_max) {
                break;
            }
            taken += e.len();
            out.push(self.entries.pop_front().expect("front exists"));
        }
        self.bytes -= taken;
        taken
    }

    /// Fills `out` with the slices to write next, at most `slices_max` of them.
    pub fn gather<'a>(&'a self, out: &mut Vec<IoSlice<'a>>, slices_max: usize) {
        let mut skip = self.front_written;
        for e in &self.entries {
            for part in [&e.header[..e.header_len as usize], &e.payload[..]] {
                if out.len() == slices_max {
                    return;
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                out.push(IoSlice::new(&part[skip..]));
                skip = 0;
            }
        }
    }

    /// Drops what a write took: `written` bytes from the front.
    pub fn advance(&mut self, mut written: usize) {
        assert!(written <= self.bytes, "wrote more than was queued");
        self.bytes -= written;
        while written > 0 {
            let front = self.entries.front().expect("bytes queued means an entry");
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.entries.pop_front();
            self.front_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(o: &mut Outbox, write_max: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !o.is_empty() {
            let mut slices = Vec::new();
            o.gather(&mut slices, 3);
            let mut n = 0;
            for s in &slices {
                let take = s.len().min(write_max - n);
                wire.extend_from_slice(&s[..take]);
                n += take;
                if n == write_max {
                    break;
                }
            }
            o.advance(n);
        }
        wire
    }

    #[test]
    fn overflow_is_refused_and_nothing_is_queued() {
        let mut o = Outbox::new(20);
        let shared = Bytes::from(b"0123456789".to_vec());
        o.push(Opcode::Text, shared.clone()).unwrap();
        assert_eq!(o.entries[0].payload.as_ptr(), shared.as_ptr(), "the payload is shared, not copied");
        assert_eq!(o.bytes(), 12);
        assert_eq!(o.push(Opcode::Text, Bytes::from_static(b"0123456789")), Err(Overflow));
        assert_eq!(o.bytes(), 12);
        o.push(Opcode::Text, Bytes::from_static(b"012345")).unwrap();
        assert_eq!(o.bytes(), 20);
    }

    proptest! {
        /// Whatever the short writes, the wire carries every frame, whole and in order.
        #[test]
        fn short_writes_deliver_every_frame_in_order(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..10),
            write_max in 1usize..100,
        ) {
            let mut o = Outbox::new(1 << 20);
            let mut want = Vec::new();
            for p in &payloads {
                let shared = Bytes::from(p.clone());
                o.push(Opcode::Binary, shared.clone()).unwrap();
                let mut h = [0; FRAME_HEADER_BYTES_MAX];
                let n = frame_header(Opcode::Binary, p.len(), &mut h);
                want.extend_from_slice(&h[..n]);
                want.extend_from_slice(p);
            }
            prop_assert_eq!(drain(&mut o, write_max), want);
            prop_assert_eq!(o.bytes(), 0);
        }
    }
}
