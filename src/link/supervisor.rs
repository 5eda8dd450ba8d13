//! The supervisor of one link: starts its tasks, restarts them when one
//! dies, carries out the operator's commands, and stops them on shutdown.
//!
//! A link runs in two halves (see [`Half`]): *ingest* (source brokers ->
//! queues) and *drain* (queues -> destination brokers). The operator's
//! [`Command`]s start and stop halves: `pause` stops the drain half (messages
//! keep being queued), `drain` stops the ingest half until the queues are
//! empty and then pauses, `resume` starts whatever is stopped, `restart`
//! stops and starts everything at once.
//!
//! A task that panics or returns while the link runs means the link is
//! broken: all of its tasks are stopped (ingest commits what it holds) and
//! started again after a capped, jittered backoff, forever. The queues live
//! in the store, so nothing queued is lost by a restart. A panic here never
//! reaches another link or the process: tokio catches it at the task
//! boundary and hands it to this loop as a `JoinError`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bridge::connection::ConnStatus;
use crate::bridge::Half;
use crate::config::{HubConfig, LinkConfig};
use crate::metrics as m;
use crate::names::Direction;
use crate::store::{Queue, Store};

use super::status::{LinkStatus, Mode};

/// How long tasks get to finish cleanly before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A link that ran this long before failing restarts with the shortest delay.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What the operator can ask of a running link: `ferry link ACTION NAME`,
/// `POST /v1/links/NAME/ACTION`. [`Command::as_str`] is the one spelling of
/// each action, for the admin API, the command line and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Restart,
    /// Stop receiving, forward until the queues are empty, then pause.
    DrainThenPause,
}

impl Command {
    pub const ALL: [Command; 4] = [
        Command::Pause,
        Command::Resume,
        Command::Restart,
        Command::DrainThenPause,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Restart => "restart",
            Command::DrainThenPause => "drain",
        }
    }
}

/// A link action that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown action {0:?}; use pause, resume, restart or drain")]
pub struct UnknownCommand(String);

impl std::str::FromStr for Command {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Command, UnknownCommand> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCommand(s.to_string()))
    }
}

/// Everything the supervisor of one link needs.
pub struct Supervised {
    pub link: LinkConfig,
    pub hub: HubConfig,
    pub store: Store,
    pub status: Arc<LinkStatus>,
    pub commands: mpsc::Receiver<Command>,
    pub stop: CancellationToken,
}

/// Runs the link until `stop`; publishes its state topic meanwhile.
pub async fn supervise(mut s: Supervised) {
    s.status.set_stopped(false);
    let state_stop = CancellationToken::new();
    let state_task = s.hub.state_topic_for(&s.link.name).map(|topic| {
        tokio::spawn(super::state_topic::run(
            s.link.clone(),
            s.hub.clone(),
            topic,
            s.status.clone(),
            state_stop.clone(),
        ))
    });
    if s.link.enabled {
        run_link(&mut s).await;
    } else {
        // Nothing runs; the state topic says "disabled".
        s.stop.cancelled().await;
    }
    s.status.set_stopped(true);
    // The status outlives this supervisor; the queues must not: they hold
    // the store open, and a failed store is reopened only once every handle
    // of the old one is gone.
    s.status.set_queues(&[]);
    gauge!(m::LINK_UP, "link" => s.link.name.clone()).set(0.0);
    state_stop.cancel();
    if let Some(task) = state_task {
        let _ = task.await;
    }
}

/// Why a run of the link's tasks ended.
enum Ended {
    Stop,
    Restart,
    Failed(String),
}

