//! What the bytes on a mesh stream look like, and the sans-IO reader for them.
//!
//! # Layout
//! Every unidirectional stream starts with a header, then carries frames:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `SBM1` |
//! | 2 | stream code, big-endian: 0 control, 1 bulk, 2 + i live lane i |
//! | 2 | the sender's node id, big-endian (checked against its certificate) |
//! | 8 | the sender's boot id, big-endian |
//!
//! A frame is a u32 big-endian length, then that many bytes. On live and bulk streams
//! those bytes are an 8-byte send stamp (microseconds since the epoch, for the send →
//! receive lag histogram) and the caller's frame. On the control stream the first byte says
//! what follows ([`Control`]).

use crate::class::StreamKind;
use crate::ids::{Boot, NodeId};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 4] = *b"SBM1";
pub const HEADER_BYTES: usize = 16;
/// The length prefix and the send stamp.
pub const ENVELOPE_BYTES: usize = 4 + 8;

/// The first bytes of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub node: NodeId,
    pub boot: Boot,
}

impl StreamHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&MAGIC);
        out.put_u16(self.kind.code());
        out.put_u16(self.node.0);
        out.put_u64(self.boot.0);
    }
}

/// What a peer did wrong on a stream; the connection is closed for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream header has the wrong magic")]
    BadMagic,
    #[error("stream header names unknown stream code {0}")]
    UnknownStream(u16),
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame too short for its envelope")]
    Truncated,
    #[error("unknown control frame type {0}")]
    UnknownControl(u8),
    #[error("stream header claims node {claimed}, the certificate another")]
    WrongNode { claimed: u16 },
    #[error("control frame before the stream header")]
    NoHeader,
}

/// Control-stream frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// A SWIM message (foca's encoding).
    Swim(Bytes),
    /// From the lower-numbered node of the pair: this connection is the one both use.
    Chosen,
    /// A frame of the caller's control class.
    App { stamp: u64, frame: Bytes },
}

const CONTROL_SWIM: u8 = 1;
const CONTROL_CHOSEN: u8 = 2;
const CONTROL_APP: u8 = 3;

impl Control {
    /// Appends the whole frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Control::Swim(data) => {
                out.put_u32(1 + data.len() as u32);
                out.put_u8(CONTROL_SWIM);
                out.put_slice(data);
            }
            Control::Chosen => {
                out.put_u32(1);
                out.put_u8(CONTROL_CHOSEN);
            }
            Control::App { stamp, frame } => {
                out.put_u32(1 + 8 + frame.len() as u32);
                out.put_u8(CONTROL_APP);
                out.put_u64(*stamp);
                out.put_slice(frame);
            }
        }
    }

    pub fn decode(mut body: Bytes) -> Result<Control, StreamError> {
        if body.is_empty() {
            return Err(StreamError::Truncated);
        }
        match body.get_u8() {
            CONTROL_SWIM => Ok(Control::Swim(body)),
            CONTROL_CHOSEN => Ok(Control::Chosen),
            CONTROL_APP => {
                if body.len() < 8 {
                    return Err(StreamError::Truncated);
                }
                let stamp = body.get_u64();
                Ok(Control::App { stamp, frame: body })
            }
            other => Err(StreamError::UnknownControl(other)),
        }
    }
}

/// The length prefix and stamp of a live or bulk frame, written before the caller's bytes.
pub fn data_envelope(stamp: u64, len: usize) -> [u8; ENVELOPE_BYTES] {
    let mut out = [0u8; ENVELOPE_BYTES];
    out[..4].copy_from_slice(&((8 + len) as u32).to_be_bytes());
    out[4..].copy_from_slice(&stamp.to_be_bytes());
    out
}

/// A data frame's stamp and the caller's bytes, from a frame body.
pub fn split_data(mut body: Bytes) -> Result<(u64, Bytes), StreamError> {
    if body.len() < 8 {
        return Err(StreamError::Truncated);
    }
    let stamp = body.get_u64();
    Ok((stamp, body))
}

/// What an inbound stream yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Header(StreamHeader),
    /// A frame body (after its length prefix).
    Frame(Bytes),
}

/// Reads one inbound stream: the header, then length-prefixed frames, from bytes in chunks
/// of any size. "Need more bytes" is not an error; a frame over `frame_bytes_max` is, and it
/// is refused as soon as its prefix is seen, before its bytes are buffered.
pub struct StreamReader {
    lanes: u16,
    frame_bytes_max: [usize; 3],
    header: Option<StreamHeader>,
    buf: BytesMut,
}

