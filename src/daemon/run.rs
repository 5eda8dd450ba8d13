//! `ferry run`: open the store, start one supervisor per link, apply
//! reloads (SIGHUP or the admin API), and stop them all cleanly on
//! SIGTERM/SIGINT.
//!
//! The store is shared by every link, and sled refuses every operation once
//! a write failed (a full disk) until the database is opened again. So `run`
//! watches the store: when it fails, every link is stopped (ingest has
//! acknowledged only what was durable, so the source brokers still hold the
//! rest), the store is dropped, and once the filesystem has room again it is
//! opened anew and the links start again. The process never exits for it.
//! That is the last resort: the store budget (`store_max_bytes`, put in
//! force here at every open and reload, see `store/budget.rs`) holds the
//! queues that grow before the disk is full, so the other links never stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Config, HubConfig, LinkConfig};
use crate::daemon::control::{plan_reload, Control, LinkHandle, ReloadError, ReloadReport, ReloadRequest};
use crate::link::supervisor::{supervise, Supervised};
use crate::store::{dir_size, free_bytes, QueueLimits, Store};

/// Free space the store's filesystem needs before a failed store is opened
/// again: room for sled's next segments and a few batches.
const REOPEN_MIN_FREE_BYTES: u64 = 8 * 1024 * 1024;

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    // [fleet]: this process runs only its shard's links (see crate::fleet).
    let shard = crate::fleet::resolve(&config.fleet).map_err(anyhow::Error::msg)?;
    let all_links: Vec<String> = config.links.iter().map(|l| l.name.clone()).collect();
    config.links.retain(|link| shard.owns(&link.name));
    crate::metrics::install(config.metrics.listen)?;
    metrics::gauge!(crate::metrics::FLEET_SHARD, "shards" => shard.shards.to_string()).set(f64::from(shard.index));
    if config.fleet.is_sharded() {
        tracing::info!(shard = shard.index, shards = shard.shards, from = %shard.from, links = config.links.len(), of = all_links.len(), "fleet: running this shard's links");
    }
    let shutdown = CancellationToken::new();
    crate::daemon::signals::cancel_on_signal(shutdown.clone()).context("cannot install signal handlers")?;
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    let control = Control::new(&config, shard.clone(), reload_tx.clone());
    if let Some(addr) = config.admin.listen {
        crate::daemon::admin::serve(addr, control.clone(), shutdown.clone()).await?;
    }
    crate::daemon::signals::reload_on_sighup(reload_tx).context("cannot install the SIGHUP handler")?;
    log_warnings(&config);
    let mut config = config;

    // The first open decides whether ferry can start at all: a store in use
    // by another ferry, or damaged, is an error for the operator.
    let mut store = open_store(&config.data_dir, config.store_cache_bytes).await?;
    crate::fleet::check_foreign_queues(&shard, all_links.iter().map(String::as_str), &store)?;
    apply_budget(&store, &config);
    control.set_ready(None);
    for link in config.links.iter().filter(|l| !l.enabled) {
        tracing::info!(link = %link.name, "link disabled in config; its queues stay on disk");
    }
    let mut reopen_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let failed = run_links(&mut config, &store, &shutdown, &control, &mut reload_rx).await;
        if !failed {
            break;
        }
        control.set_ready(Some(
            "the store failed (a full disk?): links are stopped until it can be opened again".into(),
        ));
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
        apply_budget(&store, &config);
        control.set_ready(None);
        tracing::info!("store opened again; starting the links");
    }

    control.set_ready(Some("shutting down".into()));
    let flushed = tokio::task::spawn_blocking(move || store.checkpoint()).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "final flush failed; messages after the last commit may be sent again")
        }
        Err(e) => tracing::error!(error = %e, "final flush task failed"),
    }
    Ok(())
}

/// A store this large gets a log line before it is opened (it takes a while).
const LARGE_STORE_BYTES: u64 = 64 << 20;

async fn open_store(data_dir: &Path, cache_bytes: u64) -> anyhow::Result<Store> {
    let dir = data_dir.to_path_buf();
    let began = std::time::Instant::now();
    let store = tokio::task::spawn_blocking(move || {
        let size = dir_size(&dir.join("store"));
        if size >= LARGE_STORE_BYTES {
            tracing::info!(data_dir = %dir.display(), size_mib = size >> 20, "opening a large store; this can take a while");
        }
        let store = Store::open_with_cache(&dir, cache_bytes)?;
        // Count what is waiting, per queue (read from each queue's counters).
        let mut queued = 0u64;
        let names = store.queue_names();
        for name in &names {
            queued += store.queue(name, QueueLimits::UNBOUNDED)?.depth().messages;
        }
        tracing::info!(data_dir = %dir.display(), size_mib = size >> 20, queues = names.len(), queued, elapsed_ms = began.elapsed().as_millis() as u64, "store open");
        Ok::<_, crate::store::StoreError>(store)
    })
    .await
    .context("store open task failed")??;
    Ok(store)
}

