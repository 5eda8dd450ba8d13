//! Queue churn: a large backlog queued and drained, five times over. Checks
//! that the store reuses its disk space (use after each drain stays near
//! the first drain's, it does not grow round after round) and that memory
//! stays bounded. sled does not give space back to the filesystem after a
//! drain; docs/failure-modes.md gives the numbers and the proposed fix.
//! `FERRY_CHURN_MESSAGES` sets the backlog (default 200,000; the long run
//! and docs/failure-modes.md use 1,000,000).

use ferry::store::{Properties, QueueLimits, Record, Store};
use testkit::{dir_size, status_kib};

/// This process's peak resident memory in KiB.
fn peak_rss_kib() -> u64 {
    status_kib(std::process::id(), "VmHWM")
}

#[test]
fn queue_churn_five_times_reuses_disk_space_and_keeps_memory_bounded() {
    let n: u64 = std::env::var("FERRY_CHURN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("churn/out", QueueLimits::UNBOUNDED).unwrap();
    let payload = vec![0x5au8; 128];
    let mut after_drain = Vec::new();
    let mut queued_bytes = 0;
    for round in 1..=5 {
        let mut appended = 0;
        while appended < n {
            let batch: Vec<Record> = (0..1000.min(n - appended))
                .map(|i| Record {
                    topic: format!("down/{}", (appended + i) % 100),
                    payload: payload.clone(),
                    qos: 1,
                    retain: false,
                    received_at_ms: 0,
                    properties: Properties::default(),
                })
                .collect();
            appended += q.append(&batch).unwrap().accepted as u64;
            store.flush().unwrap();
        }
        queued_bytes = q.depth().bytes;
        let full = dir_size(dir.path());
        let mut cursor = 0;
        loop {
            let window = q.read(cursor, 1000).unwrap();
            let Some(last) = window.last() else { break };
            cursor = last.seq + 1;
            let seqs: Vec<u64> = window.iter().map(|e| e.seq).collect();
            q.ack(&seqs).unwrap();
            store.flush().unwrap();
        }
        assert_eq!(q.depth().messages, 0);
        // Let sled's background work settle, then measure.
        store.checkpoint().unwrap();
        let drained = dir_size(dir.path());
        eprintln!(
            "round {round}: {n} queued = {} MiB of records, {} MiB on disk; after drain {} MiB; peak RSS {} MiB",
            queued_bytes >> 20,
            full >> 20,
            drained >> 20,
            peak_rss_kib() >> 10
        );
        after_drain.push(drained);
    }
    let t = q.totals();
    assert_eq!((t.received, t.forwarded), (5 * n, 5 * n));
    // Space is reused: later drains end no bigger than twice the first one
    // plus one backlog's worth of records.
    let first = after_drain[0];
    for (i, d) in after_drain.iter().enumerate() {
        assert!(
            *d <= 2 * first + queued_bytes,
            "round {}: {d} bytes after drain vs {first} after the first",
            i + 1
        );
    }
    // Memory stays bounded by the cache (64 MiB) and working set, not the backlog.
    assert!(peak_rss_kib() < 512 * 1024, "peak RSS {} MiB", peak_rss_kib() >> 10);
}
