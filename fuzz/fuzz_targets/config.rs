#![no_main]
// The property checks live in fuzz/src/lib.rs, shared with tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| waypost_fuzz::check_config(data));
