//! The config's unit tests: values, defaults, and every error naming its line.

use std::path::Path;
use std::time::Duration;

use super::values::{format_size, parse_size};
use super::*;
use crate::names::Direction;
use crate::secret::Secret;
use crate::store::{MaxBytes, Overflow};

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
    assert_eq!(config.links[0].password.as_ref().map(Secret::expose), Some("hunter2"));
    assert_eq!(config.hub.password.as_ref().map(Secret::expose), Some("hunter3"));
    let shown = format!("{}{:?}", config.summary(), config);
    assert!(!shown.contains("hunter"), "{shown}");
    assert!(shown.contains("username \"u\" with password"), "{shown}");
}

#[test]
fn debug_of_a_config_and_its_connections_hides_passwords() {
    let text = MINIMAL_LINK.replace(
        "host = \"10.0.0.1\"",
        "host = \"10.0.0.1\"\nusername = \"u\"\npassword = \"hunter2\"",
    ) + "[hub]\nusername = \"h\"\npassword = \"hunter3\"\n";
    let config = parse(&text).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter"), "{shown}");
    assert!(shown.contains("password: Some(***)"), "{shown}");
    let (hub, edge) = crate::bridge::endpoints(&config.links[0], &config.hub);
    let shown = format!("{hub:?} {edge:?}");
    assert!(!shown.contains("hunter"), "{shown}");
    assert_eq!(edge.password.as_ref().map(Secret::expose), Some("hunter2"));
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
drain_rate = "2000/s"
drain_bytes_rate = "1MiB/s"
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
drain_rate = "off"
drain_bytes_rate = "500 KB/s"
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
    assert_eq!(a.pace.drain_rate, Some(2000));
    assert_eq!(a.pace.drain_bytes_rate, Some(1 << 20));
    assert!(
        config.summary().contains("drain pace 2000/s, 1MiB/s"),
        "{}",
        config.summary()
    );
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
    assert_eq!(b.pace.drain_rate, None, "\"off\" overrides [defaults]");
    assert_eq!(b.pace.drain_bytes_rate, Some(500_000));
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
fn store_max_bytes_takes_a_size_auto_or_off_and_defaults_to_auto() {
    let config = parse("data_dir = \"q\"\n").unwrap();
    assert_eq!(
        (config.store_max_bytes, config.store_reserve_bytes),
        (MaxBytes::Auto, None)
    );
    assert!(
        config.summary().contains("store     budget auto: "),
        "{}",
        config.summary()
    );
    let config = parse("data_dir = \"q\"\nstore_max_bytes = \"2GiB\"\nstore_reserve_bytes = \"100MiB\"\n").unwrap();
    assert_eq!(config.store_max_bytes, MaxBytes::Bytes(2 << 30));
    assert_eq!(config.store_reserve_bytes, Some(100 << 20));
    assert!(
        config.summary().contains("store     budget 2GiB, reserve 100MiB"),
        "{}",
        config.summary()
    );
    let small = parse("data_dir = \"q\"\nstore_max_bytes = \"8MiB\"\n").unwrap();
    assert!(
        small.summary().contains("budget 8MiB, reserve 2.0 MiB (default)"),
        "{}",
        small.summary()
    );
    for off in ["\"off\"", "0"] {
        let config = parse(&format!("data_dir = \"q\"\nstore_max_bytes = {off}\n")).unwrap();
        assert_eq!(config.store_max_bytes, MaxBytes::Off);
        assert!(config.summary().contains("store     budget off"));
    }
    let error = assert_error("data_dir = \"q\"\nstore_max_bytes = \"lots\"\n", 2, "store_max_bytes");
    assert!(error.contains("\"auto\" or \"off\""), "{error}");
    assert_error(
        "data_dir = \"q\"\nstore_max_bytes = \"1GiB\"\nstore_reserve_bytes = \"1GiB\"\n",
        3,
        "must be smaller than store_max_bytes",
    );
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
        "is also used by link \"a\" (line 3) as its hub client id",
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
        (
            "drain_rate = \"2000\"",
            "drain_rate: \"2000\" is not a rate (it must end in \"/s\")",
        ),
        ("drain_rate = \"fast/s\"", "drain_rate: \"fast/s\" is not a rate"),
        ("drain_rate = \"0/s\"", "a rate must be at least 1/s"),
        (
            "drain_bytes_rate = \"1 megs/s\"",
            "drain_bytes_rate: \"1 megs\" has an unknown unit",
        ),
        (
            "drain_bytes_rate = \"1MiB\"",
            "drain_bytes_rate: \"1MiB\" is not a rate",
        ),
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

/// One `[[links.routes]]` table (4 lines).
fn route(direction: &str, local: &str, remote: &str) -> String {
    format!("[[links.routes]]\ndirection = {direction:?}\nlocal = {local:?}\nremote = {remote:?}\n")
}

/// One `out` route from `local` to `remote` on link "e" (route at line 5).
fn out_route(local: &str, remote: &str) -> String {
    with_routes(&route("out", local, remote))
}

#[test]
fn templates_map_in_both_directions_with_the_link_name() {
    let text = with_routes(
        &(route("out", "site/+/sensor/#", "edge/{link}/{1}/{#}") + &route("in", "hub/{link}/{2}/{1}/{#}", "up/+/+/#")),
    );
    let config = parse(&text).unwrap();
    let (out, inbound) = (&config.links[0].routes[0], &config.links[0].routes[1]);
    assert!(out.is_template() && inbound.is_template());
    assert_eq!(out.dest_filter(), "edge/{link}/{1}/{#}");
    assert_eq!(out.written_filter(), "edge/e/+/#");
    assert_eq!(out.map_to_dest("site/3/sensor/t").as_deref(), Some("edge/e/3/t"));
    assert_eq!(out.map_to_dest("site/3/sensor").as_deref(), Some("edge/e/3"));
    assert_eq!(inbound.map_to_dest("up/a/b/c/d").as_deref(), Some("hub/e/b/a/c/d"));
    assert!(config
        .summary()
        .contains("out  hub:site/+/sensor/# -> edge:edge/{link}/{1}/{#}  qos 1"));
    // A plain prefix mapping is still one.
    let plain = parse(&out_route("a/#", "b/#")).unwrap();
    assert!(!plain.links[0].routes[0].is_template());
}

#[test]
fn bad_templates_name_their_line() {
    let cases = [
        (
            "site/+/+",
            "edge/{3}",
            8,
            "remote: template \"edge/{3}\" uses {3}, but the filter \"site/+/+\" has only 2",
        ),
        (
            "site/+",
            "edge/{1}/{#}",
            8,
            "remote: template \"edge/{1}/{#}\" uses {#}, but the filter \"site/+\" has no `#`",
        ),
        (
            "site/+",
            "edge/{1}/+",
            8,
            "remote: a template makes topic names, which cannot contain the wildcards",
        ),
        ("site/#", "edge/{link}/#", 8, "cannot contain the wildcards"),
        (
            "site/+",
            "edge/{name}",
            8,
            "remote: template \"edge/{name}\" has an unknown placeholder \"{name}\"",
        ),
        ("site/+", "edge/{1", 8, "without its `}`"),
        (
            "site/{1}",
            "edge/x",
            7,
            "local: {1} is a template placeholder, but local is the filter this out route reads",
        ),
    ];
    for (local, remote, line, needle) in cases {
        assert_error(&out_route(local, remote), line, needle);
    }
    // NUL, written as a TOML escape.
    let text = out_route("a/+", "b/{1}").replace("{1}", "{1}\\u0000");
    assert_error(&text, 8, "remote: a template cannot contain the NUL character");
    // For an `in` route the template goes in `local`, and `remote` is read.
    let text = with_routes(&route("in", "hub/{#}", "up/{link}/#"));
    assert_error(
        &text,
        8,
        "remote: {link} is a template placeholder, but remote is the filter this in route reads",
    );
    let text = with_routes(&route("in", "hub/{2}", "up/+"));
    assert_error(&text, 7, "local: template \"hub/{2}\" uses {2}");
    // Filters without placeholders keep their braces as plain characters.
    assert!(parse(&out_route("a/{x}/#", "b/#")).is_ok());
}

#[test]
fn bridge_loops_through_templates_are_rejected() {
    // Out writes "x/e/..." through {link}; in reads "x/e/#" back. Comparing the
    // template text itself as a filter would miss it ("{link}" is not "e").
    let edge_loop = with_routes(&(route("out", "hub/out/#", "x/{link}/{#}") + &route("in", "hub/in/#", "x/e/#")));
    assert_error(&edge_loop, 9, "route at line 5 and route at line 9 form a bridge loop");
    assert_error(
        &edge_loop,
        9,
        "writes \"x/{link}/{#}\" (any topic matching \"x/e/#\") on the edge",
    );

    // In moves the edge's level into the hub topic, out reads "hub/a/#".
    let hub_loop = with_routes(&(route("in", "hub/{1}/{#}", "up/+/#") + &route("out", "hub/a/#", "down/#")));
    assert_error(
        &hub_loop,
        9,
        "writes \"hub/{1}/{#}\" (any topic matching \"hub/+/#\") on the hub",
    );

    // Reordering: "a/y/x" is written as "x/y", which the in route reads.
    let reorder_loop = with_routes(&(route("out", "a/+/+", "{2}/{1}") + &route("in", "b/x/y", "x/y")));
    assert_error(&reorder_loop, 9, "bridge loop");

    // A template whose writes stay apart from the other direction's reads.
    let fine = with_routes(
        &(route("out", "hub/down/+/#", "down/{link}/{1}/{#}") + &route("in", "hub/up/{link}/{1}/{#}", "up/+/#")),
    );
    parse(&fine).unwrap();
}

// ---- [fleet] ----

#[test]
fn fleet_keys_parse_and_default_to_one_shard() {
    assert_eq!(parse(MINIMAL_LINK).unwrap().fleet, crate::fleet::FleetConfig::default());
    let fleet = parse(&format!("{MINIMAL_LINK}[fleet]\nshards = 3\nshard = \"auto\"\n"))
        .unwrap()
        .fleet;
    assert_eq!((fleet.shards, fleet.shard), (3, crate::fleet::ShardSetting::Auto));
    assert_eq!(fleet.shard_at.as_deref(), Some("file.toml:11"));
    let fleet = parse(&format!("{MINIMAL_LINK}[fleet]\nshards = 3\nshard = 2\n"))
        .unwrap()
        .fleet;
    assert_eq!(fleet.shard, crate::fleet::ShardSetting::Index(2));
}

#[test]
fn fleet_errors_name_their_line() {
    let with = |keys: &str| format!("{MINIMAL_LINK}[fleet]\n{keys}");
    assert_error(
        &with("shards = 0\nshard = 0\n"),
        10,
        "[fleet] shards must be between 1 and 4096",
    );
    assert_error(
        &with("shards = 3\nshard = 3\n"),
        11,
        "a number from 0 to 2 (shards = 3), got 3",
    );
    assert_error(&with("shards = 3\nshard = \"ferry-1\"\n"), 11, "must be \"auto\"");
    assert_error(&with("shards = 3\nshard = -1\n"), 11, "got -1");
    assert_error(
        &with("shards = 3\nshard = 1\nreplicas = 3\n"),
        12,
        "unknown field `replicas`",
    );
    let missing = parse(&with("shards = 3\n")).unwrap_err().to_string();
    assert!(missing.contains("missing field `shard`"), "{missing}");
}

#[test]
fn summary_lists_each_shards_links() {
    let mut text = String::from("data_dir = \"/q\"\n[fleet]\nshards = 3\nshard = \"auto\"\n");
    for i in 0..6 {
        text.push_str(&format!(
            "[[links]]\nname = \"edge{i}\"\nhost = \"h\"\n[[links.routes]]\ndirection = \"out\"\nlocal = \"e/{i}/#\"\nremote = \"d/#\"\n"
        ));
    }
    let config = parse(&text).unwrap();
    let summary = config.summary();
    // The pinned layout (src/fleet.rs): edge0 0, edge1 1, edge2 0, edge3 1, edge4 1, edge5 0.
    for expected in [
        "fleet     3 shards, this instance: shard \"auto\"",
        "  shard 0: 3 links: edge0, edge2, edge5\n",
        "  shard 1: 3 links: edge1, edge3, edge4\n",
        "  shard 2: 0 links\n",
        "link edge4  h:1883  enabled  shard 1\n",
    ] {
        assert!(summary.contains(expected), "{expected:?} missing from:\n{summary}");
    }
    let moves = config.shard_moves(2);
    assert!(moves.starts_with("from 2 to 3 shards: 0 of 6 links move"), "{moves}");
    assert!(parse(MINIMAL_LINK).unwrap().summary().find("shard").is_none());
}

#[test]
fn a_reload_cannot_change_the_fleet() {
    let one = parse(MINIMAL_LINK).unwrap();
    let three = parse(&format!("{MINIMAL_LINK}[fleet]\nshards = 3\nshard = \"auto\"\n")).unwrap();
    let refused = crate::daemon::control::plan_reload(&one, &three).unwrap_err();
    assert!(refused.starts_with("[fleet] changed (shards = 1"), "{refused}");
    assert!(crate::daemon::control::plan_reload(&three, &three.clone()).is_ok());
}

// ---- Credentials from files and the environment, the admin token, and the
// ---- checks across links (issue 9).

/// MINIMAL_LINK with `username = "u"` and `credential` (one or more
/// `key = value` lines) after its host: the username is line 5, the
/// credential line 6.
fn with_credential(credential: &str) -> String {
    minimal_with(
        "host = \"10.0.0.1\"",
        &format!("host = \"10.0.0.1\"\nusername = \"u\"\n{credential}"),
    )
}

/// Writes `content` to `name` in `dir` with permission bits `mode`.
fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn passwords_come_from_a_file_beside_the_config_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "edge.password", "s3cret-from-file\n", 0o600);
    let config_path = dir.path().join("ferry.toml");
    let text = with_credential("password_file = \"edge.password\"")
        + "[hub]\nusername = \"h\"\npassword_env = \"FERRY_TEST_HUB_PASSWORD_9\"\n";
    std::fs::write(&config_path, &text).unwrap();
    std::env::set_var("FERRY_TEST_HUB_PASSWORD_9", "s3cret-from-env");
    let config = Config::load(&config_path).unwrap();
    assert_eq!(
        config.links[0].password.as_ref().map(Secret::expose),
        Some("s3cret-from-file")
    );
    assert_eq!(
        config.hub.password.as_ref().map(Secret::expose),
        Some("s3cret-from-env")
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let shown = format!("{}{config:?}", config.summary());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("username \"u\" with password from file ")
            && shown.contains("edge.password")
            && shown.contains("username \"h\" with password from $FERRY_TEST_HUB_PASSWORD_9"),
        "{shown}"
    );

    // Commands that connect to no broker leave them unread: no variable needed.
    let skipping = with_credential("password_env = \"FERRY_TEST_UNSET_9\"");
    std::fs::write(&config_path, &skipping).unwrap();
    let config = Config::load_with(&config_path, Passwords::Skip).unwrap();
    assert_eq!(config.links[0].password, None);
    assert!(Config::load(&config_path).is_err());
}

