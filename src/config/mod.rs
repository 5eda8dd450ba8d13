//! The configuration file: from the operator's TOML to the typed [`Config`]
//! the rest of ferry runs on.
//!
//! This file owns the typed configuration and the entry points that load it;
//! the steps in between have their own files:
//!
//! - `raw`: the file as written (serde types that keep every value's span),
//! - `values`: parsers of single values (sizes, ports, listen addresses, ...),
//! - `validate`: the checks across values (defaults, bridge loops, client ids),
//! - `secrets`: passwords and the admin token read from files or the environment,
//! - `error`: [`ConfigError`], which names `file:line:column`,
//! - `summary`: the text `ferry check` prints.
//!
//! Parsing is strict (an unknown key is an error) and every error names
//! `file:line:column` of the offending value, so a bad config is fixed in one
//! look and nothing starts with it. Validation also rules out configurations
//! that cannot work: duplicate link names or client ids, filters that break
//! MQTT rules, and routes of one link that would feed each other's messages
//! back (a bridge loop).
//!
//! Settings in `[defaults]` apply to every link unless the link sets the same
//! key itself; built-in defaults fill what neither sets.

mod error;
mod hosts;
mod raw;
mod secrets;
mod summary;
mod tls;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bridge::pace::Rates;
use crate::bridge::tls::TlsClient;
use crate::fleet::FleetConfig;
use crate::names::{self, Direction, Protocol};
use crate::secret::Secret;
use crate::store::{MaxBytes, Overflow};
use crate::topic::TopicMap;

pub use error::ConfigError;
pub(crate) use secrets::{token_from_file, PasswordSource, Passwords};
pub(crate) use values::{parse_drain_bytes_rate, parse_drain_rate};

use error::{line_and_column, Problem};
use raw::RawConfig;
use validate::validate;

// Built-in defaults and limits; docs/configuration.md lists them for operators.
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9465";
/// Where each link publishes its state on the hub; `{link}` is its name.
const DEFAULT_STATE_TOPIC: &str = "ferry/{link}/state";
const DEFAULT_HUB_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 1883;
const DEFAULT_TLS_PORT: u16 = 8883;
const DEFAULT_FAILBACK_SECS: u64 = 300;
const DEFAULT_KEEPALIVE_SECS: u64 = 30;
pub(crate) const DEFAULT_ACK_TIMEOUT_SECS: u64 = 30;
const DEFAULT_RECONNECT_MIN_MS: u64 = 200;
const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
const DEFAULT_INFLIGHT: u16 = 100;
const DEFAULT_QUEUE_MAX_BYTES: u64 = 8 << 30;
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 16 << 20;
const DEFAULT_QOS: u8 = 1;
const MIN_MESSAGE_BYTES_LIMIT: u64 = 1 << 10;
const MAX_MESSAGE_BYTES_LIMIT: u64 = 256 << 20;
const MAX_LINK_NAME_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration came from (for messages).
    pub(crate) source: PathBuf,
    pub data_dir: PathBuf,
    /// sled's page cache (`store_cache`), bytes.
    pub(crate) store_cache_bytes: u64,
    /// The store-wide budget (`store_max_bytes`): auto, off or bytes.
    pub(crate) store_max_bytes: MaxBytes,
    /// `store_reserve_bytes`; None: the default (64 MiB, at most a quarter
    /// of the budget).
    pub(crate) store_reserve_bytes: Option<u64>,
    pub(crate) metrics: MetricsConfig,
    pub(crate) admin: AdminConfig,
    pub(crate) hub: HubConfig,
    pub(crate) links: Vec<LinkConfig>,
    /// `[fleet]`: which links this process runs (see [`crate::fleet`]).
    pub(crate) fleet: FleetConfig,
    /// What the file does that works but should change (an inline password,
    /// a secret file others can read, a long client id): `ferry check`
    /// prints them, `ferry run` logs them. Each displays like an error.
    pub(crate) warnings: Vec<ConfigError>,
}

/// The admin API (JSON over HTTP): status, link control, reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    /// Where the admin API listens; None when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    /// The bearer token every request but the probes must carry (from
    /// `token_file`); required when `listen` is not a loopback address.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Where the Prometheus endpoint listens; None when `listen = "off"`.
    pub listen: Option<SocketAddr>,
}

/// The broker ferry runs beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host`/`port` or `hosts`, in order (`host`, `port`: the first).
    pub(crate) addresses: Vec<(String, u16)>,
    /// `failback_secs` of `[hub]` or `[defaults]`.
    pub(crate) failback: Duration,
    /// `[hub.tls]`; None: plain TCP.
    pub(crate) tls: Option<TlsClient>,
    /// Each link's hub connection uses "<client_id>-<link name>".
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) password_source: Option<PasswordSource>,
    /// The retained state topic pattern ("{link}" is replaced by the
    /// link's name); None when `state_topic = "off"`.
    pub(crate) state_topic: Option<String>,
    /// The MQTT version of the hub connections (`protocol`).
    pub(crate) protocol: Protocol,
}

