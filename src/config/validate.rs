//! Validation: turns the raw file into a [`Config`] or the first problem in
//! it. Checks each link's tuning over `[defaults]` over the built-in
//! defaults, each route (filters, prefix mapping or topic template, QoS),
//! bridge loops between a link's routes, and that link names and every
//! client id ferry derives are unique.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{line_of, Problem};
use super::raw::{RawConfig, RawLink, RawRoute, RawTuning};
use super::values::{
    credentials, format_size, integer_in, is_valid_link_name, listen_address, max_bytes_value, name_value, non_empty,
    parse_drain_bytes_rate, parse_drain_rate, port_value, rate_value, size_value, state_topic,
};
use super::{
    AdminConfig, Config, HubConfig, LinkConfig, MetricsConfig, Route, DEFAULT_ACK_TIMEOUT_SECS, DEFAULT_ADMIN_LISTEN,
    DEFAULT_HUB_HOST, DEFAULT_INFLIGHT, DEFAULT_KEEPALIVE_SECS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_METRICS_LISTEN,
    DEFAULT_PORT, DEFAULT_QOS, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_RECONNECT_MAX_MS, DEFAULT_RECONNECT_MIN_MS,
    MAX_LINK_NAME_CHARS, MAX_MESSAGE_BYTES_LIMIT, MIN_MESSAGE_BYTES_LIMIT,
};
use crate::bridge::pace::Rates;
use crate::names::{self, Direction, Protocol};
use crate::store::{MaxBytes, Overflow};
use crate::topic::{self, TopicMap};

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
    drain_rate: Option<Option<u64>>,
    drain_bytes_rate: Option<Option<u64>>,
    ack_timeout: Option<Duration>,
    protocol: Option<Protocol>,
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
            drain_rate: self.drain_rate.or(under.drain_rate),
            drain_bytes_rate: self.drain_bytes_rate.or(under.drain_bytes_rate),
            ack_timeout: self.ack_timeout.or(under.ack_timeout),
            protocol: self.protocol.or(under.protocol),
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
        drain_rate: Some(None),
        drain_bytes_rate: Some(None),
        ack_timeout: Some(Duration::from_secs(DEFAULT_ACK_TIMEOUT_SECS)),
        protocol: Some(Protocol::default()),
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
    layer.overflow = problems.take_optional(&raw.overflow, name_value).flatten();
    layer.protocol = problems.take_optional(&raw.protocol, name_value).flatten();
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
    layer.ack_timeout = problems
        .take_optional(&raw.ack_timeout_secs, |raw| {
            let secs = integer_in("ack_timeout_secs", raw, 1..=86_400, " seconds")?;
            Ok(Duration::from_secs(secs))
        })
        .flatten();
    layer.drain_rate = problems
        .take_optional(&raw.drain_rate, |raw| rate_value("drain_rate", raw, parse_drain_rate))
        .flatten();
    layer.drain_bytes_rate = problems
        .take_optional(&raw.drain_bytes_rate, |raw| {
            rate_value("drain_bytes_rate", raw, parse_drain_bytes_rate)
        })
        .flatten();
    layer
}

