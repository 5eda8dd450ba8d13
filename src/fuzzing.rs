//! The bodies of ferry's fuzz targets (feature `fuzzing`).
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
//! - [`queue_model`]: one queue against a `VecDeque` model over an arbitrary
//!   sequence of operations (append, commit, read window, ack, drop, limit
//!   changes, TTL expiry on a fake clock, close and reopen), checking
//!   contents, sequence numbers, depth, totals and the invariant
//!   `received == forwarded + dropped + queued` after every step.
//! - [`config_parse`]: the configuration parser on arbitrary text: it never
//!   panics, every error names the file, and every configuration it accepts
//!   keeps the promises the rest of ferry relies on.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::config::Config;
use crate::store::record::{self, decode, encode, CodecError, FORMAT};
use crate::store::{AppendOutcome, DropReason, Overflow, Properties, Queue, QueueLimits, Record, Store, Totals};
use crate::topic::{self, TopicMap};

// ---------------------------------------------------------------------------
// record_codec

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

    let mut framed = Vec::with_capacity(data.len() + 5);
    framed.push(FORMAT);
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    check_decoded(&framed, "framed with a valid header");

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
    let header_ok = bytes.len() >= 5 && bytes[0] == FORMAT && crc32fast::hash(&bytes[5..]).to_le_bytes() == bytes[1..5];
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
            assert!(f != FORMAT, "record_codec ({how}): UnknownFormat({f})")
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
            header_ok,
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

// ---------------------------------------------------------------------------
// queue_model

