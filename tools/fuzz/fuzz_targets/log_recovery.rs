#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::log_recovery::run(data));
