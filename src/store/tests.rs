//! Store tests: limits, reopen, locking (in this process and from another
//! one), error texts, and a model test that runs random operation sequences
//! against the reference model (`model.rs`, which the `queue_model` fuzz
//! target drives too) and checks contents, counters and the invariant after
//! every step.

use std::future::Future;
use std::io::BufRead;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::model::Model;
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

fn recs(ids: std::ops::Range<u64>, size: usize) -> Vec<Record> {
    ids.map(|i| rec(i, size, 0)).collect()
}

fn limits(max_bytes: u64, max_messages: u64, overflow: Overflow) -> QueueLimits {
    QueueLimits {
        max_bytes,
        max_messages,
        overflow,
        ttl: None,
    }
}

fn topics(q: &Queue) -> Vec<String> {
    q.read(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.record.topic)
        .collect()
}

fn seqs(q: &Queue) -> Vec<u64> {
    q.read(0, usize::MAX).unwrap().into_iter().map(|e| e.seq).collect()
}

fn assert_invariant(q: &Queue) {
    let (d, t) = q.stats();
    assert_eq!(
        t.received,
        t.forwarded + t.dropped_total() + d.messages,
        "invariant: {t:?} {d:?}"
    );
}

/// The stored size of a record (the byte limits count encoded values).
fn size_of(r: &Record) -> u64 {
    record::encode(r).len() as u64
}

/// Whether `notify` holds a permit (takes it).
fn take_permit(notify: &tokio::sync::Notify) -> bool {
    let notified = pin!(notify.notified());
    matches!(notified.poll(&mut Context::from_waker(Waker::noop())), Poll::Ready(()))
}

/// Flips the last byte of the record `seq` inside its stored batch value,
/// behind the queue's back (its own checksum then fails; the value's index
/// stays intact).
fn damage_record(store: &Store, queue: &str, seq: u64) {
    let tree = store.inner.db.open_tree(tree_name(queue)).unwrap();
    let (k, v) = tree.range(..=seq.to_be_bytes()).next_back().unwrap().unwrap();
    let first = u64::from_be_bytes(k.as_ref().try_into().unwrap());
    let spans = record::batch_spans(first, &v).unwrap();
    let mut v = v.to_vec();
    v[spans[(seq - first) as usize].end - 1] ^= 0xff;
    tree.insert(k, v).unwrap();
}

/// Opens without the production wait for a lock held by a closing store.
fn open_fast(dir: &Path) -> Result<Store, StoreError> {
    Store::open_waiting(dir, DEFAULT_CACHE_BYTES, Duration::from_millis(100))
}

#[test]
fn store_and_queue_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Store>();
    shared::<Queue>();
    shared::<StoreError>();
}

#[test]
fn append_read_ack_and_reopen_keep_order_counters_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let last;
    {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        let recs = recs(0..100, 10);
        assert_eq!(q.append(&recs).unwrap().accepted, 100);
        let got = q.read(0, 1000).unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(got[5].record, recs[5]);
        assert_eq!(
            q.read(got[10].seq, 3)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [got[10].seq, got[11].seq, got[12].seq]
        );
        let acked: Vec<u64> = got[..40].iter().map(|e| e.seq).collect();
        assert_eq!(q.ack(&acked).unwrap(), 40);
        assert_eq!(q.ack(&acked).unwrap(), 0, "acking twice counts once");
        assert_eq!(q.first_seq(), Some(got[40].seq));
        last = got[99].seq;
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.queue_names(), vec!["l/out".to_string()]);
    assert!(store.size_on_disk().unwrap() > 0);
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
fn the_same_name_twice_is_the_same_queue_with_the_new_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.queue("l/in", QueueLimits::UNBOUNDED).unwrap();
    a.append(&recs(0..3, 1)).unwrap();
    let b = store.queue("l/in", limits(0, 2, Overflow::DropNew)).unwrap();
    assert_eq!(b.depth().messages, 3, "a second handle must see the same queue");
    assert_eq!(
        a.limits(),
        limits(0, 2, Overflow::DropNew),
        "the first handle must see the new limits"
    );
    assert_eq!(b.append(&recs(3..4, 1)).unwrap().dropped_new, 1);
    assert_eq!(a.totals().dropped(DropReason::Overflow), 1);
    let mut names = store.queue_names();
    names.sort();
    assert_eq!(names, ["l/in"]);
}

#[test]
fn many_reopens_never_reuse_a_sequence_number_and_keep_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut highest: Option<u64> = None;
    let (mut received, mut forwarded) = (0u64, 0u64);
    for round in 0..12u64 {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
        assert_eq!(
            (q.totals().received, q.totals().forwarded),
            (received, forwarded),
            "round {round}"
        );
        let n = rng.u64(1..60);
        q.append(&recs(0..n, rng.usize(0..50))).unwrap();
        received += n;
        let stored = seqs(&q);
        let fresh = &stored[stored.len() - n as usize..];
        assert!(
            highest.is_none_or(|h| fresh[0] > h),
            "round {round}: sequence {} reused (highest so far {highest:?})",
            fresh[0]
        );
        highest = stored.last().copied();
        // Every third round empties the queue: an empty queue must not
        // start again at sequence 0 either.
        let acked: Vec<u64> = if round % 3 == 2 {
            stored.clone()
        } else {
            stored.iter().copied().filter(|_| rng.bool()).collect()
        };
        forwarded += q.ack(&acked).unwrap() as u64;
        assert_invariant(&q);
        if round % 2 == 0 {
            store.flush().unwrap(); // otherwise closing the store flushes it
        }
    }
}