#[test]
fn credential_errors_name_the_line_the_file_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.password");
    let error = assert_error(
        &with_credential(&format!("password_file = \"{}\"", missing.display())),
        6,
        "cannot open it: No such file or directory",
    );
    assert!(error.contains(&missing.display().to_string()), "{error}");
    assert_error(
        &with_credential("password_env = \"FERRY_TEST_UNSET_9\""),
        6,
        "the environment variable FERRY_TEST_UNSET_9 is not set",
    );
    let empty = secret_file(dir.path(), "empty", "\n", 0o600);
    assert_error(
        &with_credential(&format!("password_file = \"{}\"", empty.display())),
        6,
        "the file is empty",
    );
    assert_error(
        &with_credential(&format!("password_file = \"{}\"", dir.path().display())),
        6,
        "is not a regular file",
    );
    // At most one of the three, named at the second; the value is never shown.
    let error = assert_error(
        &with_credential("password = \"hunter2\"\npassword_env = \"X\""),
        7,
        "password_env and password (line 6) are both set",
    );
    assert!(!error.contains("hunter2"), "{error}");
    assert_error(
        &minimal_with("host = \"10.0.0.1\"", "host = \"h\"\npassword_env = \"X\""),
        5,
        "password_env is set without username",
    );
    assert_error(
        &format!("{MINIMAL_LINK}[hub]\npassword_file = \"x\"\n"),
        10,
        "password_file is set without username",
    );
}

