//! The queue store: one durable FIFO per link and direction.
//!
//! # Invariants
//! For every queue, at every moment and across any crash:
//! - `received == forwarded + dropped_total + depth.messages`;
//! - the depth counters equal what is in the tree;
//! - sequence numbers only grow and are never reused, so replay order is
//!   arrival order.
//!
//! # On-disk layout
//! One sled database at `<data_dir>/store`. Each queue is one sled tree named
//! `queue/<name>` (ferry names queues `<link>/<out|in>`). In a tree:
//! - one **batch value** per append (an ingest batch; a large one is split
//!   into values of at most 7 KiB, which keeps sled's leaf pages from
//!   becoming blob files, see `queue.rs`), keyed by the 8-byte
//!   big-endian sequence number of its first record, holding the records
//!   with consecutive sequence numbers from there; each record keeps its own
//!   format byte and CRC32, and the value's index (record sizes, count, first
//!   sequence) has its own CRC32 ([`record`]: format 2). So sled's work, and
//!   its copying of whole leaves, grows with batches, not messages;
//! - one meta entry under a 9-byte key of `0xff` (after every value key)
//!   holds next_seq, depth (messages, bytes), the totals received,
//!   forwarded and dropped per reason, and what is gone from values still
//!   stored: the **low-water mark** (every record below it is gone) and the
//!   **set acked out of order** above it (as runs). A record is queued when it
//!   is in a value, at or above the mark and not in the set; a value is
//!   removed in the batch that takes its last queued record (`queue.rs`
//!   states the invariants).
//!
//! **Upgrade from format 1.** ferry before batch values stored one record
//! per value, keyed by its own sequence number (format byte 1), and a meta
//! entry without the mark and the set. Such a store opens as it is, nothing
//! rewritten: a value's first byte says which it is, and a format-1 value is
//! read as a batch of one. Old and new values coexist in one tree until the
//! old ones are drained; the old ones always come first, since sequence
//! numbers only grow. An old meta entry reads as mark 0 and an empty set,
//! which is what it meant (a record still in the tree was queued); it is
//! written in the new format by the first mutation.
//!
//! Every mutation (an append batch, an ack batch, a drop) changes records and
//! the meta entry in **one** atomic `sled::Batch`, so the invariants hold
//! whatever moment a crash picks. Depth is read from the counters, never by
//! scanning (sled's `len()` is O(n)).
//!
//! # Protocol
//! - ingest: [`Queue::append`] a batch, then [`Store::flush`] (one commit for
//!   the batch: group commit; sled's flush, then the syncs of `durable.rs`
//!   that make it survive a power loss), and only then acknowledge the source;
//! - drain: [`Queue::read`] from a cursor (skipping what is acked), publish,
//!   and [`Queue::ack`] what the destination acknowledged. Acks need no
//!   flush: an ack lost in a crash means the message is sent again (a
//!   duplicate, never a loss). A torn batch value can only be one not yet
//!   committed, so not yet acknowledged to its source, which sends it again;
//!   a damaged one found later is dropped and what it held counted as
//!   `corrupt`;
//! - limits are applied inside `append` under one lock, with the overflow
//!   policy; every drop is counted with its [`DropReason`].
//! - the store-wide budget ([`budget`]: `store_max_bytes`) is checked there
//!   too: when the store reaches it, only the queues that grew meet their
//!   overflow policy, so one link away cannot fill the disk for the others.
//!
//! # Detecting damage
//! `<data_dir>/ledger` records, per queue, the next sequence number and the
//! received total as of the last checkpoint (at most one a second, after a
//! flush). They only grow, so a queue that opens with less than its ledger
//! entry lost data: sled 0.34 opens a damaged or truncated file without
//! complaint and returns less. `Store::open` then fails with
//! [`StoreError::Damaged`] instead of starting with silently emptied queues.
//! What sled itself cannot read at open (corruption it notices, a damaged
//! `conf` file) is reported as `Damaged` too, with the same remedy, and so is
//! a store without a ledger whose non-empty database holds no readable queue
//! (every store ferry creates gets a ledger first, see `durable.rs`).
//!
//! The store depends on nothing else in ferry, so tests, fuzzing and
//! benchmarks drive it alone.

