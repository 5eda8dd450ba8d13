//! Run-time control of a running ferry: which links exist, their status,
//! operator commands to one link, readiness, and reload requests.
//!
//! [`Control`] is shared by the run loop (which starts and stops link
//! supervisors and owns the configuration) and the admin API (which reads
//! status and sends commands). It holds only handles: a link's status and
//! the sender of its command channel. Starting, stopping and reloading
//! happen in the run loop ([`crate::daemon::run`]); the API asks for a reload with a
//! [`ReloadRequest`] and waits for the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::bridge::pace::{PaceView, RateChange};
use crate::config::{Config, LinkConfig};
use crate::fleet::ShardView;
use crate::link::status::{LinkStatus, LinkView};
use crate::link::supervisor::Command;
use crate::secret::Secret;

/// The handles of one configured link.
#[derive(Clone)]
pub struct LinkHandle {
    pub config: LinkConfig,
    pub status: Arc<LinkStatus>,
    pub commands: mpsc::Sender<Command>,
}

/// Why a command for a link was not passed on.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no link named {name:?}; the links are: {known}")]
    UnknownLink { name: String, known: String },
    #[error("link {0:?} is disabled in the config (enabled = false): set enabled = true and reload to run it")]
    Disabled(String),
    #[error("link {0:?} is not running right now (ferry is starting, stopping, or waiting for the store); try again")]
    NotRunning(String),
}

/// A request to read the config file again and apply it.
pub struct ReloadRequest {
    /// Where the outcome goes (None: from SIGHUP, only logged).
    pub reply: Option<oneshot::Sender<Result<ReloadReport, ReloadError>>>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is refused (as `ferry check` would), or changes a setting
    /// that cannot change while ferry runs.
    #[error("{0}")]
    Config(String),
    /// ferry could not carry out the reload.
    #[error("{0}")]
    Internal(String),
    #[error("ferry is shutting down")]
    ShuttingDown,
}

/// Every error reply of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// The reply to a link action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReply {
    pub link: String,
    /// The action, as [`Command::as_str`] spells it.
    pub requested: String,
}

/// The reply to a change of a link's drain rates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateReply {
    pub link: String,
    pub pace: PaceView,
    /// How long the change lasts.
    pub until: String,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl ReloadReport {
    pub fn summary(&self) -> String {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        format!(
            "added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged.len()
        )
    }
}

/// Compares the running config with a new one. Settings that cannot change
/// while ferry runs make the whole reload fail, so nothing half-applies.
pub fn plan_reload(old: &Config, new: &Config) -> Result<ReloadReport, String> {
    let restart_needed = |what: &str, old: String, new: String| {
        Err(format!(
            "{what} changed ({old} -> {new}); it cannot change while ferry runs: restart ferry \
             (systemctl restart ferry) to use it. Nothing was changed."
        ))
    };
    if old.data_dir != new.data_dir {
        return restart_needed(
            "data_dir",
            old.data_dir.display().to_string(),
            new.data_dir.display().to_string(),
        );
    }
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    if old.metrics.listen != new.metrics.listen {
        return restart_needed("[metrics] listen", addr(old.metrics.listen), addr(new.metrics.listen));
    }
    if old.admin.listen != new.admin.listen {
        return restart_needed("[admin] listen", addr(old.admin.listen), addr(new.admin.listen));
    }
    if old.fleet.shards != new.fleet.shards || old.fleet.shard != new.fleet.shard {
        let layout = |c: &Config| format!("shards = {}, shard = {:?}", c.fleet.shards, c.fleet.shard);
        return restart_needed("[fleet]", layout(old), layout(new));
    }
    let hub_changed = old.hub != new.hub;
    let mut report = ReloadReport::default();
    for link in &new.links {
        match old.links.iter().find(|l| l.name == link.name) {
            None => report.added.push(link.name.clone()),
            Some(before) if hub_changed || !before.same_behaviour(link) => report.changed.push(link.name.clone()),
            Some(_) => report.unchanged.push(link.name.clone()),
        }
    }
    for link in &old.links {
        if !new.links.iter().any(|l| l.name == link.name) {
            report.removed.push(link.name.clone());
        }
    }
    Ok(report)
}

/// The process-wide status that `/readyz` and `ferry status` show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessView {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: String,
    pub data_dir: String,
    pub ready: bool,
    /// Why ferry is not ready, when it is not.
    pub not_ready: Option<String>,
    /// This process's shard, when the config has a `[fleet]` of more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardView>,
    pub links: Vec<LinkView>,
}