#[test]
fn block_refuses_the_tail_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(0, 3, Overflow::Block)).unwrap();
    let out = q.append(&recs(0..5, 1)).unwrap();
    assert_eq!((out.accepted, out.refused, out.dropped_new, out.evicted), (3, 2, 0, 0));
    assert!(!q.has_space());
    assert_eq!(q.totals().received, 3, "refused records are not received");
    let first = q.read(0, 1).unwrap()[0].seq;
    q.ack(&[first]).unwrap();
    assert!(q.has_space());
    assert_eq!(q.append(&recs(3..5, 1)).unwrap().refused, 1);
    assert_eq!(topics(&q), ["t/1", "t/2", "t/3"]);
    assert_invariant(&q);
}

#[test]
fn block_with_a_byte_limit_refuses_the_tail_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let one = size_of(&rec(0, 100, 0));
    let q = store.queue("q", limits(3 * one + one / 2, 0, Overflow::Block)).unwrap();
    let out = q.append(&recs(0..5, 100)).unwrap();
    assert_eq!((out.accepted, out.refused, out.dropped_new, out.evicted), (3, 2, 0, 0));
    assert_eq!(topics(&q), ["t/0", "t/1", "t/2"]);
    // A smaller record still fits; the refusal is about bytes, not count.
    let small = rec(9, 1, 0);
    assert!(size_of(&small) <= one / 2);
    assert_eq!(q.append(&[small]).unwrap().accepted, 1);
    assert_eq!(
        q.totals(),
        Totals {
            received: 4,
            ..Totals::default()
        }
    );
    assert_invariant(&q);
}

#[test]
fn drop_new_counts_overflow_with_message_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("count", limits(0, 3, Overflow::DropNew)).unwrap();
    let out = q.append(&recs(0..5, 1)).unwrap();
    assert_eq!((out.accepted, out.dropped_new, out.evicted, out.refused), (3, 2, 0, 0));
    assert_eq!(topics(&q), ["t/0", "t/1", "t/2"]);
    assert_eq!(q.totals().dropped(DropReason::Overflow), 2);
    assert_eq!(q.totals().received, 5);
    assert_invariant(&q);

    let one = size_of(&rec(0, 100, 0));
    let q = store.queue("bytes", limits(3 * one, 0, Overflow::DropNew)).unwrap();
    let out = q.append(&recs(0..5, 100)).unwrap();
    assert_eq!((out.accepted, out.dropped_new), (3, 2));
    assert_eq!(
        q.depth(),
        Depth {
            messages: 3,
            bytes: 3 * one
        }
    );
    assert_eq!(topics(&q), ["t/0", "t/1", "t/2"]);
    assert_invariant(&q);
}

#[test]
fn drop_oldest_evicts_with_message_and_byte_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("count", limits(0, 3, Overflow::DropOldest)).unwrap();
    q.append(&recs(0..2, 1)).unwrap();
    let out = q.append(&recs(2..6, 1)).unwrap();
    assert_eq!(
        (out.accepted, out.evicted, out.dropped_new, out.refused),
        (4 - 1, 3, 0, 0),
        "{out:?}"
    );
    assert_eq!(topics(&q), ["t/3", "t/4", "t/5"]);
    assert_eq!(q.totals().dropped(DropReason::Overflow), 3);
    assert_invariant(&q);

    let one = size_of(&rec(0, 100, 0));
    let q = store.queue("bytes", limits(3 * one, 0, Overflow::DropOldest)).unwrap();
    for i in 0..5 {
        q.append(&[rec(i, 100, 0)]).unwrap();
    }
    // Five in one batch too: the batch's own first entries make room.
    let out = q.append(&recs(5..10, 100)).unwrap();
    assert_eq!(out.accepted, 3, "{out:?}");
    assert_eq!(topics(&q), ["t/7", "t/8", "t/9"]);
    assert_eq!(
        q.depth(),
        Depth {
            messages: 3,
            bytes: 3 * one
        }
    );
    assert_eq!(q.totals().dropped(DropReason::Overflow), 7);
    // One large record evicts as many small ones as it needs.
    let big = rec(10, 250, 0);
    assert!(size_of(&big) > 2 * one && size_of(&big) <= 3 * one);
    let out = q.append(&[big]).unwrap();
    assert_eq!((out.accepted, out.evicted), (1, 3));
    assert_eq!(topics(&q), ["t/10"]);
    assert_invariant(&q);
}

