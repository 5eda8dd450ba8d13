//! `ferry run`: open the store, start one supervisor per link, and stop
//! them all cleanly on SIGTERM/SIGINT.
//!
//! The store is shared by every link, and sled refuses every operation once
//! a write failed (a full disk) until the database is opened again. So `run`
//! watches the store: when it fails, every link is stopped (ingest has
//! acknowledged only what was durable, so the source brokers still hold the
//! rest), the store is dropped, and once the filesystem has room again it is
//! opened anew and the links start again. The process never exits for it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Config, LinkConfig};
use crate::link::supervisor::supervise;
use crate::store::Store;

/// Free space the store's filesystem needs before a failed store is opened
/// again: room for sled's next segments and a few batches.
const REOPEN_MIN_FREE_BYTES: u64 = 8 * 1024 * 1024;

pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::metrics::install(config.metrics.listen)?;
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone()).context("cannot install signal handlers")?;

    // The first open decides whether ferry can start at all: a store in use
    // by another ferry, or damaged, is an error for the operator.
    let mut store = open_store(&config.data_dir, config.store_cache_bytes).await?;
    tracing::info!(data_dir = %config.data_dir.display(), links = config.links.len(), "store open");
    for link in config.links.iter().filter(|l| !l.enabled) {
        tracing::info!(link = %link.name, "link disabled in config; its queues stay on disk");
    }
    let mut reopen_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let failed = run_links(&config, &store, &shutdown).await;
        if !failed {
            break;
        }
        tracing::error!(data_dir = %config.data_dir.display(), "the store failed (see the errors above; a full disk?): all links stopped; the store will be opened again when the filesystem has room");
        drop(store);
        store = loop {
            wait_for_free_space(&config.data_dir, &shutdown).await;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match open_store(&config.data_dir, config.store_cache_bytes).await {
                Ok(s) => break s,
                Err(e) => {
                    let delay = reopen_backoff.next_delay();
                    tracing::error!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "cannot open the store again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        reopen_backoff.reset();
        tracing::info!("store opened again; starting the links");
    }

    let flushed = tokio::task::spawn_blocking(move || store.checkpoint()).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => tracing::error!(error = %e, "final flush failed; messages after the last commit may be sent again"),
        Err(e) => tracing::error!(error = %e, "final flush task failed"),
    }
    Ok(())
}

async fn open_store(data_dir: &Path, cache_bytes: u64) -> anyhow::Result<Store> {
    let dir = data_dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || Store::open_with_cache(&dir, cache_bytes)).await.context("store open task failed")??;
    Ok(store)
}

/// Runs every enabled link until shutdown (returns false) or until the
/// store fails (returns true, after every link has stopped).
async fn run_links(config: &Config, store: &Store, shutdown: &CancellationToken) -> bool {
    let generation = shutdown.child_token();
    let mut supervisors = JoinSet::new();
    for link in config.links.iter().filter(|l| l.enabled) {
        spawn_supervisor(&mut supervisors, link.clone(), config, store, &generation);
    }
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let failed = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            _ = check.tick() => if store.is_poisoned() { break true },
            done = supervisors.join_next() => {
                // A supervisor ends only when told to. If one ends otherwise
                // (a bug in the supervisor itself), start it again: one link
                // never stops ferry.
                let name = match done {
                    Some(Ok(name)) => name,
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "a link supervisor failed; ferry keeps running");
                        continue;
                    }
                    None => {
                        // No links at all: wait for shutdown or failure.
                        tokio::select! {
                            _ = shutdown.cancelled() => break false,
                            _ = tokio::time::sleep(Duration::from_secs(3600)) => continue,
                        }
                    }
                };
                tracing::error!(link = %name, "link supervisor ended unexpectedly; starting it again");
                if let Some(link) = config.links.iter().find(|l| l.name == name) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    spawn_supervisor(&mut supervisors, link.clone(), config, store, &generation);
                }
            }
        }
    };
    generation.cancel();
    while supervisors.join_next().await.is_some() {}
    failed
}

fn spawn_supervisor(
    set: &mut JoinSet<String>,
    link: LinkConfig,
    config: &Config,
    store: &Store,
    stop: &CancellationToken,
) {
    let hub = config.hub.clone();
    let store = store.clone();
    let stop = stop.clone();
    set.spawn(async move {
        let name = link.name.clone();
        supervise(link, hub, store, stop).await;
        name
    });
}

/// Waits until the filesystem of `dir` has room to write again.
async fn wait_for_free_space(dir: &Path, shutdown: &CancellationToken) {
    let mut logged = false;
    loop {
        match free_bytes(dir) {
            Some(free) if free >= REOPEN_MIN_FREE_BYTES => return,
            Some(free) if !logged => {
                tracing::warn!(data_dir = %dir.display(), free_bytes = free, need_bytes = REOPEN_MIN_FREE_BYTES, "waiting for free space before opening the store again");
                logged = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid,
    // writable statvfs struct for the duration of the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}
