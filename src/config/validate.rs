//! Validation: turns the raw file into a [`Config`] or the first problem in
//! it. Checks each link's tuning over `[defaults]` over the built-in
//! defaults, each route (filters, prefix mapping or topic template, QoS),
//! bridge loops between a link's routes and between the routes of links to
//! one edge broker, that link names and every client id ferry derives are
//! unique and usable, credentials (with `secrets`), and that a non-loopback
//! admin API has a token.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{line_of, Problem};
use super::hosts::addresses;
use super::raw::{RawConfig, RawFleet, RawLink, RawRoute, RawTls, RawTuning};
use super::secrets::{Passwords, SecretReader};
use super::tls::tls_value;
use super::values::{
    client_id_value, format_size, host_value, integer_in, is_valid_link_name, listen_address, max_bytes_value,
    name_value, non_empty, parse_drain_bytes_rate, parse_drain_rate, port_value, rate_value, size_value, state_topic,
};
use super::{
    AdminConfig, Config, HubConfig, LinkConfig, MetricsConfig, Route, DEFAULT_ACK_TIMEOUT_SECS, DEFAULT_ADMIN_LISTEN,
    DEFAULT_FAILBACK_SECS, DEFAULT_HUB_HOST, DEFAULT_INFLIGHT, DEFAULT_KEEPALIVE_SECS, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_METRICS_LISTEN, DEFAULT_PORT, DEFAULT_QOS, DEFAULT_QUEUE_MAX_BYTES, DEFAULT_RECONNECT_MAX_MS,
    DEFAULT_RECONNECT_MIN_MS, DEFAULT_TLS_PORT, MAX_LINK_NAME_CHARS, MAX_MESSAGE_BYTES_LIMIT, MIN_MESSAGE_BYTES_LIMIT,
};
use crate::bridge::pace::Rates;
use crate::fleet::{self, FleetConfig, ShardSetting};
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
    failback: Option<Duration>,
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
            failback: self.failback.or(under.failback),
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
        failback: Some(Duration::from_secs(DEFAULT_FAILBACK_SECS)),
        protocol: Some(Protocol::default()),
    }
}