#[test]
fn too_large_records_are_dropped_and_counted_under_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (i, overflow) in [Overflow::Block, Overflow::DropNew, Overflow::DropOldest]
        .into_iter()
        .enumerate()
    {
        let q = store.queue(&format!("q{i}"), limits(200, 0, overflow)).unwrap();
        q.append(&[rec(0, 10, 0)]).unwrap();
        let out = q.append(&[rec(1, 1000, 0), rec(2, 10, 0)]).unwrap();
        assert_eq!(
            (out.accepted, out.dropped_new, out.refused, out.evicted),
            (1, 1, 0, 0),
            "{overflow:?}"
        );
        assert_eq!(q.totals().dropped(DropReason::TooLarge), 1, "{overflow:?}");
        assert_eq!(
            topics(&q),
            ["t/0", "t/2"],
            "{overflow:?}: a too-large record must not evict others"
        );
        assert_invariant(&q);
    }
}

#[test]
fn expire_drops_old_head_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&[rec(0, 1, 1_000), rec(1, 1, 2_000), rec(2, 1, 50_000)])
        .unwrap();
    assert_eq!(q.expire(1_000_000).unwrap(), 0, "without a TTL nothing expires");
    q.set_limits(QueueLimits {
        ttl: Some(Duration::from_secs(10)),
        ..QueueLimits::UNBOUNDED
    });
    assert_eq!(q.oldest_received_at_ms(), Some(1_000));
    assert_eq!(q.expire(10_999).unwrap(), 0, "received_at + ttl > now: kept");
    assert_eq!(q.expire(12_000).unwrap(), 2);
    assert_eq!(q.totals().dropped(DropReason::Expired), 2);
    assert_eq!(q.oldest_received_at_ms(), Some(50_000));
    assert_invariant(&q);
}

#[test]
fn drop_entries_counts_the_reason_and_ignores_missing_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&recs(0..4, 3)).unwrap();
    let s = seqs(&q);
    assert_eq!(
        q.drop_entries(&[s[1], s[1], s[3] + 100], DropReason::Rejected).unwrap(),
        1
    );
    assert_eq!(
        q.ack(&[s[1], s[0]]).unwrap(),
        1,
        "an entry dropped meanwhile is not acked"
    );
    let t = q.totals();
    assert_eq!(
        (t.forwarded, t.dropped(DropReason::Rejected), t.dropped_total()),
        (1, 1, 1)
    );
    assert_eq!(topics(&q), ["t/2", "t/3"]);
    assert_eq!(q.drop_entries(&[], DropReason::Rejected).unwrap(), 0);
    assert_invariant(&q);
}

#[test]
fn waiters_are_notified_of_appends_and_freed_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(0, 1, Overflow::Block)).unwrap();
    assert!(!take_permit(q.appended()));
    q.append(&recs(0..1, 1)).unwrap();
    assert!(take_permit(q.appended()), "an append that stored a record must notify");
    assert_eq!(q.append(&recs(1..2, 1)).unwrap().refused, 1);
    assert!(
        !take_permit(q.appended()),
        "an append that stored nothing must not notify"
    );
    assert!(!take_permit(q.space_freed()));
    q.ack(&seqs(&q)).unwrap();
    assert!(take_permit(q.space_freed()), "an ack that removed a record must notify");
    assert_eq!(q.ack(&[12345]).unwrap(), 0);
    assert!(
        !take_permit(q.space_freed()),
        "an ack that removed nothing must not notify"
    );
}

#[test]
fn a_damaged_record_is_dropped_as_corrupt_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&[rec(0, 5, 0), rec(1, 5, 0), rec(2, 5, 0)]).unwrap();
    let seq = q.read(0, 10).unwrap()[1].seq;
    // Damage the middle record behind the queue's back.
    damage_record(&store, "q", seq);
    assert_eq!(topics(&q), ["t/0", "t/2"]);
    assert_eq!(q.totals().dropped(DropReason::Corrupt), 1);
    assert_eq!(q.depth().messages, 2);
    assert_invariant(&q);
}

#[test]
fn missing_counters_are_rebuilt_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let (last, bytes) = {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
        // Two batch values; acking all of the first removes it.
        q.append(&recs(0..3, 7)).unwrap();
        q.append(&recs(3..10, 7)).unwrap();
        let s = seqs(&q);
        q.ack(&s[..3]).unwrap();
        let bytes = q.depth().bytes;
        // Remove the meta entry (key: nine 0xff bytes) behind the queue's back.
        store
            .inner
            .db
            .open_tree("queue/q")
            .unwrap()
            .remove([0xffu8; 9])
            .unwrap();
        store.flush().unwrap();
        (s[9], bytes)
    };
    // The ledger knows 10 were received; 7 are left: that is damage.
    let err = Store::open(dir.path())
        .err()
        .expect("lost counters must be reported against the ledger");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    // Without a ledger the counters are rebuilt from what is there.
    std::fs::remove_file(dir.path().join("ledger")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    assert_eq!(q.depth(), Depth { messages: 7, bytes });
    assert_eq!(
        q.totals(),
        Totals {
            received: 7,
            ..Totals::default()
        }
    );
    assert_invariant(&q);
    q.append(&recs(10..11, 7)).unwrap();
    assert!(
        *seqs(&q).last().unwrap() > last,
        "a sequence number was reused after a rebuild"
    );
}

