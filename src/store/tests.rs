//! Store tests: limits, reopen, locking, and a model test that runs random
//! operation sequences against a `VecDeque` and checks contents, counters
//! and the invariant after every step.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;

fn rec(i: u64, size: usize, at: u64) -> Record {
    Record {
        topic: format!("t/{i}"),
        payload: vec![(i % 251) as u8; size],
        qos: 1,
        retain: false,
        received_at_ms: at,
        properties: Properties::default(),
    }
}

fn limits(max_bytes: u64, max_messages: u64, overflow: Overflow) -> QueueLimits {
    QueueLimits { max_bytes, max_messages, overflow, ttl: None }
}

fn assert_invariant(q: &Queue) {
    let (d, t) = q.stats();
    assert_eq!(t.received, t.forwarded + t.dropped_total() + d.messages, "invariant: {t:?} {d:?}");
}

#[test]
fn append_read_ack_and_reopen_keep_order_counters_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let last;
    {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        let recs: Vec<Record> = (0..100).map(|i| rec(i, 10, 0)).collect();
        assert_eq!(q.append(&recs).unwrap().accepted, 100);
        let got = q.read(0, 1000).unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(got[5].record, recs[5]);
        let acked: Vec<u64> = got[..40].iter().map(|e| e.seq).collect();
        assert_eq!(q.ack(&acked).unwrap(), 40);
        assert_eq!(q.ack(&acked).unwrap(), 0, "acking twice counts once");
        last = got[99].seq;
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.queue_names(), vec!["l/out".to_string()]);
    let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
    assert_eq!(q.depth().messages, 60);
    let t = q.totals();
    assert_eq!((t.received, t.forwarded), (100, 40));
    assert_eq!(q.read(0, 1).unwrap()[0].record, rec(40, 10, 0));
    q.append(&[rec(1000, 1, 0)]).unwrap();
    let newest = q.read(last + 1, 10).unwrap();
    assert_eq!(newest.len(), 1);
    assert!(newest[0].seq > last, "a sequence number was reused after reopen");
    assert_invariant(&q);
}

#[test]
fn block_refuses_the_tail_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(0, 3, Overflow::Block)).unwrap();
    let out = q.append(&(0..5).map(|i| rec(i, 1, 0)).collect::<Vec<_>>()).unwrap();
    assert_eq!((out.accepted, out.refused), (3, 2));
    assert!(!q.has_space());
    assert_eq!(q.totals().received, 3, "refused records are not received");
    let first = q.read(0, 1).unwrap()[0].seq;
    q.ack(&[first]).unwrap();
    assert!(q.has_space());
    assert_eq!(q.append(&[rec(3, 1, 0), rec(4, 1, 0)]).unwrap().refused, 1);
    let topics: Vec<String> = q.read(0, 10).unwrap().into_iter().map(|e| e.record.topic).collect();
    assert_eq!(topics, ["t/1", "t/2", "t/3"]);
    assert_invariant(&q);
}

#[test]
fn drop_new_and_drop_oldest_count_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("new", limits(0, 3, Overflow::DropNew)).unwrap();
    let out = q.append(&(0..5).map(|i| rec(i, 1, 0)).collect::<Vec<_>>()).unwrap();
    assert_eq!((out.accepted, out.dropped_new), (3, 2));
    assert_eq!(q.totals().dropped(DropReason::Overflow), 2);
    assert_invariant(&q);

    let one = record::encode(&rec(0, 100, 0)).len() as u64;
    let q = store.queue("old", limits(3 * one, 0, Overflow::DropOldest)).unwrap();
    for i in 0..5 {
        q.append(&[rec(i, 100, 0)]).unwrap();
    }
    // Five in one batch too: the batch's own first entries make room.
    let out = q.append(&(5..10).map(|i| rec(i, 100, 0)).collect::<Vec<_>>()).unwrap();
    assert_eq!(out.accepted, 3, "{out:?}");
    let topics: Vec<String> = q.read(0, 10).unwrap().into_iter().map(|e| e.record.topic).collect();
    assert_eq!(topics, ["t/7", "t/8", "t/9"]);
    assert_eq!(q.depth(), Depth { messages: 3, bytes: 3 * one });
    assert_eq!(q.totals().dropped(DropReason::Overflow), 7);
    assert_invariant(&q);
}