mod budget;
mod durable;
mod ledger;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod model;
mod queue;
pub mod record;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use budget::{
    auto_max_bytes, dir_size, free_bytes, BudgetView, Limits as BudgetLimits, MaxBytes, DEFAULT_RESERVE_BYTES,
};
pub use queue::{Queue, Scanned};
pub use sessions::{SessionBook, Subscribed};

/// What a queue does when a bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Refuse new messages; the caller holds them unacknowledged.
    Block,
    /// Remove the oldest messages to make room.
    DropOldest,
    /// Drop the new message.
    DropNew,
}

impl Overflow {
    pub const ALL: [Overflow; 3] = [Overflow::Block, Overflow::DropOldest, Overflow::DropNew];

    /// The name in the config file (`overflow = "drop-oldest"`), the same as
    /// the serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop-oldest",
            Overflow::DropNew => "drop-new",
        }
    }
}

impl std::str::FromStr for Overflow {
    type Err = String;

    fn from_str(text: &str) -> Result<Overflow, String> {
        crate::names::named(&Overflow::ALL, Overflow::as_str, text).ok_or_else(|| {
            format!(
                "overflow must be \"block\" (stop taking messages, lossless), \"drop-oldest\" \
                 or \"drop-new\", got {text:?}"
            )
        })
    }
}

/// Why a message left a queue without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    Overflow,
    Expired,
    TooLarge,
    Rejected,
    Corrupt,
    /// Deleted by an operator (`ferry queue purge`).
    Purged,
}

impl DropReason {
    /// How many reasons there are (the length of the persisted counters).
    pub const COUNT: usize = 6;

    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Overflow,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::Rejected,
        DropReason::Corrupt,
        DropReason::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::Rejected => "rejected",
            DropReason::Corrupt => "corrupt",
            DropReason::Purged => "purged",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// MQTT v5 publish properties carried from source to destination.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// One queued message, as the destination will get it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub topic: String,
    #[serde(with = "record::bytes")]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub received_at_ms: u64,
    pub properties: Properties,
}

/// A record with its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub record: Record,
}

/// Bounds of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Stored bytes; 0 = no bound.
    pub max_bytes: u64,
    /// Messages; 0 = no bound.
    pub max_messages: u64,
    pub overflow: Overflow,
    pub ttl: Option<Duration>,
}

impl QueueLimits {
    pub const UNBOUNDED: QueueLimits = QueueLimits {
        max_bytes: 0,
        max_messages: 0,
        overflow: Overflow::Block,
        ttl: None,
    };
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub messages: u64,
    pub bytes: u64,
}

/// Lifetime totals of a queue, persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub forwarded: u64,
    /// Indexed by `DropReason as usize`.
    pub dropped: [u64; DropReason::COUNT],
}

impl Totals {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// What [`Queue::append`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Stored.
    pub accepted: usize,
    /// Not stored and counted as dropped: `drop-new`, or larger than the queue.
    pub dropped_new: usize,
    /// Older entries removed to make room (`drop-oldest`).
    pub evicted: usize,
    /// Under `block`: this many records at the end of the batch were not
    /// stored and not counted; the caller keeps them and must not ack them.
    pub refused: usize,
}

/// The persisted state of a queue (the meta entry): its counters, and which
/// stored records are gone although their batch value is still there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub next_seq: u64,
    pub messages: u64,
    pub bytes: u64,
    pub received: u64,
    pub forwarded: u64,
    /// Indexed by `DropReason as usize`. Meta entries written before
    /// `Purged` existed hold five; `record::decode_meta` reads both.
    pub dropped: [u64; DropReason::COUNT],
    /// The low-water mark: every record with a lower sequence is gone.
    pub low_water: u64,
    /// Records at or above `low_water` that are gone (acknowledged or
    /// dropped out of order) while their batch value still holds others.
    pub acked: std::collections::BTreeSet<u64>,
}

