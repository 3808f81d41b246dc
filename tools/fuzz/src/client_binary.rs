//! The binary client-frame decoder: a frame it accepts, written again, is decoded into the same
//! request (what the server read is what the client meant), and a frame it refuses gets an
//! error with a message.

use switchboard_edge::proto::binary::parse_binary;
use switchboard_edge::proto::ParseLimits;

pub fn run(data: &[u8]) {
    let limits = ParseLimits::default();
    match parse_binary(data, limits) {
        Ok(request) => crate::assert_binary_round_trip(&request, limits),
        Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
    }
}
