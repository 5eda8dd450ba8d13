//! The store's files on disk: making a commit survive a power loss, creating
//! a store atomically, and keeping every file owner-only.
//!
//! sled 0.34.7 does not make its writes durable by itself: `Db::flush()`
//! writes the log with `pwrite` + `sync_file_range`, which neither flushes
//! the disk's write cache nor records the file's new size; it writes values
//! too large for the log as files under `blobs/` without any fsync; and it
//! renames snapshot files and creates its `conf` without an fsync of their
//! directory. Only its periodic flusher called `fsync`. So after each sled
//! flush ferry syncs, in this order: every new blob file, the `blobs`
//! directory when its entries changed, then the `db` file ([`Syncer`]).
//! sled's periodic flusher is off (`flush_every_ms(None)`): it would sync a
//! log that points to blob files not yet synced.
//!
//! Layout of `<data_dir>/store` (sled's): `conf` (written once, at
//! creation), `db` (the log), `blobs/<lsn>` (large pages), `snap.<lsn>`
//! (written only while opening, to `snap.<lsn>.generating` then renamed).
//!
//! A store is created in `store.new`, synced whole, and renamed to `store`
//! ([`create`]): a `store` directory therefore always has a durable `conf`,
//! and a power loss during creation leaves only `store.new`, which the next
//! open removes and builds again.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

/// Directories ferry creates under `data_dir` (and `data_dir` itself).
pub(crate) const DIR_MODE: u32 = 0o700;
/// Files ferry or sled create there.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Test builds only (`fault-injection`): `FERRY_FAULT_UNSYNCED_COMMIT=1`
/// commits the way ferry did before this module existed (sled's flush and
/// its flusher alone), so the power-loss test can show what that loses.
pub(crate) fn unsynced_commits() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        std::env::var_os("FERRY_FAULT_UNSYNCED_COMMIT").is_some_and(|v| v == "1")
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// Creates `dir` and its missing parents with mode 0700, whatever the
/// umask; an existing directory keeps its mode. The new entries are synced
/// into their parents.
pub(crate) fn create_dir_private(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_private(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsync of a directory: makes the entries created, removed or renamed in
/// it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates (or truncates) `path` with mode 0600, whatever the umask.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Gives every file under `dir` mode 0600 and every directory 0700 (what
/// sled created with the process's umask).
pub(crate) fn make_private(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let mode = if kind.is_dir() { DIR_MODE } else { FILE_MODE };
        if kind.is_dir() {
            make_private(&entry.path())?;
        }
        if !kind.is_symlink() && entry.metadata()?.permissions().mode() & 0o777 != mode {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// sled's snapshots while being written are `snap.<lsn>.generating`; one
/// left by a crash may be torn, and sled would read it (it takes the last
/// `snap.*` by name) and fail. sled writes snapshots only while opening and
/// keeps the previous one until the new one is renamed into place, so a
/// leftover is never needed: removes them. Returns how many.
pub(crate) fn remove_unfinished_snapshots(store: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(store)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(store)?;
    }
    Ok(removed)
}

/// Makes what sled wrote while opening durable: its snapshot (renamed
/// without a directory sync), the tail it zeroed, its `conf`, and the
/// `store` entry itself; and makes its files owner-only.
pub(crate) fn settle_after_open(data_dir: &Path, store: &Path) -> io::Result<()> {
    make_private(store)?;
    File::open(store.join("db"))?.sync_all()?;
    if let Ok(conf) = File::open(store.join("conf")) {
        conf.sync_all()?;
    }
    sync_dir(&store.join("blobs"))?;
    sync_dir(store)?;
    sync_dir(data_dir)
}

/// Creates an empty store at `store` durably. Builds it in `store.new`
/// (removing one left by an earlier attempt; `config` opens that path),
/// lets sled create its files there, syncs them and the directories, and
/// renames it into place.
pub(crate) fn create(data_dir: &Path, store: &Path, config: &sled::Config) -> io::Result<()> {
    let fresh = store.with_extension("new");
    let step = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot create the store in {}: {what}: {e}", fresh.display()))
    };
    let keep_kind = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot create the store in {}: {what}: {e}", fresh.display()),
        )
    };
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(|e| keep_kind("remove an unfinished one", e))?;
    }
    create_dir_private(&fresh.join("blobs")).map_err(|e| keep_kind("mkdir", e))?;
    // sled opens these as they are: created here, they get mode 0600; an
    // empty `conf` is one sled (re)writes.
    for name in ["conf", "db"] {
        create_private_file(&fresh.join(name)).map_err(|e| keep_kind(name, e))?;
    }
    {
        let db = config.open().map_err(|e| step("sled open", &e))?;
        db.flush().map_err(|e| step("sled flush", &e))?;
    }
    (|| {
        make_private(&fresh)?;
        for name in ["conf", "db"] {
            File::open(fresh.join(name))?.sync_all()?;
        }
        sync_dir(&fresh.join("blobs"))?;
        sync_dir(&fresh)?;
        sync_dir(data_dir)?;
        fs::rename(&fresh, store)?;
        sync_dir(data_dir)
    })()
    .map_err(|e: io::Error| io::Error::new(e.kind(), format!("cannot create the store in {}: {e}", fresh.display())))
}

