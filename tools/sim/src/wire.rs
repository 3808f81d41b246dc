//! What a simulated client puts on its socket: real WebSocket frames (masked, as RFC 6455
//! requires of clients), or a QUIC stream's length-prefixed frames, carrying PROTOCOL.md's
//! JSON or binary encoding, handed to the edge in pieces split at random points, so the
//! edge's decoders and session see what a real socket or stream gives them.

use rand::rngs::SmallRng;
use rand::Rng;

/// One masked WebSocket frame holding `payload`: a text frame, or a binary one.
pub fn client_ws_frame(rng: &mut SmallRng, payload: &[u8], binary: bool) -> Vec<u8> {
    let mut out = vec![if binary { 0x82 } else { 0x81 }];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rng.gen();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One frame of a QUIC stream (PROTOCOL.md §1): a u32 big-endian length, then the bytes.
pub fn client_quic_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = switchboard_edge::quic::framing::prefix(payload.len()).to_vec();
    out.extend_from_slice(payload);
    out
}

/// `bytes` cut at one to three random points.
pub fn pieces<'a>(rng: &mut SmallRng, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..rng.gen_range(1..=3)).map(|_| rng.gen_range(0..=bytes.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        out.push(&bytes[from..cut]);
        from = cut;
    }
    out
}

/// What a client reads off its socket or stream: the server's frames, as the client library
/// does (an unmasked WebSocket frame, or a QUIC stream's length-prefixed one), each payload
/// read in the connection's encoding (binary through the edge's reader of server frames).
pub enum ServerReader {
    Ws(Vec<u8>),
    Quic(switchboard_edge::quic::framing::Deframer),
}

/// One server frame, as a client sees it.
#[derive(Debug, PartialEq)]
pub enum Heard {
    Frame(serde_json::Value),
    /// Bytes that are no frame of PROTOCOL.md: a finding.
    Unreadable(String),
}

impl ServerReader {
    /// Takes in what the server wrote and returns the whole frames it completes.
    pub fn read(&mut self, bytes: &[u8], binary: bool) -> Vec<Heard> {
        let payloads = match self {
            ServerReader::Ws(buf) => {
                buf.extend_from_slice(bytes);
                let mut out = Vec::new();
                while let Some((opcode, payload, used)) = server_ws_frame(buf) {
                    buf.drain(..used);
                    match opcode {
                        0x1 if !binary => out.push(payload),
                        0x2 if binary => out.push(payload),
                        // Pings, and the close frame the driver writes last.
                        0x8..=0xa => {}
                        op => return vec![Heard::Unreadable(format!("a data frame of opcode {op:#x}"))],
                    }
                }
                out
            }
            ServerReader::Quic(deframer) => {
                let mut out = Vec::new();
                if deframer.feed(bytes::Bytes::copy_from_slice(bytes), &mut out).is_err() {
                    return vec![Heard::Unreadable("a QUIC frame over the limit".into())];
                }
                out.into_iter().map(|b| b.to_vec()).collect()
            }
        };
        let frame = |p: Vec<u8>| {
            let read = match binary {
                false => serde_json::from_slice(&p).map_err(|e| e.to_string()),
                true => switchboard_edge::proto::binary::server_frame_json(&p).map_err(|e| format!("{e:?}")),
            };
            read.map_or_else(Heard::Unreadable, Heard::Frame)
        };
        payloads.into_iter().map(frame).collect()
    }
}

/// The first whole server frame in `buf` (final, unmasked, as the edge writes them): its
/// opcode, payload and length, or `None` while it is incomplete.
fn server_ws_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?;
    Some((b0 & 0x0f, payload.to_vec(), at + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_edge::ws::{frame_header, Opcode, FRAME_HEADER_BYTES_MAX};

    fn ws(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut header = [0; FRAME_HEADER_BYTES_MAX];
        let n = frame_header(opcode, payload.len(), &mut header);
        [&header[..n], payload].concat()
    }

    /// The edge's own frame headers, of all three lengths, read back one byte at a time.
    #[test]
    fn server_ws_frames_read_back_across_any_split() {
        let long = format!("{{\"t\":\"msg\",\"body\":\"{}\"}}", "x".repeat(70_000));
        let frames: Vec<String> = vec![r#"{"t":"pong"}"#.into(), format!("{{\"b\":\"{}\"}}", "y".repeat(300)), long];
        let mut bytes: Vec<u8> = frames.iter().flat_map(|f| ws(Opcode::Text, f.as_bytes())).collect();
        bytes.extend(ws(Opcode::Ping, b""));
        let mut reader = ServerReader::Ws(Vec::new());
        let heard: Vec<Heard> = bytes.iter().flat_map(|b| reader.read(&[*b], false)).collect();
        let want: Vec<Heard> = frames.iter().map(|f| Heard::Frame(serde_json::from_str(f).unwrap())).collect();
        assert_eq!(heard, want);
    }

    #[test]
    fn a_data_frame_in_the_other_encoding_is_unreadable() {
        let mut reader = ServerReader::Ws(Vec::new());
        assert!(matches!(reader.read(&ws(Opcode::Binary, b"{}"), false)[..], [Heard::Unreadable(_)]));
    }
}
