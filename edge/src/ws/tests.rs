//! The codec against frames a client would send: every rule of RFC 6455 §5 that a server
//! enforces, random chunk boundaries, random masks, fragments with control frames between them.

use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

/// A client frame: masked with `mask`, `fin` and `opcode` as given (any byte, to test bad ones).
fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        0..=125 => out.push(0x80 | payload.len() as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn fin(op: Opcode) -> u8 {
    0x80 | op as u8
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Feeds `bytes` in pieces of the given sizes; returns the events and the first violation.
fn run(limits: Limits, bytes: &[u8], pieces: &[usize]) -> (Vec<Event>, Option<Violation>) {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().copied().cycle();
    while at < bytes.len() {
        let n = sizes.next().unwrap_or(bytes.len()).max(1).min(bytes.len() - at);
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(v) => return (events, Some(v)),
            }
        }
    }
    (events, None)
}

fn one(bytes: &[u8]) -> (Vec<Event>, Option<Violation>) {
    run(Limits::default(), bytes, &[usize::MAX])
}

fn code(bytes: &[u8]) -> Option<u16> {
    one(bytes).1.map(|v| v.code)
}

#[test]
fn single_frames_of_every_length_class() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536] {
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let limits = Limits { frame_bytes_max: 1 << 20, message_bytes_max: 1 << 20 };
        let (events, v) = run(limits, &client_frame(fin(Opcode::Text), &payload, MASK), &[usize::MAX]);
        assert_eq!(v, None);
        assert_eq!(events, vec![Event::Text(Bytes::from(payload))], "len {len}");
    }
}

#[test]
fn fragments_with_control_frames_between() {
    let mut wire = client_frame(Opcode::Text as u8, "héllo ".as_bytes(), MASK);
    wire.extend(client_frame(fin(Opcode::Ping), b"p1", [1, 2, 3, 4]));
    // "wörld" with the ö split across two fragments.
    let w = "wörld".as_bytes();
    wire.extend(client_frame(Opcode::Continuation as u8, &w[..2], [9, 9, 9, 9]));
    wire.extend(client_frame(fin(Opcode::Pong), b"", MASK));
    wire.extend(client_frame(fin(Opcode::Continuation), &w[2..], [0, 0, 0, 0]));
    let (events, v) = one(&wire);
    assert_eq!(v, None);
    assert_eq!(
        events,
        vec![
            Event::Ping(Bytes::from_static(b"p1")),
            Event::Pong(Bytes::new()),
            Event::Text(Bytes::from("héllo wörld".as_bytes().to_vec())),
        ]
    );
}

#[test]
fn close_frames() {
    let close = |payload: &[u8]| one(&client_frame(fin(Opcode::Close), payload, MASK));
    assert_eq!(close(b"").0, vec![Event::Close(None)]);
    assert_eq!(close(&close_payload(1000, "bye")).0, vec![Event::Close(Some((1000, Bytes::from_static(b"bye"))))]);
    assert_eq!(close(&[3, 232]).0, vec![Event::Close(Some((1000, Bytes::new())))]);
    for bad in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000] {
        assert_eq!(close(&bad.to_be_bytes()).1.unwrap().code, close_code::PROTOCOL_ERROR, "code {bad}");
    }
    assert_eq!(close(&[3]).1.unwrap().code, close_code::PROTOCOL_ERROR);
    assert_eq!(close(&[3, 232, 0xff]).1.unwrap().code, close_code::INVALID_PAYLOAD);
    // Nothing is decoded after a close.
    let mut wire = client_frame(fin(Opcode::Close), b"", MASK);
    wire.extend(client_frame(fin(Opcode::Text), b"late", MASK));
    assert_eq!(one(&wire).0, vec![Event::Close(None)]);
}

#[test]
fn every_protocol_violation_has_its_close_code() {
    use close_code::*;
    // Reserved bits, unknown opcodes.
    for b0 in [0x80 | 0x40 | 1, 0x80 | 0x20 | 1, 0x80 | 0x10 | 1, 0x83, 0x87, 0x8B, 0x8F] {
        assert_eq!(code(&client_frame(b0, b"x", MASK)), Some(PROTOCOL_ERROR), "b0 {b0:#x}");
    }
    // Unmasked client frame.
    assert_eq!(code(&[fin(Opcode::Text), 1, b'x']), Some(PROTOCOL_ERROR));
    // Fragmented or long control frames.
    assert_eq!(code(&client_frame(Opcode::Ping as u8, b"", MASK)), Some(PROTOCOL_ERROR));
    assert_eq!(code(&client_frame(fin(Opcode::Ping), &[0; 126], MASK)), Some(PROTOCOL_ERROR));
    // Continuation with nothing to continue; a new message inside a fragmented one.
    assert_eq!(code(&client_frame(fin(Opcode::Continuation), b"x", MASK)), Some(PROTOCOL_ERROR));
    let mut wire = client_frame(Opcode::Text as u8, b"a", MASK);
    wire.extend(client_frame(fin(Opcode::Binary), b"b", MASK));
    assert_eq!(code(&wire), Some(PROTOCOL_ERROR));
    // A 64-bit length with the top bit set.
    let mut wire = vec![fin(Opcode::Binary), 0x80 | 127];
    wire.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(code(&wire), Some(PROTOCOL_ERROR));
    // Invalid UTF-8, whole or across fragments; an incomplete code point at the end.
    assert_eq!(code(&client_frame(fin(Opcode::Text), &[0xff], MASK)), Some(INVALID_PAYLOAD));
    let mut wire = client_frame(Opcode::Text as u8, &[0xc3], MASK);
    wire.extend(client_frame(fin(Opcode::Continuation), &[0x28], MASK));
    assert_eq!(code(&wire), Some(INVALID_PAYLOAD));
    let mut wire = client_frame(Opcode::Text as u8, b"ok", MASK);
    wire.extend(client_frame(fin(Opcode::Continuation), &[0xe2, 0x82], MASK));
    assert_eq!(code(&wire), Some(INVALID_PAYLOAD));
    // Invalid UTF-8 fails fast, before the message is complete.
    let (_, v) = one(&client_frame(Opcode::Text as u8, &[b'a', 0xff], MASK));
    assert_eq!(v.map(|v| v.code), Some(INVALID_PAYLOAD));
    // Binary is never checked.
    assert_eq!(one(&client_frame(fin(Opcode::Binary), &[0xff], MASK)).1, None);
}