/// Makes a commit durable after sled's flush: new blob files and their
/// directory, then sled's log file. One per store; callers serialize.
pub(crate) struct Syncer {
    db: File,
    blobs_dir: std::path::PathBuf,
    /// Blob files already synced.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl Syncer {
    pub(crate) fn open(store: &Path) -> io::Result<Syncer> {
        // A second descriptor on the same file: fsync covers the file, not
        // the descriptor. sled's lock (flock) is on its own descriptor.
        let db = File::open(store.join("db"))?;
        // Blob files already there are synced by the first commit: a store
        // written before ferry synced them may hold some only in memory.
        Ok(Syncer {
            db,
            blobs_dir: store.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// Syncs every blob file created since the last call (and their
    /// directory when its entries changed), then the log.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::with_capacity(synced.len());
        let mut changed = false;
        for entry in fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => {
                        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
                        f.sync_all()?;
                    }
                    // Removed by sled meanwhile: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                changed = true;
            }
            present.insert(name);
        }
        if changed || present.len() != synced.len() {
            sync_dir(&self.blobs_dir)?;
        }
        *synced = present;
        drop(synced);
        self.db.sync_data()
    }
}

/// A shared lock on sled's `db` file, or nothing to lock (no `db`).
pub(crate) struct SharedLock(#[allow(dead_code)] Option<File>);

/// Takes a shared `flock` on `db` without waiting: None while a process
/// holds sled's exclusive lock (a running ferry). Released when dropped.
pub(crate) fn lock_shared(db: &Path) -> io::Result<Option<SharedLock>> {
    use std::os::unix::io::AsRawFd;
    let f = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(SharedLock(None))),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Ok(Some(SharedLock(Some(f))));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Copies `<data_dir>/store` and `<data_dir>/ledger` into a new private
/// directory `dest`, after checking that its filesystem has room.
pub(crate) fn copy_for_reading(data_dir: &Path, dest: &Path) -> io::Result<()> {
    create_dir_private(dest)?;
    let store = data_dir.join("store");
    let needed = tree_size(&store)?;
    let free = free_bytes(dest)?;
    let margin = 16 << 20;
    if free < needed + margin {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{} needs {} MiB free and has {} MiB; set TMPDIR to a directory with room",
                dest.display(),
                (needed + margin) >> 20,
                free >> 20
            ),
        ));
    }
    copy_tree(&store, &dest.join("store"))?;
    match fs::copy(data_dir.join("ledger"), dest.join("ledger")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(DIR_MODE).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes into the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