#[test]
fn a_second_open_of_the_same_data_dir_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_fast(dir.path()).unwrap();
    let err = open_fast(dir.path()).err().expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("another ferry") && text.contains(&dir.path().display().to_string()),
        "{text}"
    );
    assert!(!err.is_disk_full());
    drop(store);
    // Closed: the directory can be opened again (sled may take a moment to
    // let go of its lock, which the production wait covers).
    Store::open(dir.path()).unwrap();
}

/// Env var that turns the next test into a helper process holding a store.
const HOLD_ENV: &str = "FERRY_STORE_TEST_HOLD_DIR";

/// Not a test by itself: when `HOLD_ENV` names a directory, this process
/// opens the store there, says so on stdout, and holds it until its stdin
/// closes. `a_data_dir_used_by_another_process_is_refused` runs it.
#[test]
fn helper_process_that_holds_a_store_open() {
    let Some(dir) = std::env::var_os(HOLD_ENV) else { return };
    let _store = Store::open(Path::new(&dir)).unwrap();
    println!("holding the store");
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
}

#[test]
fn a_data_dir_used_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // This test binary, running only the helper above.
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("{module}::helper_process_that_holds_a_store_open"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let holding = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("holding the store") => break true,
            Some(Ok(line)) => seen.push(line),
            _ => break false,
        }
    };
    assert!(
        holding,
        "the helper process did not open the store; its output: {seen:?}"
    );
    let err = open_fast(dir.path())
        .err()
        .expect("a store held by another process must not open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(child.stdin.take()); // the helper exits
    assert!(child.wait().unwrap().success());
    open_fast(dir.path()).expect("the lock dies with the process that held it");
}

#[test]
fn errors_say_what_where_and_what_to_do() {
    let path = Path::new("/var/lib/ferry/store");
    let full = StoreError::from_sled(path, sled::Error::Io(std::io::Error::from_raw_os_error(28)));
    assert!(full.is_disk_full(), "{full:?}");
    let text = full.to_string();
    assert!(
        text.starts_with("/var/lib/ferry/store: write failed") && text.contains("disk is full"),
        "{text}"
    );
    // sled re-creates errors from its background threads as plain text.
    let relayed = std::io::Error::other("No space left on device (os error 28), code: 28");
    assert!(StoreError::Io {
        path: path.into(),
        source: relayed
    }
    .is_disk_full());

    let denied = StoreError::from_sled(path, sled::Error::Io(std::io::Error::from_raw_os_error(13)));
    assert!(!denied.is_disk_full());
    assert!(
        denied.to_string().starts_with("/var/lib/ferry/store: write failed: "),
        "{denied}"
    );

    let locked = StoreError::from_sled(
        path,
        sled::Error::Io(std::io::Error::other("could not acquire lock on \"db\"")),
    );
    assert_eq!(
        locked.to_string(),
        "/var/lib/ferry/store: the store is in use by another process (is another ferry running with this data_dir?)"
    );
    let damaged = StoreError::from_sled(path, sled::Error::Corruption { at: None, bt: () });
    assert!(matches!(damaged, StoreError::Damaged { .. }), "{damaged:?}");
    assert!(
        damaged
            .to_string()
            .contains("mv /var/lib/ferry/store /var/lib/ferry/store.damaged"),
        "{damaged}"
    );
    let unreadable = StoreError::from_sled_at_open(path, sled::Error::Unsupported("bad conf".into()));
    assert!(matches!(unreadable, StoreError::Damaged { .. }), "{unreadable:?}");
}

#[test]
fn a_damaged_sled_conf_file_is_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .queue("q", QueueLimits::UNBOUNDED)
            .unwrap()
            .append(&recs(0..3, 1))
            .unwrap();
        store.flush().unwrap();
    }
    let conf = dir.path().join("store").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    for b in bytes.iter_mut().take(16) {
        *b = b'#';
    }
    std::fs::write(&conf, bytes).unwrap();
    let err = Store::open(dir.path()).err().expect("a damaged conf must not open");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("quarantine"), "{err}");
}

#[test]
fn concurrent_appends_and_acks_keep_the_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(0, 50, Overflow::DropOldest)).unwrap();
    let appenders: Vec<_> = (0..2u64)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    q.append(&recs(t * 1000 + i * 3..t * 1000 + i * 3 + 3, 20)).unwrap();
                }
            })
        })
        .collect();
    let drainer = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut acked = 0;
            for _ in 0..300 {
                let window: Vec<u64> = q.read(0, 7).unwrap().into_iter().map(|e| e.seq).collect();
                acked += q.ack(&window).unwrap();
            }
            acked
        })
    };
    for a in appenders {
        a.join().unwrap();
    }
    let acked = drainer.join().unwrap() as u64;
    let (d, t) = q.stats();
    assert_eq!(t.received, 600);
    assert_eq!(t.forwarded, acked);
    assert_eq!(d.messages, seqs(&q).len() as u64, "depth counter vs tree");
    assert_invariant(&q);
}

/// Random operations against the reference model. Seeds are fixed: failures reproduce.
/// Each run starts with one overflow policy and changes limits (policy,
/// bytes, count, TTL) at random along the way.
#[test]
fn model_check_random_operations_with_reopen() {
    for seed in 1..=4u64 {
        run_model(seed, 3_000);
    }
}

