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