#[test]
fn inline_passwords_and_readable_secret_files_are_warnings() {
    let config = parse(&with_credential("password = \"hunter2\"")).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("file.toml:6:") && warnings[0].contains("prefer password_file or password_env"),
        "{warnings:?}"
    );
    assert!(!warnings[0].contains("hunter2"), "{warnings:?}");

    let dir = tempfile::tempdir().unwrap();
    let readable = secret_file(dir.path(), "readable", "pw", 0o640);
    let config = parse(&with_credential(&format!("password_file = \"{}\"", readable.display()))).unwrap();
    let warning = config.warnings.first().map(ToString::to_string).unwrap_or_default();
    assert!(
        warning.starts_with("file.toml:6:") && warning.contains("mode 640") && warning.contains("chmod 600"),
        "{warning}"
    );
}

#[test]
fn an_admin_api_off_loopback_needs_a_token_file() {
    let listen = |address: &str, extra: &str| format!("{MINIMAL_LINK}[admin]\nlisten = \"{address}\"\n{extra}");
    assert_error(
        &listen("0.0.0.0:9465", ""),
        10,
        "[admin] listen 0.0.0.0:9465 is not a loopback address",
    );
    assert_error(&listen("[::]:9465", ""), 10, "set [admin] token_file");
    assert!(parse(&listen("127.0.0.2:9465", "")).is_ok());
    assert!(parse(&listen("[::1]:9465", "")).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "admin.token", "  t0ken-value \n", 0o600);
    let with_token = listen("0.0.0.0:9465", &format!("token_file = \"{}\"\n", token.display()));
    let config = parse(&with_token).unwrap();
    assert_eq!(config.admin.token.as_ref().map(Secret::expose), Some("t0ken-value"));
    let shown = format!("{}{config:?}", config.summary());
    assert!(
        !shown.contains("t0ken") && shown.contains("bearer token required"),
        "{shown}"
    );

    let empty = secret_file(dir.path(), "empty.token", " \n", 0o600);
    assert_error(
        &listen("0.0.0.0:9465", &format!("token_file = \"{}\"\n", empty.display())),
        11,
        "the file is empty",
    );
    assert_error(
        &listen("127.0.0.1:9465", "token_file = \"/nonexistent/admin.token\"\n"),
        11,
        "token_file /nonexistent/admin.token: cannot open it",
    );
}