fn random_limits(rng: &mut fastrand::Rng) -> QueueLimits {
    QueueLimits {
        max_bytes: [0, 1_500, 4_000][rng.usize(0..3)],
        max_messages: [0, 5, 40][rng.usize(0..3)],
        overflow: [Overflow::Block, Overflow::DropNew, Overflow::DropOldest][rng.usize(0..3)],
        ttl: [None, Some(Duration::from_millis(5_000))][rng.usize(0..2)],
    }
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut lim = QueueLimits {
        max_bytes: if seed % 2 == 0 { 4_000 } else { 0 },
        max_messages: 40,
        overflow: [Overflow::Block, Overflow::DropNew, Overflow::DropOldest][(seed % 3) as usize],
        ttl: Some(Duration::from_millis(5_000)),
    };
    let mut store = Some(Store::open(dir.path()).unwrap());
    let mut q = store.as_ref().unwrap().queue("m", lim).unwrap();
    let mut model = Model::default();
    // Every sequence number the store ever handed out is below this.
    let mut next_unused = 0u64;
    let mut clock = 0u64;
    let mut cursor = 0u64;
    let mut window: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step} ({lim:?})");
        clock += rng.u64(0..200);
        match rng.u16(0..1000) {
            0..=399 => {
                let batch: Vec<Record> = (0..rng.usize(1..8))
                    .map(|_| {
                        next_id += 1;
                        // Mostly small, sometimes larger than the 1,500-byte limit.
                        let size = if rng.u8(0..20) == 0 {
                            rng.usize(1_400..1_700)
                        } else {
                            rng.usize(0..300)
                        };
                        rec(next_id, size, clock)
                    })
                    .collect();
                let new_from = model.next_seq;
                let out = q.append(&batch).unwrap();
                let expected = model.append(&lim, &batch);
                assert_eq!(out, expected, "{ctx}: outcome");
                // The new entries got sequence numbers above every one
                // handed out before, in order (the check below compares
                // them with the model's).
                let stored = q.read(0, usize::MAX).unwrap();
                assert_eq!(stored.len(), model.entries.len(), "{ctx}");
                for (m, e) in model.entries.iter().zip(&stored) {
                    if m.0 >= new_from {
                        assert!(
                            e.seq >= next_unused,
                            "{ctx}: sequence {} reused (next unused {next_unused})",
                            e.seq
                        );
                    }
                }
                // Records evicted within their own batch used numbers too;
                // the store's counter knows how many it handed out.
                next_unused = q.mark().next_seq;
            }
            400..=599 => {
                // Read a window from the cursor, as the drainer does.
                let got = q.read(cursor, rng.usize(1..10)).unwrap();
                let expect: Vec<u64> = model
                    .entries
                    .iter()
                    .map(|e| e.0)
                    .filter(|s| *s >= cursor)
                    .take(got.len())
                    .collect();
                assert_eq!(
                    got.iter().map(|e| e.seq).collect::<Vec<_>>(),
                    expect,
                    "{ctx}: read window"
                );
                if let Some(last) = got.last() {
                    cursor = last.seq + 1;
                }
                window.extend(got.iter().map(|e| e.seq));
            }
            600..=779 => {
                // Ack the oldest part of the window (in-order acks), or any
                // subset of it (acks may come in any order).
                let take: Vec<u64> = if rng.bool() {
                    window[..rng.usize(0..=window.len())].to_vec()
                } else {
                    window.iter().copied().filter(|_| rng.bool()).collect()
                };
                window.retain(|s| !take.contains(s));
                let removed = q.ack(&take).unwrap();
                assert_eq!(removed, model.remove(&take, None), "{ctx}: acked");
            }
            780..=819 => {
                // The destination refused some: dropped as rejected.
                let take: Vec<u64> = window.iter().copied().filter(|_| rng.u8(0..4) == 0).collect();
                window.retain(|s| !take.contains(s));
                let removed = q.drop_entries(&take, DropReason::Rejected).unwrap();
                assert_eq!(
                    removed,
                    model.remove(&take, Some(DropReason::Rejected)),
                    "{ctx}: rejected"
                );
            }
            820..=869 => {
                let removed = q.expire(clock).unwrap();
                assert_eq!(removed, model.expire(&lim, clock), "{ctx}: expired");
            }
            870..=929 => {
                // Reconnect: the drainer replays from the oldest entry.
                cursor = 0;
                window.clear();
            }
            930..=989 => {
                // New limits (a config reload); may be below the current depth.
                lim = random_limits(&mut rng);
                q.set_limits(lim);
            }
            _ => {
                // Close and reopen: after an explicit flush, or relying on
                // sled flushing when the last handle closes.
                if rng.bool() {
                    store.as_ref().unwrap().flush().unwrap();
                }
                drop(q);
                drop(store.take());
                store = Some(Store::open(dir.path()).unwrap());
                q = store.as_ref().unwrap().queue("m", lim).unwrap();
                cursor = 0;
                window.clear();
            }
        }
        // Contents, counters and the invariant after every step.
        model.check(&q, &lim, &ctx);
    }
}

