//! The reference model of one queue: what a [`Queue`] must hold and count
//! after any sequence of appends, acks, drops and expiries, by the rules in
//! the store's documentation, written out plainly over a `VecDeque`.
//!
//! It is the one statement of those rules outside the store itself. The
//! seeded model test (`store/tests.rs`) and the `queue_model` fuzz target
//! (`fuzzing/queue_model.rs`) both apply the same operations to a real queue
//! and to a [`Model`], and compare the two with [`Model::check`] after every
//! step. Only compiled for tests and the `fuzzing` feature.

use std::collections::VecDeque;

use super::record::encode;
use super::{AppendOutcome, DropReason, Overflow, Queue, QueueLimits, Record, Totals};

/// The model of one queue: entries `(seq, record, stored size)` in order,
/// the next sequence number the store hands out, and the totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Model {
    pub(crate) entries: VecDeque<(u64, Record, u64)>,
    pub(crate) next_seq: u64,
    pub(crate) totals: Totals,
}

impl Model {
    /// Bytes queued: the stored (encoded) sizes, which the byte limits count.
    pub(crate) fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.2).sum()
    }

    /// True when one more entry of `size` bytes does not fit the limits.
    pub(crate) fn full_for(&self, l: &QueueLimits, size: u64) -> bool {
        (l.max_messages > 0 && self.entries.len() as u64 + 1 > l.max_messages)
            || (l.max_bytes > 0 && self.bytes() + size > l.max_bytes)
    }

    /// What `Queue::append` must do: too-large records dropped, then the
    /// overflow policy when full; every record stored takes the next
    /// sequence number, also one evicted later in the same batch.
    pub(crate) fn append(&mut self, l: &QueueLimits, batch: &[Record]) -> AppendOutcome {
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
                            "queue model bug: full with nothing to evict"
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

    /// Removes the entries with these sequence numbers (missing ones are
    /// ignored), counted as forwarded (an ack, `reason` None) or dropped for
    /// `reason`; returns how many were removed.
    pub(crate) fn remove(&mut self, seqs: &[u64], reason: Option<DropReason>) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !seqs.contains(&e.0));
        let removed = before - self.entries.len();
        match reason {
            None => self.totals.forwarded += removed as u64,
            Some(r) => self.totals.dropped[r as usize] += removed as u64,
        }
        removed
    }

    /// Drops the entries at the head received at least the TTL before
    /// `now_ms`; returns how many.
    pub(crate) fn expire(&mut self, l: &QueueLimits, now_ms: u64) -> usize {
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

    /// Checks the queue against the model: every entry (sequence number and
    /// record) in order, depth in messages and bytes, totals, the invariant
    /// `received == forwarded + dropped + queued`, the head, and free space.
    /// `ctx` says where (the step and operation) in a failure message.
    pub(crate) fn check(&self, q: &Queue, limits: &QueueLimits, ctx: &str) {
        let stored = q
            .read(0, usize::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: read failed: {e}"));
        let got: Vec<(u64, &Record)> = stored.iter().map(|e| (e.seq, &e.record)).collect();
        let want: Vec<(u64, &Record)> = self.entries.iter().map(|e| (e.0, &e.1)).collect();
        if got != want {
            let seqs = |v: &[(u64, &Record)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
            assert_eq!(
                seqs(&got),
                seqs(&want),
                "{ctx}: the queue's sequence numbers differ from the model's"
            );
            panic!("{ctx}: the queue's records differ from the model's");
        }
        let (d, t) = q.stats();
        assert_eq!(t, self.totals, "{ctx}: totals");
        assert_eq!(d.messages, self.entries.len() as u64, "{ctx}: depth in messages");
        assert_eq!(d.bytes, self.bytes(), "{ctx}: depth in bytes");
        assert_eq!(
            t.received,
            t.forwarded + t.dropped_total() + d.messages,
            "{ctx}: received == forwarded + dropped + queued broken: {t:?} {d:?}"
        );
        assert_eq!(
            (q.depth(), q.totals()),
            (d, t),
            "{ctx}: depth()/totals() disagree with stats()"
        );
        assert_eq!(q.first_seq(), self.entries.front().map(|e| e.0), "{ctx}: first_seq");
        assert_eq!(
            q.oldest_received_at_ms(),
            self.entries.front().map(|e| e.1.received_at_ms),
            "{ctx}: oldest_received_at_ms"
        );
        assert_eq!(q.has_space(), !self.full_for(limits, 0), "{ctx}: has_space");
    }
}
