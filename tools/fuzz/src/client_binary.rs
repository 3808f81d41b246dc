//! The binary client-frame decoder: a frame it accepts, written again, is decoded into the same
//! request (what the server read is what the client meant), and a frame it refuses gets an
//! error with a message.

use switchboard_edge::proto::binary::{encode_client, parse_binary};
use switchboard_edge::proto::ParseLimits;

pub fn run(data: &[u8]) {
    let limits = ParseLimits::default();
    match parse_binary(data, limits) {
        Ok(request) => {
            let again = encode_client(&request.frame, request.req.as_deref());
            let back = parse_binary(&again, limits).expect("a re-encoded frame decodes");
            assert_eq!(back, request);
        }
        Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
    }
}