/// Operations per input, and reopens per input (a reopen costs a few ms).
const MAX_OPS: usize = 64;
const MAX_REOPENS: usize = 4;
const MAX_BATCH: usize = 8;
/// The longest TTL (in seconds) whose milliseconds fit in a u64. Longer
/// ones once wrapped around and expired messages at once (finding F1,
/// docs/fuzzing.md).
const WRAP_TTL_SECS: u64 = u64::MAX / 1000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OverflowSpec {
    Block,
    DropOldest,
    DropNew,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TtlSpec {
    None,
    Millis(u16),
    /// Any TTL in seconds.
    Secs(u64),
    /// TTLs around the longest whose milliseconds fit in a u64: a random
    /// u64 almost never lands where a wrap-around makes the TTL short.
    NearWrap(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct LimitsSpec {
    max_bytes: Option<u16>,
    max_messages: Option<u8>,
    overflow: OverflowSpec,
    ttl: TtlSpec,
}

impl LimitsSpec {
    fn limits(self) -> QueueLimits {
        QueueLimits {
            max_bytes: self.max_bytes.map_or(0, u64::from),
            max_messages: self.max_messages.map_or(0, u64::from),
            overflow: match self.overflow {
                OverflowSpec::Block => Overflow::Block,
                OverflowSpec::DropOldest => Overflow::DropOldest,
                OverflowSpec::DropNew => Overflow::DropNew,
            },
            ttl: match self.ttl {
                TtlSpec::None => None,
                TtlSpec::Millis(ms) => Some(Duration::from_millis(u64::from(ms))),
                TtlSpec::Secs(s) => Some(Duration::from_secs(s)),
                TtlSpec::NearWrap(n) => Some(Duration::from_secs(WRAP_TTL_SECS - 1000 + u64::from(n % 2000))),
            },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Append a batch of this many records (mod MAX_BATCH + 1).
    Append(u8),
    /// Commit: `Store::flush`.
    Flush,
    /// Read up to this many entries from the cursor, as the drainer does.
    Read(u8),
    /// Ack the entries of the window picked by the mask's bits.
    Ack(u64),
    /// Ack a sequence number relative to the next one: stale, or never used.
    AckOther(i8),
    /// Drop the entries of the window picked by the mask, for a reason.
    Drop(u64, u8),
    /// Move the fake clock forward.
    Advance(u32),
    /// Move the clock forward, then `expire(now)`.
    Expire(u16),
    /// Reconnect: the drainer starts again from the oldest entry.
    Reconnect,
    /// Open the queue again with new limits (the same queue, new bounds).
    SetLimits(LimitsSpec),
    /// Close the store and open it again; flushed first when true.
    Reopen(bool),
}

/// The model of one queue: entries (seq, record, stored size) in order, and
/// the totals.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    entries: VecDeque<(u64, Record, u64)>,
    next_seq: u64,
    totals: Totals,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.2).sum()
    }

    fn full_for(&self, l: &QueueLimits, size: u64) -> bool {
        (l.max_messages > 0 && self.entries.len() as u64 + 1 > l.max_messages)
            || (l.max_bytes > 0 && self.bytes() + size > l.max_bytes)
    }

    /// What `append` must do, by the rules in the store's documentation.
    fn append(&mut self, l: &QueueLimits, batch: &[Record]) -> AppendOutcome {
        let mut out = AppendOutcome::default();
        let mut added = Vec::new();
        'records: for (i, r) in batch.iter().enumerate() {
            let size = encode(r).len() as u64;
            if l.max_bytes > 0 && size > l.max_bytes {
                self.totals.received += 1;
                self.totals.dropped[DropReason::TooLarge as usize] += 1;
                out.dropped_new += 1;
                continue;
            }
            while self.full_for(l, size) {
                match l.overflow {
                    Overflow::Block => {
                        out.refused = batch.len() - i;
                        break 'records;
                    }
                    Overflow::DropNew => {
                        self.totals.received += 1;
                        self.totals.dropped[DropReason::Overflow as usize] += 1;
                        out.dropped_new += 1;
                        continue 'records;
                    }
                    Overflow::DropOldest => {
                        assert!(
                            self.entries.pop_front().is_some(),
                            "queue_model: model bug: full with nothing to evict"
                        );
                        self.totals.dropped[DropReason::Overflow as usize] += 1;
                        out.evicted += 1;
                    }
                }
            }
            self.entries.push_back((self.next_seq, r.clone(), size));
            added.push(self.next_seq);
            self.next_seq += 1;
            self.totals.received += 1;
        }
        out.accepted = added.iter().filter(|s| self.entries.iter().any(|e| e.0 == **s)).count();
        out
    }

    fn remove(&mut self, seqs: &[u64], reason: Option<DropReason>) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !seqs.contains(&e.0));
        let removed = before - self.entries.len();
        match reason {
            None => self.totals.forwarded += removed as u64,
            Some(r) => self.totals.dropped[r as usize] += removed as u64,
        }
        removed
    }

    /// Entries at the head received at least TTL ago.
    fn expire(&mut self, l: &QueueLimits, now_ms: u64) -> usize {
        let Some(ttl) = l.ttl else { return 0 };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut n = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| e.1.received_at_ms.saturating_add(ttl_ms) <= now_ms)
        {
            self.entries.pop_front();
            n += 1;
        }
        self.totals.dropped[DropReason::Expired as usize] += n as u64;
        n
    }
}

/// A directory removed when dropped (the fuzzing feature has no tempfile).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("queue_model: cannot create a scratch directory");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small page cache: the fuzzer opens thousands of stores.
const CACHE_BYTES: u64 = 1 << 20;
const QUEUE: &str = "fuzz/out";

fn open(dir: &Path, limits: QueueLimits, step: usize) -> (Store, Queue) {
    let store = Store::open_with_cache(dir, CACHE_BYTES)
        .unwrap_or_else(|e| panic!("queue_model step {step}: the store does not open again: {e}"));
    let queue = store
        .queue(QUEUE, limits)
        .unwrap_or_else(|e| panic!("queue_model step {step}: the queue does not open: {e}"));
    (store, queue)
}