/// Validates one route alone: its direction, filters, mapping (a prefix
/// mapping or a template on the side it writes) and QoS.
fn validate_route(text: &str, raw: &Spanned<RawRoute>, link: &str) -> Result<Route, Problem> {
    let route = raw.get_ref();
    let direction: Direction = name_value(&route.direction)?;
    let ((source_key, source), (dest_key, dest)) = match direction {
        Direction::Out => (("local", &route.local), ("remote", &route.remote)),
        Direction::In => (("remote", &route.remote), ("local", &route.local)),
    };
    let dest_is_template = topic::is_template(dest.get_ref());
    for (key, filter) in [("local", &route.local), ("remote", &route.remote)] {
        if dest_is_template && key == dest_key {
            continue;
        }
        topic::validate_filter(filter.get_ref())
            .map_err(|error| Problem::at(filter.span(), format!("{key}: {error}")))?;
    }
    if let Some(placeholder) = topic::find_placeholder(source.get_ref()) {
        return Err(Problem::at(
            source.span(),
            format!(
                "{source_key}: {placeholder} is a template placeholder, but {source_key} is the filter this \
                 {direction} route reads; a template goes on the side it writes ({dest_key})",
                direction = direction.as_str()
            ),
        ));
    }
    let source_to_dest = if dest_is_template {
        TopicMap::template(source.get_ref(), dest.get_ref(), link)
            .map_err(|error| Problem::at(dest.span(), format!("{dest_key}: {error}")))?
    } else {
        TopicMap::new(source.get_ref(), dest.get_ref()).map_err(|error| {
            let later = if route.local.span().start > route.remote.span().start {
                route.local.span()
            } else {
                route.remote.span()
            };
            Problem::at(later, format!("local and remote: {error}"))
        })?
    };
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
/// forth between hub and edge forever: what one writes (as a filter, see
/// [`Route::written_filter`]) overlaps what the other reads on that broker.
fn check_bridge_loops(routes: &[(Route, Range<usize>)], problems: &mut Problems) {
    for (out_route, out_span) in routes.iter().filter(|(r, _)| r.direction == Direction::Out) {
        for (in_route, in_span) in routes.iter().filter(|(r, _)| r.direction == Direction::In) {
            let reason = if topic::filters_overlap(out_route.written_filter(), &in_route.remote) {
                format!(
                    "the out route writes {} on the edge and the in route reads {:?} there, \
                     so messages would come straight back; make the two remote filters disjoint",
                    describe_written(out_route),
                    in_route.remote
                )
            } else if topic::filters_overlap(in_route.written_filter(), &out_route.local) {
                format!(
                    "the in route writes {} on the hub and the out route reads {:?} there, \
                     so messages would go straight back; make the two local filters disjoint",
                    describe_written(in_route),
                    out_route.local
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

/// What a route writes, for messages: its destination filter, or its
/// template and the filter of every topic the template can make.
fn describe_written(route: &Route) -> String {
    if route.is_template() {
        format!(
            "{:?} (any topic matching {:?})",
            route.dest_filter(),
            route.written_filter()
        )
    } else {
        format!("{:?}", route.dest_filter())
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
        if let Some(route) = problems.take(validate_route(text, raw_route, &name)) {
            routes.push((route, raw_route.span()));
        }
    }
    check_bridge_loops(&routes, problems);

    Some(LinkConfig {
        client_id: client_id?.unwrap_or_else(|| names::default_edge_client_id(&name)),
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
        protocol: tuning.protocol?,
        pace: Rates {
            drain_rate: tuning.drain_rate?,
            drain_bytes_rate: tuning.drain_bytes_rate?,
        },
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
        let id = names::hub_client_id(hub_client_id_base, name);
        for derived in [id.clone(), names::drain_client_id(&id), names::state_client_id(&id)] {
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
                names::default_edge_client_id(name),
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

pub(super) fn validate(text: &str, raw: RawConfig, source: &Path) -> Result<Config, Problem> {
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
    let store_max = problems.take_optional(&raw.store_max_bytes, |raw| max_bytes_value("store_max_bytes", raw));
    let store_reserve = problems.take_optional(&raw.store_reserve_bytes, |raw| size_value("store_reserve_bytes", raw));
    if let (Some(Some(MaxBytes::Bytes(max))), Some(Some(reserve)), Some(raw_reserve)) =
        (store_max, store_reserve, &raw.store_reserve_bytes)
    {
        if reserve >= max {
            problems.push(Problem::at(
                raw_reserve.span(),
                format!(
                    "store_reserve_bytes ({}) must be smaller than store_max_bytes ({}): the reserve is the \
                     part of the budget kept for links that are not growing",
                    format_size(reserve),
                    format_size(max)
                ),
            ));
        }
    }

    let listen = problems.take(listen_address("metrics", &raw.metrics.listen, DEFAULT_METRICS_LISTEN));
    let admin_listen = problems.take(listen_address("admin", &raw.admin.listen, DEFAULT_ADMIN_LISTEN));

    let hub_raw = &raw.hub;
    let hub_host = problems.take_optional(&hub_raw.host, |host| non_empty("host", host));
    let hub_port = problems.take_optional(&hub_raw.port, port_value);
    let hub_client_id = problems.take_optional(&hub_raw.client_id, |id| non_empty("client_id", id));
    let hub_credentials = problems.take(credentials(&hub_raw.username, &hub_raw.password));
    let state_topic = problems.take(state_topic(&hub_raw.state_topic));

    let defaults = validate_tuning(&raw.defaults, &mut problems);
    let hub_protocol: Option<Protocol> = problems.take_optional(&hub_raw.protocol, name_value).flatten();
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

    let hub_client_id = hub_client_id.map(|id| id.unwrap_or_else(|| names::DEFAULT_HUB_CLIENT_ID.to_owned()));
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
        store_max_bytes: store_max.ok_or_else(incomplete)?.unwrap_or(MaxBytes::Auto),
        store_reserve_bytes: store_reserve.ok_or_else(incomplete)?,
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
            protocol: hub_protocol.or(defaults.protocol).unwrap_or_default(),
        },
        links: links.into_iter().collect::<Option<Vec<_>>>().ok_or_else(incomplete)?,
    })
}
