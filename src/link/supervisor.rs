//! The supervisor of one link: starts its tasks, restarts them when one
//! dies, and stops them on shutdown.
//!
//! A task that panics or returns while ferry is running means the link is
//! broken: all of its tasks are stopped (ingest commits what it holds) and
//! started again after a capped, jittered backoff, forever. The queues live
//! in the store, so nothing queued is lost by a restart. A panic here never
//! reaches another link or the process: tokio catches it at the task
//! boundary and hands it to this loop as a `JoinError`.

use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{HubConfig, LinkConfig};
use crate::metrics as m;
use crate::store::Store;

/// How long tasks get to finish cleanly before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A link that ran this long before failing restarts with the shortest delay.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub async fn supervise(link: LinkConfig, hub: HubConfig, store: Store, shutdown: CancellationToken) {
    let name = link.name.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let queues = loop {
        match super::open_queues(&store, &link) {
            Ok(q) => break q,
            Err(e) => {
                tracing::error!(link = %name, error = %e, "cannot open the link's queues; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    backoff.reset();
    loop {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let health = super::spawn_tasks(&link, &hub, &store, &queues, &stop, &mut tasks);
        let started = Instant::now();
        tracing::info!(link = %name, "link started");
        let mut report = tokio::time::interval(Duration::from_secs(1));
        let failure = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                done = tasks.join_next() => break Some(describe(done)),
                _ = report.tick() => {
                    let now = m::now_ms();
                    for (direction, queue) in &queues {
                        m::report_queue(&name, *direction, queue, now);
                    }
                    gauge!(m::LINK_UP, "link" => name.clone()).set(if health.all_up() { 1.0 } else { 0.0 });
                }
            }
        };
        stop.cancel();
        finish(&mut tasks, &name).await;
        gauge!(m::LINK_UP, "link" => name.clone()).set(0.0);
        let now = m::now_ms();
        for (direction, queue) in &queues {
            m::report_queue(&name, *direction, queue, now);
        }
        let Some(why) = failure else {
            tracing::info!(link = %name, "link stopped");
            return;
        };
        counter!(m::TASK_RESTARTS, "link" => name.clone()).increment(1);
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::error!(link = %name, task = %why, restart_in_ms = delay.as_millis() as u64, "link task died; restarting the link");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Waits for every task to end, aborting what is left after the grace time.
async fn finish(tasks: &mut JoinSet<&'static str>, link: &str) {
    let graceful = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = &done {
                if e.is_panic() {
                    tracing::error!(link, task = %describe(Some(done)), "task panicked while stopping");
                }
            }
        }
    })
    .await;
    if graceful.is_err() {
        tracing::warn!(link, "tasks did not stop in time; aborting them");
        tasks.shutdown().await;
    }
}

/// What ended: a task's name, or its panic message.
fn describe(done: Option<Result<&'static str, tokio::task::JoinError>>) -> String {
    match done {
        None => "no tasks".to_string(),
        Some(Ok(name)) => format!("{name} returned"),
        Some(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic".to_string());
            format!("panicked: {msg}")
        }
        Some(Err(e)) => format!("cancelled: {e}"),
    }
}
