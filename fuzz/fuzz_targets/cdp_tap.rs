#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cdpgate::fuzzing::cdp_tap(data));
