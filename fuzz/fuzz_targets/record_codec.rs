//! The record codec on arbitrary bytes: never panics, accepts only well-formed
//! values, and what it accepts re-encodes to the same record.
//! The checks live in `ferry::fuzzing::record_codec` (see src/fuzzing/record_codec.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::record_codec(data));
