//! The configuration file: TOML parsing, defaults, and validation.
//!
//! Owns everything between the operator's file and the typed [`Config`] the
//! rest of ferry runs on. Parsing is strict (an unknown key is an error) and
//! every error names `file:line:column` of the offending value, so a bad
//! config is fixed in one look and nothing starts with it. Validation also
//! rules out configurations that cannot work: duplicate link names or client
//! ids, filters that break MQTT rules, and routes of one link that would feed
//! each other's messages back (a bridge loop).
//!
//! Settings in `[defaults]` apply to every link unless the link sets the same
//! key itself; built-in defaults fill what neither sets.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::store::Overflow;
use crate::topic::{self, TopicMap};

const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9465";
/// Where each link publishes its state on the hub; `{link}` is its name.
pub const DEFAULT_STATE_TOPIC: &str = "ferry/{link}/state";
const DEFAULT_HUB_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 1883;
const DEFAULT_HUB_CLIENT_ID: &str = "ferry-hub";
const DEFAULT_KEEPALIVE_SECS: u64 = 30;
const DEFAULT_ACK_TIMEOUT_SECS: u64 = 30;
const DEFAULT_RECONNECT_MIN_MS: u64 = 200;
const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
const DEFAULT_INFLIGHT: u16 = 100;
const DEFAULT_QUEUE_MAX_BYTES: u64 = 8 << 30;
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 16 << 20;
const DEFAULT_QOS: u8 = 1;
const MIN_MESSAGE_BYTES_LIMIT: u64 = 1 << 10;
const MAX_MESSAGE_BYTES_LIMIT: u64 = 256 << 20;
const MAX_LINK_NAME_CHARS: usize = 64;

// ---------------------------------------------------------------------------
// The typed configuration.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration came from (for messages).
    pub source: PathBuf,
    pub data_dir: PathBuf,
    /// sled's page cache (`store_cache`), bytes.
    pub store_cache_bytes: u64,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub hub: HubConfig,
    pub links: Vec<LinkConfig>,
}

/// The admin API (JSON over HTTP): status, link control, reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API listens; None when `listen = "off"`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where the Prometheus endpoint listens; None when `listen = "off"`.
    pub listen: Option<SocketAddr>,
}

/// The broker ferry runs beside.
#[derive(Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub host: String,
    pub port: u16,
    /// Each link's hub connection uses "<client_id>-<link name>".
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The retained state topic pattern ("{link}" is replaced by the
    /// link's name); None when `state_topic = "off"`.
    pub state_topic: Option<String>,
}

/// One remote (edge) broker and the routes between it and the hub.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The client id on the edge broker.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub enabled: bool,
    pub keepalive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub inflight: u16,
    /// 0: no byte limit.
    pub queue_max_bytes: u64,
    /// 0: no message-count limit.
    pub queue_max_messages: u64,
    pub overflow: Overflow,
    /// None: keep messages until delivered.
    pub message_ttl: Option<Duration>,
    pub max_message_bytes: u32,
    /// A destination that acknowledges nothing for this long while connected is stalled.
    pub ack_timeout: Duration,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Hub -> edge.
    Out,
    /// Edge -> hub.
    In,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A one-way flow of messages: read with a filter on one side, written with
/// the mapped topic on the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub direction: Direction,
    /// The filter (out) or topic pattern (in) on the hub.
    pub local: String,
    /// The topic pattern (out) or filter (in) on the edge.
    pub remote: String,
    pub qos: u8,
    /// Line of the route in the config file.
    pub line: usize,
    source_to_dest: TopicMap,
}

impl Route {
    /// The filter subscribed to on the side this route reads: the hub's
    /// `local` for `out`, the edge's `remote` for `in`.
    pub fn source_filter(&self) -> &str {
        match self.direction {
            Direction::Out => &self.local,
            Direction::In => &self.remote,
        }
    }

    /// The pattern on the side this route writes.
    pub fn dest_filter(&self) -> &str {
        match self.direction {
            Direction::Out => &self.remote,
            Direction::In => &self.local,
        }
    }

    /// The topic to publish on the destination for a topic read on the
    /// source, or None when the topic is not this route's (see [`TopicMap::map`]).
    pub fn map_to_dest(&self, topic: &str) -> Option<String> {
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
    pub fn routes(&self, direction: Direction) -> impl Iterator<Item = &Route> + '_ {
        self.routes.iter().filter(move |route| route.direction == direction)
    }

    /// The client id of this link's connection to the hub.
    pub fn hub_client_id(&self, hub: &HubConfig) -> String {
        hub_client_id(&hub.client_id, &self.name)
    }
}

fn hub_client_id(hub_client_id: &str, link_name: &str) -> String {
    format!("{hub_client_id}-{link_name}")
}

fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .finish()
    }
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("enabled", &self.enabled)
            .field("keepalive", &self.keepalive)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("inflight", &self.inflight)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("overflow", &self.overflow)
            .field("message_ttl", &self.message_ttl)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ack_timeout", &self.ack_timeout)
            .field("routes", &self.routes)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// A configuration error, displayed as `path:line:column: message`, or
/// `path: message` when it belongs to no single place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: PathBuf,
    position: Option<(usize, usize)>,
    message: String,
}

impl ConfigError {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One thing wrong with the file, at a byte offset when it has a place.
#[derive(Debug)]
struct Problem {
    offset: Option<usize>,
    message: String,
}

impl Problem {
    fn at(span: Range<usize>, message: impl Into<String>) -> Problem {
        Problem {
            offset: Some(span.start),
            message: message.into(),
        }
    }

    fn nowhere(message: impl Into<String>) -> Problem {
        Problem {
            offset: None,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    line_and_column(text, span.start).0
}

// ---------------------------------------------------------------------------
// The file as written, before validation. Every value checked after parsing
// keeps its span so its error can name its line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Spanned<String>>,
    store_cache: Option<Spanned<RawSize>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    admin: RawMetrics,
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    defaults: RawTuning,
    #[serde(default)]
    links: Vec<Spanned<RawLink>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHub {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    state_topic: Option<Spanned<String>>,
}

/// The per-link settings that `[defaults]` can set for every link.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTuning {
    keepalive_secs: Option<Spanned<i64>>,
    reconnect_min_ms: Option<Spanned<i64>>,
    reconnect_max_ms: Option<Spanned<i64>>,
    inflight: Option<Spanned<i64>>,
    queue_max_bytes: Option<Spanned<RawSize>>,
    queue_max_messages: Option<Spanned<i64>>,
    overflow: Option<Spanned<String>>,
    message_ttl_secs: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<RawSize>>,
    ack_timeout_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: Spanned<String>,
    host: Spanned<String>,
    port: Option<Spanned<i64>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    enabled: Option<bool>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    // The same keys as RawTuning: serde cannot combine `flatten` with
    // `deny_unknown_fields`, so they are repeated here.
    keepalive_secs: Option<Spanned<i64>>,
    reconnect_min_ms: Option<Spanned<i64>>,
    reconnect_max_ms: Option<Spanned<i64>>,
    inflight: Option<Spanned<i64>>,
    queue_max_bytes: Option<Spanned<RawSize>>,
    queue_max_messages: Option<Spanned<i64>>,
    overflow: Option<Spanned<String>>,
    message_ttl_secs: Option<Spanned<i64>>,
    max_message_bytes: Option<Spanned<RawSize>>,
    ack_timeout_secs: Option<Spanned<i64>>,
}

impl RawLink {
    fn tuning(&self) -> RawTuning {
        RawTuning {
            keepalive_secs: self.keepalive_secs.clone(),
            reconnect_min_ms: self.reconnect_min_ms.clone(),
            reconnect_max_ms: self.reconnect_max_ms.clone(),
            inflight: self.inflight.clone(),
            queue_max_bytes: self.queue_max_bytes.clone(),
            queue_max_messages: self.queue_max_messages.clone(),
            overflow: self.overflow.clone(),
            message_ttl_secs: self.message_ttl_secs.clone(),
            max_message_bytes: self.max_message_bytes.clone(),
            ack_timeout_secs: self.ack_timeout_secs.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    direction: Spanned<String>,
    local: Spanned<String>,
    remote: Spanned<String>,
    qos: Option<Spanned<i64>>,
}

/// A size as written: a number of bytes, or a string with a unit ("8GiB").
#[derive(Clone)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes like 1048576, or a string like \"16MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawSize, E> {
                i64::try_from(value)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom(format!("size {value} is too large")))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(value.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

// ---------------------------------------------------------------------------
// Value parsers shared by the validation below.

const SIZE_UNITS: [(&str, u64); 10] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("", 1),
];

/// Parses a size such as "8GiB", "512 MB", "100" or "100B" into bytes.
/// KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; units
/// are matched without regard to case.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let help = "write a whole number with an optional unit: B, KB, MB, GB, TB (powers of 1000) \
                or KiB, MiB, GiB, TiB (powers of 1024), like \"8GiB\"";
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size; {help}"));
    }
    let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit)) else {
        return Err(format!("{text:?} has an unknown unit {unit:?}; {help}"));
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a byte count with the largest unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 8] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ];
    if bytes > 0 {
        for (name, multiplier) in UNITS {
            if bytes % multiplier == 0 {
                return format!("{}{name}", bytes / multiplier);
            }
        }
    }
    format!("{bytes}B")
}

