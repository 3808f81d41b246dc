//! The JSON client-frame decoder: a frame it accepts, written in the binary encoding, is
//! decoded by the binary decoder into the same request (the two encodings agree on every
//! frame), and a frame it refuses gets an error with a code and a message.

use switchboard_edge::proto::{parse, ParseLimits};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = ParseLimits::default();
    match parse(text, limits) {
        Ok(request) => crate::assert_binary_round_trip(&request, limits),
        Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
    }
}