/// Errors of the store; their text says what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: the store is in use by another process (is another ferry running with this data_dir?)")]
    Locked { path: PathBuf },
    #[error("{path}: the store is damaged: {detail}. Its messages cannot all be recovered. To start with empty queues, move it aside with `ferry store quarantine --config <file>` (or: mv {path} {path}.damaged)")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path}: there is no store here yet (ferry has not run with this data_dir)")]
    NoStore { path: PathBuf },
    #[error("{path}: cannot create the data directory: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("{path}: {}", describe_io(source))]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: store error: {detail}")]
    Other { path: PathBuf, detail: String },
}

impl StoreError {
    /// True when the disk (or the quota) is full: retry later.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } | StoreError::CreateDir { source, .. } => is_no_space(source),
            _ => false,
        }
    }

    pub(crate) fn from_sled(path: &Path, e: sled::Error) -> StoreError {
        let path = path.to_path_buf();
        match e {
            sled::Error::Io(source) if source.to_string().contains("could not acquire lock") => {
                StoreError::Locked { path }
            }
            sled::Error::Io(source) => StoreError::Io { path, source },
            sled::Error::Corruption { at: Some(at), .. } => StoreError::Damaged {
                path,
                detail: format!("sled found corruption at {at:?}"),
            },
            sled::Error::Corruption { at: None, .. } => StoreError::Damaged {
                path,
                detail: "sled found corruption in its files".to_string(),
            },
            other => StoreError::Other {
                path,
                detail: other.to_string(),
            },
        }
    }

    /// Like `from_sled`, for `sled::Config::open`: there, "unsupported" and
    /// "bug" mean sled cannot read its own files (a damaged `conf`, or a
    /// database from another sled version): the operator's remedy is the
    /// same as for corruption.
    fn from_sled_at_open(path: &Path, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Unsupported(why) | sled::Error::ReportableBug(why) => StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!("sled cannot read it: {why}"),
            },
            other => StoreError::from_sled(path, other),
        }
    }
}

/// True when `e` says the disk (or the quota) is full; sled sometimes passes
/// the OS error on only as text ("... code: 28 ...").
fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.to_string().contains(&format!("code: {}", libc::ENOSPC))
}

fn describe_io(e: &std::io::Error) -> String {
    if is_no_space(e) {
        "write failed: the disk is full (no space left on device); free space on this filesystem".to_string()
    } else {
        format!("write failed: {e}")
    }
}

/// The sled database holding every queue. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    db: sled::Db,
    /// Syncs sled's files after each flush; None only under the test fault
    /// `FERRY_FAULT_UNSYNCED_COMMIT`.
    syncer: Option<durable::Syncer>,
    path: PathBuf,
    queues: Mutex<HashMap<String, Queue>>,
    /// Set by any failed sled operation. sled refuses every operation after
    /// an I/O error (e.g. a full disk) until the database is opened again.
    poisoned: Arc<AtomicBool>,
    ledger_path: PathBuf,
    last_checkpoint: Mutex<Option<std::time::Instant>>,
    flushes: Mutex<FlushState>,
    flushed: std::sync::Condvar,
    /// The store-wide budget (see [`budget`]), shared with every queue.
    budget: Arc<budget::Budget>,
    /// For [`Store::open_copy`]: the scratch copy, removed after the
    /// database (declared last, so dropped last).
    _scratch: Option<Scratch>,
}