fn size_value(key: &str, raw: &Spanned<RawSize>) -> Result<u64, Problem> {
    let bytes = match raw.get_ref() {
        RawSize::Bytes(number) => u64::try_from(*number).map_err(|_| format!("{key} cannot be negative, got {number}")),
        RawSize::Text(text) => parse_size(text).map_err(|error| format!("{key}: {error}")),
    };
    bytes.map_err(|message| Problem::at(raw.span(), message))
}

fn integer_in(
    key: &str,
    raw: &Spanned<i64>,
    allowed: std::ops::RangeInclusive<i64>,
    meaning: &str,
) -> Result<u64, Problem> {
    let value = *raw.get_ref();
    if !allowed.contains(&value) {
        return Err(Problem::at(
            raw.span(),
            format!(
                "{key} must be between {} and {}{meaning}, got {value}",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
    u64::try_from(value).map_err(|_| Problem::at(raw.span(), format!("{key} cannot be negative")))
}

fn port_value(raw: &Spanned<i64>) -> Result<u16, Problem> {
    let port = integer_in("port", raw, 1..=65535, "")?;
    u16::try_from(port).map_err(|_| Problem::at(raw.span(), "port must be at most 65535"))
}

fn non_empty(key: &str, raw: &Spanned<String>) -> Result<String, Problem> {
    if raw.get_ref().trim().is_empty() {
        return Err(Problem::at(raw.span(), format!("{key} cannot be empty")));
    }
    Ok(raw.get_ref().clone())
}

fn overflow_value(raw: &Spanned<String>) -> Result<Overflow, Problem> {
    match raw.get_ref().as_str() {
        "block" => Ok(Overflow::Block),
        "drop-oldest" => Ok(Overflow::DropOldest),
        "drop-new" => Ok(Overflow::DropNew),
        other => Err(Problem::at(
            raw.span(),
            format!(
                "overflow must be \"block\" (stop taking messages, lossless), \"drop-oldest\" \
                 or \"drop-new\", got {other:?}"
            ),
        )),
    }
}

fn direction_value(raw: &Spanned<String>) -> Result<Direction, Problem> {
    match raw.get_ref().as_str() {
        "out" => Ok(Direction::Out),
        "in" => Ok(Direction::In),
        other => Err(Problem::at(
            raw.span(),
            format!("direction must be \"out\" (hub -> edge) or \"in\" (edge -> hub), got {other:?}"),
        )),
    }
}

/// Checks username and password together: MQTT sends a password only with a
/// username.
fn credentials(
    username: &Option<Spanned<String>>,
    password: &Option<Spanned<String>>,
) -> Result<(Option<String>, Option<String>), Problem> {
    if let (None, Some(password)) = (username, password) {
        return Err(Problem::at(
            password.span(),
            "password is set without username; MQTT sends a password only with a username",
        ));
    }
    Ok((
        username.as_ref().map(|name| name.get_ref().clone()),
        password.as_ref().map(|secret| secret.get_ref().clone()),
    ))
}

fn is_valid_link_name(name: &str) -> bool {
    (1..=MAX_LINK_NAME_CHARS).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

// ---------------------------------------------------------------------------
// Validation.

/// A validated value with the span it came from (None: a built-in default).
#[derive(Clone)]
struct Placed<T> {
    value: T,
    span: Option<Range<usize>>,
}

fn placed<T>(value: T, span: Range<usize>) -> Placed<T> {
    Placed {
        value,
        span: Some(span),
    }
}

/// The tuning keys of one layer (`[defaults]` or one link), each validated
/// alone; None where the layer does not set the key.
#[derive(Default, Clone)]
struct TuningLayer {
    keepalive: Option<Placed<Duration>>,
    reconnect_min: Option<Placed<Duration>>,
    reconnect_max: Option<Placed<Duration>>,
    inflight: Option<u16>,
    queue_max_bytes: Option<u64>,
    queue_max_messages: Option<u64>,
    overflow: Option<Overflow>,
    message_ttl: Option<Option<Duration>>,
    max_message_bytes: Option<u32>,
    ack_timeout: Option<Duration>,
}

impl TuningLayer {
    /// This layer's values, with `under`'s where this layer sets none.
    fn over(self, under: &TuningLayer) -> TuningLayer {
        TuningLayer {
            keepalive: self.keepalive.or_else(|| under.keepalive.clone()),
            reconnect_min: self.reconnect_min.or_else(|| under.reconnect_min.clone()),
            reconnect_max: self.reconnect_max.or_else(|| under.reconnect_max.clone()),
            inflight: self.inflight.or(under.inflight),
            queue_max_bytes: self.queue_max_bytes.or(under.queue_max_bytes),
            queue_max_messages: self.queue_max_messages.or(under.queue_max_messages),
            overflow: self.overflow.or(under.overflow),
            message_ttl: self.message_ttl.or(under.message_ttl),
            max_message_bytes: self.max_message_bytes.or(under.max_message_bytes),
            ack_timeout: self.ack_timeout.or(under.ack_timeout),
        }
    }
}

fn builtin_tuning() -> TuningLayer {
    let builtin = |value| Some(Placed { value, span: None });
    TuningLayer {
        keepalive: builtin(Duration::from_secs(DEFAULT_KEEPALIVE_SECS)),
        reconnect_min: builtin(Duration::from_millis(DEFAULT_RECONNECT_MIN_MS)),
        reconnect_max: builtin(Duration::from_millis(DEFAULT_RECONNECT_MAX_MS)),
        inflight: Some(DEFAULT_INFLIGHT),
        queue_max_bytes: Some(DEFAULT_QUEUE_MAX_BYTES),
        queue_max_messages: Some(0),
        overflow: Some(Overflow::Block),
        message_ttl: Some(None),
        max_message_bytes: Some(DEFAULT_MAX_MESSAGE_BYTES),
        ack_timeout: Some(Duration::from_secs(DEFAULT_ACK_TIMEOUT_SECS)),
    }
}

/// Collects problems so the one reported is the first in the file, whatever
/// order the checks run in.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn take<T>(&mut self, result: Result<T, Problem>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.0.push(problem);
                None
            }
        }
    }

    /// Like `take` for an optional key: Some(None) when the key is absent.
    fn take_optional<R, T>(
        &mut self,
        raw: &Option<R>,
        check: impl FnOnce(&R) -> Result<T, Problem>,
    ) -> Option<Option<T>> {
        match raw {
            None => Some(None),
            Some(raw) => self.take(check(raw)).map(Some),
        }
    }

    fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    /// The problem earliest in the file; problems without a place come last.
    fn first(self) -> Option<Problem> {
        self.0
            .into_iter()
            .min_by_key(|problem| problem.offset.unwrap_or(usize::MAX))
    }
}

fn validate_tuning(raw: &RawTuning, problems: &mut Problems) -> TuningLayer {
    let mut layer = TuningLayer::default();
    let millis = |key: &str, raw: &Spanned<i64>| {
        let ms = integer_in(key, raw, 1..=3_600_000, " milliseconds")?;
        Ok(placed(Duration::from_millis(ms), raw.span()))
    };
    layer.keepalive = problems
        .take_optional(&raw.keepalive_secs, |raw| {
            // rumqttc refuses keepalives under 5 s (it panics), so the config does.
            let secs = integer_in("keepalive_secs", raw, 5..=65535, " seconds")?;
            Ok(placed(Duration::from_secs(secs), raw.span()))
        })
        .flatten();
    layer.reconnect_min = problems
        .take_optional(&raw.reconnect_min_ms, |raw| millis("reconnect_min_ms", raw))
        .flatten();
    layer.ack_timeout = problems
        .take_optional(&raw.ack_timeout_secs, |raw| {
            let secs = integer_in("ack_timeout_secs", raw, 1..=86_400, " seconds")?;
            Ok(Duration::from_secs(secs))
        })
        .flatten();
    layer.reconnect_max = problems
        .take_optional(&raw.reconnect_max_ms, |raw| millis("reconnect_max_ms", raw))
        .flatten();
    layer.inflight = problems
        .take_optional(&raw.inflight, |raw| {
            let inflight = integer_in("inflight", raw, 1..=65535, " (unacknowledged messages on the wire)")?;
            u16::try_from(inflight).map_err(|_| Problem::at(raw.span(), "inflight is too large"))
        })
        .flatten();
    layer.queue_max_bytes = problems
        .take_optional(&raw.queue_max_bytes, |raw| size_value("queue_max_bytes", raw))
        .flatten();
    layer.queue_max_messages = problems
        .take_optional(&raw.queue_max_messages, |raw| {
            integer_in("queue_max_messages", raw, 0..=i64::MAX, " (0: no limit)")
        })
        .flatten();
    layer.overflow = problems.take_optional(&raw.overflow, overflow_value).flatten();
    layer.message_ttl = problems
        .take_optional(&raw.message_ttl_secs, |raw| {
            let secs = integer_in("message_ttl_secs", raw, 0..=i64::MAX, " (0: keep until delivered)")?;
            Ok((secs > 0).then(|| Duration::from_secs(secs)))
        })
        .flatten();
    layer.max_message_bytes = problems
        .take_optional(&raw.max_message_bytes, |raw| {
            let bytes = size_value("max_message_bytes", raw)?;
            if !(MIN_MESSAGE_BYTES_LIMIT..=MAX_MESSAGE_BYTES_LIMIT).contains(&bytes) {
                return Err(Problem::at(
                    raw.span(),
                    format!(
                        "max_message_bytes must be between 1KiB and 256MiB, got {}",
                        format_size(bytes)
                    ),
                ));
            }
            u32::try_from(bytes).map_err(|_| Problem::at(raw.span(), "max_message_bytes is too large"))
        })
        .flatten();
    layer
}

/// Validates one route alone: its direction, filters, mapping and QoS.
fn validate_route(text: &str, raw: &Spanned<RawRoute>) -> Result<Route, Problem> {
    let route = raw.get_ref();
    let direction = direction_value(&route.direction)?;
    for (key, filter) in [("local", &route.local), ("remote", &route.remote)] {
        topic::validate_filter(filter.get_ref())
            .map_err(|error| Problem::at(filter.span(), format!("{key}: {error}")))?;
    }
    let (source, dest) = match direction {
        Direction::Out => (&route.local, &route.remote),
        Direction::In => (&route.remote, &route.local),
    };
    let source_to_dest = TopicMap::new(source.get_ref(), dest.get_ref()).map_err(|error| {
        let later = if route.local.span().start > route.remote.span().start {
            route.local.span()
        } else {
            route.remote.span()
        };
        Problem::at(later, format!("local and remote: {error}"))
    })?;
    let qos = match &route.qos {
        None => DEFAULT_QOS,
        Some(raw_qos) => {
            let qos = integer_in("qos", raw_qos, 0..=2, "")?;
            u8::try_from(qos).map_err(|_| Problem::at(raw_qos.span(), "qos must be 0, 1 or 2"))?
        }
    };
    Ok(Route {
        direction,
        local: route.local.get_ref().clone(),
        remote: route.remote.get_ref().clone(),
        qos,
        line: line_of(text, &raw.span()),
        source_to_dest,
    })
}

/// Finds `out` and `in` routes of one link that would pass messages back and
/// forth between hub and edge forever.
fn check_bridge_loops(routes: &[(Route, Range<usize>)], problems: &mut Problems) {
    for (out_route, out_span) in routes.iter().filter(|(r, _)| r.direction == Direction::Out) {
        for (in_route, in_span) in routes.iter().filter(|(r, _)| r.direction == Direction::In) {
            let reason = if topic::filters_overlap(&out_route.remote, &in_route.remote) {
                format!(
                    "the out route writes {:?} on the edge and the in route reads {:?} there, \
                     so messages would come straight back; make the two remote filters disjoint",
                    out_route.remote, in_route.remote
                )
            } else if topic::filters_overlap(&in_route.local, &out_route.local) {
                format!(
                    "the in route writes {:?} on the hub and the out route reads {:?} there, \
                     so messages would go straight back; make the two local filters disjoint",
                    in_route.local, out_route.local
                )
            } else {
                continue;
            };
            let (earlier_line, later_line, later_span) = if out_span.start < in_span.start {
                (out_route.line, in_route.line, in_span)
            } else {
                (in_route.line, out_route.line, out_span)
            };
            problems.push(Problem::at(
                later_span.clone(),
                format!(
                    "route at line {earlier_line} and route at line {later_line} form a bridge \
                     loop: {reason}"
                ),
            ));
        }
    }
}

fn validate_link(
    text: &str,
    raw_link: &Spanned<RawLink>,
    defaults: &TuningLayer,
    problems: &mut Problems,
) -> Option<LinkConfig> {
    let raw = raw_link.get_ref();
    let name = raw.name.get_ref().clone();
    if !is_valid_link_name(&name) {
        problems.push(Problem::at(
            raw.name.span(),
            format!(
                "link name {name:?} is not allowed: use 1 to {MAX_LINK_NAME_CHARS} characters \
                 from A-Z, a-z, 0-9, '_', '.' and '-'"
            ),
        ));
    }
    let host = problems.take(non_empty("host", &raw.host));
    let port = problems.take_optional(&raw.port, port_value);
    let client_id = problems.take_optional(&raw.client_id, |id| non_empty("client_id", id));
    let credentials = problems.take(credentials(&raw.username, &raw.password));

    let tuning = validate_tuning(&raw.tuning(), problems)
        .over(defaults)
        .over(&builtin_tuning());
    let (Some(reconnect_min), Some(reconnect_max)) = (&tuning.reconnect_min, &tuning.reconnect_max) else {
        return None;
    };
    if reconnect_min.value > reconnect_max.value {
        let span = match (&reconnect_min.span, &reconnect_max.span) {
            (Some(min), Some(max)) => Some(if min.start > max.start { min } else { max }),
            (min, max) => min.as_ref().or(max.as_ref()),
        };
        problems.push(Problem {
            offset: span.map(|span| span.start).or(Some(raw_link.span().start)),
            message: format!(
                "reconnect_min_ms ({}) is larger than reconnect_max_ms ({}) for link {name:?}",
                reconnect_min.value.as_millis(),
                reconnect_max.value.as_millis()
            ),
        });
    }

    if raw.routes.is_empty() {
        problems.push(Problem::at(
            raw_link.span(),
            format!(
                "link {name:?} has no routes; add at least one [[links.routes]] with direction, \
                 local and remote"
            ),
        ));
    }
    let mut routes = Vec::new();
    for raw_route in &raw.routes {
        if let Some(route) = problems.take(validate_route(text, raw_route)) {
            routes.push((route, raw_route.span()));
        }
    }
    check_bridge_loops(&routes, problems);

    Some(LinkConfig {
        client_id: client_id?.unwrap_or_else(|| format!("ferry-{name}")),
        name,
        host: host?,
        port: port?.unwrap_or(DEFAULT_PORT),
        username: credentials.clone()?.0,
        password: credentials?.1,
        enabled: raw.enabled.unwrap_or(true),
        keepalive: tuning.keepalive?.value,
        reconnect_min: reconnect_min.value,
        reconnect_max: reconnect_max.value,
        inflight: tuning.inflight?,
        queue_max_bytes: tuning.queue_max_bytes?,
        queue_max_messages: tuning.queue_max_messages?,
        overflow: tuning.overflow?,
        message_ttl: tuning.message_ttl?,
        max_message_bytes: tuning.max_message_bytes?,
        ack_timeout: tuning.ack_timeout?,
        routes: routes.into_iter().map(|(route, _)| route).collect(),
    })
}

/// Link names must be unique, and no two connections may share a client id
/// (a broker disconnects the older of two sessions with one id).
fn check_names_and_client_ids(
    text: &str,
    links: &[Spanned<RawLink>],
    hub_client_id_base: &str,
    problems: &mut Problems,
) {
    let mut first_with_name: HashMap<&str, &Spanned<String>> = HashMap::new();
    for link in links {
        let name = &link.get_ref().name;
        if let Some(first) = first_with_name.get(name.get_ref().as_str()) {
            problems.push(Problem::at(
                name.span(),
                format!(
                    "link name {:?} is already used by the link at line {}; each link needs \
                     its own name",
                    name.get_ref(),
                    line_of(text, &first.span())
                ),
            ));
        } else {
            first_with_name.insert(name.get_ref(), name);
        }
    }

    // Every client id in use: (id, link name, line, whose connection).
    let mut hub_ids: HashMap<String, (&str, usize)> = HashMap::new();
    // Each link uses three client ids on the hub: ingest "<base>-<name>",
    // drain "...-pub" and state "...-state". Names like "a" and "a-pub"
    // would share one.
    let mut derived_hub_ids: HashMap<String, (&str, usize)> = HashMap::new();
    for link in links {
        let name = link.get_ref().name.get_ref();
        let line = line_of(text, &link.get_ref().name.span());
        let id = hub_client_id(hub_client_id_base, name);
        for derived in [id.clone(), format!("{id}-pub"), format!("{id}-state")] {
            match derived_hub_ids.get(&derived) {
                Some((other, other_line)) if *other != name => problems.push(Problem::at(
                    link.get_ref().name.span(),
                    format!(
                        "link {name:?} would use the hub client id {derived:?}, which link \
                         {other:?} (line {other_line}) uses too (ferry adds \"-pub\" and \
                         \"-state\" to each link's hub client id); rename one of them"
                    ),
                )),
                _ => {
                    derived_hub_ids.insert(derived, (name, line));
                }
            }
        }
        hub_ids.insert(id, (name, line));
    }
    let mut edge_ids: HashMap<String, (&str, usize)> = HashMap::new();
    for link in links {
        let raw = link.get_ref();
        let name = raw.name.get_ref();
        let (client_id, span, origin) = match &raw.client_id {
            Some(id) => (id.get_ref().clone(), id.span(), ""),
            None => (
                format!("ferry-{name}"),
                raw.name.span(),
                " (the default \"ferry-<name>\")",
            ),
        };
        if let Some((other_name, other_line)) = hub_ids.get(&client_id) {
            problems.push(Problem::at(
                span.clone(),
                format!(
                    "client id {client_id:?}{origin} of link {name:?} is also the hub client id \
                     of link {other_name:?} (line {other_line}), made as \"<hub client_id>-<link \
                     name>\"; two connections with one client id throw each other off, so choose \
                     another client_id"
                ),
            ));
        }
        if let Some((other_name, other_line)) = edge_ids.get(&client_id) {
            if other_name != name {
                problems.push(Problem::at(
                    span,
                    format!(
                        "client id {client_id:?}{origin} of link {name:?} is also used by link \
                         {other_name:?} (line {other_line}); two connections with one client id \
                         throw each other off, so give each link its own client_id"
                    ),
                ));
            }
        } else {
            edge_ids.insert(client_id, (name, line_of(text, &span)));
        }
    }
}

fn validate(text: &str, raw: RawConfig, source: &Path) -> Result<Config, Problem> {
    let mut problems = Problems::default();

    let data_dir = match &raw.data_dir {
        None => {
            problems.push(Problem::nowhere(
                "missing data_dir: set the directory for ferry's queues, like \
                 data_dir = \"/var/lib/ferry\"",
            ));
            None
        }
        Some(dir) => problems.take(non_empty("data_dir", dir)).map(PathBuf::from),
    };

    let store_cache = problems.take_optional(&raw.store_cache, |raw| size_value("store_cache", raw));

    let listen = problems.take(listen_address("metrics", &raw.metrics.listen, DEFAULT_METRICS_LISTEN));
    let admin_listen = problems.take(listen_address("admin", &raw.admin.listen, DEFAULT_ADMIN_LISTEN));

    let hub_raw = &raw.hub;
    let hub_host = problems.take_optional(&hub_raw.host, |host| non_empty("host", host));
    let hub_port = problems.take_optional(&hub_raw.port, port_value);
    let hub_client_id = problems.take_optional(&hub_raw.client_id, |id| non_empty("client_id", id));
    let hub_credentials = problems.take(credentials(&hub_raw.username, &hub_raw.password));
    let state_topic = problems.take(state_topic(&hub_raw.state_topic));

    let defaults = validate_tuning(&raw.defaults, &mut problems);
    if let (Some(min), Some(max)) = (&defaults.reconnect_min, &defaults.reconnect_max) {
        if min.value > max.value {
            problems.push(Problem {
                offset: max.span.as_ref().map(|span| span.start),
                message: format!(
                    "[defaults] reconnect_min_ms ({}) is larger than reconnect_max_ms ({})",
                    min.value.as_millis(),
                    max.value.as_millis()
                ),
            });
        }
    }

    let hub_client_id = hub_client_id.map(|id| id.unwrap_or_else(|| DEFAULT_HUB_CLIENT_ID.to_owned()));
    if let Some(hub_client_id) = &hub_client_id {
        check_names_and_client_ids(text, &raw.links, hub_client_id, &mut problems);
    }
    let links: Vec<Option<LinkConfig>> = raw
        .links
        .iter()
        .map(|link| validate_link(text, link, &defaults, &mut problems))
        .collect();

    if let Some(problem) = problems.first() {
        return Err(problem);
    }
    let incomplete = || Problem::nowhere("invalid configuration");
    let (username, password) = hub_credentials.ok_or_else(incomplete)?;
    Ok(Config {
        source: source.to_path_buf(),
        data_dir: data_dir.ok_or_else(incomplete)?,
        store_cache_bytes: store_cache
            .ok_or_else(incomplete)?
            .unwrap_or(crate::store::DEFAULT_CACHE_BYTES),
        metrics: MetricsConfig {
            listen: listen.ok_or_else(incomplete)?,
        },
        admin: AdminConfig {
            listen: admin_listen.ok_or_else(incomplete)?,
        },
        hub: HubConfig {
            host: hub_host
                .ok_or_else(incomplete)?
                .unwrap_or_else(|| DEFAULT_HUB_HOST.to_owned()),
            port: hub_port.ok_or_else(incomplete)?.unwrap_or(DEFAULT_PORT),
            client_id: hub_client_id.ok_or_else(incomplete)?,
            username,
            password,
            state_topic: state_topic.ok_or_else(incomplete)?,
        },
        links: links.into_iter().collect::<Option<Vec<_>>>().ok_or_else(incomplete)?,
    })
}

/// `[<section>] listen`: an IP address with a port, or "off".
fn listen_address(section: &str, raw: &Option<Spanned<String>>, default: &str) -> Result<Option<SocketAddr>, Problem> {
    match raw {
        None => default
            .parse()
            .map(Some)
            .map_err(|_| Problem::nowhere(format!("built-in {section} address is invalid"))),
        Some(listen) if listen.get_ref() == "off" => Ok(None),
        Some(listen) => listen.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
            Problem::at(
                listen.span(),
                format!(
                    "{section} listen must be an IP address with a port, like \"{default}\", \
                     or \"off\"; got {:?}",
                    listen.get_ref()
                ),
            )
        }),
    }
}

