//! Store micro-benchmarks: the queue alone, without MQTT.
//!
//! - `append_commit/<payload>/<batch>`: `Queue::append` of a batch, then
//!   `Store::flush` (the group commit ingest does before acking);
//! - `read_ack/<payload>`: `Queue::read` of a 256-entry window, then
//!   `Queue::ack` of it and `Store::flush` (what the drainer does);
//! - `cycle/<payload>`: what one link does per ingest batch, in a plain
//!   timed loop: `append` of 64, `flush`, `read` of those 64, `ack`, `flush`
//!   (the durable commit each time), for 128 B and 4 KiB; prints msgs/s and
//!   the process's CPU time (user + system, every thread: sled's and the
//!   syncs' too) per message;
//! - `open`: `Store::open` + `Store::queue` + the first `read` of a store
//!   holding 1,000,000 queued 128 B messages, and the bytes on disk per
//!   queued byte of that store.
//!
//! Without `--bench` (`cargo test --all-targets` runs benches that way) each
//! operation runs once and the store for `open` holds 10,000 messages: a
//! smoke test of a second or two.
//!
//! Run: `cargo bench --bench store` (all), `cargo bench --bench store -- append`
//! (a filter). `FERRY_BENCH_OPEN_MESSAGES=N` changes the size of the store
//! that `open` measures.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use ferry::store::{Properties, Queue, QueueLimits, Record, Store};
use testkit::dir_size;

const PAYLOADS: [usize; 2] = [128, 4096];
const BATCHES: [usize; 3] = [1, 16, 256];
const WINDOW: usize = 256;

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn record(payload: usize) -> Record {
    Record {
        topic: "down/bench/t".to_string(),
        payload: vec![b'x'; payload],
        qos: 1,
        retain: false,
        received_at_ms: 1_700_000_000_000,
        properties: Properties::default(),
    }
}

fn open_queue(dir: &Path) -> (Store, Queue) {
    let store = Store::open(dir).expect("bench: cannot open the store in a temp dir");
    let queue = store
        .queue("bench/out", QueueLimits::UNBOUNDED)
        .expect("bench: cannot open the queue");
    (store, queue)
}

/// Removes every queued entry (untimed housekeeping between iterations).
fn empty(queue: &Queue) {
    loop {
        let entries = queue.read(0, 10_000).expect("bench: read failed");
        if entries.is_empty() {
            return;
        }
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        queue.ack(&seqs).expect("bench: ack failed");
    }
}

fn append_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let (store, queue) = open_queue(dir.path());
    for payload in PAYLOADS {
        let mut group = c.benchmark_group(format!("append_commit/{payload}B"));
        group
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        for batch_size in BATCHES {
            let batch = vec![record(payload); batch_size];
            group.throughput(Throughput::Elements(batch_size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch_size), &batch, |b, batch| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for i in 0..iters {
                        let t = Instant::now();
                        queue.append(batch).expect("bench: append failed");
                        store.flush().expect("bench: flush failed");
                        spent += t.elapsed();
                        // Keep the queue small: the cost measured is a commit,
                        // not a growing tree.
                        if i % 64 == 63 {
                            empty(&queue);
                        }
                    }
                    empty(&queue);
                    spent
                })
            });
        }
        group.finish();
    }
}

