//! The bodies of Switchboard's fuzz targets, one module per target.
//!
//! Each `run` takes the fuzzer's bytes and panics on a broken property. The targets in
//! `fuzz_targets/` only call these, so the same bodies run two ways: under libFuzzer
//! (`cargo +nightly fuzz run <target> --fuzz-dir tools/fuzz --features libfuzzer`), and in
//! `tests/corpora.rs`, which replays every committed input of `corpus/<target>/` and
//! `regressions/<target>/` on the stable toolchain as part of the normal test suite.
//!
//! No target only checks "no panic": each also holds the code to a property a careless change
//! would break (the same frames however the bytes are split, a frame decoded by one encoding
//! decoded the same by the other, acknowledged messages readable after a crash).

pub mod client_binary;
pub mod client_json;
pub mod http_head;
pub mod log_recovery;
pub mod mesh_stream;
pub mod sequencer_ops;
pub mod session_ops;
pub mod ws_frames;

use switchboard_edge::proto::binary::{encode_client, parse_binary};
use switchboard_edge::proto::{ParseLimits, Request};
use switchboard_store::storage::Storage;
use switchboard_store::{ConvId, Error, Seq, Shard, StoredMessage};

/// Asserts that `request`, written in the binary encoding, is decoded by the binary decoder
/// into the same request.
pub fn assert_binary_round_trip(request: &Request<'_>, limits: ParseLimits) {
    let binary = encode_client(&request.frame, request.req.as_deref());
    let back = parse_binary(&binary, limits).expect("an accepted frame, written in binary, decodes");
    assert_eq!(&back, request);
}

/// A conversation read forward from its start, page by page, as a client's resync reads it.
pub struct Forward {
    pub messages: Vec<StoredMessage>,
    /// Whether any page reported a gap.
    pub gap: bool,
    /// The error that stopped the reading, if one did.
    pub error: Option<Error>,
}

/// Reads `conv` forward in pages of `page`; every message served must come after the last.
pub fn read_forward<S: Storage>(shard: &mut Shard<S>, conv: &ConvId, page: usize) -> Forward {
    let mut out = Forward { messages: Vec::new(), gap: false, error: None };
    let mut after = Seq(0);
    loop {
        let p = match shard.range(conv, None, after, page) {
            Ok(p) => p,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        out.gap |= p.gap.is_some();
        for m in p.messages {
            let last = out.messages.last().map_or(after, |l| l.seq).max(after);
            assert!(m.seq > last, "{conv}: seq {} served after {}", m.seq.0, last.0);
            out.messages.push(m);
        }
        after = p.upto;
        if !p.more {
            return out;
        }
    }
}

/// Cuts `data` into pieces of 1 to 8 bytes, the sizes drawn from `seed`: the arrival pattern
/// of a stream read in small, uneven pieces.
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift: cheap and the same on every run.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 8 + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}