#[test]
fn limits_close_with_1009_before_the_payload_is_buffered() {
    let limits = Limits { frame_bytes_max: 100, message_bytes_max: 150 };
    // The header alone, declaring 1 MiB: refused at once, nothing waits for the payload.
    let mut header = vec![fin(Opcode::Binary), 0x80 | 127];
    header.extend_from_slice(&(1u64 << 20).to_be_bytes());
    header.extend_from_slice(&MASK);
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(&header[..]);
    assert_eq!(d.decode(&mut buf).unwrap_err().code, close_code::TOO_BIG);
    // Fragments that are each small enough but together too big.
    let mut wire = client_frame(Opcode::Binary as u8, &[1; 100], MASK);
    wire.extend(client_frame(fin(Opcode::Continuation), &[2; 51], MASK));
    assert_eq!(run(limits, &wire, &[7]).1.map(|v| v.code), Some(close_code::TOO_BIG));
    // Exactly at the limits is fine.
    let mut wire = client_frame(Opcode::Binary as u8, &[1; 100], MASK);
    wire.extend(client_frame(fin(Opcode::Continuation), &[2; 50], MASK));
    assert_eq!(run(limits, &wire, &[7]).0.len(), 1);
}

#[test]
fn server_frames_decode_as_the_rfc_says() {
    let mut out = BytesMut::new();
    encode(Opcode::Text, b"hi", &mut out);
    assert_eq!(&out[..], &[0x81, 2, b'h', b'i']);
    let mut h = [0; FRAME_HEADER_BYTES_MAX];
    assert_eq!(frame_header(Opcode::Binary, 126, &mut h), 4);
    assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
    assert_eq!(frame_header(Opcode::Binary, 70_000, &mut h), 10);
    assert_eq!(&h[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    // A reason is cut to fit a control frame, on a character boundary.
    let long = "é".repeat(100);
    let p = close_payload(4009, &long);
    assert!(p.len() <= CONTROL_PAYLOAD_BYTES_MAX && std::str::from_utf8(&p[2..]).is_ok());
    assert_eq!(&p[..2], &4009u16.to_be_bytes());
}

/// A message for the property test: fragments of a text or binary message, with control
/// frames between them.
#[derive(Clone, Debug)]
struct Msg {
    text: bool,
    parts: Vec<Vec<u8>>,
    pings: Vec<Vec<u8>>,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..4),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..3),
    )
        .prop_map(|(text, parts, pings)| {
            // Text messages carry a valid string, split at arbitrary byte positions.
            let parts = if text {
                let s: String = parts.concat().iter().map(|&b| char::from_u32(0x20 + b as u32 * 7).unwrap()).collect();
                let b = s.into_bytes();
                let n = parts.len();
                let step = b.len() / n + 1;
                b.chunks(step).map(|c| c.to_vec()).chain(std::iter::repeat_n(Vec::new(), n)).take(n).collect()
            } else {
                parts
            };
            Msg { text, parts, pings }
        })
}

proptest! {
    /// Any messages, fragmented, with pings between fragments, any masks, fed in any chunk
    /// sizes: exactly the same events as the sender meant.
    #[test]
    fn roundtrip_with_random_chunks_and_masks(
        msgs in proptest::collection::vec(msg(), 1..6),
        masks in proptest::collection::vec(any::<[u8; 4]>(), 1..8),
        pieces in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut m = masks.iter().cycle();
        for msg in &msgs {
            let n = msg.parts.len();
            for (i, part) in msg.parts.iter().enumerate() {
                let op = if i > 0 { Opcode::Continuation } else if msg.text { Opcode::Text } else { Opcode::Binary };
                let b0 = op as u8 | if i + 1 == n { 0x80 } else { 0 };
                wire.extend(client_frame(b0, part, *m.next().unwrap()));
                if i + 1 == n {
                    let whole = Bytes::from(msg.parts.concat());
                    want.push(if msg.text { Event::Text(whole) } else { Event::Binary(whole) });
                }
                if let Some(p) = msg.pings.get(i) {
                    wire.extend(client_frame(fin(Opcode::Ping), p, *m.next().unwrap()));
                    want.push(Event::Ping(Bytes::from(p.clone())));
                }
            }
        }
        let limits = Limits { frame_bytes_max: 4096, message_bytes_max: 8192 };
        let (events, v) = run(limits, &wire, &pieces);
        prop_assert_eq!(v, None);
        prop_assert_eq!(events, want);
    }

    /// Arbitrary bytes never panic the decoder and never make it hold more than a frame.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000), pieces in proptest::collection::vec(1usize..50, 1..5)) {
        let limits = Limits { frame_bytes_max: 512, message_bytes_max: 1024 };
        let _ = run(limits, &bytes, &pieces);
    }
}
