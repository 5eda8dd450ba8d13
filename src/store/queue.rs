//! One queue: a sled tree of records keyed by sequence number, plus its
//! meta entry, changed together in atomic batches under one lock.
//!
//! `append` applies the queue's own bounds and the store-wide budget
//! (`budget.rs` decides whether this queue is growing; the overflow policy
//! is applied here, in the same batch as everything else).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::budget::Budget;
use super::ledger::Mark;
use super::record::{self, decode_meta, encode_meta};
use super::{AppendOutcome, Depth, DropReason, Entry, Meta, Overflow, QueueLimits, Record, StoreError, Totals};

/// Sorts after every 8-byte record key.
const META_KEY: [u8; 9] = [0xff; 9];

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
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

    /// Appends records in order, applying the limits. Not durable until
    /// `Store::flush`. On error nothing changed.
    pub fn append(&self, records: &[Record]) -> Result<AppendOutcome, StoreError> {
        let mut st = self.lock();
        let mut meta = st.meta.clone();
        let mut batch = sled::Batch::default();
        let mut out = AppendOutcome::default();
        // Oldest entries first, for drop-oldest: those already in the tree,
        // then those added by this batch.
        let mut old = self.inner.tree.range(key(0)..key(u64::MAX));
        let mut added: VecDeque<(u64, u64)> = VecDeque::new();
        let mut evicted_old: BTreeSet<u64> = BTreeSet::new();
        // Bytes this batch writes, and whether the store budget held any of it.
        let (mut written, mut held_by_budget) = (0u64, false);
        'records: for (i, r) in records.iter().enumerate() {
            let value = record::encode(r);
            let size = value.len() as u64;
            if st.limits.max_bytes > 0 && size > st.limits.max_bytes {
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
                        out.refused = records.len() - i;
                        break 'records;
                    }
                    Overflow::DropNew => {
                        meta.received += 1;
                        meta.dropped[DropReason::Overflow as usize] += 1;
                        out.dropped_new += 1;
                        continue 'records;
                    }
                    Overflow::DropOldest => {
                        let victim = match old.next() {
                            Some(item) => {
                                let (k, v) = item.map_err(|e| self.error(e))?;
                                seq_of(&k).map(|s| (s, v.len() as u64))
                            }
                            None => added.pop_front(),
                        };
                        let Some((seq, bytes)) = victim else { break };
                        batch.remove(&key(seq));
                        evicted_old.insert(seq);
                        meta.messages = meta.messages.saturating_sub(1);
                        meta.bytes = meta.bytes.saturating_sub(bytes);
                        meta.dropped[DropReason::Overflow as usize] += 1;
                        out.evicted += 1;
                        budget_need = budget_need.saturating_sub(bytes);
                    }
                }
            }
            let seq = meta.next_seq;
            meta.next_seq += 1;
            meta.messages += 1;
            meta.bytes += size;
            meta.received += 1;
            batch.insert(&key(seq), value);
            added.push_back((seq, size));
            written += size;
            out.accepted += 1;
        }
        // A record added and evicted in the same batch was never stored.
        out.accepted -= evicted_old.iter().filter(|s| **s >= st.meta.next_seq).count();
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

    /// Up to `max` entries with `seq >= from_seq`, in order. A record that
    /// fails to decode is removed, counted as dropped (corrupt) and logged.
    pub fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::with_capacity(max.min(1024));
        let mut corrupt = Vec::new();
        for item in self.inner.tree.range(key(from_seq)..key(u64::MAX)) {
            if entries.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.error(e))?;
            let Some(seq) = seq_of(&k) else { continue };
            match record::decode(&v) {
                Ok(record) => entries.push(Entry { seq, record }),
                Err(e) => {
                    tracing::error!(queue = %self.inner.name, seq, error = %e, "damaged record removed (counted as dropped, reason=corrupt)");
                    corrupt.push(seq);
                }
            }
        }
        if !corrupt.is_empty() {
            self.drop_entries(&corrupt, DropReason::Corrupt)?;
        }
        Ok(entries)
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.inner
            .tree
            .range(key(0)..key(u64::MAX))
            .next()
            .and_then(|r| r.ok())
            .and_then(|(k, _)| seq_of(&k))
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
        let mut removed = 0;
        for seq in unique {
            let Some(v) = self.inner.tree.get(key(seq)).map_err(|e| self.error(e))? else {
                continue;
            };
            batch.remove(&key(seq));
            meta.messages = meta.messages.saturating_sub(1);
            meta.bytes = meta.bytes.saturating_sub(v.len() as u64);
            match reason {
                None => meta.forwarded += 1,
                Some(r) => meta.dropped[r as usize] += 1,
            }
            removed += 1;
        }
        if removed == 0 {
            return Ok(0);
        }
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
        for item in self.inner.tree.range(key(0)..key(u64::MAX)).take(10_000) {
            let (k, v) = item.map_err(|e| self.error(e))?;
            let Some(seq) = seq_of(&k) else { continue };
            match record::decode(&v) {
                Ok(r) if r.received_at_ms.saturating_add(ttl_ms) <= now_ms => expired.push(seq),
                Ok(_) => break,
                Err(_) => corrupt.push(seq),
            }
        }
        if !corrupt.is_empty() {
            self.drop_entries(&corrupt, DropReason::Corrupt)?;
        }
        self.drop_entries(&expired, DropReason::Expired)
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
        let (_, v) = self.inner.tree.range(key(0)..key(u64::MAX)).next()?.ok()?;
        record::decode(&v).ok().map(|r| r.received_at_ms)
    }

    /// When the newest waiting message was received (None when empty, or
    /// when that record is unreadable).
    pub fn newest_received_at_ms(&self) -> Option<u64> {
        let (_, v) = self.inner.tree.range(key(0)..key(u64::MAX)).next_back()?.ok()?;
        record::decode(&v).ok().map(|r| r.received_at_ms)
    }

    /// The entries with `seq >= from_seq`, oldest first, decoded one at a
    /// time as the iterator advances, so memory stays flat however long the
    /// queue is (for offline inspection and export). Read-only: unlike
    /// [`Queue::read`], a record that fails to decode is returned as its
    /// error and left in place.
    pub fn scan(&self, from_seq: u64) -> impl Iterator<Item = Result<Scanned, StoreError>> + '_ {
        self.inner
            .tree
            .range(key(from_seq)..key(u64::MAX))
            .filter_map(move |item| match item {
                Err(e) => Some(Err(self.error(e))),
                Ok((k, v)) => seq_of(&k).map(|seq| {
                    Ok(Scanned {
                        seq,
                        size: v.len() as u64,
                        record: record::decode(&v),
                    })
                }),
            })
    }

    /// Removes every waiting message, counted as dropped with reason
    /// `purged` (an operator's decision), in atomic batches of at most
    /// 10,000 so that memory and each batch stay small. Returns how many
    /// were removed. Not durable until `Store::flush`.
    pub fn purge(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let mut seqs = Vec::new();
            for item in self.inner.tree.range(key(0)..key(u64::MAX)).take(10_000) {
                let (k, _) = item.map_err(|e| self.error(e))?;
                seqs.extend(seq_of(&k));
            }
            if seqs.is_empty() {
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

fn last_seq(tree: &sled::Tree) -> sled::Result<Option<u64>> {
    match tree.range(key(0)..key(u64::MAX)).next_back() {
        Some(item) => Ok(seq_of(&item?.0)),
        None => Ok(None),
    }
}

/// Counters for a tree without a readable meta entry: what is there now.
/// Lifetime totals before this moment are unknown; received starts as depth.
fn rebuild_meta(tree: &sled::Tree) -> sled::Result<Meta> {
    let mut meta = Meta::default();
    for item in tree.range(key(0)..key(u64::MAX)) {
        let (k, v) = item?;
        if let Some(seq) = seq_of(&k) {
            meta.messages += 1;
            meta.bytes += v.len() as u64;
            meta.next_seq = seq + 1;
        }
    }
    meta.received = meta.messages;
    Ok(meta)
}
