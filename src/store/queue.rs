//! One queue: a sled tree of batch values, each holding the records of one
//! append and keyed by the sequence number of its first record, plus the
//! meta entry; changed together in atomic batches under one lock.
//!
//! # Invariants (besides the store's, `mod.rs`)
//! - a value holds records of one append with consecutive sequence numbers
//!   from its key (`record.rs`); a large append is split into values of at
//!   most [`MAX_VALUE_BYTES`] (or one record). Values do not overlap, and
//!   later values have higher keys. Sequence numbers between two values belong to no value: records
//!   dropped or evicted in the append that would have stored them;
//! - a stored record is *live* (queued) when its sequence is at least the
//!   meta's `low_water` and not in its `acked` set. `acked` holds only
//!   sequences at or above `low_water` of values still in the tree;
//! - a value stays in the tree while it holds a live record, and goes in the
//!   same atomic batch that takes its last one: sled's work grows with
//!   batches, not messages. After every mutation `low_water` is the first
//!   live sequence of the first value (or `next_seq` when there is none), so
//!   acknowledgements in order leave `acked` empty;
//! - the depth counters count the live records and their stored sizes.
//!
//! A value whose index is damaged cannot say how many live records it held:
//! it is removed, and the difference between the counters and a recount of
//! the readable values is what is counted as `corrupt` (see
//! `drop_damaged`), so the counters stay exact.
//!
//! `append` applies the queue's own bounds and the store-wide budget
//! (`budget.rs` decides whether this queue is growing; the overflow policy
//! is applied here, in the same batch as everything else).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use sled::IVec;
use tokio::sync::Notify;

use super::budget::Budget;
use super::ledger::Mark;
use super::record::{self, decode_meta, encode_meta, BatchBuilder, CodecError};
use super::{AppendOutcome, Depth, DropReason, Entry, Meta, Overflow, QueueLimits, Record, StoreError, Totals};

/// The largest batch value, about: a larger batch is split into several.
/// sled writes a leaf page over 128 KiB (a quarter of its 512 KiB segment) as
/// a blob file of its own, created, fsynced and later deleted at every
/// rewrite of the page, and a leaf holds up to 17 entries: values of at most
/// 7 KiB keep leaves under that. With one 200 KiB value per batch the blob
/// files made the store's files overshoot the budget (tests/budget.rs) and
/// cost as much CPU as the per-record sled work saved at 4 KiB.
const MAX_VALUE_BYTES: usize = 7 * 1024;

/// Sorts after every 8-byte value key.
const META_KEY: [u8; 9] = [0xff; 9];

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn is_live(low_water: u64, acked: &BTreeSet<u64>, seq: u64) -> bool {
    seq >= low_water && !acked.contains(&seq)
}

/// One stored value with its index read.
struct Stored {
    key: u64,
    value: IVec,
    spans: Vec<Range<usize>>,
}

impl Stored {
    fn end(&self) -> u64 {
        self.key + self.spans.len() as u64
    }
    fn contains(&self, seq: u64) -> bool {
        seq >= self.key && seq < self.end()
    }
    fn span(&self, seq: u64) -> Range<usize> {
        self.spans[(seq - self.key) as usize].clone()
    }
    fn size(&self, seq: u64) -> u64 {
        self.span(seq).len() as u64
    }
}

enum Value {
    Ok(Stored),
    /// The index is unreadable: what the value held is unknown.
    Damaged {
        key: u64,
        len: u64,
        error: CodecError,
    },
}

impl Value {
    /// None for a key that is not a value's (the meta entry).
    fn load(k: &[u8], value: IVec) -> Option<Value> {
        let key = seq_of(k)?;
        Some(match record::batch_spans(key, &value) {
            Ok(spans) => Value::Ok(Stored { key, value, spans }),
            Err(error) => Value::Damaged {
                key,
                len: value.len() as u64,
                error,
            },
        })
    }

