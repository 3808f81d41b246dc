//! The WebSocket frame codec (RFC 6455), sans-IO: bytes in, events out, no sockets, no clock.
//!
//! The decoder works on the connection's read buffer in place: it checks that a whole frame is
//! there without copying (mini-redis: "need more bytes" is not an error), unmasks the payload in
//! the buffer and hands it up as a `Bytes` split off that buffer, so a message that arrives in
//! one frame (almost all of them) is never copied. Only fragmented messages are assembled.
//!
//! Every way a client can misbehave ends in a [`Violation`] naming the close code to send:
//! 1002 for protocol errors, 1007 for invalid UTF-8, 1009 for a frame or message over its
//! limit. A frame's declared length is checked against the limit before its payload is
//! awaited, so a client cannot make the server buffer more than `frame_bytes_max`.
//!
//! [`handshake`] parses the opening handshake and writes the server's answer.
//!
//! The encoder writes server frames (unmasked). [`frame_header`] returns just the header, so a
//! fan-out can encode a payload once and send the same `Bytes` after each recipient's header.

mod decode;
mod encode;
pub mod handshake;

pub use decode::{Decoder, Event, Limits, Violation};
pub use encode::{close_payload, encode, frame_header, FRAME_HEADER_BYTES_MAX};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 >= 0x8
    }
}

/// Close codes the server sends (RFC 6455 §7.4, PROTOCOL.md §5).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

#[cfg(test)]
mod tests;
