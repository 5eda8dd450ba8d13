//! What an operator can see of a link while it runs: its mode (running,
//! paused, draining), the state of each of its connections, its last error.
//!
//! The link's tasks write here as things happen; the admin API and the state
//! topic read snapshots. Everything is behind short-lived std mutexes: no
//! lock is ever held across an await.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::bridge::connection::{ConnState, ConnStatus};
use crate::bridge::pace::{Pace, PaceView};
use crate::metrics::now_ms;
use crate::names::{Direction, Role, Side};
use crate::store::Queue;

/// What the operator asked the link to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Receive, queue and forward.
    Running,
    /// Receive and queue; forward nothing.
    Paused,
    /// Receive nothing (the source brokers keep new messages in ferry's
    /// sessions), forward until the queues are empty, then pause.
    Draining,
}

/// The link's state at a glance, as `ferry status` and the state topic show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Every connection is up.
    Connected,
    /// Some connection is down and being retried (see `next_attempt_ms`).
    Connecting,
    /// A destination acknowledged nothing for `ack_timeout_secs` while
    /// connected; its connection is reset and the unacknowledged messages
    /// are sent again. Ends with the next acknowledgement.
    Stalled,
    /// Paused by the operator (after a drain, or at once).
    Paused,
    /// Draining before a pause.
    Draining,
    /// A task died; the link restarts after a backoff.
    Restarting,
    /// `enabled = false` in the config: nothing runs, the queues stay.
    Disabled,
    /// Stopped (ferry shutting down, or the link removed by a reload).
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Connecting => "connecting",
            State::Stalled => "stalled",
            State::Paused => "paused",
            State::Draining => "draining",
            State::Restarting => "restarting",
            State::Disabled => "disabled",
            State::Stopped => "stopped",
        }
    }
}

/// The shared status of one link.
pub struct LinkStatus {
    pub name: String,
    inner: Mutex<Inner>,
    /// The drain pace; kept across restarts of the link's tasks.
    pace: Pace,
}

struct Inner {
    mode: Mode,
    enabled: bool,
    stopped: bool,
    /// Set while the supervisor waits to restart after a task died.
    restart_at_ms: Option<u64>,
    restarts: u64,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    connections: Vec<Arc<ConnStatus>>,
    queues: Vec<(Direction, Queue)>,
}

/// A point-in-time copy of a link's status, as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub name: String,
    pub state: State,
    pub mode: Mode,
    pub enabled: bool,
    /// While restarting: when the next start is due (ms since the epoch).
    pub restart_at_ms: Option<u64>,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub connections: Vec<ConnView>,
    pub queues: Vec<QueueView>,
    /// The drain rates in force and in the config.
    #[serde(default)]
    pub pace: PaceView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnView {
    pub direction: Direction,
    pub side: Side,
    pub role: Role,
    #[serde(flatten)]
    pub state: ConnState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    pub direction: Direction,
    pub messages: u64,
    pub bytes: u64,
    /// Age of the oldest queued message in seconds; 0 when empty.
    pub oldest_age_secs: f64,
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// True while the store budget holds this queue (the store reached
    /// `store_max_bytes` and this queue grew): its overflow policy applies.
    #[serde(default)]
    pub held_by_store_budget: bool,
}

impl LinkStatus {
    pub fn new(name: &str, enabled: bool) -> Arc<LinkStatus> {
        Arc::new(LinkStatus {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                mode: Mode::Running,
                enabled,
                stopped: false,
                restart_at_ms: None,
                restarts: 0,
                last_error: None,
                last_error_ms: None,
                connections: Vec::new(),
                queues: Vec::new(),
            }),
            pace: Pace::new(name),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.lock().enabled = enabled;
    }

    pub fn set_queues(&self, queues: &[(Direction, Queue)]) {
        self.lock().queues = queues.to_vec();
    }

    /// The connections that currently exist (those of running task groups).
    pub fn set_connections(&self, connections: Vec<Arc<ConnStatus>>) {
        self.lock().connections = connections;
    }

    pub fn set_stopped(&self, stopped: bool) {
        let mut st = self.lock();
        st.stopped = stopped;
        if stopped {
            st.connections.clear();
            st.restart_at_ms = None;
        }
    }