    /// The sequences the value covers (a damaged one: none known).
    fn extent(&self) -> (u64, u64) {
        match self {
            Value::Ok(s) => (s.key, s.end()),
            Value::Damaged { key, .. } => (*key, *key),
        }
    }
}

/// One item of [`Live`]: a live record, or a value whose index is damaged.
enum Item {
    Entry {
        seq: u64,
        value: IVec,
        span: Range<usize>,
        /// The extent `[key, end)` of the value holding it.
        extent: (u64, u64),
    },
    Damaged {
        key: u64,
        len: u64,
        error: CodecError,
    },
}

/// The live records with `seq >= from`, oldest first, as of a snapshot of
/// the low-water mark and the acked set.
struct Live {
    tree: sled::Tree,
    from: u64,
    low_water: u64,
    acked: BTreeSet<u64>,
    values: Option<sled::Iter>,
    current: Option<Stored>,
    next: u64,
}

impl Live {
    fn new(tree: &sled::Tree, from: u64, meta: &Meta) -> Live {
        Live {
            tree: tree.clone(),
            from,
            low_water: meta.low_water,
            acked: meta.acked.clone(),
            values: None,
            current: None,
            next: 0,
        }
    }

    /// Starts at the value holding `from` (the last key at or below it).
    fn start(&self) -> sled::Result<sled::Iter> {
        let at = match self.tree.range(key(0)..=key(self.from)).next_back() {
            Some(item) => seq_of(&item?.0).unwrap_or(self.from),
            None => self.from,
        };
        Ok(self.tree.range(key(at)..key(u64::MAX)))
    }
}

impl Iterator for Live {
    type Item = sled::Result<Item>;

    fn next(&mut self) -> Option<sled::Result<Item>> {
        loop {
            if let Some(cur) = &self.current {
                while self.next < cur.end() {
                    let seq = self.next;
                    self.next += 1;
                    if !self.acked.contains(&seq) {
                        return Some(Ok(Item::Entry {
                            seq,
                            value: cur.value.clone(),
                            span: cur.span(seq),
                            extent: (cur.key, cur.end()),
                        }));
                    }
                }
                self.current = None;
            }
            if self.values.is_none() {
                match self.start() {
                    Ok(values) => self.values = Some(values),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (k, v) = match self.values.as_mut()?.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            match Value::load(&k, v) {
                None => continue,
                Some(Value::Ok(stored)) => {
                    self.next = stored.key.max(self.from).max(self.low_water);
                    self.current = Some(stored);
                }
                Some(Value::Damaged { key, len, error }) => return Some(Ok(Item::Damaged { key, len, error })),
            }
        }
    }
}

/// One stored entry as [`Queue::scan`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub seq: u64,
    /// Stored (encoded) size in bytes, as the byte counters count it.
    pub size: u64,
    /// The record, or why its stored value cannot be decoded.
    pub record: Result<Record, record::CodecError>,
}

/// A durable FIFO queue. Cheap to clone; all clones are the same queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    tree: sled::Tree,
    path: PathBuf,
    /// Shared with the store: set by any failed sled operation.
    poisoned: Arc<std::sync::atomic::AtomicBool>,
    state: Mutex<State>,
    appended: Notify,
    space_freed: Notify,
    /// The store-wide budget, shared by every queue of the store.
    budget: Arc<Budget>,
    /// Set while the budget holds this queue (its last append met it).
    held_by_budget: std::sync::atomic::AtomicBool,
}

struct State {
    meta: Meta,
    limits: QueueLimits,
}

impl State {
    fn full_for(&self, meta: &Meta, size: u64) -> bool {
        let l = &self.limits;
        (l.max_messages > 0 && meta.messages + 1 > l.max_messages)
            || (l.max_bytes > 0 && meta.bytes + size > l.max_bytes)
    }
}

/// The values an operation took records from: key -> end.
type Touched = BTreeMap<u64, u64>;

