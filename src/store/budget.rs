//! The store-wide budget: how many bytes the whole store may take, so that
//! one link whose destination is away cannot fill the disk and, through the
//! shared store, stop every other link.
//!
//! # What it owns
//! - the budget in force ([`Limits`]: `store_max_bytes` and
//!   `store_reserve_bytes`, with `auto` resolved by [`Limits::resolve`]);
//! - the store's size, measured cheaply: the bytes of the files under
//!   `<data_dir>/store`, sampled by a background thread four times a second, plus
//!   the bytes appended since that sample, times sled's write amplification;
//! - the bytes queued in all open queues and how many queues there are,
//!   which decide which queues are *growing*;
//! - the disk helpers [`dir_size`] and [`free_bytes`] (one place in ferry).
//!
//! # The rule
//! The budget is *reached* when `size + reserve >= store_max_bytes`. While
//! it is reached, a queue is *growing* when its depth in bytes is
//! - at least the mean depth of all open queues, and
//! - more than half the reserve.
//!
//! An append to a growing queue meets the queue's overflow policy, as if
//! the queue's own bound were reached: `block` refuses (ingest holds the
//! messages unacknowledged, the source broker keeps them), `drop-new` drops
//! the new message, `drop-oldest` drops as many of its oldest messages as
//! the new one needs (so its depth does not grow). Drops are counted with
//! reason `overflow`. Every other queue appends as usual: a link that
//! forwards holds next to nothing, and its draining frees the space its
//! appends take, so it keeps running inside the reserve.
//!
//! Why depth and not its rate: a queue that holds at least the mean is one
//! of those that filled the store, and the largest queue is always at or
//! above the mean, so whenever the budget is reached and any queue holds
//! more than half the reserve, at least one queue is held. A link that
//! forwards holds about its in-flight window (`inflight` messages) and
//! never more than half the reserve (64 MiB by default: 200 messages of
//! 160 KiB), so it is not held, whatever the others hold. The floor also
//! keeps every queue running when the store is over its budget although
//! no queue holds much (sled's files are larger than what they hold).
//!
//! # Invariants
//! - The budget only changes what an append does; it never touches acks,
//!   drops, expiry or purges (draining is how space comes back).
//! - Whatever it holds or drops is decided inside `Queue::append`, under the
//!   queue's lock, and counted in the queue's meta entry in the same atomic
//!   batch: `received = forwarded + dropped + queued` stays exact.
//! - The size only overestimates between samples (appends count at once,
//!   removals at the next sample), so the budget errs on the side of room
//!   left on the disk. ENOSPC can still happen (another program fills the
//!   disk): the store's poison-and-reopen path stays the last resort.
//!
//! sled reuses space freed inside its file but gives it back to the
//! filesystem only from the end of the file, so after a large backlog
//! drained the size can stay near the budget for a while. Queues that hold
//! little are not affected by that.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// `store_max_bytes` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxBytes {
    /// Leave `max(5% of the filesystem, 1 GiB)` free (half of a
    /// filesystem smaller than 2 GiB), computed when the store opens.
    Auto,
    /// No budget: only ENOSPC stops the store growing.
    Off,
    Bytes(u64),
}

/// The reserve when `store_reserve_bytes` is not set: this, or a quarter of
/// the budget when that is smaller.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 << 20;
/// `auto` leaves at least this free...
const AUTO_MIN_FREE_BYTES: u64 = 1 << 30;
/// ...and at least this percentage of the filesystem...
const AUTO_MIN_FREE_PERCENT: u64 = 5;
// ...but never more than half the filesystem: on a small one the rule
// above would leave the store no room at all.

/// How often the sampler measures the store's files (a few `stat`s). sled
/// writes more than the records appended (2 to 3 times as much with many
/// small commits), so between samples the size runs behind: keep it short.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What an appended byte costs in sled's files until the next sample: sled
/// writes 2 to 3 times the records appended. Counting appends at their own
/// size let a fast ingest run 1.1-1.4x past the budget between two samples
/// (tests/budget.rs: files at 17.9-18.3 MB against 16 MiB when the dead
/// queue was first held, once ferry ingested faster); counted at 3x, the
/// estimate stays above the files.
const WRITE_AMPLIFICATION: u64 = 3;

/// The budget in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub reserve_bytes: u64,
}