impl StreamReader {
    pub fn new(lanes: u16, frame_bytes_max: [usize; 3]) -> StreamReader {
        StreamReader { lanes, frame_bytes_max, header: None, buf: BytesMut::new() }
    }

    pub fn header(&self) -> Option<StreamHeader> {
        self.header
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next header or frame, `None` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, StreamError> {
        let Some(header) = self.header else {
            if self.buf.len() < HEADER_BYTES {
                return Ok(None);
            }
            if self.buf[..4] != MAGIC {
                return Err(StreamError::BadMagic);
            }
            let code = u16::from_be_bytes([self.buf[4], self.buf[5]]);
            let kind = StreamKind::from_code(code, self.lanes).ok_or(StreamError::UnknownStream(code))?;
            let node = NodeId(u16::from_be_bytes([self.buf[6], self.buf[7]]));
            let boot = Boot(u64::from_be_bytes(self.buf[8..16].try_into().expect("8 bytes")));
            self.buf.advance(HEADER_BYTES);
            let header = StreamHeader { kind, node, boot };
            self.header = Some(header);
            return Ok(Some(Item::Header(header)));
        };
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        // The envelope (stamp, or control type and stamp) comes on top of the caller's limit.
        let max = self.frame_bytes_max[header.kind.class().index()] + 9;
        if len > max {
            return Err(StreamError::TooLarge { len, max });
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(Item::Frame(self.buf.split_to(len).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn header(kind: StreamKind) -> StreamHeader {
        StreamHeader { kind, node: NodeId(3), boot: Boot(77) }
    }

    #[test]
    fn frames_come_back_whole_from_chunks_split_anywhere() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..200 {
            let mut wire = BytesMut::new();
            header(StreamKind::Lane(2)).encode(&mut wire);
            let frames: Vec<Vec<u8>> =
                (0..rng.gen_range(0..20)).map(|i| vec![i as u8; rng.gen_range(0..300)]).collect();
            for (i, f) in frames.iter().enumerate() {
                wire.put_slice(&data_envelope(i as u64, f.len()));
                wire.put_slice(f);
            }
            let mut reader = StreamReader::new(4, [100, 300, 300]);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(64));
                reader.push(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = reader.next_item().unwrap() {
                    got.push(item);
                }
            }
            assert_eq!(got[0], Item::Header(header(StreamKind::Lane(2))));
            assert_eq!(got.len(), frames.len() + 1);
            for (i, (item, f)) in got[1..].iter().zip(&frames).enumerate() {
                let Item::Frame(body) = item else { panic!("not a frame") };
                let (stamp, frame) = split_data(body.clone()).unwrap();
                assert_eq!((stamp, &frame[..]), (i as u64, &f[..]));
            }
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_bytes_arrive() {
        let mut reader = StreamReader::new(1, [10, 10, 10]);
        let mut wire = BytesMut::new();
        header(StreamKind::Control).encode(&mut wire);
        wire.put_u32(20);
        reader.push(&wire);
        assert!(matches!(reader.next_item(), Ok(Some(Item::Header(_)))));
        assert_eq!(reader.next_item(), Err(StreamError::TooLarge { len: 20, max: 19 }));
    }

    #[test]
    fn bad_headers_and_control_frames_are_errors_not_panics() {
        let mut reader = StreamReader::new(2, [10, 10, 10]);
        reader.push(b"XXXX0123456789ab");
        assert_eq!(reader.next_item(), Err(StreamError::BadMagic));
        let mut reader = StreamReader::new(2, [10, 10, 10]);
        let mut wire = BytesMut::new();
        StreamHeader { kind: StreamKind::Lane(5), node: NodeId(1), boot: Boot(1) }.encode(&mut wire);
        reader.push(&wire);
        assert_eq!(reader.next_item(), Err(StreamError::UnknownStream(7)));
        assert_eq!(Control::decode(Bytes::new()), Err(StreamError::Truncated));
        assert_eq!(Control::decode(Bytes::from_static(&[9])), Err(StreamError::UnknownControl(9)));
        assert_eq!(Control::decode(Bytes::from_static(&[3, 1, 2])), Err(StreamError::Truncated));
        for control in [
            Control::Swim(Bytes::from_static(b"swim")),
            Control::Chosen,
            Control::App { stamp: 5, frame: Bytes::from_static(b"app") },
        ] {
            let mut out = BytesMut::new();
            control.encode(&mut out);
            assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
            assert_eq!(Control::decode(out.freeze().slice(4..)), Ok(control));
        }
    }
}