/// Two links to `host:port` ("a" and "b"), each with the routes given.
fn two_links_to(host_b: &str, routes_a: &str, routes_b: &str) -> String {
    format!(
        "data_dir = \"q\"\n[[links]]\nname = \"a\"\nhost = \"Edge.example\"\n{routes_a}\
         [[links]]\nname = \"b\"\nhost = \"{host_b}\"\n{routes_b}"
    )
}

#[test]
fn routes_of_two_links_to_one_edge_broker_must_not_feed_each_other() {
    // a writes "x/..." on the edge; b reads "x/+" there (host names without case).
    let edge_loop = two_links_to(
        "edge.EXAMPLE",
        &route("out", "hub/a/#", "x/#"),
        &route("in", "hub/b/+", "x/+"),
    );
    let error = assert_error(
        &edge_loop,
        12,
        "route at line 5 (link \"a\") and route at line 12 (link \"b\")",
    );
    assert!(
        error.contains("through the edge broker edge.example:1883") && error.contains("writes \"x/#\" on the edge"),
        "{error}"
    );
    // b's in route writes "hub/in/#" on the hub, which a's out route reads.
    let hub_loop = two_links_to(
        "edge.example",
        &route("out", "hub/in/a/#", "down/#"),
        &route("in", "hub/in/#", "up/#"),
    );
    assert_error(&hub_loop, 12, "writes \"hub/in/#\" on the hub");
    // The same routes to two different brokers are fan-out, not a loop.
    parse(&two_links_to(
        "other.example",
        &route("out", "hub/a/#", "x/#"),
        &route("in", "hub/b/+", "x/+"),
    ))
    .unwrap();
    parse(&edge_loop.replace("host = \"edge.EXAMPLE\"", "host = \"edge.example\"\nport = 1884")).unwrap();
}