/// sled writes what it still buffers when the database closes (a blob file
/// among it), with the process's umask and after ferry's last commit: flush
/// it here and make it owner-only, as the files it made before.
impl Drop for StoreInner {
    fn drop(&mut self) {
        let _ = self.db.flush();
        let _ = durable::make_private(&self.path);
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Store-wide group commit: every link's ingest and drain ask for flushes;
/// callers that arrive while one runs share the next one instead of queueing
/// an fsync each.
#[derive(Default)]
struct FlushState {
    /// Flushes asked for so far (each caller takes a ticket).
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    running: bool,
}

/// At most one ledger checkpoint per this interval (one small fsync).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How long `open` waits for a lock held by a store that is closing.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// sled's page cache, unless configured otherwise (`store_cache`). Queues
/// are read and written at their ends, which fit in far less; with 300,000
/// messages queued behind 37 links ferry's RSS was 127 MiB with 16 MiB and
/// 172 MiB with 64 MiB, at the same drain rate (docs/performance.md).
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    pub fn open_with_cache(data_dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Store::open_waiting(data_dir, cache_bytes, LOCK_WAIT)
    }

    /// Opens an existing store for an offline tool: fails at once with
    /// [`StoreError::Locked`] while a ferry uses it (no wait for a closing
    /// store), and with [`StoreError::NoStore`] instead of creating one.
    pub fn open_existing(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        if !path.exists() {
            return Err(StoreError::NoStore {
                path: data_dir.to_path_buf(),
            });
        }
        Store::open_waiting(data_dir, DEFAULT_CACHE_BYTES, Duration::ZERO)
    }

    /// Opens a copy of an existing store, for tools that only read: opening
    /// a sled database writes to it (a snapshot, the recovered tail, and a
    /// damaged file is rewritten as sled recovers it), and a read must not
    /// change a byte. The store and its ledger are copied into a private
    /// directory under the system's temporary directory (`TMPDIR`), removed
    /// when the returned store is dropped. Fails like [`Store::open_existing`]
    /// (no store, in use), and when the temporary directory has no room.
    pub fn open_copy(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        if !path.exists() {
            return Err(StoreError::NoStore {
                path: data_dir.to_path_buf(),
            });
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let scratch = {
            // Held while copying: a ferry holds sled's exclusive lock.
            let _lock = match durable::lock_shared(&path.join("db")).map_err(io(&path))? {
                Some(lock) => lock,
                None => return Err(StoreError::Locked { path }),
            };
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!("ferry-inspect-{}-{stamp}", std::process::id()));
            let scratch = Scratch(dir.clone());
            durable::copy_for_reading(data_dir, &dir).map_err(|e| StoreError::Other {
                path: path.clone(),
                detail: format!("cannot copy the store to {} to read it: {e}", dir.display()),
            })?;
            scratch
        };
        let mut store = Store::open_waiting(&scratch.0, DEFAULT_CACHE_BYTES, Duration::ZERO).map_err(|e| {
            // Report the real store's path, not the copy's.
            match e {
                StoreError::Damaged { detail, .. } => StoreError::Damaged {
                    path: path.clone(),
                    detail,
                },
                other => other,
            }
        })?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner._scratch = Some(scratch);
            inner.path = path;
        }
        Ok(store)
    }