pub struct Control {
    started: Instant,
    links: Mutex<BTreeMap<String, LinkHandle>>,
    /// None when ready; otherwise why not.
    not_ready: Mutex<Option<String>>,
    config_path: String,
    data_dir: String,
    /// Which links this process runs (all of them without a `[fleet]`).
    shard: ShardView,
    reload: mpsc::Sender<ReloadRequest>,
    /// The admin API's bearer token ([admin] token_file), read again on reload.
    admin_token: Mutex<Option<Secret>>,
}

impl Control {
    pub fn new(config: &Config, shard: ShardView, reload: mpsc::Sender<ReloadRequest>) -> Arc<Control> {
        Arc::new(Control {
            started: Instant::now(),
            links: Mutex::new(BTreeMap::new()),
            not_ready: Mutex::new(Some("starting: opening the store".to_string())),
            config_path: config.source.display().to_string(),
            data_dir: config.data_dir.display().to_string(),
            shard,
            reload,
            admin_token: Mutex::new(config.admin.token.clone()),
        })
    }

    fn links(&self) -> MutexGuard<'_, BTreeMap<String, LinkHandle>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token the admin API asks for, if any.
    pub fn admin_token(&self) -> Option<Secret> {
        self.admin_token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_admin_token(&self, token: Option<Secret>) {
        *self.admin_token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    pub fn set_ready(&self, not_ready: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = not_ready;
    }

    /// This process's shard of the fleet.
    pub fn shard(&self) -> &ShardView {
        &self.shard
    }

    pub fn not_ready(&self) -> Option<String> {
        self.not_ready.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The status object of `name`, kept across restarts of the link so a
    /// pause survives a reload or a store reopen; created when new.
    pub fn status_for(&self, link: &LinkConfig) -> Arc<LinkStatus> {
        match self.links().get(&link.name) {
            Some(h) => {
                h.status.set_enabled(link.enabled);
                h.status.clone()
            }
            None => {
                let status = LinkStatus::new(&link.name, link.enabled);
                status.pace().configure(link.pace);
                status
            }
        }
    }

    /// Puts the config's drain rates back on every link of `config`,
    /// replacing run-time changes (done on every reload).
    pub fn configure_paces(&self, config: &Config) {
        let links = self.links();
        for link in &config.links {
            if let Some(h) = links.get(&link.name) {
                h.status.pace().configure(link.pace);
            }
        }
    }

    /// Changes the drain rates of `name` until the next reload or restart.
    /// Applies at once, also to a drain waiting for its bucket.
    pub fn change_rate(&self, name: &str, change: RateChange) -> Result<RateReply, CommandError> {
        let links = self.links();
        let Some(handle) = links.get(name) else {
            return Err(self.unknown(name, &links));
        };
        if !handle.config.enabled {
            return Err(CommandError::Disabled(name.to_string()));
        }
        Ok(RateReply {
            link: name.to_string(),
            pace: handle.status.pace().change(change),
            until: "the next reload or restart of ferry (then the config file's rates apply)".to_string(),
        })
    }

    pub fn insert(&self, handle: LinkHandle) {
        self.links().insert(handle.config.name.clone(), handle);
    }

    pub fn remove(&self, name: &str) {
        self.links().remove(name);
    }

    pub fn view(&self) -> ProcessView {
        let not_ready = self.not_ready();
        ProcessView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            data_dir: self.data_dir.clone(),
            ready: not_ready.is_none(),
            not_ready,
            shard: (self.shard.shards > 1).then(|| self.shard.clone()),
            links: self.links().values().map(|h| h.status.view()).collect(),
        }
    }

    pub fn link_view(&self, name: &str) -> Result<LinkView, CommandError> {
        let links = self.links();
        match links.get(name) {
            Some(h) => Ok(h.status.view()),
            None => Err(self.unknown(name, &links)),
        }
    }

    fn unknown(&self, name: &str, links: &BTreeMap<String, LinkHandle>) -> CommandError {
        let known = if links.is_empty() {
            "(none)".to_string()
        } else {
            links.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        CommandError::UnknownLink {
            name: name.to_string(),
            known,
        }
    }

    /// Hands `command` to the link's supervisor.
    pub fn command(&self, name: &str, command: Command) -> Result<(), CommandError> {
        let links = self.links();
        let Some(handle) = links.get(name) else {
            return Err(self.unknown(name, &links));
        };
        if !handle.config.enabled {
            return Err(CommandError::Disabled(name.to_string()));
        }
        handle
            .commands
            .try_send(command)
            .map_err(|_| CommandError::NotRunning(name.to_string()))
    }

    /// Asks the run loop to reload the config file; waits for the outcome.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.reload
            .send(ReloadRequest { reply: Some(tx) })
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        rx.await.map_err(|_| ReloadError::ShuttingDown)?
    }
}
