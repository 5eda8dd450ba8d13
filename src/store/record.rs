//! The on-disk encoding of queued records, of the batch values holding
//! them, and of a queue's meta entry.
//!
//! - A **record** is `[1][crc32 of the rest: u32 LE][bincode 2 body]`. Its
//!   length is its stored size, which the byte counters and limits count.
//! - A **batch value** (format [`FORMAT`], 2) holds the records of one ingest
//!   batch, whose sequence numbers are consecutive from the value's key:
//!   `[2][crc32 of the index: u32 LE][record 0][record 1]..[index]`, the
//!   index being `[size of record i: u32 LE]* [count: u32 LE][first seq: u64
//!   LE]`. The index is at the end so that a batch is encoded in one pass.
//!   A value written before batches existed (format 1) is one record, keyed
//!   by its own sequence number: [`batch_spans`] reads it as a batch of one.
//! - The **meta entry** is `[2][crc32 of the rest][bincode 2 body]`.
//!
//! The format byte lets a later ferry read what an earlier one wrote; the
//! checksums catch torn or damaged values, which are then dropped and
//! counted (`reason="corrupt"`), never handed on as messages. Decoding never
//! panics, whatever the bytes.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{DropReason, Meta, Record};

/// The current format of batch values and of the meta entry.
pub const FORMAT: u8 = 2;
/// The format of one record (and of a whole value before batches existed).
pub const RECORD_FORMAT: u8 = 1;
const HEADER: usize = 5;
/// The fixed tail of a batch index: count (u32) and first sequence (u64).
const INDEX_TAIL: usize = 12;
/// No stored value is larger than MQTT allows for one packet (256 MiB).
const MAX_BODY: usize = 256 * 1024 * 1024 + 64 * 1024;

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("value too short ({0} bytes)")]
    Truncated(usize),
    #[error("unknown format {0} (written by a newer ferry?)")]
    UnknownFormat(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("undecodable body: {0}")]
    Body(String),
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// Appends `[format][crc][body]` to `out`.
fn encode_value_into<T: Serialize>(value: &T, format: u8, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[format, 0, 0, 0, 0]);
    // Serializing plain structs of strings, bytes and integers cannot fail
    // except past the size limit, which the caller's own limits exclude;
    // an empty body would then fail its decode and be counted as corrupt.
    if bincode::serde::encode_into_std_write(value, out, config()).is_err() {
        out.truncate(start + HEADER);
    }
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 1..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn decode_value<T: DeserializeOwned>(bytes: &[u8], format: u8) -> Result<T, CodecError> {
    if bytes.len() < HEADER {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[0] != format {
        return Err(CodecError::UnknownFormat(bytes[0]));
    }
    let want = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[HEADER..];
    if crc32fast::hash(body) != want {
        return Err(CodecError::Checksum);
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(record, &mut out);
    out
}

/// Appends the encoding of `record` to `out` (a batch being built).
pub fn encode_into(record: &Record, out: &mut Vec<u8>) {
    encode_value_into(record, RECORD_FORMAT, out)
}

pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_value(bytes, RECORD_FORMAT)
}

/// serde for a `Vec<u8>` as bytes rather than as a sequence of `u8`.
/// bincode writes both the same way (a length, then the bytes), so stored
/// records read either way; as bytes they are copied in one go instead of
/// one serde call per byte, which was the largest CPU cost of a 4 KiB record.
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};

    pub fn serialize<S: serde::Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A batch value being built: records are encoded straight into it.
pub(crate) struct BatchBuilder {
    buf: Vec<u8>,
    sizes: std::collections::VecDeque<u32>,
}

impl BatchBuilder {
    pub(crate) fn new() -> BatchBuilder {
        BatchBuilder {
            buf: vec![FORMAT, 0, 0, 0, 0],
            sizes: Default::default(),
        }
    }