#[test]
fn too_large_records_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(200, 0, Overflow::Block)).unwrap();
    let out = q.append(&[rec(0, 1000, 0), rec(1, 10, 0)]).unwrap();
    assert_eq!((out.accepted, out.dropped_new, out.refused), (1, 1, 0));
    assert_eq!(q.totals().dropped(DropReason::TooLarge), 1);
    assert_invariant(&q);
}

#[test]
fn expire_drops_old_head_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store
        .queue("q", QueueLimits { ttl: Some(Duration::from_secs(10)), ..QueueLimits::UNBOUNDED })
        .unwrap();
    q.append(&[rec(0, 1, 1_000), rec(1, 1, 2_000), rec(2, 1, 50_000)]).unwrap();
    assert_eq!(q.expire(12_000).unwrap(), 2);
    assert_eq!(q.totals().dropped(DropReason::Expired), 2);
    assert_eq!(q.oldest_received_at_ms(), Some(50_000));
    assert_invariant(&q);
}

#[test]
fn a_damaged_record_is_dropped_as_corrupt_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&[rec(0, 5, 0), rec(1, 5, 0), rec(2, 5, 0)]).unwrap();
    let seq = q.read(0, 10).unwrap()[1].seq;
    // Damage the stored value of the middle record behind the queue's back.
    let tree = store.inner.db.open_tree("queue/q").unwrap();
    let mut v = tree.get(seq.to_be_bytes()).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 0xff;
    tree.insert(seq.to_be_bytes(), v).unwrap();
    let got: Vec<String> = q.read(0, 10).unwrap().into_iter().map(|e| e.record.topic).collect();
    assert_eq!(got, ["t/0", "t/2"]);
    assert_eq!(q.totals().dropped(DropReason::Corrupt), 1);
    assert_eq!(q.depth().messages, 2);
    assert_invariant(&q);
}

#[test]
fn a_second_open_of_the_same_data_dir_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another ferry"), "{err}");
}

