#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::ws_frames::run(data));