fn read_ack(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let (store, queue) = open_queue(dir.path());
    let mut group = c.benchmark_group("read_ack");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(WINDOW as u64));
    for payload in PAYLOADS {
        let fill = vec![record(payload); 1024];
        group.bench_function(BenchmarkId::from_parameter(format!("{payload}B")), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if queue.depth().messages < WINDOW as u64 {
                        for _ in 0..16 {
                            queue.append(&fill).expect("bench: append failed");
                        }
                        store.flush().expect("bench: flush failed");
                    }
                    let t = Instant::now();
                    let entries = queue.read(0, WINDOW).expect("bench: read failed");
                    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                    queue.ack(&seqs).expect("bench: ack failed");
                    store.flush().expect("bench: flush failed");
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    group.finish();
    empty(&queue);
}

/// Process CPU time (user + system, all threads) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

const CYCLE_BATCH: usize = 64;
const CYCLE_MESSAGES: usize = 64 * 500;

/// `cycle/<payload>`: append 64, commit, read them, ack, commit; `messages`
/// in all (a multiple of 64), after a warm-up of a tenth of that.
fn cycle(messages: usize) {
    for payload in PAYLOADS {
        let dir = tempfile::tempdir().expect("bench: temp dir");
        let (store, queue) = open_queue(dir.path());
        let batch = vec![record(payload); CYCLE_BATCH];
        let round = |n: usize| {
            for _ in 0..n / CYCLE_BATCH {
                queue.append(&batch).expect("bench: append failed");
                store.flush().expect("bench: flush failed");
                let entries = queue.read(0, CYCLE_BATCH).expect("bench: read failed");
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                queue.ack(&seqs).expect("bench: ack failed");
                store.flush().expect("bench: flush failed");
            }
        };
        round(messages / 10);
        let (t, cpu) = (Instant::now(), cpu_time());
        round(messages);
        let (wall, cpu) = (t.elapsed(), cpu_time() - cpu);
        assert_eq!(queue.depth().messages, 0, "bench: cycle left messages queued");
        println!(
            "cycle/{payload}B: {messages} messages in batches of {CYCLE_BATCH}: {:.0} msgs/s, CPU {:.1} us/msg ({:.0}% of one core)",
            messages as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / messages as f64,
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
    }
}

/// Builds a store of `n` queued 128 B messages, then times open + first read
/// a few times and reports the disk use. Plain timing: one open of a large
/// store takes long enough that criterion's sampling would take minutes.
fn open_and_disk() {
    let n: u64 = std::env::var("FERRY_BENCH_OPEN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode() { 1_000_000 } else { 10_000 });
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let built = Instant::now();
    let payload_bytes;
    let record_bytes;
    {
        let (store, queue) = open_queue(dir.path());
        let batch = vec![record(128); 1000];
        let mut left = n;
        while left > 0 {
            let take = left.min(1000) as usize;
            queue.append(&batch[..take]).expect("bench: append failed");
            store.flush().expect("bench: flush failed");
            left -= take as u64;
        }
        store.checkpoint().expect("bench: checkpoint failed");
        payload_bytes = n * 128;
        record_bytes = queue.depth().bytes;
    }
    let build_secs = built.elapsed().as_secs_f64();
    let on_disk = dir_size(dir.path());
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (store, queue) = open_queue(dir.path());
        let first = queue.read(0, WINDOW).expect("bench: read failed");
        let took = t.elapsed();
        assert_eq!(
            first.len() as u64,
            WINDOW.min(n as usize) as u64,
            "bench: the reopened store lost messages"
        );
        assert_eq!(queue.depth().messages, n, "bench: the reopened store lost messages");
        times.push(took.as_secs_f64());
        drop((queue, store));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "open/{n}: Store::open + queue + first read of {WINDOW}: min {:.3} s, median {:.3} s, max {:.3} s (5 opens; built in {build_secs:.1} s)",
        times[0], times[2], times[4]
    );
    println!(
        "disk/{n}: {on_disk} bytes on disk for {payload_bytes} payload bytes ({record_bytes} encoded record bytes): {:.2} bytes on disk per payload byte, {:.2} per record byte",
        on_disk as f64 / payload_bytes as f64,
        on_disk as f64 / record_bytes as f64
    );
}

criterion_group!(benches, append_commit, read_ack);

/// Without `--bench` (`cargo test --all-targets`): each operation once, on
/// small data, without criterion, whose argument parser refuses the test
/// harness's arguments (`--test-threads`).
fn smoke() {
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let (store, queue) = open_queue(dir.path());
    for payload in PAYLOADS {
        for batch_size in BATCHES {
            queue
                .append(&vec![record(payload); batch_size])
                .expect("bench: append failed");
            store.flush().expect("bench: flush failed");
        }
        let entries = queue.read(0, WINDOW).expect("bench: read failed");
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        queue.ack(&seqs).expect("bench: ack failed");
        store.flush().expect("bench: flush failed");
        empty(&queue);
    }
    drop((queue, store));
    cycle(CYCLE_BATCH);
    open_and_disk();
    println!("store bench: test mode, each operation ran once (run `cargo bench --bench store` to measure)");
}

fn main() {
    if !bench_mode() {
        smoke();
        return;
    }
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    // `-- cycle` runs only the cycle (criterion would find no benchmark).
    if filters.iter().any(|f| f == "cycle") {
        cycle(CYCLE_MESSAGES);
        return;
    }
    benches();
    // A filter that does not name them skips the open and disk measurements.
    if filters.is_empty()
        || filters
            .iter()
            .any(|f| "open".contains(f.as_str()) || "disk".contains(f.as_str()))
    {
        open_and_disk();
    }
    criterion::Criterion::default().configure_from_args().final_summary();
}
