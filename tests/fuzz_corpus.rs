//! Replays the fuzz corpus as an ordinary test, so CI exercises every fuzz
//! target without a fuzzer: each file in `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` (inputs that once found a bug) goes through
//! the same function the cargo-fuzz target calls (src/fuzzing/). See
//! docs/fuzzing.md for running the fuzzers themselves.
#![cfg(feature = "fuzzing")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("reading a corpus directory").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input; fails naming each input that panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for fuzz target {target} under fuzz/corpus/{target}"
    );
    let started = Instant::now();
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    eprintln!("{target}: replayed {} inputs in {:.1?}", files.len(), started.elapsed());
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail (the panic messages above say why); \
         reproduce one with `cargo fuzz run {target} <file>` in fuzz/: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn record_codec_corpus() {
    replay("record_codec", ferry::fuzzing::record_codec);
}

#[test]
fn queue_model_corpus() {
    replay("queue_model", ferry::fuzzing::queue_model);
}

#[test]
fn config_parse_corpus() {
    replay("config_parse", ferry::fuzzing::config_parse);
}

/// Finding F1 of the queue_model fuzzer (docs/fuzzing.md): a TTL whose
/// milliseconds do not fit in a u64 wraps around in `Queue::expire`
/// (`ttl.as_millis() as u64`), so a TTL of ~584 million years expires
/// messages after 384 ms. The config accepts it (`message_ttl_secs` up to
/// i64::MAX). Fixed: the store and the drainer saturate the milliseconds.
#[test]
fn a_ttl_too_long_for_u64_milliseconds_does_not_expire_early() {
    use ferry::store::{Properties, QueueLimits, Record, Store};
    let dir = std::env::temp_dir().join(format!("ferry-f1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).unwrap();
    let ttl = std::time::Duration::from_secs(18_446_744_073_709_552);
    let q = store
        .queue(
            "l/out",
            QueueLimits {
                ttl: Some(ttl),
                ..QueueLimits::UNBOUNDED
            },
        )
        .unwrap();
    let record = Record {
        topic: "t".into(),
        payload: vec![],
        qos: 1,
        retain: false,
        received_at_ms: 0,
        properties: Properties::default(),
    };
    q.append(&[record]).unwrap();
    let expired = q.expire(1_000).unwrap();
    drop((q, store));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(expired, 0, "a message 1 s old expired under a TTL of {ttl:?}");
}