/// Random operations against a model. Seeds are fixed: failures reproduce.
#[test]
fn model_check_random_operations_with_reopen() {
    for seed in 1..=6u64 {
        run_model(seed, 3_000);
    }
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let overflow = [Overflow::Block, Overflow::DropNew, Overflow::DropOldest][(seed % 3) as usize];
    let lim = QueueLimits {
        max_bytes: if seed % 2 == 0 { 4_000 } else { 0 },
        max_messages: 40,
        overflow,
        ttl: Some(Duration::from_millis(5_000)),
    };
    let mut store = Some(Store::open(dir.path()).unwrap());
    let mut q = store.as_ref().unwrap().queue("m", lim).unwrap();
    // The model: (seq, record, stored size) in order, and the totals.
    let mut model: VecDeque<(u64, Record, u64)> = VecDeque::new();
    let mut totals = Totals::default();
    let mut clock = 0u64;
    let mut cursor = 0u64;
    let mut window: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    for step in 0..steps {
        clock += rng.u64(0..200);
        match rng.u8(0..100) {
            0..=39 => {
                let n = rng.usize(1..8);
                let batch: Vec<Record> = (0..n)
                    .map(|_| {
                        next_id += 1;
                        rec(next_id, rng.usize(0..300), clock)
                    })
                    .collect();
                let out = q.append(&batch).unwrap();
                // Apply the same to the model.
                let mut refused = 0;
                for (i, r) in batch.iter().enumerate() {
                    let size = record::encode(r).len() as u64;
                    if lim.max_bytes > 0 && size > lim.max_bytes {
                        totals.received += 1;
                        totals.dropped[DropReason::TooLarge as usize] += 1;
                        continue;
                    }
                    let full = |m: &VecDeque<(u64, Record, u64)>| {
                        let bytes: u64 = m.iter().map(|e| e.2).sum();
                        m.len() as u64 + 1 > lim.max_messages || (lim.max_bytes > 0 && bytes + size > lim.max_bytes)
                    };
                    let mut dropped_new = false;
                    while full(&model) {
                        match overflow {
                            Overflow::Block => {
                                refused = batch.len() - i;
                                break;
                            }
                            Overflow::DropNew => {
                                dropped_new = true;
                                break;
                            }
                            Overflow::DropOldest => {
                                model.pop_front();
                                totals.dropped[DropReason::Overflow as usize] += 1;
                            }
                        }
                    }
                    if refused > 0 {
                        break;
                    }
                    totals.received += 1;
                    if dropped_new {
                        totals.dropped[DropReason::Overflow as usize] += 1;
                        continue;
                    }
                    model.push_back((u64::MAX, r.clone(), size));
                }
                assert_eq!(out.refused, refused, "seed {seed} step {step}");
                // Learn the seqs assigned (the model only knows the order).
                let stored = q.read(0, usize::MAX).unwrap();
                assert_eq!(stored.len(), model.len(), "seed {seed} step {step}");
                for (m, e) in model.iter_mut().zip(&stored) {
                    assert_eq!(m.1, e.record, "seed {seed} step {step}");
                    m.0 = e.seq;
                }
            }
            40..=59 => {
                // Read a window from the cursor, as the drainer does.
                let got = q.read(cursor, rng.usize(1..10)).unwrap();
                let expect: Vec<u64> = model.iter().map(|e| e.0).filter(|s| *s >= cursor).take(got.len()).collect();
                assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), expect, "seed {seed} step {step}");
                if let Some(last) = got.last() {
                    cursor = last.seq + 1;
                }
                window.extend(got.iter().map(|e| e.seq));
            }
            60..=79 => {
                // Ack a random subset of the window (acks may come in any order).
                let take: Vec<u64> = window.iter().copied().filter(|_| rng.bool()).collect();
                window.retain(|s| !take.contains(s));
                let removed = q.ack(&take).unwrap();
                let before = model.len();
                model.retain(|e| !take.contains(&e.0));
                assert_eq!(removed, before - model.len(), "seed {seed} step {step}");
                totals.forwarded += removed as u64;
            }
            80..=84 => {
                let removed = q.expire(clock).unwrap();
                let mut n = 0;
                while model.front().is_some_and(|e| e.1.received_at_ms + 5_000 <= clock) {
                    model.pop_front();
                    n += 1;
                }
                assert_eq!(removed, n, "seed {seed} step {step}");
                totals.dropped[DropReason::Expired as usize] += n as u64;
            }
            85..=89 => {
                // Reconnect: the drainer replays from the oldest entry.
                cursor = 0;
                window.clear();
            }
            _ => {
                // Close and reopen (flushed, as after a clean stop).
                store.as_ref().unwrap().flush().unwrap();
                drop(q);
                drop(store.take());
                store = Some(Store::open(dir.path()).unwrap());
                q = store.as_ref().unwrap().queue("m", lim).unwrap();
                cursor = 0;
                window.clear();
            }
        }
        let (d, t) = q.stats();
        assert_eq!(t, totals, "seed {seed} step {step}: totals");
        assert_eq!(d.messages, model.len() as u64, "seed {seed} step {step}: depth");
        assert_eq!(d.bytes, model.iter().map(|e| e.2).sum::<u64>(), "seed {seed} step {step}: bytes");
        assert_invariant(&q);
    }
}

#[test]
fn a_truncated_database_is_reported_as_damaged_not_opened_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        q.append(&(0..5_000).map(|i| rec(i, 100, 0)).collect::<Vec<_>>()).unwrap();
        store.checkpoint().unwrap();
    }
    let db = dir.path().join("store").join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 2).unwrap();
    let err = Store::open(dir.path()).err().expect("a damaged store must not open");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(text.contains("l/out") && text.contains("quarantine"), "{text}");

    let aside = quarantine(dir.path()).unwrap();
    assert!(aside.join("db").exists() && aside.join("ledger").exists());
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.queue("l/out", QueueLimits::UNBOUNDED).unwrap().depth().messages, 0);
}

#[test]
fn a_clean_reopen_passes_the_ledger_check() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        q.append(&(0..100).map(|i| rec(i, 10, 0)).collect::<Vec<_>>()).unwrap();
        store.checkpoint().unwrap();
        assert_eq!(q.totals().received, 100 * (round + 1));
    }
}