/// Collects problems so the one reported is the first in the file, whatever
/// order the checks run in; and the warnings, which refuse nothing.
#[derive(Default)]
struct Problems(Vec<Problem>, Vec<Problem>);

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

    fn warnings(&mut self) -> &mut Vec<Problem> {
        &mut self.1
    }

    /// The problem earliest in the file; problems without a place come last.
    fn first(&mut self) -> Option<Problem> {
        std::mem::take(&mut self.0)
            .into_iter()
            .min_by_key(|problem| problem.offset.unwrap_or(usize::MAX))
    }

    /// The warnings in the order of the file.
    fn into_warnings(self) -> Vec<Problem> {
        let mut warnings = self.1;
        warnings.sort_by_key(|problem| problem.offset.unwrap_or(usize::MAX));
        warnings
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
    layer.failback = problems.take_optional(&raw.failback_secs, failback_value).flatten();
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
    for (key, filter) in [(source_key, source), (dest_key, dest)] {
        let Some(shared) = filter.get_ref().strip_prefix("$share/") else {
            continue;
        };
        let message = if key == source_key {
            let plain = shared.split_once('/').map_or("", |(_, plain)| plain);
            format!(
                "{key}: {:?} is a shared subscription, which ferry does not support: the broker would hand \
                 each message to only one member of the group, and ferry must see them all to queue them in \
                 order; subscribe to the plain filter {plain:?}",
                filter.get_ref()
            )
        } else {
            format!(
                "{key}: {:?} starts with \"$share/\", which names a shared subscription, not a topic \
                 a route can write to",
                filter.get_ref()
            )
        };
        return Err(Problem::at(filter.span(), message));
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

/// A validated route with where it is in the file and whose it is.
struct PlacedRoute<'a> {
    route: &'a Route,
    span: &'a Range<usize>,
    link: &'a str,
}

/// Why `out_route` and `in_route` would pass messages back and forth between
/// the hub and one edge broker forever, if they do: what one writes (as a
/// filter, see [`Route::written_filter`]) overlaps what the other reads on
/// that broker.
fn loop_reason(out_route: &Route, in_route: &Route) -> Option<String> {
    if topic::filters_overlap(out_route.written_filter(), &in_route.remote) {
        Some(format!(
            "the out route writes {} on the edge and the in route reads {:?} there, \
             so messages would come straight back; make the two remote filters disjoint",
            describe_written(out_route),
            in_route.remote
        ))
    } else if topic::filters_overlap(in_route.written_filter(), &out_route.local) {
        Some(format!(
            "the in route writes {} on the hub and the out route reads {:?} there, \
             so messages would go straight back; make the two local filters disjoint",
            describe_written(in_route),
            out_route.local
        ))
    } else {
        None
    }
}

/// Reports every `out` route of `outs` and `in` route of `ins` that form a
/// loop, at the later of the two; `through` says which broker they share
/// when the routes belong to two links.
fn check_loops_between(outs: &[PlacedRoute], ins: &[PlacedRoute], through: Option<&str>, problems: &mut Problems) {
    for out in outs.iter().filter(|r| r.route.direction == Direction::Out) {
        for inr in ins.iter().filter(|r| r.route.direction == Direction::In) {
            let Some(reason) = loop_reason(out.route, inr.route) else {
                continue;
            };
            let (earlier, later) = if out.span.start < inr.span.start {
                (out, inr)
            } else {
                (inr, out)
            };
            let message = match through {
                None => format!(
                    "route at line {} and route at line {} form a bridge loop: {reason}",
                    earlier.route.line, later.route.line
                ),
                Some(broker) => format!(
                    "route at line {} (link {:?}) and route at line {} (link {:?}) form a bridge loop through \
                     the edge broker {broker}, which both links connect to: {reason}",
                    earlier.route.line, earlier.link, later.route.line, later.link
                ),
            };
            problems.push(Problem::at(later.span.clone(), message));
        }
    }
}

/// Bridge loops between the routes of one link.
fn check_bridge_loops(link: &str, routes: &[(Route, Range<usize>)], problems: &mut Problems) {
    let placed: Vec<PlacedRoute> = routes
        .iter()
        .map(|(route, span)| PlacedRoute { route, span, link })
        .collect();
    check_loops_between(&placed, &placed, None, problems);
}

/// The edge broker addresses a link connects to, for telling which links
/// share a broker (host names compared without case; "localhost" and
/// "127.0.0.1" count as two).
fn edge_addresses(link: &LinkConfig) -> Vec<(String, u16)> {
    vec![(link.host.to_ascii_lowercase(), link.port)]
}

/// Two links to one edge broker act on it like one link: an out route of
/// one and an in route of the other must not feed each other either, on the
/// edge or on the hub.
fn check_loops_across_links(links: &[(LinkConfig, Vec<Range<usize>>)], problems: &mut Problems) {
    for (i, first) in links.iter().enumerate() {
        for second in links.iter().skip(i + 1) {
            let first_addresses = edge_addresses(&first.0);
            let Some((host, port)) = edge_addresses(&second.0)
                .into_iter()
                .find(|address| first_addresses.contains(address))
            else {
                continue;
            };
            let broker = format!("{host}:{port}");
            let (a, b) = (placed_routes(first), placed_routes(second));
            check_loops_between(&a, &b, Some(&broker), problems);
            check_loops_between(&b, &a, Some(&broker), problems);
        }
    }
}

fn placed_routes((link, spans): &(LinkConfig, Vec<Range<usize>>)) -> Vec<PlacedRoute<'_>> {
    link.routes
        .iter()
        .zip(spans)
        .map(|(route, span)| PlacedRoute {
            route,
            span,
            link: &link.name,
        })
        .collect()
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

/// One link, with the spans of its routes (for the checks across links).
fn validate_link(
    reader: &SecretReader,
    raw_link: &Spanned<RawLink>,
    defaults: &TuningLayer,
    defaults_tls: Option<&Spanned<RawTls>>,
    problems: &mut Problems,
) -> Option<(LinkConfig, Vec<Range<usize>>)> {
    let text = reader.text;
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
    let host = problems.take_optional(&raw.host, host_value);
    let port = problems.take_optional(&raw.port, port_value);
    let client_id = problems.take_optional(&raw.client_id, client_id_value);
    let credentials = reader.credentials(raw.credentials(), problems.warnings());
    let credentials = problems.take(credentials);
    let tls = problems.take_optional(&raw.tls.as_ref().or(defaults_tls), |table| {
        tls_value(&format!("link {name:?}"), table, reader.config_dir)
    });

    let addresses = match (&host, &port, &tls) {
        (Some(_), Some(port), Some(tls)) => problems.take(addresses(
            &format!("link {name:?}"),
            raw.host.as_ref(),
            &raw.hosts,
            port.unwrap_or(default_port(&Some(tls.as_ref()))),
            None,
            raw_link.span(),
        )),
        _ => None,
    };

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
    check_bridge_loops(&name, &routes, problems);

    let credentials = credentials?;
    let addresses = addresses?;
    let spans = routes.iter().map(|(_, span)| span.clone()).collect();
    let link = LinkConfig {
        client_id: client_id?.unwrap_or_else(|| names::default_edge_client_id(&name)),
        name,
        host: addresses.first()?.0.clone(),
        port: addresses.first()?.1,
        addresses,
        failback: tuning.failback?,
        tls: tls?,
        username: credentials.username,
        password: credentials.password,
        password_source: credentials.source,
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
    };
    Some((link, spans))
}

/// `failback_secs`: how often the first of `hosts` is probed while on another.
fn failback_value(raw: &Spanned<i64>) -> Result<Duration, Problem> {
    Ok(Duration::from_secs(integer_in(
        "failback_secs",
        raw,
        1..=86_400,
        " seconds",
    )?))
}

/// MQTT's port: 8883 with TLS, 1883 without (the `Option` of `take_optional`).
fn default_port<T>(tls: &Option<Option<T>>) -> u16 {
    match tls {
        Some(Some(_)) => DEFAULT_TLS_PORT,
        _ => DEFAULT_PORT,
    }
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

    let mut seen: HashMap<String, (&str, usize, &'static str)> = HashMap::new();
    for link in links {
        let raw = link.get_ref();
        let name = raw.name.get_ref().as_str();
        let ids = client_ids_of(raw, hub_client_id_base);
        for id in &ids {
            if id.id.len() > MAX_CLIENT_ID_BYTES {
                problems.push(Problem::at(
                    id.span.clone(),
                    format!(
                        "the {} of link {name:?}{} is {} bytes; MQTT allows at most 65,535",
                        id.what,
                        id.origin,
                        id.id.len()
                    ),
                ));
                continue;
            }
            match seen.get(&id.id) {
                // A link listed twice uses its own ids twice: reported above as a duplicate name.
                Some((other, _, other_what)) if *other == name && *other_what == id.what => {}
                Some((other, other_line, other_what)) => problems.push(Problem::at(
                    id.span.clone(),
                    format!(
                        "client id {:?}{} of link {name:?} (its {}) is also used by link {other:?} \
                         (line {other_line}) as its {other_what}; two connections with one client id throw \
                         each other off, so {}",
                        id.id,
                        id.origin,
                        id.what,
                        if id.on_hub {
                            "rename one of the links (ferry makes the hub client ids \"<[hub] client_id>-<link \
                             name>\", with \"-pub\" and \"-state\" added)"
                        } else {
                            "give each link its own client_id (ferry adds \"-pub\" for the drain connection)"
                        }
                    ),
                )),
                None => {
                    seen.insert(id.id.clone(), (name, line_of(text, &id.span), id.what));
                }
            }
        }
        for on_hub in [true, false] {
            let longest = ids.iter().filter(|id| id.on_hub == on_hub).max_by_key(|id| id.id.len());
            if let Some(id) = longest.filter(|id| id.id.len() > MQTT311_CLIENT_ID_BYTES) {
                problems.warnings().push(Problem::at(
                    id.span.clone(),
                    format!(
                        "client id {:?} (the {} of link {name:?}) is {} bytes: MQTT 3.1.1 brokers may refuse \
                         client ids over 23 bytes (MQTT 5 brokers, mosquitto among them, accept longer ones); \
                         if this {} speaks only 3.1.1, {}",
                        id.id,
                        id.what,
                        id.id.len(),
                        if on_hub { "hub" } else { "edge broker" },
                        if on_hub {
                            "shorten [hub] client_id or the link's name"
                        } else {
                            "set a shorter client_id"
                        }
                    ),
                ));
            }
        }
    }
}

/// Longest client id an MQTT 3.1.1 server must accept.
const MQTT311_CLIENT_ID_BYTES: usize = 23;
/// Longest client id MQTT can carry (a length-prefixed string).
const MAX_CLIENT_ID_BYTES: usize = 65_535;

/// One client id a link's connections use.
struct ClientId {
    id: String,
    /// Whose connection it is, for messages.
    what: &'static str,
    on_hub: bool,
    /// Where the id comes from: the link's client_id, or its name.
    span: Range<usize>,
    /// Said of an edge id the link does not set.
    origin: &'static str,
}

/// Every client id of a link: on the hub ingest "<base>-<name>", drain
/// "...-pub" and state "...-state"; on the edge its client id and "...-pub".
/// (Names like "a" and "a-pub" would share one.)
fn client_ids_of(raw: &RawLink, hub_client_id_base: &str) -> Vec<ClientId> {
    let name = raw.name.get_ref();
    let hub = names::hub_client_id(hub_client_id_base, name);
    let (edge, edge_span, origin) = match &raw.client_id {
        Some(id) => (id.get_ref().clone(), id.span(), ""),
        None => (
            names::default_edge_client_id(name),
            raw.name.span(),
            " (the default \"ferry-<name>\")",
        ),
    };
    let on_hub = |id: String, what| ClientId {
        id,
        what,
        on_hub: true,
        span: raw.name.span(),
        origin: "",
    };
    let on_edge = |id: String, what| ClientId {
        id,
        what,
        on_hub: false,
        span: edge_span.clone(),
        origin,
    };
    vec![
        on_hub(hub.clone(), "hub client id"),
        on_hub(names::drain_client_id(&hub), "hub drain client id"),
        on_hub(names::state_client_id(&hub), "hub state client id"),
        on_edge(edge.clone(), "edge client id"),
        on_edge(names::drain_client_id(&edge), "edge drain client id"),
    ]
}

/// The config, and its warnings, or the first problem in the file.
pub(super) fn validate(
    text: &str,
    raw: RawConfig,
    source: &Path,
    passwords: Passwords,
) -> Result<(Config, Vec<Problem>), Problem> {
    let mut problems = Problems::default();
    let reader = SecretReader {
        text,
        config_dir: source.parent().unwrap_or(Path::new("")),
        passwords,
    };

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
    let admin_token = match &raw.admin.token_file {
        None => Some(None),
        Some(file) => {
            let token = reader.token(file, problems.warnings());
            problems.take(token).map(Some)
        }
    };
    if let (Some(Some(listen)), None) = (admin_listen, &raw.admin.token_file) {
        if !listen.ip().is_loopback() {
            problems.push(Problem {
                offset: raw.admin.listen.as_ref().map(|listen| listen.span().start),
                message: format!(
                    "[admin] listen {listen} is not a loopback address, so anyone who can reach it could pause, \
                     drain or reload every link: set [admin] token_file to a file holding a bearer token \
                     (see docs/security.md), or listen on 127.0.0.1"
                ),
            });
        }
    }

    let hub_raw = &raw.hub;
    let hub_host = problems.take_optional(&hub_raw.host, host_value);
    let hub_port = problems.take_optional(&hub_raw.port, port_value);
    let hub_client_id = problems.take_optional(&hub_raw.client_id, client_id_value);
    let hub_credentials = reader.credentials(hub_raw.credentials(), problems.warnings());
    let hub_credentials = problems.take(hub_credentials);
    let state_topic = problems.take(state_topic(&hub_raw.state_topic));
    let hub_tls = problems.take_optional(&hub_raw.tls, |table| tls_value("hub", table, reader.config_dir));
    let hub_failback = problems.take_optional(&hub_raw.failback_secs, failback_value);
    let hub_addresses = match (&hub_host, &hub_port, &hub_tls) {
        (Some(_), Some(port), Some(tls)) => problems.take(addresses(
            "[hub]",
            hub_raw.host.as_ref(),
            &hub_raw.hosts,
            port.unwrap_or(default_port(&Some(tls.as_ref()))),
            Some(DEFAULT_HUB_HOST),
            0..0,
        )),
        _ => None,
    };

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
    let fleet = validate_fleet(text, raw.fleet.as_ref(), source, &mut problems);
    let links: Vec<Option<(LinkConfig, Vec<Range<usize>>)>> = raw
        .links
        .iter()
        .map(|link| validate_link(&reader, link, &defaults, raw.defaults.tls.as_ref(), &mut problems))
        .collect();
    let incomplete = || Problem::nowhere("invalid configuration");
    let links = links.into_iter().collect::<Option<Vec<_>>>();
    if let Some(links) = &links {
        check_loops_across_links(links, &mut problems);
    }

    if let Some(problem) = problems.first() {
        return Err(problem);
    }
    let links = links
        .ok_or_else(incomplete)?
        .into_iter()
        .map(|(link, _)| link)
        .collect();
    let hub_credentials = hub_credentials.ok_or_else(incomplete)?;
    let hub_addresses = hub_addresses.unwrap_or_default();
    let config = Config {
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
            token: admin_token.ok_or_else(incomplete)?,
        },
        hub: HubConfig {
            host: hub_addresses.first().ok_or_else(incomplete)?.0.clone(),
            port: hub_addresses.first().ok_or_else(incomplete)?.1,
            addresses: hub_addresses.clone(),
            failback: hub_failback
                .ok_or_else(incomplete)?
                .or(defaults.failback)
                .unwrap_or(Duration::from_secs(DEFAULT_FAILBACK_SECS)),
            tls: hub_tls.ok_or_else(incomplete)?,
            client_id: hub_client_id.ok_or_else(incomplete)?,
            username: hub_credentials.username,
            password: hub_credentials.password,
            password_source: hub_credentials.source,
            state_topic: state_topic.ok_or_else(incomplete)?,
            protocol: hub_protocol.or(defaults.protocol).unwrap_or_default(),
        },
        links,
        fleet: fleet.ok_or_else(incomplete)?,
        warnings: Vec::new(),
    };
    Ok((config, problems.into_warnings()))
}

// ---- [fleet] (see crate::fleet) ----

/// `[fleet] shards = N` (1 or more) and `shard = K` (below N) or `"auto"`.
/// Without the section: one shard, every link runs here.
fn validate_fleet(text: &str, raw: Option<&RawFleet>, source: &Path, problems: &mut Problems) -> Option<FleetConfig> {
    let Some(raw) = raw else {
        return Some(FleetConfig::default());
    };
    let max = i64::from(fleet::MAX_SHARDS);
    let shards = problems.take(integer_in(
        "[fleet] shards",
        &raw.shards,
        1..=max,
        " (instances in the fleet)",
    ))?;
    let shards = u32::try_from(shards).ok()?;
    let shard = match raw.shard.get_ref() {
        toml::Value::String(text) if text == "auto" => ShardSetting::Auto,
        toml::Value::Integer(index) if (0..i64::from(shards)).contains(index) => {
            ShardSetting::Index(u32::try_from(*index).ok()?)
        }
        value => {
            problems.push(Problem::at(
                raw.shard.span(),
                format!(
                    "[fleet] shard must be \"auto\" (from FERRY_SHARD or the hostname's \"-<number>\") or a \
                     number from 0 to {} (shards = {shards}), got {value}",
                    shards - 1
                ),
            ));
            return None;
        }
    };
    let at = |span: std::ops::Range<usize>| Some(fleet::place(source, line_of(text, &span)));
    Some(FleetConfig {
        shards,
        shard,
        shards_at: at(raw.shards.span()),
        shard_at: at(raw.shard.span()),
    })
}