/// One remote (edge) broker and the routes between it and the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host`/`port` or `hosts`, in order (`host`, `port`: the first).
    pub(crate) addresses: Vec<(String, u16)>,
    pub(crate) failback: Duration,
    /// `[links.tls]` or `[defaults.tls]`; None: plain TCP.
    pub(crate) tls: Option<TlsClient>,
    /// The client id on the edge broker.
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) password_source: Option<PasswordSource>,
    pub(crate) enabled: bool,
    pub(crate) keepalive: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) inflight: u16,
    /// 0: no byte limit.
    pub(crate) queue_max_bytes: u64,
    /// 0: no message-count limit.
    pub(crate) queue_max_messages: u64,
    pub(crate) overflow: Overflow,
    /// None: keep messages until delivered.
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) max_message_bytes: u32,
    /// A destination that acknowledges nothing for this long while connected is stalled.
    pub(crate) ack_timeout: Duration,
    /// The MQTT version of the edge connections (`protocol`).
    pub(crate) protocol: Protocol,
    /// `drain_rate` and `drain_bytes_rate` (None: off).
    pub(crate) pace: Rates,
    pub(crate) routes: Vec<Route>,
}

/// A one-way flow of messages: read with a filter on one side, written with
/// the mapped topic on the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub(crate) direction: Direction,
    /// The filter (out) or topic pattern (in) on the hub.
    pub(crate) local: String,
    /// The topic pattern (out) or filter (in) on the edge.
    pub(crate) remote: String,
    pub(crate) qos: u8,
    /// Line of the route in the config file.
    pub(crate) line: usize,
    source_to_dest: TopicMap,
}

impl Route {
    /// The filter subscribed to on the side this route reads: the hub's
    /// `local` for `out`, the edge's `remote` for `in`.
    pub(crate) fn source_filter(&self) -> &str {
        match self.direction {
            Direction::Out => &self.local,
            Direction::In => &self.remote,
        }
    }

    /// The pattern on the side this route writes (a filter or a template).
    pub(crate) fn dest_filter(&self) -> &str {
        match self.direction {
            Direction::Out => &self.remote,
            Direction::In => &self.local,
        }
    }

    /// A filter that every topic this route writes matches: the destination
    /// filter, or for a template the filter with a `+` for each level holding a
    /// capture, `#` for `{#}` and the link's name for `{link}`.
    pub(crate) fn written_filter(&self) -> &str {
        self.source_to_dest.written_filter()
    }

    pub(crate) fn is_template(&self) -> bool {
        self.source_to_dest.is_template()
    }

    /// The topic to publish on the destination for a topic read on the
    /// source, or None when the topic is not this route's (see [`TopicMap::map`]).
    pub(crate) fn map_to_dest(&self, topic: &str) -> Option<String> {
        self.source_to_dest.map(topic)
    }

    fn side_names(&self) -> (&'static str, &'static str) {
        match self.direction {
            Direction::Out => ("hub", "edge"),
            Direction::In => ("edge", "hub"),
        }
    }
}

impl fmt::Display for Route {
    /// `out  hub:edge/1/down/# -> edge:down/#  qos 1`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (source_side, dest_side) = self.side_names();
        write!(
            f,
            "{:<4} {source_side}:{} -> {dest_side}:{}  qos {}",
            self.direction.as_str(),
            self.source_filter(),
            self.dest_filter(),
            self.qos
        )
    }
}

impl LinkConfig {
    pub(crate) fn routes(&self, direction: Direction) -> impl Iterator<Item = &Route> + '_ {
        self.routes.iter().filter(move |route| route.direction == direction)
    }

    /// The client id of this link's connection to the hub.
    pub(crate) fn hub_client_id(&self, hub: &HubConfig) -> String {
        names::hub_client_id(&hub.client_id, &self.name)
    }

    /// Whether `other` would run exactly like this link (only where its
    /// routes sit in the file may differ): a reload leaves such a link alone.
    pub(crate) fn same_behaviour(&self, other: &LinkConfig) -> bool {
        let without_lines = |link: &LinkConfig| {
            let mut link = link.clone();
            for route in &mut link.routes {
                route.line = 0;
            }
            link
        };
        without_lines(self) == without_lines(other)
    }
}

impl HubConfig {
    /// The state topic of `link`, when state publishing is on.
    pub(crate) fn state_topic_for(&self, link: &str) -> Option<String> {
        self.state_topic.as_ref().map(|pattern| pattern.replace("{link}", link))
    }
}

impl Config {
    /// The store budget for this config now (`auto` measured on the
    /// filesystem of data_dir); None when off or not measurable.
    pub(crate) fn store_budget(&self) -> Option<crate::store::BudgetLimits> {
        crate::store::BudgetLimits::resolve(self.store_max_bytes, self.store_reserve_bytes, &self.data_dir)
    }

    /// Reads and validates the file at `path`, and the secrets it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, Passwords::Read)
    }

    /// Like [`Config::load`]; with [`Passwords::Skip`] the broker passwords
    /// it names are not read (for commands that connect to no broker).
    pub(crate) fn load_with(path: &Path, passwords: Passwords) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            path: path.to_path_buf(),
            position: None,
            message: format!("cannot read the config file: {error}"),
        })?;
        Config::parse_with(&text, path, passwords)
    }

    /// Parses and validates config text; `source` names the file in errors
    /// (and relative secret files are found beside it). Used by tests and
    /// the config_parse fuzz target; the binary reads files with `load`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, Passwords::Read)
    }

    fn parse_with(text: &str, source: &Path, passwords: Passwords) -> Result<Config, ConfigError> {
        let error_at = |problem: Problem| ConfigError {
            path: source.to_path_buf(),
            position: problem.offset.map(|offset| line_and_column(text, offset)),
            message: problem.message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            error_at(Problem {
                offset: error.span().map(|span| span.start),
                message: error.message().replace("expected i64", "expected an integer"),
            })
        })?;
        let (mut config, warnings) = validate(text, raw, source, passwords).map_err(error_at)?;
        config.warnings = warnings.into_iter().map(error_at).collect();
        Ok(config)
    }
}
