//! The `config_parse` fuzz target: the configuration parser on arbitrary text.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::topic::{self, TopicMap};

const CONFIG_PATH: &str = "fuzz/ferry.toml";

/// The configuration parser on arbitrary text (invalid UTF-8 replaced).
///
/// - `Config::parse` never panics;
/// - an error names the file: it renders as `path:line:column: message` or
///   `path: message`, with a line inside the text and a non-empty message;
/// - an accepted configuration keeps the promises the links rely on: unique
///   link names and client ids, at least one route per link, sane timers,
///   and routes whose topic mapping gives valid topics that what the route
///   writes matches (a prefix mapping's destination filter, a template's
///   written filter) and, for a prefix mapping, maps back to where it came from.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(CONFIG_PATH);
    let config = match Config::parse(&text, path) {
        Err(e) => {
            let shown = e.to_string();
            assert_eq!(e.path(), path, "config_parse: the error names another file: {shown}");
            assert!(
                shown.starts_with(&format!("{CONFIG_PATH}:")),
                "config_parse: the error does not start with the file's path: {shown}"
            );
            assert!(
                !e.message().trim().is_empty(),
                "config_parse: an empty error message: {shown}"
            );
            if let Some(line) = e.line() {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "config_parse: the error points at line {line} of a text of {lines} lines: {shown}"
                );
                let prefix = format!("{CONFIG_PATH}:{line}:");
                assert!(
                    shown.starts_with(&prefix),
                    "config_parse: the error with a line renders without it: {shown}"
                );
            }
            return;
        }
        Ok(config) => config,
    };
    let summary = config.summary();
    assert!(
        summary.contains(CONFIG_PATH),
        "config_parse: the summary does not name the file"
    );
    assert_eq!(config.source, path);
    assert!(
        !config.data_dir.as_os_str().is_empty(),
        "config_parse: an empty data_dir was accepted"
    );
    assert!(config.hub.port > 0, "config_parse: hub port 0 accepted");
    let mut names = std::collections::HashSet::new();
    let mut client_ids = std::collections::HashSet::new();
    for link in &config.links {
        assert!(
            names.insert(link.name.clone()),
            "config_parse: link name {:?} accepted twice",
            link.name
        );
        assert!(
            client_ids.insert(link.client_id.clone()),
            "config_parse: edge client id {:?} accepted twice",
            link.client_id
        );
        assert!(
            client_ids.insert(link.hub_client_id(&config.hub)),
            "config_parse: hub client id {:?} of link {:?} collides with another client id",
            link.hub_client_id(&config.hub),
            link.name
        );
        assert!(
            !link.routes.is_empty(),
            "config_parse: link {:?} without routes accepted",
            link.name
        );
        assert!(link.port > 0, "config_parse: link port 0 accepted");
        assert!(
            link.keepalive >= Duration::from_secs(5),
            "config_parse: keepalive under 5 s (rumqttc panics)"
        );
        assert!(
            link.reconnect_min <= link.reconnect_max,
            "config_parse: reconnect_min > reconnect_max"
        );
        assert!(
            link.reconnect_min > Duration::ZERO,
            "config_parse: reconnect_min of zero accepted"
        );
        assert!(link.inflight > 0, "config_parse: inflight 0 accepted");
        assert!(
            (1024..=256 << 20).contains(&link.max_message_bytes),
            "config_parse: max_message_bytes {} accepted",
            link.max_message_bytes
        );
        for route in &link.routes {
            assert!(route.qos <= 2, "config_parse: qos {} accepted", route.qos);
            assert!(route.line >= 1, "config_parse: route line 0");
            check_route_mapping(
                route.source_filter(),
                route.written_filter(),
                !route.is_template(),
                |t| route.map_to_dest(t),
            );
        }
    }
}

/// A topic that `filter` matches, made by filling its wildcards.
fn topic_for(filter: &str, fill: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "+" => fill.to_string(),
            "#" => format!("{fill}/deeper"),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `dest` is what the route writes as a filter; a prefix mapping (not a
/// template, which may drop levels) must also map back.
fn check_route_mapping(source: &str, dest: &str, reversible: bool, map: impl Fn(&str) -> Option<String>) {
    let back = reversible.then(|| {
        TopicMap::new(dest, source)
            .unwrap_or_else(|e| panic!("config_parse: route {source:?} -> {dest:?} accepted but cannot map back: {e}"))
    });
    for fill in ["x", "", "$y"] {
        let topic = topic_for(source, fill);
        if topic::validate_topic(&topic).is_err() || !topic::matches(source, &topic) {
            continue;
        }
        let Some(mapped) = map(&topic) else { continue };
        assert!(
            topic::validate_topic(&mapped).is_ok(),
            "config_parse: route {source:?} -> {dest:?} maps {topic:?} to {mapped:?}, not a valid topic"
        );
        assert!(
            topic::matches(dest, &mapped),
            "config_parse: route {source:?} -> {dest:?} maps {topic:?} to {mapped:?}, which {dest:?} does not match"
        );
        if let Some(back) = &back {
            assert_eq!(
                back.map(&mapped).as_deref(),
                Some(topic.as_str()),
                "config_parse: route {source:?} -> {dest:?}: {topic:?} -> {mapped:?} does not map back"
            );
        }
    }
}