/// Checks the queue against the model: every entry (sequence number and
/// record) in order, depth in messages and bytes, totals, the invariant.
fn check(q: &Queue, m: &Model, limits: &QueueLimits, step: usize, op: &Op) {
    let ctx = || format!("queue_model step {step} after {op:?}");
    let stored = q
        .read(0, usize::MAX)
        .unwrap_or_else(|e| panic!("{}: read failed: {e}", ctx()));
    let got: Vec<(u64, &Record)> = stored.iter().map(|e| (e.seq, &e.record)).collect();
    let want: Vec<(u64, &Record)> = m.entries.iter().map(|e| (e.0, &e.1)).collect();
    if got != want {
        let seqs = |v: &[(u64, &Record)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(
            seqs(&got),
            seqs(&want),
            "{}: the queue's sequence numbers differ from the model's",
            ctx()
        );
        panic!("{}: the queue's records differ from the model's", ctx());
    }
    let (d, t) = q.stats();
    assert_eq!(t, m.totals, "{}: totals", ctx());
    assert_eq!(d.messages, m.entries.len() as u64, "{}: depth in messages", ctx());
    assert_eq!(d.bytes, m.bytes(), "{}: depth in bytes", ctx());
    assert_eq!(
        t.received,
        t.forwarded + t.dropped_total() + d.messages,
        "{}: received == forwarded + dropped + queued broken: {t:?} {d:?}",
        ctx()
    );
    assert_eq!(
        (q.depth(), q.totals()),
        (d, t),
        "{}: depth()/totals() disagree with stats()",
        ctx()
    );
    assert_eq!(q.first_seq(), m.entries.front().map(|e| e.0), "{}: first_seq", ctx());
    assert_eq!(
        q.oldest_received_at_ms(),
        m.entries.front().map(|e| e.1.received_at_ms),
        "{}: oldest_received_at_ms",
        ctx()
    );
    assert_eq!(q.has_space(), !m.full_for(limits, 0), "{}: has_space", ctx());
}

/// One queue against a `VecDeque` model over the operations in `data`.
pub fn queue_model(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(spec) = u.arbitrary::<LimitsSpec>() else {
        return;
    };
    let mut limits = spec.limits();
    let mut clock: u64 = u.arbitrary::<u32>().map_or(0, u64::from);

    let dir = ScratchDir::new();
    let (mut store, mut q) = open(&dir.0, limits, 0);
    let mut model = Model::default();
    // States the queue may be in after a close without a flush: every state
    // since the last flush (sled may or may not have written them).
    let mut since_flush: Vec<Model> = vec![model.clone()];
    let mut cursor = 0u64;
    let mut window: Vec<u64> = Vec::new();
    let mut reopens = 0;

    for step in 1..=MAX_OPS {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        let ctx = |what: &str| format!("queue_model step {step} ({op:?}): {what}");
        let mut mutated = false;
        match op {
            Op::Append(n) => {
                let n = usize::from(n) % (MAX_BATCH + 1);
                let mut batch = Vec::with_capacity(n);
                for _ in 0..n {
                    match arbitrary_record(&mut u, clock) {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let out = q
                    .append(&batch)
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("append failed: {e}"))));
                let want = model.append(&limits, &batch);
                assert_eq!(out, want, "{}", ctx("the append outcome differs from the model's"));
                mutated = true;
            }
            Op::Flush => {
                store
                    .flush()
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("flush failed: {e}"))));
                since_flush = vec![model.clone()];
            }
            Op::Read(max) => {
                let max = usize::from(max % 17);
                let got = q
                    .read(cursor, max)
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("read failed: {e}"))));
                let want: Vec<(u64, &Record)> = model
                    .entries
                    .iter()
                    .filter(|e| e.0 >= cursor)
                    .take(max)
                    .map(|e| (e.0, &e.1))
                    .collect();
                let got_pairs: Vec<(u64, &Record)> = got.iter().map(|e| (e.seq, &e.record)).collect();
                assert_eq!(
                    got_pairs,
                    want,
                    "{}",
                    ctx(&format!("the window read from {cursor} differs from the model's"))
                );
                if let Some(last) = got.last() {
                    cursor = last.seq + 1;
                }
                window.extend(got.iter().map(|e| e.seq));
            }
            Op::Ack(mask) | Op::Drop(mask, _) => {
                let picked: Vec<u64> = window
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                    .map(|(_, s)| *s)
                    .collect();
                window.retain(|s| !picked.contains(s));
                let reason = match op {
                    Op::Drop(_, r) => Some(DropReason::ALL[usize::from(r) % DropReason::ALL.len()]),
                    _ => None,
                };
                let removed = match reason {
                    None => q.ack(&picked),
                    Some(r) => q.drop_entries(&picked, r),
                }
                .unwrap_or_else(|e| panic!("{}", ctx(&format!("removal failed: {e}"))));
                let want = model.remove(&picked, reason);
                assert_eq!(removed, want, "{}", ctx(&format!("removed count for {picked:?}")));
                mutated = true;
            }
            Op::AckOther(delta) => {
                let seq = model.next_seq.saturating_add_signed(i64::from(delta));
                let removed = q
                    .ack(&[seq, seq])
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("ack failed: {e}"))));
                let want = model.remove(&[seq], None);
                assert_eq!(
                    removed,
                    want,
                    "{}",
                    ctx(&format!("removed count for seq {seq} acked twice in one call"))
                );
                mutated = true;
            }
            Op::Advance(ms) => clock = clock.saturating_add(u64::from(ms)),
            Op::Expire(ms) => {
                clock = clock.saturating_add(u64::from(ms));
                let removed = q
                    .expire(clock)
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("expire failed: {e}"))));
                let want = model.expire(&limits, clock);
                assert_eq!(
                    removed,
                    want,
                    "{}",
                    ctx(&format!("expired count at {clock} ms with ttl {:?}", limits.ttl))
                );
                mutated = true;
            }
            Op::Reconnect => {
                cursor = 0;
                window.clear();
            }
            Op::SetLimits(spec) => {
                limits = spec.limits();
                q = store
                    .queue(QUEUE, limits)
                    .unwrap_or_else(|e| panic!("{}", ctx(&format!("queue failed: {e}"))));
                assert_eq!(q.limits(), limits, "{}", ctx("the new limits were not taken"));
            }
            Op::Reopen(flush) => {
                if reopens == MAX_REOPENS {
                    continue;
                }
                reopens += 1;
                if flush {
                    store
                        .flush()
                        .unwrap_or_else(|e| panic!("{}", ctx(&format!("flush failed: {e}"))));
                    since_flush = vec![model.clone()];
                }
                drop(q);
                drop(store);
                (store, q) = open(&dir.0, limits, step);
                // The reopened queue holds one of the states since the last
                // flush; adopt it.
                let (d, t) = q.stats();
                let stored: Vec<u64> = q
                    .read(0, usize::MAX)
                    .map(|v| v.iter().map(|e| e.seq).collect())
                    .unwrap_or_default();
                let found = since_flush.iter().rposition(|s| {
                    s.totals == t
                        && s.entries.len() as u64 == d.messages
                        && s.entries.iter().map(|e| e.0).eq(stored.iter().copied())
                });
                let Some(found) = found else {
                    panic!(
                        "{}",
                        ctx(&format!(
                            "after reopening, the queue ({} entries, {t:?}) is in no state since the last flush (latest: {} entries, {:?})",
                            d.messages,
                            model.entries.len(),
                            model.totals
                        ))
                    )
                };
                // Later states are gone; the next close may still lose back
                // to the last flush.
                since_flush.truncate(found + 1);
                model = since_flush[found].clone();
                cursor = 0;
                window.clear();
            }
        }
        if mutated {
            since_flush.push(model.clone());
        }
        check(&q, &model, &limits, step, &op);
    }
    drop(q);
    drop(store);
}

