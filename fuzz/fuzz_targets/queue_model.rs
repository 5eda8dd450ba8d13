//! One queue against a VecDeque model over arbitrary sequences of append,
//! commit, read window, ack, drop, limit changes, TTL expiry and reopen.
//! The checks live in `ferry::fuzzing::queue_model` (see src/fuzzing/queue_model.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::queue_model(data));
