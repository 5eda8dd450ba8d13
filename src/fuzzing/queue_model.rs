//! The `queue_model` fuzz target: one queue against the reference model
//! ([`Model`], `store/model.rs`) over an arbitrary sequence of operations.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use super::arbitrary_record;
use crate::store::model::Model;
use crate::store::{DropReason, Overflow, Queue, QueueLimits, Record, Store};

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
        model.check(&q, &limits, &format!("queue_model step {step} after {op:?}"));
    }
    drop(q);
    drop(store);
}