#[test]
fn shared_subscriptions_are_refused_with_the_plain_filter() {
    assert_error(
        &with_routes(&route("in", "hub/up/#", "$share/g/up/#")),
        8,
        "remote: \"$share/g/up/#\" is a shared subscription, which ferry does not support",
    );
    assert_error(
        &out_route("$share/grp/hub/#", "down/#"),
        7,
        "subscribe to the plain filter \"hub/#\"",
    );
    assert_error(&out_route("hub/#", "$share/g/down/#"), 8, "starts with \"$share/\"");
}

#[test]
fn hosts_written_as_urls_are_refused_with_the_right_form() {
    let host = |value: &str| minimal_with("host = \"10.0.0.1\"", &format!("host = \"{value}\""));
    assert_error(
        &host("mqtt://edge1.example:1884"),
        4,
        "is a URL; ferry takes the host name and the port apart: write host = \"edge1.example\" and port = 1884",
    );
    assert_error(&host("tcp://10.0.0.1"), 4, "write host = \"10.0.0.1\" and port = 1883");
    assert_error(
        &host("mqtts://user@broker.example"),
        4,
        "host = \"broker.example\" and port = 8883",
    );
    assert_error(&host("ssl://b:8884/"), 4, "host = \"b\" and port = 8884");
    assert_error(&host("ws://b:9001"), 4, "is a WebSocket URL");
    assert_error(
        &host("edge1.example:1883"),
        4,
        "includes the port; write host = \"edge1.example\" and port = 1883",
    );
    assert_error(
        &format!("{MINIMAL_LINK}[hub]\nhost = \"mqtt://hub\"\n"),
        10,
        "host = \"hub\" and port = 1883",
    );
    // IPv6 addresses keep their colons.
    assert!(parse(&host("fd00::11")).is_ok());
}

