//! The `record_codec` fuzz target: the on-disk record (and meta) codec on
//! arbitrary bytes.

use arbitrary::Unstructured;

use super::arbitrary_record;
use crate::store::record::{self, decode, encode, CodecError, FORMAT, RECORD_FORMAT};

/// The record codec on arbitrary bytes.
///
/// 1. `decode` and the meta decoder never panic on the bytes as given, and
///    accept them only with the right format byte and checksum.
/// 2. The same bytes with a valid header and checksum put in front of them
///    (the fuzzer cannot forge a CRC32 itself) reach the bincode body
///    decoder: it never panics, and whatever it accepts re-encodes to bytes
///    that decode to the same value.
/// 3. A record built from the bytes round-trips, and every truncation of
///    its encoding and a bit flip chosen by the bytes are rejected.
pub fn record_codec(data: &[u8]) {
    check_decoded(data, "as given");

    for format in [RECORD_FORMAT, FORMAT] {
        let mut framed = Vec::with_capacity(data.len() + 5);
        framed.push(format);
        framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        framed.extend_from_slice(data);
        check_decoded(&framed, "framed with a valid header");
    }

    let mut u = Unstructured::new(data);
    let Ok(record) = arbitrary_record(&mut u, 0) else {
        return;
    };
    let bytes = encode(&record);
    assert_eq!(
        decode(&bytes).as_ref(),
        Ok(&record),
        "record_codec: a record did not survive encode/decode"
    );
    let cut = u.int_in_range(0..=bytes.len() - 1).unwrap_or(0);
    assert!(
        decode(&bytes[..cut]).is_err(),
        "record_codec: the encoding truncated to {cut} of {} bytes was accepted",
        bytes.len()
    );
    let bit = u.int_in_range(0..=bytes.len() * 8 - 1).unwrap_or(0);
    let mut flipped = bytes.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(
        decode(&flipped).is_err(),
        "record_codec: the encoding with bit {bit} flipped was accepted"
    );
}

fn check_decoded(bytes: &[u8], how: &str) {
    let valid = |format: u8| {
        bytes.len() >= 5 && bytes[0] == format && crc32fast::hash(&bytes[5..]).to_le_bytes() == bytes[1..5]
    };
    let header_ok = valid(RECORD_FORMAT);
    check_batch(bytes, how);
    match decode(bytes) {
        Ok(record) => {
            assert!(
                header_ok,
                "record_codec ({how}): accepted a value without a valid format byte and checksum"
            );
            let again = encode(&record);
            assert_eq!(
                decode(&again).as_ref(),
                Ok(&record),
                "record_codec ({how}): a decoded record re-encoded to a different record"
            );
        }
        Err(CodecError::Truncated(n)) => assert!(
            n < 5 && n == bytes.len(),
            "record_codec ({how}): Truncated({n}) for {} bytes",
            bytes.len()
        ),
        Err(CodecError::UnknownFormat(f)) => {
            assert!(f != RECORD_FORMAT, "record_codec ({how}): UnknownFormat({f})")
        }
        Err(CodecError::Checksum) => assert!(!header_ok, "record_codec ({how}): Checksum error on a valid checksum"),
        Err(CodecError::Body(_) | CodecError::Trailing(_)) => {
            assert!(
                header_ok,
                "record_codec ({how}): body error before the header was checked"
            )
        }
    }
    if let Ok(meta) = record::decode_meta(bytes) {
        assert!(
            valid(RECORD_FORMAT) || valid(FORMAT),
            "record_codec ({how}): accepted a meta value without a valid header"
        );
        let again = record::encode_meta(&meta);
        assert_eq!(
            record::decode_meta(&again),
            Ok(meta),
            "record_codec ({how}): a decoded meta value re-encoded differently"
        );
    }
}

/// A batch value's index read from arbitrary bytes: never panics, and the
/// spans it accepts lie inside the value, in order, without overlap.
fn check_batch(bytes: &[u8], how: &str) {
    let key = bytes
        .len()
        .checked_sub(8)
        .and_then(|at| bytes[at..].try_into().ok())
        .map_or(0, u64::from_le_bytes);
    if let Ok(spans) = record::batch_spans(key, bytes) {
        let mut at = 0;
        for span in &spans {
            assert!(
                span.start >= at && span.end <= bytes.len() && span.start <= span.end,
                "record_codec ({how}): batch span {span:?} outside the value or overlapping"
            );
            at = span.end;
        }
    }
}