#[test]
fn a_truncated_database_is_reported_as_damaged_not_opened_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        // In batches, as ingest appends them.
        for i in 0..100 {
            q.append(&recs(i * 50..(i + 1) * 50, 100)).unwrap();
        }
        store.checkpoint().unwrap();
    }
    let db = dir.path().join("store").join("db");
    testkit::cut_in_half(&db);
    let err = Store::open(dir.path()).err().expect("a damaged store must not open");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(text.contains("l/out") && text.contains("quarantine"), "{text}");

    let aside = quarantine(dir.path()).unwrap();
    assert!(aside.join("db").exists() && aside.join("ledger").exists());
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.queue("l/out", QueueLimits::UNBOUNDED).unwrap().depth().messages,
        0
    );
}

#[test]
fn a_clean_reopen_passes_the_ledger_check() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("l/out", QueueLimits::UNBOUNDED).unwrap();
        q.append(&recs(0..100, 10)).unwrap();
        store.checkpoint().unwrap();
        assert_eq!(q.totals().received, 100 * (round + 1));
    }
}

#[test]
fn open_existing_neither_creates_a_store_nor_waits_for_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_existing(dir.path()).err().expect("no store yet");
    assert!(matches!(err, StoreError::NoStore { .. }), "{err:?}");
    assert!(!dir.path().join("store").exists(), "open_existing created a store");
    let store = Store::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let err = Store::open_existing(dir.path()).err().expect("the store is in use");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?} for the lock",
        started.elapsed()
    );
    drop(store);
}

#[test]
fn scan_streams_in_order_reports_damage_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&[rec(0, 5, 10), rec(1, 5, 20), rec(2, 5, 30)]).unwrap();
    let s = seqs(&q);
    damage_record(&store, "q", s[1]);
    let before = q.stats();

    let scanned: Vec<Scanned> = q.scan(0).map(Result::unwrap).collect();
    assert_eq!(scanned.iter().map(|e| e.seq).collect::<Vec<_>>(), s);
    assert_eq!(scanned[0].record.as_ref().map(|r| r.topic.as_str()), Ok("t/0"));
    assert!(scanned[1].record.is_err(), "a damaged record must be reported");
    assert_eq!(scanned[0].size, size_of(&rec(0, 5, 10)));
    assert_eq!(q.scan(s[2]).count(), 1, "scan starts at from_seq");
    assert_eq!(q.stats(), before, "scan changed the queue");
    assert_eq!(
        (q.oldest_received_at_ms(), q.newest_received_at_ms()),
        (Some(10), Some(30))
    );
}

#[test]
fn purge_removes_everything_counted_as_purged_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
        q.append(&recs(0..25_000, 3)).unwrap();
        let s = seqs(&q);
        q.ack(&s[..100]).unwrap();
        assert_eq!(q.purge().unwrap(), 24_900);
        assert_eq!(q.depth(), Depth::default());
        assert_eq!(q.newest_received_at_ms(), None);
        assert_eq!(q.purge().unwrap(), 0, "purging an empty queue");
        store.checkpoint().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    let t = q.totals();
    assert_eq!(
        (
            t.received,
            t.forwarded,
            t.dropped(DropReason::Purged),
            t.dropped_total()
        ),
        (25_000, 100, 24_900, 24_900)
    );
    assert_invariant(&q);
    q.append(&recs(0..1, 3)).unwrap();
    assert!(seqs(&q)[0] >= 25_000, "a sequence number was reused after a purge");
}

/// Every file and directory under `dir` with its mode, for the permission test.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        out.push((entry.path(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            out.extend(modes(&entry.path()));
        }
    }
    out
}

#[test]
fn everything_ferry_creates_is_owner_only_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only changes the mode of files created from now on.
    let old = unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    {
        let store = Store::open(&data_dir).unwrap();
        let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
        // Large records make sled write blob files.
        q.append(&recs(0..40, 20_000)).unwrap();
        store.flush().unwrap();
        store.checkpoint().unwrap();
    }
    // A reopen writes a snapshot.
    drop(open_fast(&data_dir).unwrap());
    unsafe { libc::umask(old) };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700, "data_dir");
    let all = modes(&data_dir);
    assert!(
        all.iter()
            .any(|(p, _)| p.starts_with(data_dir.join("store/blobs")) && p.is_file()),
        "no blob written: {all:?}"
    );
    assert!(
        all.iter()
            .any(|(p, _)| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snap."))),
        "no snapshot: {all:?}"
    );
    for (path, mode) in all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}: mode {mode:o}", path.display());
    }
}

#[test]
fn a_store_whose_creation_a_power_loss_cut_short_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    // What a power loss during creation leaves: sled's files in `store.new`,
    // an empty conf, a short db.
    let fresh = dir.path().join("store.new");
    std::fs::create_dir_all(fresh.join("blobs")).unwrap();
    std::fs::write(fresh.join("conf"), b"").unwrap();
    std::fs::write(fresh.join("db"), [0u8; 17]).unwrap();
    let store = open_fast(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&recs(0..3, 10)).unwrap();
    store.flush().unwrap();
    drop((q, store));
    assert!(!fresh.exists(), "the unfinished store.new is left behind");
    let store = open_fast(dir.path()).unwrap();
    assert_eq!(store.queue("q", QueueLimits::UNBOUNDED).unwrap().depth().messages, 3);
}

