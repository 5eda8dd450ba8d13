//! `ferry run`: open the store, start one supervisor per link, and stop
//! them all cleanly on SIGTERM/SIGINT.

use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::link::supervisor::supervise;
use crate::store::Store;

pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::metrics::install(config.metrics.listen)?;
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("store open task failed")??;
    tracing::info!(data_dir = %config.data_dir.display(), links = config.links.len(), "store open");

    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone()).context("cannot install signal handlers")?;

    let mut supervisors = JoinSet::new();
    for link in config.links.iter().filter(|l| l.enabled) {
        spawn_supervisor(&mut supervisors, link.clone(), &config, &store, &shutdown);
    }
    for link in config.links.iter().filter(|l| !l.enabled) {
        tracing::info!(link = %link.name, "link disabled in config; its queues stay on disk");
    }

    // A supervisor only ends on shutdown. If one ends otherwise (a bug in
    // the supervisor itself), start it again: one link never stops ferry.
    while let Some(done) = supervisors.join_next().await {
        if shutdown.is_cancelled() {
            continue;
        }
        let name = match done {
            Ok(name) => name,
            Err(e) => {
                tracing::error!(error = %e, "a link supervisor failed; ferry keeps running");
                continue;
            }
        };
        tracing::error!(link = %name, "link supervisor ended unexpectedly; starting it again");
        if let Some(link) = config.links.iter().find(|l| l.name == name) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            spawn_supervisor(&mut supervisors, link.clone(), &config, &store, &shutdown);
        }
    }

    let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => tracing::error!(error = %e, "final flush failed; queued messages after the last commit may be sent again"),
        Err(e) => tracing::error!(error = %e, "final flush task failed"),
    }
    Ok(())
}

fn spawn_supervisor(
    set: &mut JoinSet<String>,
    link: crate::config::LinkConfig,
    config: &Config,
    store: &Store,
    shutdown: &CancellationToken,
) {
    let hub = config.hub.clone();
    let store = store.clone();
    let shutdown = shutdown.clone();
    set.spawn(async move {
        let name = link.name.clone();
        supervise(link, hub, store, shutdown).await;
        name
    });
}
