//! The on-disk encoding of queued records and of a queue's meta entry.
//!
//! Every value is `[format: u8][crc32 of the rest: u32 LE][bincode 2 body]`.
//! The format byte lets a later ferry read what an earlier one wrote; the
//! checksum catches torn or damaged values, which are then dropped and
//! counted (`reason="corrupt"`), never handed on as messages. Decoding never
//! panics, whatever the bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{DropReason, Meta, Record};

/// The current format of record and meta values.
pub const FORMAT: u8 = 1;
const HEADER: usize = 5;
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

fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT, 0, 0, 0, 0];
    // Serializing plain structs of strings, bytes and integers cannot fail
    // except past the size limit, which the caller's own limits exclude;
    // an empty body would then fail its decode and be counted as corrupt.
    if bincode::serde::encode_into_std_write(value, &mut out, config()).is_err() {
        out.truncate(HEADER);
    }
    let crc = crc32fast::hash(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER {
        return Err(CodecError::Truncated(bytes.len()));
    }
    if bytes[0] != FORMAT {
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
    encode_value(record)
}

pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_value(bytes)
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    encode_value(meta)
}

/// Reads a meta entry of either layout: the current one, or the one written
/// before the drop reason `purged` existed (five drop counters instead of
/// six). The two differ by one trailing counter, so a value is read by
/// exactly one of them: the current layout finds one counter missing in an
/// old value, the old layout finds a trailing byte in a new one.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta, CodecError> {
    match decode_value::<Meta>(bytes) {
        Err(CodecError::Body(current)) => match decode_value::<MetaFiveReasons>(bytes) {
            Ok(old) => Ok(old.into()),
            Err(_) => Err(CodecError::Body(current)),
        },
        other => other,
    }
}

/// The meta layout before `DropReason::Purged`.
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
        let meta = decode_meta(&encode_value(&old)).unwrap();
        let want = Meta {
            next_seq: 9,
            messages: 3,
            bytes: 300,
            received: 20,
            forwarded: 7,
            dropped: [1, 2, 3, 4, 0, 0],
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
                b[0] = FORMAT;
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
}