/// A closed store whose queue `q` holds five records, checkpointed.
fn store_with_five_in_q() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .queue("q", QueueLimits::UNBOUNDED)
        .unwrap()
        .append(&recs(0..5, 10))
        .unwrap();
    store.checkpoint().unwrap();
    dir
}

#[test]
fn a_torn_snapshot_left_by_a_crash_does_not_stop_the_store_from_opening() {
    let dir = store_with_five_in_q();
    // sled takes the last `snap.*` by name: a torn one sorts last.
    std::fs::write(
        dir.path().join("store").join("snap.FFFFFFFFFFFFFFFF.generating"),
        b"torn",
    )
    .unwrap();
    let store = open_fast(dir.path()).unwrap();
    assert_eq!(store.queue("q", QueueLimits::UNBOUNDED).unwrap().depth().messages, 5);
}

#[test]
fn an_unreadable_database_without_a_ledger_is_damaged_not_empty() {
    let dir = store_with_five_in_q();
    std::fs::remove_file(dir.path().join("ledger")).unwrap();
    let store = dir.path().join("store");
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let len = std::fs::metadata(store.join("db")).unwrap().len();
    std::fs::write(store.join("db"), vec![0u8; len as usize]).unwrap();
    let err = open_fast(dir.path())
        .err()
        .expect("an unreadable db must not open as an empty store");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("quarantine"), "{err}");
}

/// The values (batch values and the meta entry) in a queue's tree.
fn sled_entries(store: &Store, queue: &str) -> usize {
    store.inner.db.open_tree(tree_name(queue)).unwrap().len()
}

#[test]
fn one_value_per_batch_removed_once_all_its_records_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    for b in 0..3 {
        q.append(&recs(b * 64..(b + 1) * 64, 10)).unwrap();
    }
    assert_eq!(
        sled_entries(&store, "q"),
        3 + 1,
        "three batch values and the meta entry"
    );
    let s = seqs(&q);
    // The first batch acked in two windows, the second one in part.
    q.ack(&s[..40]).unwrap();
    assert_eq!(sled_entries(&store, "q"), 4, "a batch value with live records stays");
    q.ack(&s[40..64]).unwrap();
    assert_eq!(sled_entries(&store, "q"), 3, "a batch value without live records goes");
    q.ack(&s[64..100]).unwrap();
    assert_eq!(q.first_seq(), Some(s[100]));
    assert_eq!(q.depth().messages, 92);
    assert_invariant(&q);
    // A batch larger than one value is split: read and acked across them.
    q.append(&recs(192..256, 1000)).unwrap();
    assert!(sled_entries(&store, "q") > 4, "64 records of 1 KiB in one value");
    let s = seqs(&q);
    assert_eq!(topics(&q).last().map(String::as_str), Some("t/255"));
    q.ack(&s).unwrap();
    assert_eq!(sled_entries(&store, "q"), 1, "only the meta entry is left");
}

#[test]
fn acknowledgements_out_of_order_survive_a_reopen_and_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, bytes) = {
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
        q.append(&recs(0..10, 10)).unwrap();
        q.append(&recs(10..20, 10)).unwrap();
        let s = seqs(&q);
        q.ack(&[s[0], s[1], s[3], s[5], s[12], s[19]]).unwrap();
        q.drop_entries(&[s[7]], DropReason::Rejected).unwrap();
        store.flush().unwrap();
        (s, q.depth().bytes)
    };
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    let gone = [0, 1, 3, 5, 7, 12, 19];
    let want: Vec<u64> = (0..20).filter(|i| !gone.contains(i)).map(|i| s[i]).collect();
    assert_eq!(seqs(&q), want);
    // A cursor in the middle of a batch value skips what is acked there.
    assert_eq!(
        q.read(s[4], 3).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(),
        [s[4], s[6], s[8]]
    );
    assert_eq!(q.depth(), Depth { messages: 13, bytes });
    let t = q.totals();
    assert_eq!((t.forwarded, t.dropped(DropReason::Rejected)), (6, 1));
    assert_eq!(q.first_seq(), Some(s[2]));
    assert_eq!(q.ack(&[s[0], s[3]]).unwrap(), 0, "an acked record is gone for good");
    assert_invariant(&q);
}

#[test]
fn drop_oldest_consumes_the_oldest_batch_value_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", limits(0, 100, Overflow::DropOldest)).unwrap();
    q.append(&recs(0..100, 5)).unwrap();
    let out = q.append(&recs(100..130, 5)).unwrap();
    assert_eq!((out.accepted, out.evicted), (30, 30));
    assert_eq!(topics(&q).first().map(String::as_str), Some("t/30"));
    assert_eq!(sled_entries(&store, "q"), 3, "the partly evicted value stays");
    // The rest of the first value goes with 70 more evictions.
    q.append(&recs(130..200, 5)).unwrap();
    assert_eq!(sled_entries(&store, "q"), 3);
    assert_eq!(topics(&q).first().map(String::as_str), Some("t/100"));
    assert_eq!(q.totals().dropped(DropReason::Overflow), 100);
    assert_invariant(&q);
}