    /// Encodes `record` at the end; returns its stored size.
    pub(crate) fn push(&mut self, record: &Record) -> u64 {
        let start = self.buf.len();
        encode_into(record, &mut self.buf);
        let size = self.buf.len() - start;
        self.sizes.push_back(size as u32);
        size as u64
    }

    /// Takes back the record pushed last (it was not stored after all).
    pub(crate) fn pop_back(&mut self) {
        if let Some(size) = self.sizes.pop_back() {
            self.buf.truncate(self.buf.len() - size as usize);
        }
    }

    /// Removes the oldest record (evicted by a later one of the same batch).
    pub(crate) fn pop_front(&mut self) -> Option<u64> {
        let size = self.sizes.pop_front()? as usize;
        self.buf.drain(HEADER..HEADER + size);
        Some(size as u64)
    }

    pub(crate) fn len(&self) -> usize {
        self.sizes.len()
    }

    /// The finished values for a batch whose first record has sequence
    /// `first`: one, or several of at most about `max_value` bytes each when
    /// the records are larger together (a record larger than that alone),
    /// each keyed by its own first sequence.
    pub(crate) fn finish(self, first: u64, max_value: usize) -> Vec<(u64, Vec<u8>)> {
        if self.buf.len() + 4 * self.sizes.len() + INDEX_TAIL <= max_value {
            return vec![(first, self.seal(first))];
        }
        let mut values = Vec::new();
        let (mut part, mut part_first, mut at) = (BatchBuilder::new(), first, HEADER);
        for (i, &size) in self.sizes.iter().enumerate() {
            let size = size as usize;
            if part.len() > 0 && part.buf.len() + size + 4 * (part.len() + 1) + INDEX_TAIL > max_value {
                values.push((
                    part_first,
                    std::mem::replace(&mut part, BatchBuilder::new()).seal(part_first),
                ));
                part_first = first + i as u64;
            }
            part.buf.extend_from_slice(&self.buf[at..at + size]);
            part.sizes.push_back(size as u32);
            at += size;
        }
        values.push((part_first, part.seal(part_first)));
        values
    }

