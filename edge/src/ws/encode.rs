//! Encoding server frames: never masked (RFC 6455 §5.1), always final.

use super::Opcode;
use bytes::{BufMut, Bytes, BytesMut};

/// The longest frame header a server writes (no mask).
pub const FRAME_HEADER_BYTES_MAX: usize = 10;

/// Writes the header of a final, unmasked frame carrying `payload_len` bytes into `out`;
/// returns its length. The payload follows it on the wire as it is, so one encoded payload can
/// be sent to every recipient of a fan-out.
pub fn frame_header(opcode: Opcode, payload_len: usize, out: &mut [u8; FRAME_HEADER_BYTES_MAX]) -> usize {
    out[0] = 0x80 | opcode as u8;
    match payload_len {
        0..=125 => {
            out[1] = payload_len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// Appends a whole final frame to `out`.
pub fn encode(opcode: Opcode, payload: &[u8], out: &mut BytesMut) {
    let mut header = [0; FRAME_HEADER_BYTES_MAX];
    let n = frame_header(opcode, payload.len(), &mut header);
    out.reserve(n + payload.len());
    out.put_slice(&header[..n]);
    out.put_slice(payload);
}

/// The payload of a close frame: the code, then a reason cut to fit a control frame.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(super::CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(code);
    out.put_slice(&reason.as_bytes()[..end]);
    out.freeze()
}