/// Counts one live record as gone (forwarded, or dropped for `reason`).
fn take(meta: &mut Meta, seq: u64, size: u64, reason: Option<DropReason>) {
    meta.acked.insert(seq);
    meta.messages = meta.messages.saturating_sub(1);
    meta.bytes = meta.bytes.saturating_sub(size);
    match reason {
        None => meta.forwarded += 1,
        Some(r) => meta.dropped[r as usize] += 1,
    }
}

fn forget_acked(meta: &mut Meta, range: Range<u64>) {
    let gone: Vec<u64> = meta.acked.range(range).copied().collect();
    for seq in gone {
        meta.acked.remove(&seq);
    }
}

impl Queue {
    pub(super) fn open(
        name: &str,
        tree: sled::Tree,
        limits: QueueLimits,
        path: PathBuf,
        poisoned: Arc<std::sync::atomic::AtomicBool>,
        budget: Arc<Budget>,
    ) -> Result<Queue, StoreError> {
        let err = |e| StoreError::from_sled(&path, e);
        let stored = tree.get(META_KEY).map_err(err)?;
        let meta = match stored.as_deref().map(decode_meta) {
            Some(Ok(meta)) => Some(meta),
            Some(Err(e)) => {
                tracing::warn!(queue = name, error = %e, "queue counters unreadable; rebuilding them from the records");
                None
            }
            None => None,
        };
        let mut meta = match meta {
            Some(m) => m,
            None => {
                let rebuilt = rebuild_meta(&tree).map_err(err)?;
                if stored.is_none() && rebuilt.messages > 0 {
                    tracing::warn!(
                        queue = name,
                        messages = rebuilt.messages,
                        "queue counters missing although records exist; rebuilt from the records (lifetime totals restart)"
                    );
                }
                rebuilt
            }
        };
        // Never reuse a sequence number, whatever the counters say.
        if let Some(last) = last_seq(&tree).map_err(err)? {
            meta.next_seq = meta.next_seq.max(last + 1);
        }
        budget.queue_opened(meta.bytes);
        Ok(Queue {
            inner: Arc::new(Inner {
                name: name.to_string(),
                tree,
                path,
                poisoned,
                state: Mutex::new(State { meta, limits }),
                appended: Notify::new(),
                space_freed: Notify::new(),
                budget,
                held_by_budget: Default::default(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The ledger's view of this queue now.
    pub(super) fn mark(&self) -> Mark {
        let st = self.lock();
        Mark {
            next_seq: st.meta.next_seq,
            received: st.meta.received,
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.lock().limits
    }

    pub fn set_limits(&self, limits: QueueLimits) {
        self.lock().limits = limits;
        self.inner.space_freed.notify_one();
    }

    /// The live records from `from`, as of now.
    fn live(&self, from: u64) -> Live {
        Live::new(&self.inner.tree, from, &self.lock().meta)
    }

    /// Appends records in order, applying the limits, as one batch value.
    /// Not durable until `Store::flush`. On error nothing changed.
    pub fn append(&self, records: &[Record]) -> Result<AppendOutcome, StoreError> {
        let mut st = self.lock();
        let mut meta = st.meta.clone();
        let mut batch = sled::Batch::default();
        let mut out = AppendOutcome::default();
        // Oldest entries first, for drop-oldest: those already in the tree
        // (read only when needed), then those added by this batch.
        let mut old: Option<Live> = None;
        let mut added = BatchBuilder::new();
        let mut first_added = meta.next_seq;
        let mut touched = Touched::new();
        // Bytes this batch writes, and whether the store budget held any of it.
        let (mut written, mut held_by_budget) = (0u64, false);
        'records: for (i, r) in records.iter().enumerate() {
            let size = added.push(r);
            if st.limits.max_bytes > 0 && size > st.limits.max_bytes {
                added.pop_back();
                meta.received += 1;
                meta.dropped[DropReason::TooLarge as usize] += 1;
                out.dropped_new += 1;
                continue;
            }
            // A growing queue over the store budget meets its overflow
            // policy; drop-oldest then frees as many bytes as it adds.
            let over_budget = self.inner.budget.holds(meta.bytes, written + size);
            held_by_budget |= over_budget;
            let mut budget_need = if over_budget { size } else { 0 };
            while st.full_for(&meta, size) || budget_need > 0 {
                match st.limits.overflow {
                    Overflow::Block => {
                        added.pop_back();
                        out.refused = records.len() - i;
                        break 'records;
                    }
                    Overflow::DropNew => {
                        added.pop_back();
                        meta.received += 1;
                        meta.dropped[DropReason::Overflow as usize] += 1;
                        out.dropped_new += 1;
                        continue 'records;
                    }
                    Overflow::DropOldest => {
                        let old = old.get_or_insert_with(|| Live::new(&self.inner.tree, 0, &st.meta));
                        let victim = loop {
                            match old.next() {
                                Some(Ok(Item::Entry { seq, span, extent, .. })) => break Some((seq, span, extent)),
                                // Left for `read` to drop and count.
                                Some(Ok(Item::Damaged { .. })) => continue,
                                Some(Err(e)) => return Err(self.error(e)),
                                None => break None,
                            }
                        };
                        let bytes = match victim {
                            Some((seq, span, extent)) => {
                                meta.acked.insert(seq);
                                touched.insert(extent.0, extent.1);
                                span.len() as u64
                            }
                            // The last one pushed is the record making room.
                            None if added.len() > 1 => {
                                first_added += 1;
                                out.accepted -= 1;
                                added.pop_front().unwrap_or(0)
                            }
                            None => break,
                        };
                        meta.messages = meta.messages.saturating_sub(1);
                        meta.bytes = meta.bytes.saturating_sub(bytes);
                        meta.dropped[DropReason::Overflow as usize] += 1;
                        out.evicted += 1;
                        budget_need = budget_need.saturating_sub(bytes);
                    }
                }
            }
            meta.next_seq += 1;
            meta.messages += 1;
            meta.bytes += size;
            meta.received += 1;
            written += size;
            out.accepted += 1;
        }
        drop(old);
        let new_value = (added.len() > 0).then(|| (first_added, first_added + added.len() as u64));
        if new_value.is_some() {
            for (first, value) in added.finish(first_added, MAX_VALUE_BYTES) {
                batch.insert(&key(first), value);
            }
        }
        self.settle(&mut meta, &touched, &mut BTreeSet::new(), new_value, &mut batch)?;
        batch.insert(&META_KEY, encode_meta(&meta));
        self.apply(&mut st, batch, meta)?;
        self.inner.budget.appended(written);
        let depth = st.meta.bytes;
        drop(st);
        self.inner
            .budget
            .set_held(&self.inner.name, &self.inner.held_by_budget, held_by_budget, depth);
        if out.accepted > 0 {
            self.inner.appended.notify_one();
        }
        if out.evicted > 0 {
            self.inner.space_freed.notify_one();
        }
        Ok(out)
    }

    /// After records were taken: removes from the tree (in `batch`) the
    /// touched values left without a live record, adding them to `removed`,
    /// and moves the low-water mark to the first live record of the first
    /// value left, `new_value` (added by this batch) counting as last.
    fn settle(
        &self,
        meta: &mut Meta,
        touched: &Touched,
        removed: &mut BTreeSet<u64>,
        new_value: Option<(u64, u64)>,
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        for (&start, &end) in touched {
            let below = meta.low_water.clamp(start, end) - start;
            let above = meta.acked.range(meta.low_water.max(start)..end).count() as u64;
            if below + above >= end - start {
                batch.remove(&key(start));
                removed.insert(start);
                forget_acked(meta, start..end);
            }
        }
        let mut head = None;
        for item in self.inner.tree.range(key(0)..key(u64::MAX)) {
            let (k, v) = item.map_err(|e| self.error(e))?;
            match Value::load(&k, v) {
                Some(value) if !removed.contains(&value.extent().0) => {
                    head = Some(value.extent());
                    break;
                }
                _ => {}
            }
        }
        match head.or(new_value) {
            None => {
                meta.low_water = meta.next_seq;
                meta.acked.clear();
            }
            Some((start, end)) => {
                meta.low_water = meta.low_water.max(start);
                while meta.low_water < end && meta.acked.remove(&meta.low_water) {
                    meta.low_water += 1;
                }
                meta.acked = meta.acked.split_off(&meta.low_water);
            }
        }
        Ok(())
    }

    /// Up to `max` entries with `seq >= from_seq`, in order. A record that
    /// fails to decode is removed, counted as dropped (corrupt) and logged;
    /// so is a value whose index is damaged (see `drop_damaged`).
    pub fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::with_capacity(max.min(1024));
        let mut corrupt = Vec::new();
        let mut damaged = false;
        for item in self.live(from_seq) {
            if entries.len() >= max {
                break;
            }
            match item.map_err(|e| self.error(e))? {
                Item::Entry { seq, value, span, .. } => match record::decode(&value[span]) {
                    Ok(record) => entries.push(Entry { seq, record }),
                    Err(e) => {
                        tracing::error!(queue = %self.inner.name, seq, error = %e, "damaged record removed (counted as dropped, reason=corrupt)");
                        corrupt.push(seq);
                    }
                },
                Item::Damaged { .. } => damaged = true,
            }
        }
        if !corrupt.is_empty() {
            self.drop_entries(&corrupt, DropReason::Corrupt)?;
        }
        if damaged {
            self.drop_damaged()?;
        }
        Ok(entries)
    }

    /// Removes every value whose index is damaged. What each held is not
    /// known record by record, so the live records of the readable values
    /// are counted again: the counters' excess is what was lost, counted as
    /// dropped (corrupt). Rare, and a full scan of the queue's indexes.
    fn drop_damaged(&self) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let mut meta = st.meta.clone();
        let mut batch = sled::Batch::default();
        let mut removed = BTreeSet::new();
        let (mut messages, mut bytes) = (0u64, 0u64);
        // The acked sequences of a damaged value lie before the next value.
        let mut after_damaged: Option<u64> = None;
        for item in self.inner.tree.range(key(0)..key(u64::MAX)) {
            let (k, v) = item.map_err(|e| self.error(e))?;
            match Value::load(&k, v) {
                None => {}
                Some(Value::Ok(s)) => {
                    if let Some(from) = after_damaged.take() {
                        forget_acked(&mut meta, from..s.key);
                    }
                    for seq in s.key.max(meta.low_water)..s.end() {
                        if !meta.acked.contains(&seq) {
                            messages += 1;
                            bytes += s.size(seq);
                        }
                    }
                }
                Some(Value::Damaged { key: at, len, error }) => {
                    tracing::error!(queue = %self.inner.name, seq = at, bytes = len, error = %error, "damaged batch of records removed (what it held is counted as dropped, reason=corrupt)");
                    batch.remove(&key(at));
                    removed.insert(at);
                    after_damaged = Some(at);
                }
            }
        }
        if let Some(from) = after_damaged {
            forget_acked(&mut meta, from..u64::MAX);
        }
        if removed.is_empty() {
            return Ok(0);
        }
        let lost = meta.messages.saturating_sub(messages);
        meta.dropped[DropReason::Corrupt as usize] += lost;
        meta.messages = messages;
        meta.bytes = bytes;
        self.settle(&mut meta, &Touched::new(), &mut removed, None, &mut batch)?;
        batch.insert(&META_KEY, encode_meta(&meta));
        self.apply(&mut st, batch, meta)?;
        drop(st);
        self.inner.space_freed.notify_one();
        Ok(lost)
    }

    pub fn first_seq(&self) -> Option<u64> {
        match self.live(0).next()?.ok()? {
            Item::Entry { seq, .. } => Some(seq),
            Item::Damaged { key, .. } => Some(key),
        }
    }

    /// Removes delivered entries (those still present) and counts them as
    /// forwarded. Returns how many were removed.
    pub fn ack(&self, seqs: &[u64]) -> Result<usize, StoreError> {
        self.remove(seqs, None)
    }

    /// Removes entries without delivery, counted as dropped for `reason`.
    pub fn drop_entries(&self, seqs: &[u64], reason: DropReason) -> Result<usize, StoreError> {
        self.remove(seqs, Some(reason))
    }

    fn remove(&self, seqs: &[u64], reason: Option<DropReason>) -> Result<usize, StoreError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        let mut st = self.lock();
        let mut meta = st.meta.clone();
        let mut batch = sled::Batch::default();
        let mut touched = Touched::new();
        let mut removed = 0;
        // The value holding the last sequence looked up.
        let mut holder: Option<Stored> = None;
        for seq in unique {
            if !is_live(meta.low_water, &meta.acked, seq) {
                continue;
            }
            if !holder.as_ref().is_some_and(|h| h.contains(seq)) {
                holder = match self.inner.tree.range(key(0)..=key(seq)).next_back() {
                    Some(item) => {
                        let (k, v) = item.map_err(|e| self.error(e))?;
                        match Value::load(&k, v) {
                            Some(Value::Ok(stored)) => Some(stored),
                            _ => None,
                        }
                    }
                    None => None,
                };
            }
            let Some(h) = holder.as_ref().filter(|h| h.contains(seq)) else {
                continue;
            };
            take(&mut meta, seq, h.size(seq), reason);
            touched.insert(h.key, h.end());
            removed += 1;
        }
        if removed == 0 {
            return Ok(0);
        }
        self.settle(&mut meta, &touched, &mut BTreeSet::new(), None, &mut batch)?;
        batch.insert(&META_KEY, encode_meta(&meta));
        self.apply(&mut st, batch, meta)?;
        let depth = st.meta.bytes;
        drop(st);
        if self.held_by_budget() && !self.inner.budget.holds(depth, 0) {
            self.inner
                .budget
                .set_held(&self.inner.name, &self.inner.held_by_budget, false, depth);
        }
        self.inner.space_freed.notify_one();
        Ok(removed)
    }

    /// With a TTL: drops entries from the head received at least TTL ago
    /// (at most 10,000 per call, to keep the lock short).
    pub fn expire(&self, now_ms: u64) -> Result<usize, StoreError> {
        let Some(ttl) = self.lock().limits.ttl else {
            return Ok(0);
        };
        // Saturate: a TTL beyond u64 milliseconds means "never", not a wrap to a short one.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut expired = Vec::new();
        let mut corrupt = Vec::new();
        let mut damaged = false;
        for item in self.live(0).take(10_000) {
            match item.map_err(|e| self.error(e))? {
                Item::Entry { seq, value, span, .. } => match record::decode(&value[span]) {
                    Ok(r) if r.received_at_ms.saturating_add(ttl_ms) <= now_ms => expired.push(seq),
                    Ok(_) => break,
                    Err(_) => corrupt.push(seq),
                },
                Item::Damaged { .. } => damaged = true,
            }
        }
        if !corrupt.is_empty() {
            self.drop_entries(&corrupt, DropReason::Corrupt)?;
        }
        if damaged {
            self.drop_damaged()?;
        }
        self.drop_entries(&expired, DropReason::Expired)
    }

    /// True when no sequence is held as acked out of order (tests).
    #[cfg(test)]
    pub(crate) fn meta_acked_is_empty(&self) -> bool {
        self.lock().meta.acked.is_empty()
    }

    pub fn depth(&self) -> Depth {
        let st = self.lock();
        Depth {
            messages: st.meta.messages,
            bytes: st.meta.bytes,
        }
    }

    pub fn totals(&self) -> Totals {
        let st = self.lock();
        Totals {
            received: st.meta.received,
            forwarded: st.meta.forwarded,
            dropped: st.meta.dropped,
        }
    }

    /// Depth and totals from one instant (for exporting the invariant).
    pub fn stats(&self) -> (Depth, Totals) {
        let st = self.lock();
        let m = &st.meta;
        (
            Depth {
                messages: m.messages,
                bytes: m.bytes,
            },
            Totals {
                received: m.received,
                forwarded: m.forwarded,
                dropped: m.dropped,
            },
        )
    }

    pub fn oldest_received_at_ms(&self) -> Option<u64> {
        match self.live(0).next()?.ok()? {
            Item::Entry { value, span, .. } => record::decode(&value[span]).ok().map(|r| r.received_at_ms),
            Item::Damaged { .. } => None,
        }
    }

    /// When the newest waiting message was received (None when empty, or
    /// when that record is unreadable).
    pub fn newest_received_at_ms(&self) -> Option<u64> {
        let (low_water, acked) = {
            let st = self.lock();
            (st.meta.low_water, st.meta.acked.clone())
        };
        let (k, v) = self.inner.tree.range(key(0)..key(u64::MAX)).next_back()?.ok()?;
        let Value::Ok(stored) = Value::load(&k, v)? else {
            return None;
        };
        let seq = (stored.key..stored.end())
            .rev()
            .find(|s| is_live(low_water, &acked, *s))?;
        record::decode(&stored.value[stored.span(seq)])
            .ok()
            .map(|r| r.received_at_ms)
    }

    /// The entries with `seq >= from_seq`, oldest first, decoded one at a
    /// time as the iterator advances, so memory stays flat however long the
    /// queue is (for offline inspection and export). Read-only: unlike
    /// [`Queue::read`], a record that fails to decode is returned as its
    /// error and left in place; a batch value whose index is damaged is
    /// returned as one such entry, under its key.
    pub fn scan(&self, from_seq: u64) -> impl Iterator<Item = Result<Scanned, StoreError>> + '_ {
        self.live(from_seq).map(move |item| match item {
            Err(e) => Err(self.error(e)),
            Ok(Item::Entry { seq, value, span, .. }) => Ok(Scanned {
                seq,
                size: span.len() as u64,
                record: record::decode(&value[span]),
            }),
            Ok(Item::Damaged { key, len, error }) => Ok(Scanned {
                seq: key,
                size: len,
                record: Err(error),
            }),
        })
    }

    /// Removes every waiting message, counted as dropped with reason
    /// `purged` (an operator's decision), in atomic batches of at most
    /// 10,000 so that memory and each batch stay small; a batch value whose
    /// index is damaged is dropped as corrupt (`drop_damaged`). Returns how
    /// many were purged. Not durable until `Store::flush`.
    pub fn purge(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let mut seqs = Vec::new();
            let mut damaged = false;
            for item in self.live(0).take(10_000) {
                match item.map_err(|e| self.error(e))? {
                    Item::Entry { seq, .. } => seqs.push(seq),
                    Item::Damaged { .. } => damaged = true,
                }
            }
            if damaged {
                self.drop_damaged()?;
            }
            if seqs.is_empty() && !damaged {
                return Ok(purged);
            }
            purged += self.drop_entries(&seqs, DropReason::Purged)? as u64;
        }
    }

    /// False while a bound is reached (a `block` queue refuses appends).
    pub fn has_space(&self) -> bool {
        let st = self.lock();
        !st.full_for(&st.meta, 0)
    }

    /// True while the store-wide budget holds this queue: its last append
    /// met the overflow policy because the store is at its budget and this
    /// queue is one of those that grew (see `budget.rs`).
    pub fn held_by_budget(&self) -> bool {
        self.inner.held_by_budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notified (one permit) after an append stored something.
    pub fn appended(&self) -> &Notify {
        &self.inner.appended
    }

    /// Notified (one permit) after entries were removed.
    pub fn space_freed(&self) -> &Notify {
        &self.inner.space_freed
    }

    /// Applies one atomic batch and adopts its counters. When sled reports a
    /// failure (a full disk) it may still have applied the batch in memory:
    /// the counters are then read back from the tree, so they always
    /// describe what the tree holds.
    fn apply(&self, st: &mut State, batch: sled::Batch, meta: Meta) -> Result<(), StoreError> {
        let before = st.meta.bytes;
        let result = self.apply_batch(st, batch, meta);
        self.inner.budget.depth_changed(before, st.meta.bytes);
        result
    }

    fn apply_batch(&self, st: &mut State, batch: sled::Batch, meta: Meta) -> Result<(), StoreError> {
        match self.inner.tree.apply_batch(batch) {
            Ok(()) => {
                st.meta = meta;
                Ok(())
            }
            Err(e) => {
                let stored = self.inner.tree.get(META_KEY).ok().flatten();
                if let Some(Ok(on_disk)) = stored.as_deref().map(decode_meta) {
                    st.meta = on_disk;
                }
                Err(self.error(e))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, e: sled::Error) -> StoreError {
        let e = StoreError::from_sled(&self.inner.path, e);
        self.inner.poisoned.store(true, std::sync::atomic::Ordering::Relaxed);
        e
    }
}

/// What a queue's tree durably holds, without opening it as a queue:
/// None when the tree does not exist.
pub(super) fn durable_mark(db: &sled::Db, tree_name: &str) -> sled::Result<Option<Mark>> {
    if !db.tree_names().iter().any(|n| n.as_ref() == tree_name.as_bytes()) {
        return Ok(None);
    }
    let tree = db.open_tree(tree_name)?;
    let meta = match tree.get(META_KEY)?.as_deref().map(decode_meta) {
        Some(Ok(meta)) => meta,
        _ => rebuild_meta(&tree)?,
    };
    let next_seq = match last_seq(&tree)? {
        Some(last) => meta.next_seq.max(last + 1),
        None => meta.next_seq,
    };
    Ok(Some(Mark {
        next_seq,
        received: meta.received,
    }))
}

/// The highest sequence stored (a damaged last value: its key).
fn last_seq(tree: &sled::Tree) -> sled::Result<Option<u64>> {
    let Some(item) = tree.range(key(0)..key(u64::MAX)).next_back() else {
        return Ok(None);
    };
    let (k, v) = item?;
    Ok(Value::load(&k, v).map(|value| {
        let (start, end) = value.extent();
        end.saturating_sub(1).max(start)
    }))
}

/// Counters for a tree without a readable meta entry: every stored record
/// counts as queued (a damaged value as one record of its size, until
/// `drop_damaged` counts it again). Lifetime totals before this moment are
/// unknown; received starts as depth.
fn rebuild_meta(tree: &sled::Tree) -> sled::Result<Meta> {
    let mut meta = Meta::default();
    for item in tree.range(key(0)..key(u64::MAX)) {
        let (k, v) = item?;
        match Value::load(&k, v) {
            None => {}
            Some(Value::Ok(s)) => {
                meta.messages += s.spans.len() as u64;
                meta.bytes += s.spans.iter().map(|r| r.len() as u64).sum::<u64>();
                meta.next_seq = s.end();
            }
            Some(Value::Damaged { key, len, .. }) => {
                meta.messages += 1;
                meta.bytes += len;
                meta.next_seq = key + 1;
            }
        }
    }
    meta.received = meta.messages;
    Ok(meta)
}