    /// Appends the index and the checksum: the value for sequence `first`.
    fn seal(mut self, first: u64) -> Vec<u8> {
        let index = self.buf.len();
        for size in &self.sizes {
            self.buf.extend_from_slice(&size.to_le_bytes());
        }
        self.buf.extend_from_slice(&(self.sizes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&first.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[index..]);
        self.buf[1..HEADER].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Where each record of the value stored under sequence `key` lies in it:
/// record `i` has sequence `key + i`. A format-1 value is one record. Fails
/// when the value's index is damaged (what it held is then unknown); a
/// damaged record inside an intact index fails only its own `decode`.
pub(crate) fn batch_spans(key: u64, value: &[u8]) -> Result<Vec<Range<usize>>, CodecError> {
    match value.first() {
        None => Err(CodecError::Truncated(0)),
        Some(&RECORD_FORMAT) => Ok(std::iter::once(0..value.len()).collect()),
        Some(&FORMAT) => {
            if value.len() < HEADER + INDEX_TAIL {
                return Err(CodecError::Truncated(value.len()));
            }
            let tail = value.len() - INDEX_TAIL;
            let count = u32::from_le_bytes(value[tail..tail + 4].try_into().unwrap_or_default()) as usize;
            let first = u64::from_le_bytes(value[tail + 4..].try_into().unwrap_or_default());
            let Some(index) = count
                .checked_mul(4)
                .and_then(|n| tail.checked_sub(n))
                .filter(|i| *i >= HEADER)
            else {
                return Err(CodecError::Body(format!("index of {count} records does not fit")));
            };
            let want = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
            if crc32fast::hash(&value[index..]) != want {
                return Err(CodecError::Checksum);
            }
            if first != key {
                return Err(CodecError::Body(format!(
                    "value of sequence {first} stored under {key}"
                )));
            }
            let mut spans = Vec::with_capacity(count);
            let mut at = HEADER;
            for size in value[index..tail].chunks_exact(4) {
                let size = u32::from_le_bytes(size.try_into().unwrap_or_default()) as usize;
                let end = at.saturating_add(size);
                if end > index {
                    return Err(CodecError::Body("records overrun the index".into()));
                }
                spans.push(at..end);
                at = end;
            }
            if at != index || count == 0 {
                return Err(CodecError::Body("records and index disagree".into()));
            }
            Ok(spans)
        }
        Some(&other) => Err(CodecError::UnknownFormat(other)),
    }
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut acked = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &seq in &meta.acked {
        run = match run {
            Some((start, end)) if end == seq => Some((start, seq + 1)),
            Some(done) => {
                acked.push(done);
                Some((seq, seq + 1))
            }
            None => Some((seq, seq + 1)),
        };
    }
    acked.extend(run);
    let stored = MetaV2 {
        counters: Counters {
            next_seq: meta.next_seq,
            messages: meta.messages,
            bytes: meta.bytes,
            received: meta.received,
            forwarded: meta.forwarded,
            dropped: meta.dropped,
        },
        low_water: meta.low_water,
        acked,
    };
    let mut out = Vec::new();
    encode_value_into(&stored, FORMAT, &mut out);
    out
}

/// Reads a meta entry of any layout ferry wrote: the current one (format 2,
/// with the low-water mark and the acked set), or format 1, without them,
/// from before batch values, in either of its two layouts: with six drop
/// counters, or with five from before the drop reason `purged` existed. The
/// two differ by one trailing counter, so a value is read by exactly one of
/// them: the six-counter layout finds one counter missing in an old value,
/// the five-counter layout finds a trailing byte in a newer one.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta, CodecError> {
    if bytes.first() == Some(&RECORD_FORMAT) {
        return match decode_value::<Counters>(bytes, RECORD_FORMAT) {
            Err(CodecError::Body(current)) => match decode_value::<MetaFiveReasons>(bytes, RECORD_FORMAT) {
                Ok(old) => Ok(old.into()),
                Err(_) => Err(CodecError::Body(current)),
            },
            other => other.map(Meta::from),
        };
    }
    let stored: MetaV2 = decode_value(bytes, FORMAT)?;
    let mut acked = BTreeSet::new();
    let mut total = 0u64;
    for (start, end) in stored.acked {
        total = total.saturating_add(end.saturating_sub(start));
        if end < start || total > MAX_ACKED {
            return Err(CodecError::Body(format!("acked run {start}..{end} out of range")));
        }
        acked.extend(start..end);
    }
    Ok(Meta {
        low_water: stored.low_water,
        acked,
        ..stored.counters.into()
    })
}

/// The most acked sequence numbers a meta entry may hold (a damaged one
/// must not make the decoder build a set of billions).
const MAX_ACKED: u64 = 1 << 24;

/// The meta layout of format 2: the counters (laid out as in format 1), the
/// low-water mark (every sequence below it is gone) and the sequences
/// acknowledged out of order above it, as runs `[start, end)`.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetaV2 {
    counters: Counters,
    low_water: u64,
    acked: Vec<(u64, u64)>,
}

/// The counters of a queue: the whole meta layout of format 1 (one record
/// per value), the head of format 2's.
#[derive(serde::Serialize, serde::Deserialize)]
struct Counters {
    next_seq: u64,
    messages: u64,
    bytes: u64,
    received: u64,
    forwarded: u64,
    dropped: [u64; DropReason::COUNT],
}

impl From<Counters> for Meta {
    fn from(c: Counters) -> Meta {
        Meta {
            next_seq: c.next_seq,
            messages: c.messages,
            bytes: c.bytes,
            received: c.received,
            forwarded: c.forwarded,
            dropped: c.dropped,
            ..Meta::default()
        }
    }
}

/// The format-1 meta layout before `DropReason::Purged`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct MetaFiveReasons {
    next_seq: u64,
    messages: u64,
    bytes: u64,
    received: u64,
    forwarded: u64,
    dropped: [u64; 5],
}