impl Limits {
    /// The limits for `data_dir` now: `auto` from its filesystem's size and
    /// use (the store's own files count as room it may keep), the default
    /// reserve when none is set. None for `off`, or when the filesystem
    /// cannot be measured (logged by the caller).
    pub fn resolve(max: MaxBytes, reserve: Option<u64>, data_dir: &Path) -> Option<Limits> {
        let max_bytes = match max {
            MaxBytes::Off => return None,
            MaxBytes::Bytes(bytes) => bytes,
            MaxBytes::Auto => auto_max_bytes(data_dir)?,
        };
        let reserve_bytes = reserve.unwrap_or(DEFAULT_RESERVE_BYTES.min(max_bytes / 4));
        Some(Limits {
            max_bytes,
            reserve_bytes,
        })
    }
}

/// What `auto` gives for `data_dir` now: the store's current size plus the
/// free space, less what must stay free. None when `data_dir` (or its
/// nearest existing ancestor) cannot be measured.
pub fn auto_max_bytes(data_dir: &Path) -> Option<u64> {
    let existing = data_dir.ancestors().find(|p| p.exists())?;
    let (total, free) = fs_space(existing)?;
    let keep_free = (total / 100 * AUTO_MIN_FREE_PERCENT)
        .max(AUTO_MIN_FREE_BYTES)
        .min(total / 2);
    Some((dir_size(&data_dir.join("store")) + free).saturating_sub(keep_free))
}

/// How the budget stands now (for metrics, status and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetView {
    /// None: no budget (`off`).
    pub limits: Option<Limits>,
    /// The store's size as the budget counts it.
    pub size_bytes: u64,
    /// Queues whose last append the budget held.
    pub held_queues: u64,
}

/// The store's budget and its measurements, shared by the store, its queues
/// and the sampler thread.
pub(crate) struct Budget {
    /// The sled directory, `<data_dir>/store`.
    dir: PathBuf,
    /// 0: no budget.
    max_bytes: AtomicU64,
    reserve_bytes: AtomicU64,
    /// The store's files at the last sample.
    sampled_bytes: AtomicU64,
    /// Appended since the last sample.
    appended_bytes: AtomicU64,
    /// Sum of the depths (bytes) of the open queues.
    queued_bytes: AtomicU64,
    queues: AtomicU64,
    held_queues: AtomicU64,
}

impl Budget {
    /// A budget (none in force yet) for the sled directory `dir`, with a
    /// sampler thread that ends when the budget is dropped.
    pub(crate) fn start(dir: &Path) -> Arc<Budget> {
        let budget = Arc::new(Budget {
            dir: dir.to_path_buf(),
            max_bytes: AtomicU64::new(0),
            reserve_bytes: AtomicU64::new(0),
            sampled_bytes: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            queues: AtomicU64::new(0),
            held_queues: AtomicU64::new(0),
        });
        budget.sample();
        let weak = Arc::downgrade(&budget);
        let spawned = std::thread::Builder::new()
            .name("ferry-store-size".into())
            .spawn(move || sample_while_alive(weak));
        if let Err(e) = spawned {
            // Without samples the size only grows: the budget errs on the safe side.
            tracing::error!(error = %e, "cannot start the store size sampler; the store budget counts appends only");
        }
        budget
    }

    pub(crate) fn set(&self, limits: Option<Limits>) {
        let (max, reserve) = limits.map_or((0, 0), |l| (l.max_bytes, l.reserve_bytes));
        self.max_bytes.store(max, Relaxed);
        self.reserve_bytes.store(reserve, Relaxed);
    }

    pub(crate) fn limits(&self) -> Option<Limits> {
        let max_bytes = self.max_bytes.load(Relaxed);
        (max_bytes > 0).then(|| Limits {
            max_bytes,
            reserve_bytes: self.reserve_bytes.load(Relaxed),
        })
    }

    pub(crate) fn view(&self) -> BudgetView {
        BudgetView {
            limits: self.limits(),
            size_bytes: self.size(),
            held_queues: self.held_queues.load(Relaxed),
        }
    }

    /// Measures the store's files now (the sampler does this four times a second).
    pub(crate) fn sample(&self) {
        // Appends made while the files are measured stay counted (perhaps
        // twice): an overestimate, never an under-.
        let appended_before = self.appended_bytes.load(Relaxed);
        self.sampled_bytes.store(dir_size(&self.dir), Relaxed);
        let _ = self
            .appended_bytes
            .fetch_update(Relaxed, Relaxed, |now| Some(now.saturating_sub(appended_before)));
    }