    /// A task died: record why and when the link starts again.
    pub fn set_failed(&self, why: &str, restart_in_ms: u64) {
        let now = now_ms();
        let mut st = self.lock();
        st.restarts += 1;
        st.last_error = Some(why.to_string());
        st.last_error_ms = Some(now);
        st.restart_at_ms = Some(now + restart_in_ms);
        st.connections.clear();
    }

    pub fn clear_restart(&self) {
        self.lock().restart_at_ms = None;
    }

    /// True when every existing connection is up (and there is at least one).
    pub fn all_up(&self) -> bool {
        let st = self.lock();
        !st.connections.is_empty() && st.connections.iter().all(|c| c.is_up())
    }

    pub fn state(&self) -> State {
        let st = self.lock();
        Self::state_of(&st)
    }

    fn state_of(st: &Inner) -> State {
        if !st.enabled {
            return State::Disabled;
        }
        if st.stopped {
            return State::Stopped;
        }
        if st.restart_at_ms.is_some() {
            return State::Restarting;
        }
        match st.mode {
            Mode::Paused => State::Paused,
            Mode::Draining => State::Draining,
            Mode::Running if st.connections.iter().any(|c| c.is_stalled()) => State::Stalled,
            Mode::Running if !st.connections.is_empty() && st.connections.iter().all(|c| c.is_up()) => State::Connected,
            Mode::Running => State::Connecting,
        }
    }

    pub fn view(&self) -> LinkView {
        let st = self.lock();
        let now = now_ms();
        // The most recent connection error is the link's last error too,
        // unless a task died after it.
        let mut last_error = st.last_error.clone().zip(st.last_error_ms);
        for c in &st.connections {
            let cs = c.snapshot();
            if let (Some(e), Some(at)) = (cs.last_error, cs.last_error_ms) {
                if last_error.as_ref().is_none_or(|(_, t)| at > *t) {
                    last_error = Some((
                        format!("{} {} {}: {e}", c.direction, c.side.as_str(), c.role.as_str()),
                        at,
                    ));
                }
            }
        }
        LinkView {
            name: self.name.clone(),
            state: Self::state_of(&st),
            mode: st.mode,
            enabled: st.enabled,
            restart_at_ms: st.restart_at_ms,
            restarts: st.restarts,
            last_error: last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_ms: last_error.map(|(_, at)| at),
            connections: st
                .connections
                .iter()
                .map(|c| ConnView {
                    direction: c.direction,
                    side: c.side,
                    role: c.role,
                    state: c.snapshot(),
                })
                .collect(),
            queues: st
                .queues
                .iter()
                .map(|(direction, q)| {
                    let (depth, totals) = q.stats();
                    QueueView {
                        direction: *direction,
                        messages: depth.messages,
                        bytes: depth.bytes,
                        oldest_age_secs: q
                            .oldest_received_at_ms()
                            .map(|at| now.saturating_sub(at) as f64 / 1000.0)
                            .unwrap_or(0.0),
                        received: totals.received,
                        forwarded: totals.forwarded,
                        dropped: totals.dropped_total(),
                        held_by_store_budget: q.held_by_budget(),
                    }
                })
                .collect(),
            pace: self.pace.view(),
        }
    }

    /// The MQTT version each side's connections speak ("5" or "3.1.1"),
    /// from those up; a side whose connections disagree shows both.
    pub fn protocols(&self) -> std::collections::BTreeMap<&'static str, String> {
        let mut by_side: std::collections::BTreeMap<&'static str, Vec<String>> = Default::default();
        for c in &self.lock().connections {
            let cs = c.snapshot();
            if let (true, Some(p)) = (cs.up, cs.protocol) {
                let seen = by_side.entry(c.side.as_str()).or_default();
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
        }
        by_side.into_iter().map(|(side, ps)| (side, ps.join(","))).collect()
    }

    /// Messages queued in every direction of the link.
    pub fn queued(&self) -> u64 {
        self.lock().queues.iter().map(|(_, q)| q.depth().messages).sum()
    }
}
