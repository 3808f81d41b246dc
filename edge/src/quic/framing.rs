//! The frames of a QUIC or WebTransport stream (PROTOCOL.md §1): each protocol frame is a
//! u32 big-endian length, then that many bytes. Sans-IO: bytes in as the stream delivers
//! them, whole frames out.
//!
//! A length larger than the limit is refused as soon as its four bytes arrive, before any of
//! the frame is buffered: a client cannot make the server hold more than one frame's worth
//! (the same rule as the WebSocket decoder's 1009).

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// A frame's length prefix, as it goes on the wire.
pub fn prefix(len: usize) -> [u8; PREFIX_BYTES] {
    u32::try_from(len).expect("frames are far smaller than 4 GiB").to_be_bytes()
}

/// The stream announced a frame over the limit: close with 1009.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub len: u64,
}

/// Splits a stream into frames, holding at most one partial frame.
pub struct Deframer {
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl Deframer {
    pub fn new(frame_bytes_max: usize) -> Deframer {
        Deframer { buf: BytesMut::new(), frame_bytes_max }
    }

    /// Bytes held that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes what the stream delivered and appends every whole frame in it to `out`.
    pub fn feed(&mut self, mut bytes: Bytes, out: &mut Vec<Bytes>) -> Result<(), TooLarge> {
        // Whole frames straight from the chunk, without copying, while nothing is held.
        while self.buf.is_empty() && bytes.len() >= PREFIX_BYTES {
            let len = self.length(&bytes)?;
            if bytes.len() < PREFIX_BYTES + len {
                break;
            }
            bytes.advance(PREFIX_BYTES);
            out.push(bytes.split_to(len));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(&bytes);
        while self.buf.len() >= PREFIX_BYTES {
            let len = self.length(&self.buf)?;
            if self.buf.len() < PREFIX_BYTES + len {
                break;
            }
            self.buf.advance(PREFIX_BYTES);
            out.push(self.buf.split_to(len).freeze());
        }
        if self.buf.is_empty() {
            // An idle stream holds no buffer.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    fn length(&self, at: &[u8]) -> Result<usize, TooLarge> {
        let len = u32::from_be_bytes(at[..PREFIX_BYTES].try_into().expect("four bytes")) as u64;
        if len > self.frame_bytes_max as u64 {
            return Err(TooLarge { len });
        }
        Ok(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        frames.iter().flat_map(|f| [&prefix(f.len())[..], f].concat()).collect()
    }

    #[test]
    fn whole_frames_in_one_chunk_and_an_empty_frame() {
        let mut d = Deframer::new(16);
        let mut out = Vec::new();
        d.feed(Bytes::from(framed(&[b"hello", b"", b"x"])), &mut out).unwrap();
        assert_eq!(out, [&b"hello"[..], b"", b"x"]);
        assert_eq!(d.buffered(), 0);
    }

    /// The limit is checked on the prefix alone: nothing of the frame has to arrive.
    #[test]
    fn a_length_over_the_limit_is_refused_from_its_prefix() {
        let mut d = Deframer::new(16);
        let mut out = Vec::new();
        d.feed(Bytes::from(framed(&[&[b'a'; 16]])), &mut out).unwrap();
        assert_eq!(out.len(), 1, "exactly the limit is allowed");
        assert_eq!(d.feed(Bytes::from_static(&[0, 0, 0, 17]), &mut out), Err(TooLarge { len: 17 }));
        let mut d = Deframer::new(16);
        d.feed(Bytes::from_static(&[0xff, 0xff]), &mut out).unwrap();
        assert_eq!(d.feed(Bytes::from_static(&[0xff, 0xff]), &mut out), Err(TooLarge { len: u32::MAX as u64 }));
    }

    proptest! {
        /// However the stream is cut, the same frames come out, in order.
        #[test]
        fn any_split_gives_the_same_frames(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
            cuts in prop::collection::vec(1usize..30, 0..40),
        ) {
            let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            let wire = framed(&refs);
            let mut d = Deframer::new(64);
            let mut out = Vec::new();
            let mut at = 0usize;
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = at.saturating_add(*cut).min(wire.len());
                d.feed(Bytes::copy_from_slice(&wire[at..end]), &mut out).unwrap();
                at = end;
            }
            prop_assert_eq!(out.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), frames);
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}
