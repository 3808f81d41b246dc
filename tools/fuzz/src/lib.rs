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