/// `[hub] state_topic`: a topic with exactly one "{link}", or "off".
fn state_topic(raw: &Option<Spanned<String>>) -> Result<Option<String>, Problem> {
    let Some(raw) = raw else {
        return Ok(Some(DEFAULT_STATE_TOPIC.to_owned()));
    };
    let pattern = raw.get_ref();
    if pattern == "off" {
        return Ok(None);
    }
    if pattern.matches("{link}").count() != 1 {
        return Err(Problem::at(
            raw.span(),
            format!(
                "state_topic must contain \"{{link}}\" exactly once (each link needs its own \
                 topic), like \"{DEFAULT_STATE_TOPIC}\", or be \"off\"; got {pattern:?}"
            ),
        ));
    }
    topic::validate_topic(&pattern.replace("{link}", "x"))
        .map(|()| Some(pattern.clone()))
        .map_err(|why| Problem::at(raw.span(), format!("state_topic {pattern:?}: {why}")))
}

impl HubConfig {
    /// The state topic of `link`, when state publishing is on.
    pub fn state_topic_for(&self, link: &str) -> Option<String> {
        self.state_topic.as_ref().map(|pattern| pattern.replace("{link}", link))
    }
}

impl LinkConfig {
    /// Whether `other` would run exactly like this link (only where its
    /// routes sit in the file may differ): a reload leaves such a link alone.
    pub fn same_behaviour(&self, other: &LinkConfig) -> bool {
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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            path: path.to_path_buf(),
            position: None,
            message: format!("cannot read the config file: {error}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `source` names the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
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
        validate(text, raw, source).map_err(error_at)
    }

    /// What `ferry check` prints: everything ferry understood from the file.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!("config    {}", self.source.display()));
        line(format!("data_dir  {}", self.data_dir.display()));
        line(match self.metrics.listen {
            Some(address) => format!("metrics   http://{address}/metrics"),
            None => "metrics   off".to_owned(),
        });
        line(match self.admin.listen {
            Some(address) => format!("admin     http://{address}/v1/links"),
            None => "admin     off".to_owned(),
        });
        let hub = &self.hub;
        line(format!(
            "hub       {}:{}  client id {:?} (each link adds \"-<name>\"){}",
            hub.host,
            hub.port,
            hub.client_id,
            describe_credentials(&hub.username, &hub.password)
        ));
        line(match &hub.state_topic {
            Some(pattern) => format!("state     retained on the hub at {pattern:?}"),
            None => "state     off".to_owned(),
        });
        line(format!(
            "{} link{}",
            self.links.len(),
            if self.links.len() == 1 { "" } else { "s" }
        ));
        for link in &self.links {
            line(String::new());
            line(format!(
                "link {}  {}:{}  {}",
                link.name,
                link.host,
                link.port,
                if link.enabled { "enabled" } else { "disabled" }
            ));
            line(format!(
                "  client ids  edge {:?}, hub {:?}{}",
                link.client_id,
                link.hub_client_id(hub),
                describe_credentials(&link.username, &link.password)
            ));
            line(format!(
                "  keepalive {}s, reconnect {}ms..{}ms, inflight {}, max message {}",
                link.keepalive.as_secs(),
                link.reconnect_min.as_millis(),
                link.reconnect_max.as_millis(),
                link.inflight,
                format_size(u64::from(link.max_message_bytes))
            ));
            line(format!(
                "  queue limit {}, {}, overflow {}, message ttl {}",
                match link.queue_max_bytes {
                    0 => "none in bytes".to_owned(),
                    bytes => format_size(bytes),
                },
                match link.queue_max_messages {
                    0 => "none in messages".to_owned(),
                    count => format!("{count} messages"),
                },
                match link.overflow {
                    Overflow::Block => "block",
                    Overflow::DropOldest => "drop-oldest",
                    Overflow::DropNew => "drop-new",
                },
                match link.message_ttl {
                    None => "none".to_owned(),
                    Some(ttl) => format!("{}s", ttl.as_secs()),
                }
            ));
            for route in &link.routes {
                line(format!("  {route}"));
            }
        }
        out
    }
}