// ---------------------------------------------------------------------------
// config_parse

const CONFIG_PATH: &str = "fuzz/ferry.toml";

/// The configuration parser on arbitrary text (invalid UTF-8 replaced).
///
/// - `Config::parse` never panics;
/// - an error names the file: it renders as `path:line:column: message` or
///   `path: message`, with a line inside the text and a non-empty message;
/// - an accepted configuration keeps the promises the links rely on: unique
///   link names and client ids, at least one route per link, sane timers,
///   and routes whose topic mapping gives valid topics that what the route
///   writes matches (a prefix mapping's destination filter, a template's
///   written filter) and, for a prefix mapping, maps back to where it came from.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(CONFIG_PATH);
    let config = match Config::parse(&text, path) {
        Err(e) => {
            let shown = e.to_string();
            assert_eq!(e.path(), path, "config_parse: the error names another file: {shown}");
            assert!(
                shown.starts_with(&format!("{CONFIG_PATH}:")),
                "config_parse: the error does not start with the file's path: {shown}"
            );
            assert!(
                !e.message().trim().is_empty(),
                "config_parse: an empty error message: {shown}"
            );
            if let Some(line) = e.line() {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "config_parse: the error points at line {line} of a text of {lines} lines: {shown}"
                );
                let prefix = format!("{CONFIG_PATH}:{line}:");
                assert!(
                    shown.starts_with(&prefix),
                    "config_parse: the error with a line renders without it: {shown}"
                );
            }
            return;
        }
        Ok(config) => config,
    };
    let summary = config.summary();
    assert!(
        summary.contains(CONFIG_PATH),
        "config_parse: the summary does not name the file"
    );
    assert_eq!(config.source, path);
    assert!(
        !config.data_dir.as_os_str().is_empty(),
        "config_parse: an empty data_dir was accepted"
    );
    assert!(config.hub.port > 0, "config_parse: hub port 0 accepted");
    let mut names = std::collections::HashSet::new();
    let mut client_ids = std::collections::HashSet::new();
    for link in &config.links {
        assert!(
            names.insert(link.name.clone()),
            "config_parse: link name {:?} accepted twice",
            link.name
        );
        assert!(
            client_ids.insert(link.client_id.clone()),
            "config_parse: edge client id {:?} accepted twice",
            link.client_id
        );
        assert!(
            client_ids.insert(link.hub_client_id(&config.hub)),
            "config_parse: hub client id {:?} of link {:?} collides with another client id",
            link.hub_client_id(&config.hub),
            link.name
        );
        assert!(
            !link.routes.is_empty(),
            "config_parse: link {:?} without routes accepted",
            link.name
        );
        assert!(link.port > 0, "config_parse: link port 0 accepted");
        assert!(
            link.keepalive >= Duration::from_secs(5),
            "config_parse: keepalive under 5 s (rumqttc panics)"
        );
        assert!(
            link.reconnect_min <= link.reconnect_max,
            "config_parse: reconnect_min > reconnect_max"
        );
        assert!(
            link.reconnect_min > Duration::ZERO,
            "config_parse: reconnect_min of zero accepted"
        );
        assert!(link.inflight > 0, "config_parse: inflight 0 accepted");
        assert!(
            (1024..=256 << 20).contains(&link.max_message_bytes),
            "config_parse: max_message_bytes {} accepted",
            link.max_message_bytes
        );
        for route in &link.routes {
            assert!(route.qos <= 2, "config_parse: qos {} accepted", route.qos);
            assert!(route.line >= 1, "config_parse: route line 0");
            check_route_mapping(
                route.source_filter(),
                route.written_filter(),
                !route.is_template(),
                |t| route.map_to_dest(t),
            );
        }
    }
}

