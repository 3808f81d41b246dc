//! The WebSocket frame decoder: whatever the bytes, the events and the violation are the same
//! whether the stream arrives at once or in pieces, text is valid UTF-8, messages and control
//! payloads are within their limits, and nothing follows a close.

use bytes::BytesMut;
use switchboard_edge::ws::{Decoder, Event, Limits, Violation};

const LIMITS: Limits = Limits { frame_bytes_max: 1024, message_bytes_max: 2048 };

fn decode_all(chunks: &[&[u8]]) -> (Vec<Event>, Option<Violation>) {
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(v) => return (events, Some(v)),
            }
        }
    }
    (events, None)
}

pub fn run(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = decode_all(&[stream]);
    let pieces = decode_all(&crate::chunks(seed, stream));
    assert_eq!(whole, pieces, "the same bytes decoded differently when split");
    let (events, violation) = whole;
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok(), "text that is not UTF-8");
                assert!(t.len() <= LIMITS.message_bytes_max);
            }
            Event::Binary(b) => assert!(b.len() <= LIMITS.message_bytes_max),
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Close(reason) => {
                assert_eq!(i, events.len() - 1, "an event after the close");
                assert!(violation.is_none(), "a violation after the close");
                if let Some((code, text)) = reason {
                    assert!(*code >= 1000, "close code {code}");
                    assert!(std::str::from_utf8(text).is_ok(), "a close reason that is not UTF-8");
                }
            }
        }
    }
    if let Some(v) = violation {
        assert!(matches!(v.code, 1002 | 1007 | 1009), "violation code {}", v.code);
    }
}