    fn size(&self) -> u64 {
        self.sampled_bytes
            .load(Relaxed)
            .saturating_add(self.appended_bytes.load(Relaxed))
    }

    /// Whether a queue holding `depth` bytes is held when it would store
    /// `more` bytes now.
    pub(crate) fn holds(&self, depth: u64, more: u64) -> bool {
        let Some(limits) = self.limits() else { return false };
        is_growing(
            limits,
            self.size().saturating_add(more),
            depth,
            self.queued_bytes.load(Relaxed),
            self.queues.load(Relaxed),
        )
    }

    pub(crate) fn queue_opened(&self, depth: u64) {
        self.queues.fetch_add(1, Relaxed);
        self.queued_bytes.fetch_add(depth, Relaxed);
    }

    /// A queue's depth went from `before` to `after` bytes.
    pub(crate) fn depth_changed(&self, before: u64, after: u64) {
        if after >= before {
            self.queued_bytes.fetch_add(after - before, Relaxed);
        } else {
            let _ = self
                .queued_bytes
                .fetch_update(Relaxed, Relaxed, |now| Some(now.saturating_sub(before - after)));
        }
    }

    /// `bytes` were written to the store by an append (they count
    /// [`WRITE_AMPLIFICATION`] times until the next sample).
    pub(crate) fn appended(&self, bytes: u64) {
        self.appended_bytes
            .fetch_add(bytes.saturating_mul(WRITE_AMPLIFICATION), Relaxed);
    }

    /// Records whether `queue` is held now; logs and counts the changes.
    pub(crate) fn set_held(&self, queue: &str, flag: &AtomicBool, held: bool, depth: u64) {
        if flag.swap(held, Relaxed) == held {
            return;
        }
        let (max, size) = (self.max_bytes.load(Relaxed), self.size());
        if held {
            self.held_queues.fetch_add(1, Relaxed);
            tracing::warn!(queue, depth_bytes = depth, store_bytes = size, store_max_bytes = max, "store budget reached: this queue holds the most, so it meets its overflow policy (block: held at the source); other queues keep running");
        } else {
            let _ = self
                .held_queues
                .fetch_update(Relaxed, Relaxed, |now| Some(now.saturating_sub(1)));
            tracing::info!(
                queue,
                depth_bytes = depth,
                store_bytes = size,
                store_max_bytes = max,
                "store budget: this queue is no longer held"
            );
        }
    }
}

/// The rule (see the module doc): whether a queue of `depth` bytes is
/// growing while the store would be `size` bytes, with `queued` bytes in
/// `queues` open queues.
fn is_growing(limits: Limits, size: u64, depth: u64, queued: u64, queues: u64) -> bool {
    if size.saturating_add(limits.reserve_bytes) < limits.max_bytes {
        return false;
    }
    depth > limits.reserve_bytes / 2 && depth >= queued / queues.max(1)
}

fn sample_while_alive(budget: Weak<Budget>) {
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        match budget.upgrade() {
            Some(budget) => budget.sample(),
            None => return,
        }
    }
}

/// Bytes of the regular files under `dir`, recursively (0 when it does not
/// exist).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    fs_space(dir).map(|(_, free)| free)
}