/// A topic that `filter` matches, made by filling its wildcards.
fn topic_for(filter: &str, fill: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "+" => fill.to_string(),
            "#" => format!("{fill}/deeper"),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `dest` is what the route writes as a filter; a prefix mapping (not a
/// template, which may drop levels) must also map back.
fn check_route_mapping(source: &str, dest: &str, reversible: bool, map: impl Fn(&str) -> Option<String>) {
    let back = reversible.then(|| {
        TopicMap::new(dest, source)
            .unwrap_or_else(|e| panic!("config_parse: route {source:?} -> {dest:?} accepted but cannot map back: {e}"))
    });
    for fill in ["x", "", "$y"] {
        let topic = topic_for(source, fill);
        if topic::validate_topic(&topic).is_err() || !topic::matches(source, &topic) {
            continue;
        }
        let Some(mapped) = map(&topic) else { continue };
        assert!(
            topic::validate_topic(&mapped).is_ok(),
            "config_parse: route {source:?} -> {dest:?} maps {topic:?} to {mapped:?}, not a valid topic"
        );
        assert!(
            topic::matches(dest, &mapped),
            "config_parse: route {source:?} -> {dest:?} maps {topic:?} to {mapped:?}, which {dest:?} does not match"
        );
        if let Some(back) = &back {
            assert_eq!(
                back.map(&mapped).as_deref(),
                Some(topic.as_str()),
                "config_parse: route {source:?} -> {dest:?}: {topic:?} -> {mapped:?} does not map back"
            );
        }
    }
}