async fn run_link(s: &mut Supervised) {
    let name = s.link.name.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let queues = loop {
        match super::open_queues(&s.store, &s.link) {
            Ok(q) => break q,
            Err(e) => {
                tracing::error!(link = %name, error = %e, "cannot open the link's queues; retrying");
                tokio::select! {
                    _ = s.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    s.status.set_queues(&queues);
    backoff.reset();
    loop {
        let mut halves = Halves::new(&queues);
        let mode = s.status.mode();
        halves.apply(mode, s).await;
        let started = Instant::now();
        tracing::info!(link = %name, mode = ?mode, "link started");
        let mut report = tokio::time::interval(Duration::from_secs(1));
        let ended = loop {
            tokio::select! {
                _ = s.stop.cancelled() => break Ended::Stop,
                Some(command) = s.commands.recv() => {
                    if let Some(ended) = obey(command, &mut halves, s).await {
                        break ended;
                    }
                }
                done = halves.next_exit() => break Ended::Failed(describe(done)),
                _ = report.tick() => {
                    report_metrics(&name, &queues, &s.status);
                    if s.status.mode() == Mode::Draining && s.status.queued() == 0 && halves.drain_idle() {
                        tracing::info!(link = %name, "queues drained; link paused (resume to start again)");
                        s.status.set_mode(Mode::Paused);
                        halves.apply(Mode::Paused, s).await;
                    }
                }
            }
        };
        // Told to stop: a task that ended meanwhile ended because of that,
        // not because it failed (no restart, no error, no count).
        let ended = if s.stop.is_cancelled() { Ended::Stop } else { ended };
        halves.stop_all(&name).await;
        s.status.set_connections(Vec::new());
        report_metrics(&name, &queues, &s.status);
        gauge!(m::LINK_UP, "link" => name.clone()).set(0.0);
        match ended {
            Ended::Stop => {
                tracing::info!(link = %name, "link stopped");
                return;
            }
            Ended::Restart => {
                tracing::info!(link = %name, "link restarting on request");
                backoff.reset();
                continue;
            }
            Ended::Failed(why) => {
                counter!(m::TASK_RESTARTS, "link" => name.clone()).increment(1);
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                s.status.set_failed(&why, delay.as_millis() as u64);
                tracing::error!(link = %name, task = %why, restart_in_ms = delay.as_millis() as u64, "link task died; restarting the link");
                tokio::select! {
                    _ = s.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                s.status.clear_restart();
            }
        }
    }
}

/// Carries out one command; returns how the run ends, if it does.
async fn obey(command: Command, halves: &mut Halves, s: &Supervised) -> Option<Ended> {
    let name = &s.link.name;
    let mode = match command {
        Command::Restart => return Some(Ended::Restart),
        Command::Pause => Mode::Paused,
        Command::Resume => Mode::Running,
        Command::DrainThenPause => Mode::Draining,
    };
    tracing::info!(link = %name, from = ?s.status.mode(), to = ?mode, "operator changed the link's mode");
    s.status.set_mode(mode);
    halves.apply(mode, s).await;
    None
}

fn report_metrics(name: &str, queues: &[(Direction, Queue)], status: &LinkStatus) {
    let now = m::now_ms();
    for (direction, queue) in queues {
        m::report_queue(name, *direction, queue, now);
    }
    gauge!(m::LINK_UP, "link" => name.to_string()).set(if status.all_up() { 1.0 } else { 0.0 });
    gauge!(m::LINK_PAUSED, "link" => name.to_string()).set(if status.mode() == Mode::Running { 0.0 } else { 1.0 });
}

/// One half's running tasks.
struct Group {
    half: Half,
    tasks: JoinSet<&'static str>,
    stop: CancellationToken,
    connections: Vec<Arc<ConnStatus>>,
}

/// The link's two halves; either may be stopped.
struct Halves {
    queues: Vec<(Direction, Queue)>,
    ingest: Option<Group>,
    drain: Option<Group>,
}

impl Halves {
    fn new(queues: &[(Direction, Queue)]) -> Halves {
        Halves {
            queues: queues.to_vec(),
            ingest: None,
            drain: None,
        }
    }

    /// Starts and stops halves so that what runs matches `mode`.
    async fn apply(&mut self, mode: Mode, s: &Supervised) {
        let want_ingest = mode != Mode::Draining;
        let want_drain = mode != Mode::Paused;
        for (half, wanted) in [(Half::Ingest, want_ingest), (Half::Drain, want_drain)] {
            let slot = match half {
                Half::Ingest => &mut self.ingest,
                Half::Drain => &mut self.drain,
            };
            match (wanted, slot.is_some()) {
                (true, false) => {
                    let stop = s.stop.child_token();
                    let mut tasks = JoinSet::new();
                    let connections = crate::bridge::spawn_half(
                        half,
                        &s.link,
                        &s.hub,
                        &s.store,
                        &self.queues,
                        &stop,
                        &mut tasks,
                        s.status.pace(),
                    );
                    *slot = Some(Group {
                        half,
                        tasks,
                        stop,
                        connections,
                    });
                }
                (false, true) => {
                    if let Some(group) = slot.take() {
                        stop_group(group, &s.link.name).await;
                    }
                }
                _ => {}
            }
        }
        let connections = self
            .ingest
            .iter()
            .chain(self.drain.iter())
            .flat_map(|g| g.connections.iter().cloned())
            .collect();
        s.status.set_connections(connections);
    }

    /// The next task of either half to end (never, when none runs).
    async fn next_exit(&mut self) -> Option<Result<&'static str, tokio::task::JoinError>> {
        let ingest = async {
            match self.ingest.as_mut() {
                Some(g) if !g.tasks.is_empty() => g.tasks.join_next().await,
                _ => std::future::pending().await,
            }
        };
        let drain = async {
            match self.drain.as_mut() {
                Some(g) if !g.tasks.is_empty() => g.tasks.join_next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            done = ingest => done,
            done = drain => done,
        }
    }

    /// True when no drain half runs or its connections are all up (so an
    /// empty queue means everything was forwarded, not that nothing could be).
    fn drain_idle(&self) -> bool {
        self.drain
            .as_ref()
            .is_none_or(|g| g.connections.iter().all(|c| c.is_up()))
    }

    async fn stop_all(&mut self, link: &str) {
        // Ingest first: it commits and acks what it holds.
        for group in [self.ingest.take(), self.drain.take()].into_iter().flatten() {
            stop_group(group, link).await;
        }
    }
}

async fn stop_group(mut group: Group, link: &str) {
    group.stop.cancel();
    finish(&mut group.tasks, link, group.half).await;
}

/// Waits for every task to end, aborting what is left after the grace time.
async fn finish(tasks: &mut JoinSet<&'static str>, link: &str, half: Half) {
    let graceful = tokio::time::timeout(STOP_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = &done {
                if e.is_panic() {
                    tracing::error!(link, half = half.as_str(), task = %describe(Some(done)), "task panicked while stopping");
                }
            }
        }
    })
    .await;
    if graceful.is_err() {
        tracing::warn!(link, half = half.as_str(), "tasks did not stop in time; aborting them");
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