/// (size, bytes available to an unprivileged writer) of the filesystem of `dir`.
fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs struct for the duration of the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    let unit = stat.f_frsize as u64;
    (rc == 0).then(|| (stat.f_blocks as u64 * unit, stat.f_bavail as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 100 << 20,
        reserve_bytes: 10 << 20,
    };

    #[test]
    fn below_the_budget_less_the_reserve_nothing_is_growing() {
        // 89 MiB + 10 MiB reserve < 100 MiB: every queue appends.
        assert!(!is_growing(LIMITS, 89 << 20, 80 << 20, 80 << 20, 4));
    }

    #[test]
    fn once_reached_the_queue_holding_the_most_is_growing_and_an_empty_one_is_not() {
        let (size, queued, queues) = (90 << 20, 80 << 20, 6);
        assert!(is_growing(LIMITS, size, 79 << 20, queued, queues));
        assert!(!is_growing(LIMITS, size, 0, queued, queues));
        assert!(!is_growing(LIMITS, size, 1 << 20, queued, queues), "below the mean");
    }

    #[test]
    fn two_large_queues_are_both_growing() {
        let (size, queued, queues) = (95 << 20, 80 << 20, 6);
        assert!(is_growing(LIMITS, size, 40 << 20, queued, queues));
        assert!(is_growing(LIMITS, size, 38 << 20, queued, queues));
        assert!(!is_growing(LIMITS, size, 2 << 20, queued, queues));
    }

    #[test]
    fn queues_within_half_the_reserve_are_not_growing_even_at_the_mean() {
        // Over the budget (sled's files larger than what is queued), all
        // queues small and equal: nobody holds more than half the reserve.
        let half = LIMITS.reserve_bytes / 2;
        assert!(!is_growing(LIMITS, 100 << 20, half, 4 * half, 4));
        assert!(is_growing(LIMITS, 100 << 20, half + 1, 4 * half + 1, 4));
        // A forwarding link's window (here 2 MiB), the others empty.
        assert!(!is_growing(LIMITS, 100 << 20, 2 << 20, 2 << 20, 6));
    }

    #[test]
    fn the_default_reserve_is_64_mib_or_a_quarter_of_a_small_budget() {
        let dir = Path::new("/");
        let big = Limits::resolve(MaxBytes::Bytes(10 << 30), None, dir).unwrap();
        assert_eq!(big.reserve_bytes, 64 << 20);
        let small = Limits::resolve(MaxBytes::Bytes(8 << 20), None, dir).unwrap();
        assert_eq!(small.reserve_bytes, 2 << 20);
        let set = Limits::resolve(MaxBytes::Bytes(8 << 20), Some(1 << 20), dir).unwrap();
        assert_eq!(set.reserve_bytes, 1 << 20);
        assert_eq!(Limits::resolve(MaxBytes::Off, None, dir), None);
    }

    #[test]
    fn auto_leaves_five_percent_and_at_least_a_gib_or_half_a_small_filesystem_free() {
        let dir = tempfile::tempdir().unwrap();
        let (total, free) = fs_space(dir.path()).unwrap();
        let auto = auto_max_bytes(&dir.path().join("not-yet")).unwrap();
        let keep = (total / 20).max(1 << 30).min(total / 2);
        // Free space moves while the test runs: allow 64 MiB either way.
        let expected = free.saturating_sub(keep);
        assert!(
            auto.abs_diff(expected) <= 64 << 20,
            "auto {auto}, expected about {expected}"
        );
    }

    use crate::store::{Overflow, Properties, Queue, QueueLimits, Record, Store};

    /// A store with queues `dead` (`overflow`) and `healthy0`, `healthy1`
    /// (block), and a budget that the store reaches once about 200 KB more
    /// are written, with a 60 KB reserve.
    fn three_queues(overflow: Overflow) -> (tempfile::TempDir, Store, Queue, [Queue; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = QueueLimits {
            overflow,
            ..QueueLimits::UNBOUNDED
        };
        let dead = store.queue("dead/out", limits).unwrap();
        let healthy = ["healthy0/out", "healthy1/out"].map(|n| store.queue(n, QueueLimits::UNBOUNDED).unwrap());
        store.flush().unwrap();
        store.sample_size();
        store.set_budget(Some(Limits {
            max_bytes: store.budget().size_bytes + 260_000,
            reserve_bytes: 60_000,
        }));
        (dir, store, dead, healthy)
    }

    fn batch(from: u64, n: u64) -> Vec<Record> {
        (from..from + n)
            .map(|i| Record {
                // Fixed width: every record the same size, so one evicted frees one added.
                topic: format!("t/{i:06}"),
                payload: vec![(i % 251) as u8; 1000],
                qos: 1,
                retain: false,
                received_at_ms: 0,
                properties: Properties::default(),
            })
            .collect()
    }

    /// Appends batches of 10 to `q` until the budget holds it (at most 1,000
    /// batches); returns how many records it took.
    fn fill_until_held(store: &Store, q: &Queue) -> u64 {
        let mut n = 0;
        while !q.held_by_budget() {
            assert!(n < 10_000, "the budget never held {}: {:?}", q.name(), store.budget());
            q.append(&batch(n, 10)).unwrap();
            store.flush().unwrap();
            store.sample_size();
            n += 10;
        }
        n
    }

    fn assert_counts_add_up(q: &Queue) {
        let (depth, totals) = q.stats();
        assert_eq!(
            totals.received,
            totals.forwarded + totals.dropped_total() + depth.messages,
            "{}: {totals:?} {depth:?}",
            q.name()
        );
    }

    /// The healthy queues store, forward (ack) and store again while the
    /// dead queue is held: 100 rounds of 10 records each.
    fn healthy_keep_running(store: &Store, healthy: &[Queue; 2]) {
        for round in 0..100 {
            for q in healthy {
                let out = q.append(&batch(round * 10, 10)).unwrap();
                assert_eq!(out.accepted, 10, "{} refused while not growing: {out:?}", q.name());
                let seqs: Vec<u64> = q.read(0, 100).unwrap().iter().map(|e| e.seq).collect();
                q.ack(&seqs).unwrap();
                assert!(!q.held_by_budget());
            }
            store.flush().unwrap();
        }
        for q in healthy {
            assert_eq!(q.totals().forwarded, 1000);
            assert_counts_add_up(q);
        }
    }

    #[test]
    fn block_holds_only_the_growing_queue_and_releases_it_when_it_drains() {
        let (_dir, store, dead, healthy) = three_queues(Overflow::Block);
        let stored = fill_until_held(&store, &dead);
        assert_eq!(store.budget().held_queues, 1);
        let out = dead.append(&batch(stored, 5)).unwrap();
        assert_eq!(
            (out.accepted, out.refused),
            (0, 5),
            "a held block queue refuses, uncounted"
        );
        healthy_keep_running(&store, &healthy);
        assert_eq!(dead.append(&batch(stored, 5)).unwrap().refused, 5, "still held");
        // Its destination returns: it drains, and takes messages again.
        let seqs: Vec<u64> = dead.read(0, usize::MAX).unwrap().iter().map(|e| e.seq).collect();
        dead.ack(&seqs).unwrap();
        assert!(!dead.held_by_budget(), "an empty queue is not growing");
        assert_eq!(store.budget().held_queues, 0);
        assert_eq!(dead.append(&batch(stored, 5)).unwrap().accepted, 5);
        assert_eq!(dead.totals().dropped_total(), 0, "block drops nothing");
        assert_counts_add_up(&dead);
    }

    #[test]
    fn drop_new_drops_and_counts_overflow_only_in_the_growing_queue() {
        let (_dir, store, dead, healthy) = three_queues(Overflow::DropNew);
        let stored = fill_until_held(&store, &dead);
        let depth = dead.depth();
        let out = dead.append(&batch(stored, 7)).unwrap();
        assert_eq!((out.accepted, out.dropped_new, out.refused), (0, 7, 0));
        assert_eq!(dead.depth(), depth);
        assert_eq!(
            dead.totals().dropped(crate::store::DropReason::Overflow),
            7 + (stored - depth.messages)
        );
        assert_counts_add_up(&dead);
        healthy_keep_running(&store, &healthy);
    }

    #[test]
    fn drop_oldest_replaces_its_oldest_and_counts_overflow_without_growing() {
        let (_dir, store, dead, healthy) = three_queues(Overflow::DropOldest);
        let stored = fill_until_held(&store, &dead);
        let before = dead.depth();
        let first = dead.first_seq().unwrap();
        let out = dead.append(&batch(stored, 7)).unwrap();
        assert_eq!((out.accepted, out.evicted), (7, 7), "{out:?}");
        assert_eq!(dead.depth(), before, "one out for each one in: the queue does not grow");
        assert_eq!(dead.first_seq(), Some(first + 7), "the oldest went");
        assert_counts_add_up(&dead);
        healthy_keep_running(&store, &healthy);
    }

    #[test]
    fn without_a_budget_nothing_is_held() {
        let (_dir, store, dead, _healthy) = three_queues(Overflow::Block);
        store.set_budget(None);
        for i in 0..100 {
            assert_eq!(dead.append(&batch(i * 10, 10)).unwrap().accepted, 10);
        }
        assert!(!dead.held_by_budget());
    }

    #[test]
    fn appends_count_at_once_and_a_sample_replaces_them_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), vec![0u8; 4096]).unwrap();
        let budget = Budget::start(dir.path());
        assert_eq!(budget.size(), 4096);
        budget.appended(1000);
        assert_eq!(budget.size(), 4096 + 1000 * WRITE_AMPLIFICATION);
        budget.sample();
        assert_eq!(budget.size(), 4096);
    }
}
