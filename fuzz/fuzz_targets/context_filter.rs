#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cdpgate::fuzzing::context_filter(data));