impl From<MetaFiveReasons> for Meta {
    fn from(old: MetaFiveReasons) -> Meta {
        let mut dropped = [0; DropReason::COUNT];
        dropped[..5].copy_from_slice(&old.dropped);
        Meta {
            next_seq: old.next_seq,
            messages: old.messages,
            bytes: old.bytes,
            received: old.received,
            forwarded: old.forwarded,
            dropped,
            ..Meta::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Properties;

    fn sample() -> Record {
        Record {
            topic: "down/a/Grüße".into(),
            payload: (0..300u32).map(|i| i as u8).collect(),
            qos: 1,
            retain: true,
            received_at_ms: 1_700_000_000_123,
            properties: Properties {
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into())],
                content_type: Some("text/plain".into()),
                ..Properties::default()
            },
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(decode(&encode(&r)), Ok(r));
    }

    /// `Record` as it was serialized before its payload was written as
    /// bytes (a sequence of u8).
    #[derive(serde::Serialize)]
    struct RecordAsSeq<'a> {
        topic: &'a str,
        payload: &'a Vec<u8>,
        qos: u8,
        retain: bool,
        received_at_ms: u64,
        properties: &'a crate::store::Properties,
    }

    #[test]
    fn the_payload_as_bytes_encodes_exactly_as_the_sequence_did() {
        let r = sample();
        let old = RecordAsSeq {
            topic: &r.topic,
            payload: &r.payload,
            qos: r.qos,
            retain: r.retain,
            received_at_ms: r.received_at_ms,
            properties: &r.properties,
        };
        let mut bytes = Vec::new();
        encode_value_into(&old, RECORD_FORMAT, &mut bytes);
        assert_eq!(bytes, encode(&r));
        assert_eq!(decode(&bytes), Ok(r));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len} bytes was accepted");
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn meta_written_before_purged_existed_is_read_with_purged_zero() {
        let old = MetaFiveReasons {
            next_seq: 9,
            messages: 3,
            bytes: 300,
            received: 20,
            forwarded: 7,
            dropped: [1, 2, 3, 4, 0],
        };
        let mut bytes = Vec::new();
        encode_value_into(&old, RECORD_FORMAT, &mut bytes);
        let meta = decode_meta(&bytes).unwrap();
        let want = Meta {
            next_seq: 9,
            messages: 3,
            bytes: 300,
            received: 20,
            forwarded: 7,
            dropped: [1, 2, 3, 4, 0, 0],
            ..Meta::default()
        };
        assert_eq!(meta, want);
        // The current layout round-trips, and is not mistaken for the old one.
        let mut current = want.clone();
        current.dropped[DropReason::Purged as usize] = 5;
        assert_eq!(decode_meta(&encode_meta(&current)), Ok(current));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_rejected() {
        assert_eq!(decode(&[]), Err(CodecError::Truncated(0)));
        assert_eq!(decode(&[9, 0, 0, 0, 0]), Err(CodecError::UnknownFormat(9)));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let len = rng.usize(0..64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if !b.is_empty() {
                b[0] = RECORD_FORMAT;
            }
            let _ = decode(&b); // must not panic
        }
        // A valid body followed by junk, with a checksum over both.
        let mut b = encode(&sample());
        b.push(0);
        let crc = crc32fast::hash(&b[HEADER..]);
        b[1..HEADER].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), Err(CodecError::Trailing(1)));
    }

    fn batch_of(records: &[Record], first: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for r in records {
            b.push(r);
        }
        b.seal(first)
    }

    #[test]
    fn a_batch_larger_than_a_value_is_split_in_order() {
        let records: Vec<Record> = (0..20u8)
            .map(|i| Record {
                payload: vec![i; 1000],
                ..sample()
            })
            .collect();
        let mut b = BatchBuilder::new();
        for r in &records {
            b.push(r);
        }
        b.push(&Record {
            payload: vec![7; 9000],
            ..sample()
        });
        let values = b.finish(100, 7 * 1024);
        assert!(values.len() > 3, "{} values", values.len());
        let mut next = 100;
        let mut got = Vec::new();
        for (key, value) in &values {
            assert_eq!(*key, next, "values follow each other");
            let spans = batch_spans(*key, value).unwrap();
            assert!(
                value.len() <= 7 * 1024 || spans.len() == 1,
                "a value over the size holds one record"
            );
            next += spans.len() as u64;
            got.extend(spans.iter().map(|s| decode(&value[s.clone()]).unwrap().payload.len()));
        }
        assert_eq!(next, 121);
        assert_eq!(got, [vec![1000; 20], vec![9000]].concat());
    }

    #[test]
    fn a_batch_value_round_trips_and_a_v1_value_is_a_batch_of_one() {
        let records: Vec<Record> = (0..5u8)
            .map(|i| Record {
                payload: vec![i; usize::from(i) * 7],
                ..sample()
            })
            .collect();
        let value = batch_of(&records, 42);
        assert_eq!(value[0], FORMAT);
        let spans = batch_spans(42, &value).unwrap();
        let got: Vec<Record> = spans.iter().map(|s| decode(&value[s.clone()]).unwrap()).collect();
        assert_eq!(got, records);
        assert_eq!(
            spans.iter().map(|s| s.len()).collect::<Vec<_>>(),
            records.iter().map(|r| encode(r).len()).collect::<Vec<_>>(),
            "a record's stored size is its own encoding's"
        );
        assert!(batch_spans(41, &value).is_err(), "a value under another key's sequence");
        let v1 = encode(&sample());
        assert_eq!(
            batch_spans(7, &v1),
            Ok(std::iter::once(0..v1.len()).collect::<Vec<_>>())
        );
        // Evicting the oldest record of a batch being built.
        let mut b = BatchBuilder::new();
        for r in &records {
            b.push(r);
        }
        b.pop_front();
        b.pop_back();
        let value = b.seal(43);
        let spans = batch_spans(43, &value).unwrap();
        let got: Vec<Record> = spans.iter().map(|s| decode(&value[s.clone()]).unwrap()).collect();
        assert_eq!(got, records[1..4]);
    }

    #[test]
    fn every_truncation_and_bit_flip_of_a_batch_value_is_caught() {
        let records = vec![sample(), sample(), sample()];
        let value = batch_of(&records, 9);
        for len in 0..value.len() {
            assert!(
                batch_spans(9, &value[..len]).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
        for i in 0..value.len() * 8 {
            let mut b = value.clone();
            b[i / 8] ^= 1 << (i % 8);
            let caught = match batch_spans(9, &b) {
                Err(_) => true,
                Ok(spans) => spans.iter().any(|s| decode(&b[s.clone()]).is_err()),
            };
            assert!(caught, "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn meta_with_acked_runs_round_trips_and_v1_meta_is_read_with_no_acked() {
        let meta = Meta {
            next_seq: 100,
            messages: 5,
            bytes: 500,
            received: 120,
            forwarded: 110,
            dropped: [1, 0, 2, 0, 0, 2],
            low_water: 60,
            acked: [61, 62, 63, 70, 90, 91].into_iter().collect(),
        };
        let bytes = encode_meta(&meta);
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode_meta(&bytes), Ok(meta));
        let v1 = Counters {
            next_seq: 9,
            messages: 3,
            bytes: 300,
            received: 20,
            forwarded: 7,
            dropped: [1, 2, 3, 4, 0, 0],
        };
        let mut bytes = Vec::new();
        encode_value_into(&v1, RECORD_FORMAT, &mut bytes);
        let got = decode_meta(&bytes).unwrap();
        assert_eq!((got.next_seq, got.received, got.low_water), (9, 20, 0));
        assert!(got.acked.is_empty());
    }
}