/// Puts the config's store budget in force (`auto` is measured now) and
/// says so in the log.
fn apply_budget(store: &Store, config: &Config) {
    let limits = config.store_budget();
    store.set_budget(limits);
    match limits {
        Some(l) => {
            tracing::info!(data_dir = %config.data_dir.display(), store_max_bytes = l.max_bytes, store_reserve_bytes = l.reserve_bytes, store_bytes = store.budget().size_bytes, "store budget in force")
        }
        None if config.store_max_bytes == crate::store::MaxBytes::Off => {
            tracing::info!(data_dir = %config.data_dir.display(), "store budget off: only a full disk stops the store growing")
        }
        None => {
            tracing::warn!(data_dir = %config.data_dir.display(), "cannot measure the filesystem of data_dir: no store budget (store_max_bytes = \"auto\")")
        }
    }
    crate::metrics::report_store(&store.budget());
}

/// A started link supervisor.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs every configured link until shutdown (returns false) or until the
/// store fails (returns true, after every link has stopped). Reloads the
/// config when asked.
async fn run_links(
    config: &mut Config,
    store: &Store,
    shutdown: &CancellationToken,
    control: &Control,
    reloads: &mut mpsc::Receiver<ReloadRequest>,
) -> bool {
    let generation = shutdown.child_token();
    let mut running = BTreeMap::new();
    for link in &config.links {
        start_link(link, &config.hub, store, &generation, control, &mut running);
    }
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let failed = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            Some(request) = reloads.recv() => {
                let outcome = reload(config, store, &generation, control, &mut running).await;
                match &outcome {
                    Ok(report) => tracing::info!(config = %config.source.display(), "config reloaded: {}", report.summary()),
                    Err(e) => tracing::error!(config = %config.source.display(), error = %e, "reload refused; the running config stays"),
                }
                if let Some(reply) = request.reply {
                    let _ = reply.send(outcome);
                }
            }
            _ = check.tick() => {
                if store.is_poisoned() {
                    break true;
                }
                crate::metrics::report_store(&store.budget());
                // A supervisor ends only when told to. If one ends otherwise
                // (a bug in the supervisor itself), start it again: one link
                // never stops ferry.
                let ended: Vec<String> = running
                    .iter()
                    .filter(|(_, r)| r.task.is_finished())
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in ended {
                    tracing::error!(link = %name, "link supervisor ended unexpectedly; starting it again");
                    running.remove(&name);
                    if let Some(link) = config.links.iter().find(|l| l.name == name) {
                        start_link(link, &config.hub, store, &generation, control, &mut running);
                    }
                }
            }
        }
    };
    generation.cancel();
    for (_, r) in running {
        let _ = r.task.await;
    }
    failed
}

fn start_link(
    link: &LinkConfig,
    hub: &HubConfig,
    store: &Store,
    generation: &CancellationToken,
    control: &Control,
    running: &mut BTreeMap<String, Running>,
) {
    let status = control.status_for(link);
    let (commands_tx, commands) = mpsc::channel(16);
    let stop = generation.child_token();
    control.insert(LinkHandle {
        config: link.clone(),
        status: status.clone(),
        commands: commands_tx,
    });
    let task = tokio::spawn(supervise(Supervised {
        link: link.clone(),
        hub: hub.clone(),
        store: store.clone(),
        status,
        commands,
        stop: stop.clone(),
    }));
    running.insert(link.name.clone(), Running { stop, task });
}

/// Reads the config file again and applies it: added links start, removed
/// links stop (their queues stay on disk), changed links restart, the rest
/// are not touched. A file that `ferry check` would refuse changes nothing.
async fn reload(
    config: &mut Config,
    store: &Store,
    generation: &CancellationToken,
    control: &Control,
    running: &mut BTreeMap<String, Running>,
) -> Result<ReloadReport, ReloadError> {
    let path = config.source.clone();
    let new = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| ReloadError::Internal(format!("reading the config failed: {e}")))?
        .map_err(|e| ReloadError::Config(e.to_string()))?;
    let mut new = new;
    new.links.retain(|link| control.shard().owns(&link.name));
    let report = plan_reload(config, &new).map_err(ReloadError::Config)?;
    let mut stopping = Vec::new();
    for name in report.removed.iter().chain(&report.changed) {
        if let Some(r) = running.remove(name) {
            r.stop.cancel();
            stopping.push(r.task);
        }
    }
    for task in stopping {
        let _ = task.await;
    }
    for name in &report.removed {
        control.remove(name);
        crate::metrics::forget_link(name);
        tracing::info!(link = %name, "link removed by reload; its queues stay on disk (ferry queue purge deletes them)");
    }
    *config = new;
    apply_budget(store, config);
    control.set_admin_token(config.admin.token.clone());
    log_warnings(config);
    for name in report.added.iter().chain(&report.changed) {
        if let Some(link) = config.links.iter().find(|l| &l.name == name) {
            start_link(link, &config.hub, store, generation, control, running);
        }
    }
    // A reload ends every run-time change of a drain rate (`ferry link rate`).
    control.configure_paces(config);
    Ok(report)
}

/// What `ferry check` would warn about, one log line each (at start and on reload).
fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!("config warning: {warning}");
    }
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