#[test]
fn client_ids_with_nul_or_too_long_are_refused_and_long_ones_warned_about() {
    let id = |value: &str| minimal_with("host = \"10.0.0.1\"", &format!("host = \"h\"\nclient_id = \"{value}\""));
    assert_error(&id("a\\u0000b"), 5, "client_id contains a NUL character");
    assert_error(&format!("{MINIMAL_LINK}[hub]\nclient_id = \"h\\u0000\"\n"), 10, "NUL");
    assert_error(
        &id(&"x".repeat(65_533)),
        5,
        "edge drain client id of link \"e1\" is 65537 bytes",
    );

    let config = parse(&id("an-edge-client-id-of-27-byte")).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("file.toml:5:")
            && warnings[0]
                .contains("\"an-edge-client-id-of-27-byte-pub\" (the edge drain client id of link \"e1\") is 32 bytes")
            && warnings[0].contains("over 23 bytes"),
        "{warnings:?}"
    );
    // The hub's ids grow with the link's name: "ferry-hub-<name>-state".
    let long_name = minimal_with("name = \"e1\"", "name = \"building-7\"").replace("e1/down", "b7/down");
    let warnings: Vec<String> = parse(&long_name)
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("file.toml:3:") && w.contains("\"ferry-hub-building-7-state\"")),
        "{warnings:?}"
    );
    assert!(parse(MINIMAL_LINK).unwrap().warnings.is_empty());
}

#[test]
fn derived_edge_client_ids_must_not_collide_either() {
    // a's drain connection to the edge is "x-pub", b's ingest id.
    assert_error(
        &two_links("client_id = \"x\"", "b", "client_id = \"x-pub\""),
        13,
        "client id \"x-pub\" of link \"b\" (its edge client id) is also used by link \"a\" (line 5) as its edge drain client id",
    );
    // b's edge drain id is a's hub state id.
    assert_error(
        &two_links("", "b", "client_id = \"ferry-hub-a-state\"").replace("ferry-hub-a-state", "ferry-hub-a"),
        13,
        "as its hub client id",
    );
}

#[test]
fn protocol_is_auto_by_default_inherited_from_defaults_and_overridable_per_side() {
    use crate::names::Protocol;
    let config = parse(MINIMAL_LINK).unwrap();
    assert_eq!(
        (config.hub.protocol, config.links[0].protocol),
        (Protocol::Auto, Protocol::Auto)
    );

    let text = minimal_with("[[links]]\n", "[defaults]\nprotocol = \"3.1.1\"\n[[links]]\n");
    let config = parse(&text).unwrap();
    assert_eq!(
        (config.hub.protocol, config.links[0].protocol),
        (Protocol::V311, Protocol::V311)
    );

    let text = minimal_with(
        "[[links]]\nname = \"e1\"\n",
        "[hub]\nprotocol = \"5\"\n[defaults]\nprotocol = \"3.1.1\"\n[[links]]\nname = \"e1\"\nprotocol = \"auto\"\n",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        (config.hub.protocol, config.links[0].protocol),
        (Protocol::V5, Protocol::Auto)
    );

    let text = minimal_with("host = \"10.0.0.1\"\n", "host = \"10.0.0.1\"\nprotocol = \"3\"\n");
    assert_error(&text, 5, "protocol must be \"5\" (MQTT 5), \"3.1.1\" or \"auto\"");
}