    /// `open_with_cache`, waiting at most `lock_wait` for a lock held by a
    /// store that is closing (tests pass a short wait).
    fn open_waiting(data_dir: &Path, cache_bytes: u64, lock_wait: Duration) -> Result<Store, StoreError> {
        durable::create_dir_private(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("store");
        let ledger_path = data_dir.join("ledger");
        let unsynced = durable::unsynced_commits();
        let config = |at: &Path| {
            sled::Config::new()
                .path(at)
                .cache_capacity(cache_bytes)
                // ferry syncs after each flush (durable::Syncer); sled's own
                // flusher would sync a log pointing to unsynced blob files.
                .flush_every_ms(if unsynced { Some(1000) } else { None })
                .mode(sled::Mode::HighThroughput)
        };
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        if !path.exists() {
            // The ledger first: a `store` directory always has one beside it.
            if !ledger_path.exists() {
                ledger::write(&ledger_path, &BTreeMap::new()).map_err(io(&ledger_path))?;
            }
            durable::create(data_dir, &path, &config(&path.with_extension("new"))).map_err(io(&path))?;
        } else if durable::lock_shared(&path.join("db")).map_err(io(&path))?.is_some() {
            // Not in use: what a crash left of a snapshot can go.
            durable::remove_unfinished_snapshots(&path).map_err(io(&path))?;
        }
        let db_was_empty = std::fs::metadata(path.join("db")).map_or(true, |m| m.len() == 0);
        let config = config(&path);
        // sled releases its file lock from background threads shortly after
        // the previous owner closed it (a restart, a test reopening): wait a
        // little before calling the directory taken.
        let deadline = std::time::Instant::now() + lock_wait;
        let db = loop {
            match config.open().map_err(|e| StoreError::from_sled_at_open(&path, e)) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        durable::settle_after_open(data_dir, &path).map_err(io(&path))?;
        let had_ledger = ledger_path.exists();
        let marks = ledger::read(&ledger_path).map_err(|detail| StoreError::Damaged {
            path: ledger_path.clone(),
            detail,
        })?;
        check_against_ledger(&db, &path, &marks)?;
        let holds_queues = db.tree_names().iter().any(|n| n.starts_with(b"queue/"));
        if !had_ledger && !holds_queues && !db_was_empty {
            return Err(StoreError::Damaged {
                path,
                detail: "sled found no queue in its database file, which is not empty, and there is no ledger \
                         to say what it held: the file is unreadable"
                    .to_string(),
            });
        }
        let syncer = if unsynced {
            None
        } else {
            Some(durable::Syncer::open(&path).map_err(io(&path))?)
        };
        let budget = budget::Budget::start(&path);
        Ok(Store {
            inner: Arc::new(StoreInner {
                db,
                syncer,
                path,
                queues: Mutex::new(HashMap::new()),
                poisoned: Arc::new(AtomicBool::new(false)),
                ledger_path,
                last_checkpoint: Mutex::new(None),
                flushes: Mutex::new(FlushState::default()),
                flushed: std::sync::Condvar::new(),
                budget,
                _scratch: None,
            }),
        })
    }

    /// The directory of the sled database.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Opens (or creates) the queue `name`. Asking twice returns the same
    /// queue, with the new limits.
    pub fn queue(&self, name: &str, limits: QueueLimits) -> Result<Queue, StoreError> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(name) {
            q.set_limits(limits);
            return Ok(q.clone());
        }
        let tree = self.inner.db.open_tree(tree_name(name)).map_err(|e| self.error(e))?;
        let q = Queue::open(
            name,
            tree,
            limits,
            self.inner.path.clone(),
            self.inner.poisoned.clone(),
            self.inner.budget.clone(),
        )?;
        queues.insert(name.to_string(), q.clone());
        Ok(q)
    }

    /// Makes every earlier append and ack durable (fsync). Blocking. At
    /// most once a second it also records a ledger checkpoint.
    pub fn flush(&self) -> Result<(), StoreError> {
        let due = {
            let last = self.inner.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
            last.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY)
        };
        if due {
            return self.checkpoint();
        }
        let mut st = self.lock_flushes();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.completed >= ticket {
                return Ok(());
            }
            if self.is_poisoned() {
                return Err(StoreError::Other {
                    path: self.inner.path.clone(),
                    detail: "an earlier write failed; the store must be opened again".into(),
                });
            }
            if !st.running {
                // Lead this flush: it covers every ticket taken so far.
                st.running = true;
                let covers = st.requested;
                drop(st);
                let result = self.commit();
                st = self.lock_flushes();
                st.running = false;
                if result.is_ok() {
                    st.completed = st.completed.max(covers);
                }
                self.inner.flushed.notify_all();
                if result.is_err() || covers >= ticket {
                    return result;
                }
                continue;
            }
            st = self.inner.flushed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// sled's flush, then the syncs that make it durable (see `durable.rs`).
    fn commit(&self) -> Result<(), StoreError> {
        self.inner.db.flush().map_err(|e| self.error(e))?;
        let Some(syncer) = &self.inner.syncer else {
            return Ok(());
        };
        syncer.sync().map_err(|source| {
            // After a failed fsync the kernel may have dropped the pages:
            // what sled believes written is unknown. Reopen.
            self.inner.poisoned.store(true, Ordering::Relaxed);
            StoreError::Io {
                path: self.inner.path.clone(),
                source,
            }
        })
    }

    fn lock_flushes(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.inner.flushes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flushes and records the ledger now (e.g. at shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        // The marks are taken before the flush, so they describe only what
        // the flush makes durable.
        let marks: BTreeMap<String, ledger::Mark> = {
            let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.iter().map(|(name, q)| (name.clone(), q.mark())).collect()
        };
        self.commit()?;
        let mut last = self.inner.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        // Keep what the ledger knew of queues not opened in this run.
        let mut all = ledger::read(&self.inner.ledger_path).unwrap_or_default();
        all.extend(marks);
        ledger::write(&self.inner.ledger_path, &all).map_err(|source| StoreError::Io {
            path: self.inner.ledger_path.clone(),
            source,
        })?;
        *last = Some(std::time::Instant::now());
        Ok(())
    }

    /// Names of the queues in the database, opened or not.
    pub fn queue_names(&self) -> Vec<String> {
        self.inner
            .db
            .tree_names()
            .into_iter()
            .filter_map(|n| {
                std::str::from_utf8(&n)
                    .ok()
                    .and_then(|s| s.strip_prefix("queue/"))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Puts a store-wide budget in force (None: no budget); see [`budget`].
    pub fn set_budget(&self, limits: Option<BudgetLimits>) {
        self.inner.budget.set(limits);
    }

    /// The budget in force, the store's size as it counts it, and how many
    /// queues it holds.
    pub fn budget(&self) -> BudgetView {
        self.inner.budget.view()
    }

    /// Measures the store's files now instead of at the next sample (tests).
    #[cfg(test)]
    pub(crate) fn sample_size(&self) {
        self.inner.budget.sample();
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.db.size_on_disk().map_err(|e| self.error(e))
    }

    /// True after a failed write: sled now refuses every operation, and the
    /// store must be dropped and opened again (`ferry run` does this).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Relaxed)
    }

    fn error(&self, e: sled::Error) -> StoreError {
        self.inner.poisoned.store(true, Ordering::Relaxed);
        StoreError::from_sled(&self.inner.path, e)
    }
}

/// Moves a damaged store (and its ledger) aside so that ferry can start
/// with empty queues. Refuses while a ferry uses the directory. Returns
/// where the store went.
pub fn quarantine(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let path = data_dir.join("store");
    match Store::open(data_dir) {
        Err(e @ StoreError::Locked { .. }) => return Err(e),
        Ok(store) => drop(store),
        Err(_) => {}
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Two quarantines within a second must not collide.
    let aside = (0..)
        .map(|n| match n {
            0 => data_dir.join(format!("store.damaged-{stamp}")),
            n => data_dir.join(format!("store.damaged-{stamp}-{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| data_dir.join(format!("store.damaged-{stamp}")));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::rename(&path, &aside).map_err(io(&path))?;
    let ledger = data_dir.join("ledger");
    if ledger.exists() {
        std::fs::rename(&ledger, aside.join("ledger")).map_err(io(&ledger))?;
        durable::sync_dir(&aside).map_err(io(&aside))?;
    }
    durable::sync_dir(data_dir).map_err(io(data_dir))?;
    Ok(aside)
}

fn tree_name(queue: &str) -> String {
    format!("queue/{queue}")
}

/// Fails when a queue holds less than the ledger says it durably had.
fn check_against_ledger(db: &sled::Db, path: &Path, marks: &BTreeMap<String, ledger::Mark>) -> Result<(), StoreError> {
    for (name, mark) in marks {
        let found = queue::durable_mark(db, &tree_name(name)).map_err(|e| StoreError::from_sled(path, e))?;
        let lost = match found {
            None => mark.next_seq > 0,
            Some(f) => f.next_seq < mark.next_seq || f.received < mark.received,
        };
        if lost {
            let found = found.map_or("nothing".to_string(), |f| {
                format!("sequence {} and {} received", f.next_seq, f.received)
            });
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "queue {name} lost data: the ledger recorded sequence {} and {} received, the database has {found}",
                    mark.next_seq, mark.received
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
