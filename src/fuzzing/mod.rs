//! The bodies of ferry's fuzz targets (feature `fuzzing`), one file each.
//!
//! Each function takes the fuzzer's bytes and panics, with a message that
//! says which property broke, when ferry misbehaves on them. The cargo-fuzz
//! targets in `fuzz/` call them, and `tests/fuzz_corpus.rs` replays the
//! checked-in corpus through the same functions, so CI exercises every
//! target without a fuzzer. See docs/fuzzing.md.
//!
//! - [`record_codec`]: the on-disk record (and meta) codec on arbitrary
//!   bytes: decoding never panics, accepts only well-formed values, and what
//!   it accepts re-encodes to a value that decodes to the same record.
//! - [`queue_model`]: one queue against the reference model
//!   (`store/model.rs`, also driven by the store's seeded tests) over an arbitrary
//!   sequence of operations (append, commit, read window, ack, drop, limit
//!   changes, TTL expiry on a fake clock, close and reopen), checking
//!   contents, sequence numbers, depth, totals and the invariant
//!   `received == forwarded + dropped + queued` after every step.
//! - [`config_parse`]: the configuration parser on arbitrary text: it never
//!   panics, every error names the file, and every configuration it accepts
//!   keeps the promises the rest of ferry relies on.
//!
//! Inputs more than one target builds from the fuzzer's bytes (records) are
//! made here.

use arbitrary::Unstructured;

use crate::store::{Properties, Record};

mod config_parse;
mod queue_model;
mod record_codec;

pub use config_parse::config_parse;
pub use queue_model::queue_model;
pub use record_codec::record_codec;

fn short_string(u: &mut Unstructured, max_chars: usize) -> arbitrary::Result<String> {
    let s: &str = u.arbitrary()?;
    Ok(s.chars().take(max_chars).collect())
}

fn short_bytes(u: &mut Unstructured, max: usize) -> arbitrary::Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?;
    Ok(u.bytes(len.min(u.len()))?.to_vec())
}

/// A record from the fuzzer's bytes: short strings, a payload that is either
/// given bytes or a run of one byte (cheap large payloads), any flags.
fn arbitrary_record(u: &mut Unstructured, now_ms: u64) -> arbitrary::Result<Record> {
    let topic = match u.int_in_range(0..=3u8)? {
        0 => "t".to_string(),
        1 => "edge/1/down/a".to_string(),
        _ => short_string(u, 40)?,
    };
    let payload = if u.arbitrary()? {
        short_bytes(u, 64)?
    } else {
        vec![u.arbitrary::<u8>()?; usize::from(u.arbitrary::<u16>()? % 1024)]
    };
    let received_at_ms = match u.int_in_range(0..=7u8)? {
        // Mostly around the fake clock, sometimes anywhere.
        0 => u.arbitrary()?,
        1 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
        n => now_ms.saturating_sub(u64::from(u.arbitrary::<u16>()?) * u64::from(n)),
    };
    let properties = if u.arbitrary()? {
        Properties::default()
    } else {
        let mut user_properties = Vec::new();
        for _ in 0..u.int_in_range(0..=3u8)? {
            user_properties.push((short_string(u, 16)?, short_string(u, 16)?));
        }
        Properties {
            payload_format_indicator: u.arbitrary()?,
            message_expiry_interval: u.arbitrary()?,
            response_topic: if u.arbitrary()? {
                Some(short_string(u, 24)?)
            } else {
                None
            },
            correlation_data: if u.arbitrary()? {
                Some(short_bytes(u, 24)?)
            } else {
                None
            },
            user_properties,
            content_type: if u.arbitrary()? {
                Some(short_string(u, 24)?)
            } else {
                None
            },
        }
    };
    Ok(Record {
        topic,
        payload,
        qos: u.arbitrary()?,
        retain: u.arbitrary()?,
        received_at_ms,
        properties,
    })
}
