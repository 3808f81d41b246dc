//! Decoding client frames: header checks, limits, unmasking in place, fragment assembly and
//! UTF-8 validation (failing as soon as the bytes received can no longer be valid).

use super::{close_code, Opcode, CONTROL_PAYLOAD_BYTES_MAX};
use bytes::{Buf, Bytes, BytesMut};

/// Size limits, from the configuration (PROTOCOL.md §3: `frame_bytes_max`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest payload of one frame.
    pub frame_bytes_max: usize,
    /// The largest message, all its fragments together.
    pub message_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { frame_bytes_max: 64 * 1024, message_bytes_max: 64 * 1024 }
    }
}

/// What the decoder hands up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The client's close frame: its code and reason, if it gave one. Nothing is decoded after.
    Close(Option<(u16, Bytes)>),
}

/// The client broke the protocol: close the connection with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// A fragmented message being assembled.
struct Fragments {
    text: bool,
    bytes: BytesMut,
    /// Bytes already known to be valid UTF-8 (a code point may be split across fragments).
    valid_utf8: usize,
}

/// Decodes the frames of one connection, in order. Call [`Decoder::decode`] whenever bytes
/// arrive, until it returns `Ok(None)` (wait for more) or an error (close with its code).
pub struct Decoder {
    limits: Limits,
    fragments: Option<Fragments>,
    closed: bool,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Bytes of the header itself.
    len: usize,
    payload_len: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, fragments: None, closed: false }
    }

    /// Takes the next event from the front of `buf`. `Ok(None)`: `buf` does not hold a whole
    /// frame yet (a control frame between fragments is returned at once; fragments are kept).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, Violation> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let Some(header) = self.header(buf)? else { return Ok(None) };
            if buf.len() < header.len + header.payload_len {
                // Only as much room as this frame needs; its length is already within limits.
                buf.reserve(header.len + header.payload_len - buf.len());
                return Ok(None);
            }
            buf.advance(header.len);
            let mut payload = buf.split_to(header.payload_len);
            unmask(&mut payload, header.mask);
            if let Some(event) = self.frame(header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(violation(close_code::PROTOCOL_ERROR, "reserved bits set without an extension"));
        }
        let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(violation(close_code::PROTOCOL_ERROR, "unknown opcode"))?;
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(violation(close_code::PROTOCOL_ERROR, "client frames must be masked"));
        }
        let (payload_len, at) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else { return Ok(None) };
                (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else { return Ok(None) };
                let n = u64::from_be_bytes(b.try_into().unwrap());
                if n >> 63 != 0 {
                    return Err(violation(close_code::PROTOCOL_ERROR, "payload length with the top bit set"));
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(violation(close_code::PROTOCOL_ERROR, "fragmented control frame"));
            }
            if payload_len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(violation(close_code::PROTOCOL_ERROR, "control frame over 125 bytes"));
            }
        } else if payload_len > self.limits.frame_bytes_max as u64 {
            return Err(violation(close_code::TOO_BIG, "frame over frame_bytes_max"));
        }
        let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
        Ok(Some(Header { fin, opcode, mask: mask.try_into().unwrap(), len: at + 4, payload_len: payload_len as usize }))
    }

    /// Applies one whole frame; returns an event when it completes one.
    fn frame(&mut self, h: Header, payload: BytesMut) -> Result<Option<Event>, Violation> {
        match h.opcode {
            Opcode::Ping => Ok(Some(Event::Ping(payload.freeze()))),
            Opcode::Pong => Ok(Some(Event::Pong(payload.freeze()))),
            Opcode::Close => {
                self.closed = true;
                close_frame(payload.freeze()).map(|c| Some(Event::Close(c)))
            }
            Opcode::Text | Opcode::Binary => {
                if self.fragments.is_some() {
                    return Err(violation(close_code::PROTOCOL_ERROR, "new message inside a fragmented one"));
                }
                let text = h.opcode == Opcode::Text;
                if h.fin {
                    // The common case: one frame, handed up without a copy.
                    let payload = payload.freeze();
                    return Ok(Some(if text {
                        check_utf8(&payload, true)?;
                        Event::Text(payload)
                    } else {
                        Event::Binary(payload)
                    }));
                }
                self.fragments = Some(Fragments { text, bytes: BytesMut::new(), valid_utf8: 0 });
                self.append(payload, false)
            }
            Opcode::Continuation => {
                if self.fragments.is_none() {
                    return Err(violation(close_code::PROTOCOL_ERROR, "continuation without a message"));
                }
                self.append(payload, h.fin)
            }
        }
    }

    fn append(&mut self, payload: BytesMut, fin: bool) -> Result<Option<Event>, Violation> {
        let f = self.fragments.as_mut().expect("a fragmented message is in progress");
        if f.bytes.len() + payload.len() > self.limits.message_bytes_max {
            return Err(violation(close_code::TOO_BIG, "message over its limit"));
        }
        f.bytes.extend_from_slice(&payload);
        if f.text {
            f.valid_utf8 += check_utf8(&f.bytes[f.valid_utf8..], fin)?;
        }
        if !fin {
            return Ok(None);
        }
        let f = self.fragments.take().unwrap();
        let bytes = f.bytes.freeze();
        Ok(Some(if f.text { Event::Text(bytes) } else { Event::Binary(bytes) }))
    }
}

/// Checks UTF-8, allowing an incomplete code point at the end unless `complete`. Returns how
/// many bytes are known valid.
fn check_utf8(bytes: &[u8], complete: bool) -> Result<usize, Violation> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        // `error_len() == None`: the bytes end inside a code point that may yet be completed.
        Err(e) if e.error_len().is_none() && !complete => Ok(e.valid_up_to()),
        Err(_) => Err(violation(close_code::INVALID_PAYLOAD, "text is not valid UTF-8")),
    }
}

/// Parses a close frame's payload (RFC 6455 §5.5.1, §7.4).
fn close_frame(payload: Bytes) -> Result<Option<(u16, Bytes)>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(violation(close_code::PROTOCOL_ERROR, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(violation(close_code::PROTOCOL_ERROR, "invalid close code"));
            }
            let reason = payload.slice(2..);
            check_utf8(&reason, true)?;
            Ok(Some((code, reason)))
        }
    }
}

/// XORs the payload with the mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so of 4: the mask lines up again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}