#[test]
fn a_damaged_batch_value_counts_what_it_held_as_corrupt_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = store.queue("q", QueueLimits::UNBOUNDED).unwrap();
    q.append(&recs(0..10, 10)).unwrap();
    q.append(&recs(10..20, 10)).unwrap();
    q.append(&recs(20..30, 10)).unwrap();
    let s = seqs(&q);
    // Out of order inside the middle value: 3 of its 10 gone.
    q.ack(&[s[11], s[13], s[15]]).unwrap();
    let kept_bytes: u64 = recs(0..10, 10).iter().chain(&recs(20..30, 10)).map(size_of).sum();
    // Damage the middle value's index (its last byte) behind the queue's back.
    let tree = store.inner.db.open_tree(tree_name("q")).unwrap();
    let k = s[10].to_be_bytes();
    let mut v = tree.get(k).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 0x01;
    tree.insert(k, v).unwrap();

    let got = seqs(&q);
    assert_eq!(
        got,
        [&s[..10], &s[20..]].concat(),
        "the damaged value's records are never returned"
    );
    assert_eq!(q.totals().dropped(DropReason::Corrupt), 7, "the 7 live records it held");
    assert_eq!(
        q.depth(),
        Depth {
            messages: 20,
            bytes: kept_bytes
        }
    );
    assert!(q.meta_acked_is_empty(), "its acked set went with it");
    assert_invariant(&q);
    q.ack(&got).unwrap();
    assert_eq!(q.depth(), Depth::default());
    assert_eq!(sled_entries(&store, "q"), 1, "only the meta entry is left");
}

/// Extracts the data_dir written by ferry at 9345624 (store format 1: one
/// record per sled value), made by `scripts/make-v1-store.sh`: queue
/// `edge0/out` holds `v1-edge0-0..149`, `edge1/out` holds `v1-edge1-100..249`
/// after 100 were forwarded.
pub(crate) fn v1_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "cannot extract {}", archive.display());
    let data = dir.path().join("data");
    (dir, data)
}

fn payloads(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.record.payload).into_owned())
        .collect()
}

#[test]
fn a_store_of_format_1_opens_drains_in_order_and_keeps_its_counters() {
    let (_dir, data) = v1_store();
    let store = Store::open(&data).unwrap();
    let mut names = store.queue_names();
    names.sort();
    assert_eq!(names, ["edge0/out", "edge1/out"]);

    let e0 = store.queue("edge0/out", QueueLimits::UNBOUNDED).unwrap();
    let all = e0.read(0, usize::MAX).unwrap();
    let want: Vec<String> = (0..150).map(|n| format!("v1-edge0-{n}")).collect();
    assert_eq!(payloads(&all), want);
    assert!(all
        .iter()
        .enumerate()
        .all(|(n, e)| e.record.topic == format!("down/e0/{n}")
            && e.record.qos == 1
            && e.record.properties.user_properties == [("k".to_string(), "v".to_string())]));
    assert_eq!(
        e0.totals(),
        Totals {
            received: 150,
            ..Totals::default()
        }
    );

    let e1 = store.queue("edge1/out", QueueLimits::UNBOUNDED).unwrap();
    let old = e1.read(0, usize::MAX).unwrap();
    let want: Vec<String> = (100..250).map(|n| format!("v1-edge1-{n}")).collect();
    assert_eq!(payloads(&old), want);
    let (depth, totals) = e1.stats();
    assert_eq!((totals.received, totals.forwarded, depth.messages), (250, 100, 150));
    let sizes: u64 = old.iter().map(|e| size_of(&e.record)).sum();
    assert_eq!(depth.bytes, sizes, "format-1 values count their stored size");

    // Old values and a new batch value side by side, acked out of order
    // across both, then a reopen.
    e1.append(&recs(0..10, 8)).unwrap();
    let s = seqs(&e1);
    assert_eq!(s.len(), 160);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "new sequences follow the old ones");
    let acked: Vec<u64> = s.iter().copied().step_by(3).collect();
    e1.ack(&acked).unwrap();
    store.checkpoint().unwrap();
    drop((e0, e1, store));

    let store = Store::open(&data).unwrap();
    let e1 = store.queue("edge1/out", QueueLimits::UNBOUNDED).unwrap();
    let left: Vec<u64> = s.iter().copied().filter(|x| !acked.contains(x)).collect();
    assert_eq!(seqs(&e1), left);
    let t = e1.totals();
    assert_eq!((t.received, t.forwarded), (260, 100 + acked.len() as u64));
    assert_invariant(&e1);
    // Drained in windows, as the drainer does: nothing is left behind.
    loop {
        let w = e1.read(0, 64).unwrap();
        if w.is_empty() {
            break;
        }
        e1.ack(&w.iter().map(|e| e.seq).collect::<Vec<_>>()).unwrap();
    }
    assert_eq!(e1.depth(), Depth::default());
    assert_eq!(e1.totals().forwarded, 260);
    assert_eq!(sled_entries(&store, "edge1/out"), 1, "only the meta entry is left");
}