fn describe_credentials(username: &Option<String>, password: &Option<String>) -> String {
    match (username, password) {
        (Some(user), Some(_)) => format!(", username {user:?} with password"),
        (Some(user), None) => format!(", username {user:?}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r##"data_dir = "/var/lib/ferry"
[metrics]
listen = "127.0.0.1:9464"          # Prometheus text at /metrics
[hub]                              # the broker ferry runs beside
host = "127.0.0.1"
port = 1883
client_id = "ferry-hub"            # each link's hub connection uses "<client_id>-<link name>"
[defaults]                         # inherited by every link, overridable per link
keepalive_secs = 30
reconnect_min_ms = 200
reconnect_max_ms = 30000
inflight = 100
queue_max_bytes = "8GiB"
queue_max_messages = 0             # 0: no count limit
overflow = "block"                 # block | drop-oldest | drop-new
message_ttl_secs = 0               # 0: keep until delivered
[[links]]
name = "edge1"
host = "10.1.0.11"
port = 1883
client_id = "ferry-edge1"
enabled = true
[[links.routes]]
direction = "out"                  # hub -> edge
local = "edge/1/down/#"            # filter on the hub
remote = "down/#"                  # where it lands on the edge
qos = 1
[[links.routes]]
direction = "in"                   # edge -> hub
remote = "up/#"                    # filter on the edge
local = "edge/1/up/#"              # where it lands on the hub
qos = 1
"##;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("file.toml"))
    }

    /// Asserts that `text` fails with an error at `line` whose message
    /// contains `needle`; returns the whole error text.
    fn assert_error(text: &str, line: usize, needle: &str) -> String {
        let error = match parse(text) {
            Ok(config) => panic!("expected an error at line {line}, parsed {config:?}"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with(&format!("file.toml:{line}:")),
            "expected line {line}: {error}"
        );
        assert!(error.contains(needle), "expected {needle:?} in: {error}");
        error
    }

    const MINIMAL_LINK: &str = r##"data_dir = "/tmp/q"
[[links]]
name = "e1"
host = "10.0.0.1"
[[links.routes]]
direction = "out"
local = "e1/down/#"
remote = "down/#"
"##;

    #[test]
    fn issue_example_parses_with_the_right_values() {
        let config = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(config.source, Path::new("file.toml"));
        assert_eq!(config.data_dir, Path::new("/var/lib/ferry"));
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.hub.host, "127.0.0.1");
        assert_eq!(config.hub.port, 1883);
        assert_eq!(config.hub.client_id, "ferry-hub");
        assert_eq!(config.hub.username, None);
        assert_eq!(config.links.len(), 1);
        let link = &config.links[0];
        assert_eq!(link.name, "edge1");
        assert_eq!(link.host, "10.1.0.11");
        assert_eq!(link.port, 1883);
        assert_eq!(link.client_id, "ferry-edge1");
        assert_eq!(link.hub_client_id(&config.hub), "ferry-hub-edge1");
        assert!(link.enabled);
        assert_eq!(link.keepalive, Duration::from_secs(30));
        assert_eq!(link.reconnect_min, Duration::from_millis(200));
        assert_eq!(link.reconnect_max, Duration::from_millis(30_000));
        assert_eq!(link.inflight, 100);
        assert_eq!(link.queue_max_bytes, 8 * 1024 * 1024 * 1024);
        assert_eq!(link.queue_max_messages, 0);
        assert_eq!(link.overflow, Overflow::Block);
        assert_eq!(link.message_ttl, None);
        assert_eq!(link.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(link.routes.len(), 2);

        let out = &link.routes[0];
        assert_eq!(out.direction, Direction::Out);
        assert_eq!(out.local, "edge/1/down/#");
        assert_eq!(out.remote, "down/#");
        assert_eq!(out.qos, 1);
        assert_eq!(out.line, 23);
        assert_eq!(out.source_filter(), "edge/1/down/#");
        assert_eq!(out.dest_filter(), "down/#");
        assert_eq!(out.map_to_dest("edge/1/down/a/b").as_deref(), Some("down/a/b"));

        let inbound = &link.routes[1];
        assert_eq!(inbound.direction, Direction::In);
        assert_eq!(inbound.line, 28);
        assert_eq!(inbound.source_filter(), "up/#");
        assert_eq!(inbound.dest_filter(), "edge/1/up/#");
        assert_eq!(inbound.map_to_dest("up/t").as_deref(), Some("edge/1/up/t"));
        assert_eq!(inbound.map_to_dest("down/t"), None);

        assert_eq!(link.routes(Direction::Out).count(), 1);
        assert_eq!(link.routes(Direction::In).next(), Some(inbound));
    }

    #[test]
    fn summary_shows_links_and_routes() {
        let summary = parse(ISSUE_EXAMPLE).unwrap().summary();
        for expected in [
            "data_dir  /var/lib/ferry",
            "metrics   http://127.0.0.1:9464/metrics",
            "hub       127.0.0.1:1883",
            "1 link",
            "link edge1  10.1.0.11:1883  enabled",
            "edge \"ferry-edge1\", hub \"ferry-hub-edge1\"",
            "keepalive 30s, reconnect 200ms..30000ms, inflight 100, max message 16MiB",
            "queue limit 8GiB, none in messages, overflow block, message ttl none",
            "  out  hub:edge/1/down/# -> edge:down/#  qos 1\n",
            "  in   edge:up/# -> hub:edge/1/up/#  qos 1\n",
        ] {
            assert!(summary.contains(expected), "{expected:?} missing from:\n{summary}");
        }
    }

    #[test]
    fn passwords_stay_out_of_summary_and_debug() {
        let text = MINIMAL_LINK.replace(
            "host = \"10.0.0.1\"",
            "host = \"10.0.0.1\"\nusername = \"u\"\npassword = \"hunter2\"",
        ) + "[hub]\nusername = \"h\"\npassword = \"hunter3\"\n";
        let config = parse(&text).unwrap();
        assert_eq!(config.links[0].password.as_deref(), Some("hunter2"));
        assert_eq!(config.hub.password.as_deref(), Some("hunter3"));
        let shown = format!("{}{:?}", config.summary(), config);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("username \"u\" with password"), "{shown}");
    }

    #[test]
    fn defaults_apply_and_links_override_them() {
        let text = r##"data_dir = "q"
[defaults]
keepalive_secs = 10
inflight = 7
overflow = "drop-oldest"
queue_max_bytes = 5000
message_ttl_secs = 60
[[links]]
name = "a"
host = "h"
[[links.routes]]
direction = "out"
local = "a/#"
remote = "#"
[[links]]
name = "b"
host = "h"
port = 1884
client_id = "custom-b"
enabled = false
keepalive_secs = 20
inflight = 9
overflow = "drop-new"
queue_max_bytes = "1 MB"
queue_max_messages = 42
message_ttl_secs = 0
max_message_bytes = "1KiB"
reconnect_min_ms = 1
reconnect_max_ms = 2
[[links.routes]]
direction = "in"
local = "b/up/+"
remote = "+"
qos = 2
"##;
        let config = parse(text).unwrap();
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.hub.client_id, "ferry-hub");
        let a = &config.links[0];
        assert_eq!(a.client_id, "ferry-a");
        assert_eq!(a.port, 1883);
        assert!(a.enabled);
        assert_eq!(a.keepalive, Duration::from_secs(10));
        assert_eq!(a.inflight, 7);
        assert_eq!(a.overflow, Overflow::DropOldest);
        assert_eq!(a.queue_max_bytes, 5000);
        assert_eq!(a.queue_max_messages, 0);
        assert_eq!(a.message_ttl, Some(Duration::from_secs(60)));
        assert_eq!(a.max_message_bytes, 16 << 20);
        assert_eq!(a.reconnect_min, Duration::from_millis(200));
        assert_eq!(a.routes[0].qos, 1);
        let b = &config.links[1];
        assert_eq!(b.client_id, "custom-b");
        assert_eq!(b.port, 1884);
        assert!(!b.enabled);
        assert_eq!(b.keepalive, Duration::from_secs(20));
        assert_eq!(b.inflight, 9);
        assert_eq!(b.overflow, Overflow::DropNew);
        assert_eq!(b.queue_max_bytes, 1_000_000);
        assert_eq!(b.queue_max_messages, 42);
        assert_eq!(b.message_ttl, None);
        assert_eq!(b.max_message_bytes, 1024);
        assert_eq!(b.reconnect_min, Duration::from_millis(1));
        assert_eq!(b.reconnect_max, Duration::from_millis(2));
        assert_eq!(b.routes[0].qos, 2);
        assert_eq!(b.routes[0].map_to_dest("x").as_deref(), Some("b/up/x"));
    }

    #[test]
    fn metrics_can_be_turned_off_or_moved() {
        let off = parse(&format!("{MINIMAL_LINK}[metrics]\nlisten = \"off\"\n")).unwrap();
        assert_eq!(off.metrics.listen, None);
        assert!(off.summary().contains("metrics   off"));
        let moved = parse(&format!("{MINIMAL_LINK}[metrics]\nlisten = \"0.0.0.0:1\"\n")).unwrap();
        assert_eq!(moved.metrics.listen, Some("0.0.0.0:1".parse().unwrap()));
        assert_error(
            "data_dir = \"q\"\n[metrics]\nlisten = \"localhost\"\n",
            3,
            "IP address with a port",
        );
    }

    #[test]
    fn no_links_is_allowed() {
        let config = parse("data_dir = \"q\"\n").unwrap();
        assert!(config.links.is_empty());
        assert!(config.summary().contains("0 links"));
    }

    #[test]
    fn sizes_parse_with_units() {
        let cases = [
            ("0", 0),
            ("100", 100),
            ("100B", 100),
            ("1KB", 1_000),
            ("1kb", 1_000),
            ("2MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("1KiB", 1024),
            ("16MiB", 16 << 20),
            ("8GiB", 8 << 30),
            ("8 GiB", 8 << 30),
            (" 2TiB ", 2 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "GiB", "1.5GiB", "-1", "8 gigs", "1K", "99999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("8 gigs").unwrap_err().contains("KiB, MiB, GiB, TiB"));
        assert_eq!(format_size(8 << 30), "8GiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1001), "1001B");
        assert_eq!(format_size(0), "0B");
    }

    #[test]
    fn store_cache_takes_a_size_and_defaults_to_16_mib() {
        assert_eq!(parse("data_dir = \"q\"\n").unwrap().store_cache_bytes, 16 << 20);
        let config = parse("data_dir = \"q\"\nstore_cache = \"64MiB\"\n").unwrap();
        assert_eq!(config.store_cache_bytes, 64 << 20);
        assert_error("data_dir = \"q\"\nstore_cache = \"lots\"\n", 2, "store_cache");
    }

    #[test]
    fn missing_data_dir_is_reported_without_a_line() {
        let error = parse("[hub]\nport = 1\n").unwrap_err();
        assert_eq!(error.line(), None);
        assert!(error.to_string().starts_with("file.toml: missing data_dir"), "{error}");
    }

    #[test]
    fn load_names_the_path_when_the_file_cannot_be_read() {
        let error = Config::load(Path::new("/nonexistent/ferry.toml")).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("/nonexistent/ferry.toml: cannot read"), "{text}");
    }

    #[test]
    fn toml_errors_name_the_line() {
        assert_error("data_dir = \"q\"\nbogus = 1\n", 2, "unknown field `bogus`");
        assert_error(
            &format!("{MINIMAL_LINK}colour = \"red\"\n"),
            9,
            "unknown field `colour`",
        );
        assert_error("data_dir = \"q\"\n[hub]\nhots = \"x\"\n", 3, "unknown field `hots`");
        assert_error("data_dir = \"q\"\n[defaults]\nkeepalive = 3\n", 3, "unknown field");
        assert_error("data_dir = \"q\"\n[metrics]\nport = 3\n", 3, "unknown field");
        assert_error("data_dir = \"q\"\n[hub]\nport = \"x\"\n", 3, "expected an integer");
        assert_error("data_dir = \"q\"\n[[links]]\nhost = \"h\"\n", 2, "missing field `name`");
        assert_error("data_dir = \"q\"\ndata_dir = \"r\"\n", 2, "duplicate key");
        assert_error("data_dir = \"q\n", 1, "");
        assert_error(
            &MINIMAL_LINK.replace("remote = \"down/#\"", "remote = \"down/#\"\nqqos = 1"),
            9,
            "unknown field `qqos`",
        );
        assert_error("data_dir = \"q\"\n[defaults]\nqueue_max_bytes = true\n", 3, "a size");
    }

    /// MINIMAL_LINK with `old` replaced by `new` (which must be present).
    fn minimal_with(old: &str, new: &str) -> String {
        assert!(MINIMAL_LINK.contains(old), "{old}");
        MINIMAL_LINK.replacen(old, new, 1)
    }

    #[test]
    fn bad_filters_name_the_line() {
        assert_error(
            &minimal_with("local = \"e1/down/#\"", "local = \"e1/#/down\""),
            7,
            "local: `#` must be the last level, alone: \"e1/#/down\"",
        );
        assert_error(
            &minimal_with("remote = \"down/#\"", "remote = \"do+wn/#\""),
            8,
            "remote: `+` must fill a whole level",
        );
        assert_error(
            &minimal_with("remote = \"down/#\"", "remote = \"\""),
            8,
            "cannot be empty",
        );
        assert_error(
            &minimal_with("remote = \"down/#\"", "remote = \"down/+\""),
            8,
            "must have the same wildcard tail",
        );
    }

    #[test]
    fn route_values_are_checked() {
        assert_error(
            &minimal_with("direction = \"out\"", "direction = \"both\""),
            6,
            "direction must be \"out\" (hub -> edge) or \"in\" (edge -> hub), got \"both\"",
        );
        assert_error(
            &format!("{MINIMAL_LINK}qos = 3\n"),
            9,
            "qos must be between 0 and 2, got 3",
        );
        assert_error(&format!("{MINIMAL_LINK}qos = -1\n"), 9, "qos must be between 0 and 2");
        assert_error(
            "data_dir = \"q\"\n[[links]]\nname = \"e\"\nhost = \"h\"\n",
            2,
            "link \"e\" has no routes",
        );
    }

    #[test]
    fn link_names_are_checked() {
        for bad in ["", "has space", "slash/", "ü", &"x".repeat(65)] {
            assert_error(
                &minimal_with("name = \"e1\"", &format!("name = {bad:?}")),
                3,
                "is not allowed: use 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'",
            );
        }
        let ok = minimal_with("name = \"e1\"", &format!("name = \"{}\"", "A-z_0.9".repeat(9)));
        assert!(parse(&ok).is_ok());
    }

    fn two_links(first_extra: &str, second_name: &str, second_extra: &str) -> String {
        format!(
            r##"data_dir = "q"
[[links]]
name = "a"
host = "h"
{first_extra}
[[links.routes]]
direction = "out"
local = "a/#"
remote = "#"
[[links]]
name = "{second_name}"
host = "h"
{second_extra}
[[links.routes]]
direction = "out"
local = "b/#"
remote = "#"
"##
        )
    }

    #[test]
    fn duplicate_link_names_name_both_lines() {
        let error = assert_error(&two_links("", "a", ""), 11, "already used by the link at line 3");
        assert!(error.contains("\"a\""), "{error}");
    }

    #[test]
    fn client_ids_must_not_collide() {
        // Two explicit edge client ids.
        assert_error(
            &two_links("client_id = \"same\"", "b", "client_id = \"same\""),
            13,
            "is also used by link \"a\" (line 5)",
        );
        // An explicit id equal to the other's default "ferry-<name>".
        assert_error(
            &two_links("", "b", "client_id = \"ferry-a\""),
            13,
            "also used by link \"a\"",
        );
        // An edge client id equal to a derived hub client id.
        assert_error(
            &two_links("", "b", "client_id = \"ferry-hub-a\""),
            13,
            "is also the hub client id of link \"a\" (line 3)",
        );
        // The default edge id of link "hub-x" is "ferry-hub-x", the hub id of link "x".
        assert_error(
            &two_links("", "hub-x", "").replace("name = \"a\"", "name = \"x\""),
            11,
            "(the default \"ferry-<name>\")",
        );
    }

    #[test]
    fn link_and_hub_values_are_checked() {
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"10.0.0.1\"\nport = 0"),
            5,
            "port must be between 1 and 65535, got 0",
        );
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"10.0.0.1\"\nport = 70000"),
            5,
            "port must be between 1 and 65535",
        );
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"\""),
            4,
            "host cannot be empty",
        );
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"h\"\nclient_id = \"\""),
            5,
            "client_id cannot be empty",
        );
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"h\"\npassword = \"p\""),
            5,
            "password is set without username",
        );
        assert_error(
            &format!("{MINIMAL_LINK}[hub]\nport = 0\n"),
            10,
            "port must be between 1 and 65535",
        );
        assert_error(
            &format!("{MINIMAL_LINK}[hub]\nclient_id = \" \"\n"),
            10,
            "client_id cannot be empty",
        );
        assert_error(
            &format!("{MINIMAL_LINK}[hub]\npassword = \"x\"\n"),
            10,
            "without username",
        );
        assert_error("data_dir = \"\"\n", 1, "data_dir cannot be empty");
    }

    /// Each tuning key with a bad value, checked both in [defaults] and in a link.
    #[test]
    fn tuning_values_are_checked_in_defaults_and_links() {
        let cases = [
            (
                "keepalive_secs = 0",
                "keepalive_secs must be between 5 and 65535 seconds, got 0",
            ),
            ("keepalive_secs = 65536", "keepalive_secs must be between 5 and 65535"),
            ("inflight = 0", "inflight must be between 1 and 65535"),
            ("reconnect_min_ms = 0", "reconnect_min_ms must be between 1 and"),
            ("reconnect_max_ms = -5", "reconnect_max_ms must be between 1 and"),
            (
                "queue_max_bytes = \"8 gigs\"",
                "queue_max_bytes: \"8 gigs\" has an unknown unit",
            ),
            ("queue_max_bytes = -1", "queue_max_bytes cannot be negative"),
            ("queue_max_messages = -1", "queue_max_messages must be between 0"),
            ("overflow = \"drop\"", "overflow must be \"block\""),
            ("message_ttl_secs = -1", "message_ttl_secs must be between 0"),
            (
                "max_message_bytes = 1023",
                "max_message_bytes must be between 1KiB and 256MiB, got 1023B",
            ),
            (
                "max_message_bytes = \"257MiB\"",
                "max_message_bytes must be between 1KiB and 256MiB, got 257MiB",
            ),
            ("max_message_bytes = \"x\"", "max_message_bytes: \"x\" is not a size"),
        ];
        for (setting, message) in cases {
            assert_error(&format!("data_dir = \"q\"\n[defaults]\n{setting}\n"), 3, message);
            assert_error(
                &minimal_with("host = \"10.0.0.1\"", &format!("host = \"h\"\n{setting}")),
                5,
                message,
            );
        }
    }

    #[test]
    fn reconnect_min_above_max_is_an_error() {
        assert_error(
            "data_dir = \"q\"\n[defaults]\nreconnect_min_ms = 500\nreconnect_max_ms = 400\n",
            4,
            "reconnect_min_ms (500) is larger than reconnect_max_ms (400)",
        );
        // A link's minimum against the built-in maximum of 30000.
        assert_error(
            &minimal_with("host = \"10.0.0.1\"", "host = \"h\"\nreconnect_min_ms = 40000"),
            5,
            "reconnect_min_ms (40000) is larger than reconnect_max_ms (30000) for link \"e1\"",
        );
        // A link's maximum against the [defaults] minimum.
        let text = format!(
            "[defaults]\nreconnect_min_ms = 1000\n{}",
            minimal_with("host = \"10.0.0.1\"", "host = \"h\"\nreconnect_max_ms = 999")
        )
        .replacen("data_dir = \"/tmp/q\"\n", "", 1);
        assert_error(
            &format!("data_dir = \"q\"\n{text}"),
            7,
            "(1000) is larger than reconnect_max_ms (999)",
        );
    }

    fn with_routes(routes: &str) -> String {
        format!("data_dir = \"q\"\n[[links]]\nname = \"e\"\nhost = \"h\"\n{routes}")
    }

    #[test]
    fn bridge_loops_are_rejected_at_the_later_route() {
        // Out writes "x/#" on the edge; in reads "x/+" back there.
        let edge_loop = with_routes(
            r##"[[links.routes]]
direction = "out"
local = "hub/out/#"
remote = "x/#"
[[links.routes]]
direction = "in"
remote = "x/+"
local = "hub/in/+"
"##,
        );
        assert_error(&edge_loop, 9, "route at line 5 and route at line 9 form a bridge loop");
        assert_error(&edge_loop, 9, "writes \"x/#\" on the edge");

        // In writes "hub/#" on the hub; out (later in the file) reads "hub/a/#" there.
        let hub_loop = with_routes(
            r##"[[links.routes]]
direction = "in"
remote = "up/#"
local = "hub/#"
[[links.routes]]
direction = "out"
local = "hub/a/#"
remote = "down/#"
"##,
        );
        assert_error(&hub_loop, 9, "route at line 5 and route at line 9 form a bridge loop");
        assert_error(&hub_loop, 9, "writes \"hub/#\" on the hub");

        // A full mirror of everything is the classic loop.
        assert_error(
            &with_routes(
                "[[links.routes]]\ndirection = \"out\"\nlocal = \"#\"\nremote = \"#\"\n\
                 [[links.routes]]\ndirection = \"in\"\nlocal = \"#\"\nremote = \"#\"\n",
            ),
            9,
            "bridge loop",
        );
    }

    #[test]
    fn disjoint_routes_and_same_direction_overlaps_are_fine() {
        let text = with_routes(
            r##"[[links.routes]]
direction = "out"
local = "hub/#"
remote = "down/#"
[[links.routes]]
direction = "out"
local = "hub/a/#"
remote = "down2/#"
[[links.routes]]
direction = "in"
remote = "up/#"
local = "edge/up/#"
"##,
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.links[0].routes.len(), 3);
        assert_eq!(
            config.links[0]
                .routes
                .iter()
                .map(|route| route.line)
                .collect::<Vec<_>>(),
            vec![5, 9, 13]
        );
    }

    #[test]
    fn the_first_problem_in_the_file_is_reported() {
        // Line 5 (bad port) comes before line 8 (bad filter), though links
        // are checked field by field.
        let text = minimal_with("host = \"10.0.0.1\"", "host = \"h\"\nport = 0")
            .replace("local = \"e1/down/#\"", "local = \"a/#/b\"");
        assert_error(&text, 5, "port");
        // [defaults] placed after a link: the link's error comes first.
        let text = format!("{MINIMAL_LINK}qos = 9\n[defaults]\ninflight = 0\n");
        assert_error(&text, 9, "qos");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("ü = x", 4), (1, 4));
        assert_eq!(line_and_column("ab", 99), (1, 3));
        let error = parse("data_dir = \"q\"\n[hub]\n  port = 0\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "file.toml:3:10: port must be between 1 and 65535, got 0"
        );
        assert_eq!(error.line(), Some(3));
    }
}
