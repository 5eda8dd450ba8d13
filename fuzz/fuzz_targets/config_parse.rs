//! The configuration parser on arbitrary text: never panics, every error
//! names the file, every accepted configuration keeps its promises.
//! The checks live in `ferry::fuzzing::config_parse` (see src/fuzzing/config_parse.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::config_parse(data));
