//! What a simulated client puts on its socket: real WebSocket frames (masked, as RFC 6455
//! requires of clients) carrying PROTOCOL.md's JSON, handed to the edge in pieces split at
//! random points, so the edge's frame decoder and session see what a real socket gives them.

use rand::rngs::SmallRng;
use rand::Rng;

/// One masked text frame holding `text`.
pub fn client_text_frame(rng: &mut SmallRng, text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut out = vec![0x81];
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
