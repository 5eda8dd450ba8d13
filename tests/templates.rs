//! Topic templates end to end through real mosquitto brokers, in both
//! directions: levels reordered, a level dropped, the link's name put in,
//! and the edge cases users meet (a `#` that matched nothing, an empty `+`
//! level). Every message arrives once, in order, on the topic the template
//! makes.

mod common;

use common::*;

const N: u64 = 60;
const LINK: &str = "e7";

/// One link, three `out` routes (hub -> edge) and three `in` routes
/// (edge -> hub), each a template: reorder (`r`), drop a level (`d`) and
/// the link's name (`l`).
fn config(data: &std::path::Path, hub: &Broker, edge: &Broker) -> String {
    format!(
        r#"data_dir = "{data}"
[metrics]
listen = "127.0.0.1:{metrics}"
[admin]
listen = "off"
[hub]
port = {hub}
[defaults]
reconnect_max_ms = 1000
[[links]]
name = "{LINK}"
host = "127.0.0.1"
port = {edge}
[[links.routes]]
direction = "out"
local = "o/r/+/+"
remote = "down/r/{{2}}/{{1}}"
[[links.routes]]
direction = "out"
local = "o/d/+/#"
remote = "down/d/{{#}}"
[[links.routes]]
direction = "out"
local = "o/l/#"
remote = "down/{{link}}/{{#}}"
[[links.routes]]
direction = "in"
remote = "up/r/+/+"
local = "hub/r/{{2}}/{{1}}"
[[links.routes]]
direction = "in"
remote = "up/d/+/#"
local = "hub/d/{{#}}"
[[links.routes]]
direction = "in"
remote = "up/l/#"
local = "hub/{{link}}/l/{{#}}"
"#,
        data = data.display(),
        metrics = free_port(),
        hub = hub.port(),
        edge = edge.port()
    )
}

/// A route's test traffic: the topic message `seq` is published on, and
/// the topic the template must turn it into.
struct Case {
    name: &'static str,
    source: fn(u64) -> String,
    dest: fn(u64) -> String,
}

/// The first reordered level; every 7th message has it empty.
fn a_level(seq: u64) -> String {
    if seq % 7 == 0 {
        String::new()
    } else {
        format!("a{}", seq % 3)
    }
}

/// The three cases of the `out` routes, or of the `in` routes.
fn cases(out: bool) -> [Case; 3] {
    if out {
        [
            Case {
                name: "reorder",
                source: |s| format!("o/r/{}/b{}", a_level(s), s % 2),
                dest: |s| format!("down/r/b{}/{}", s % 2, a_level(s)),
            },
            Case {
                name: "drop a level",
                // Every 5th message is the parent level of `#`: nothing after it.
                source: |s| match s % 5 {
                    0 => format!("o/d/x{}", s % 3),
                    _ => format!("o/d/x{}/t/{}", s % 3, s % 2),
                },
                dest: |s| match s % 5 {
                    0 => "down/d".to_owned(),
                    _ => format!("down/d/t/{}", s % 2),
                },
            },
            Case {
                name: "link name",
                source: |s| format!("o/l/q{}", s % 4),
                dest: |s| format!("down/{LINK}/q{}", s % 4),
            },
        ]
    } else {
        [
            Case {
                name: "reorder",
                source: |s| format!("up/r/{}/b{}", a_level(s), s % 2),
                dest: |s| format!("hub/r/b{}/{}", s % 2, a_level(s)),
            },
            Case {
                name: "drop a level",
                source: |s| match s % 5 {
                    0 => format!("up/d/x{}", s % 3),
                    _ => format!("up/d/x{}/t/{}", s % 3, s % 2),
                },
                dest: |s| match s % 5 {
                    0 => "hub/d".to_owned(),
                    _ => format!("hub/d/t/{}", s % 2),
                },
            },
            Case {
                name: "link name",
                source: |s| format!("up/l/q{}", s % 4),
                dest: |s| format!("hub/{LINK}/l/q{}", s % 4),
            },
        ]
    }
}

/// Publishes each case's N messages on the source broker and checks that
/// the destination received every one, in order, on the templated topic.
async fn run_direction(out: bool) {
    let hub = Broker::start();
    let edge = Broker::start();
    let data = Ferry::data_dir_for_test();
    let ferry = Ferry::start(&config(data.path(), &hub, &edge));
    let (source, dest, filter) = if out {
        (hub.addr(), edge.addr(), "down/#")
    } else {
        (edge.addr(), hub.addr(), "hub/#")
    };
    let sink = Collector::start(dest, "t-sink", filter, QoS::AtLeastOnce).await;
    ferry.wait_link_up(LINK, LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let cases = cases(out);
    for case in &cases {
        publish_n(source, case.source, N, QoS::AtLeastOnce, |s| seq_payload(s, 32)).await;
    }
    let total = N as usize * cases.len();
    assert!(sink.wait_distinct(total, LONG).await, "{}", sink.describe());
    let got = sink.messages();
    for case in &cases {
        // Each case's messages are the ones on topics it can produce.
        let mine: Vec<Received> = got
            .iter()
            .filter(|m| m.seq().is_some_and(|s| m.topic == (case.dest)(s)))
            .cloned()
            .collect();
        check_in_order_across_topics(&mine, N).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
    // Nothing arrived anywhere else: every message is on its case's topic.
    let stray: Vec<&Received> = got
        .iter()
        .filter(|m| !cases.iter().any(|c| m.seq().is_some_and(|s| m.topic == (c.dest)(s))))
        .collect();
    assert!(
        stray.is_empty(),
        "messages on topics no template makes: {:?}",
        stray.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_templates_reorder_drop_and_name_levels_hub_to_edge() {
    run_direction(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_templates_reorder_drop_and_name_levels_edge_to_hub() {
    run_direction(false).await;
}

#[test]
fn bad_templates_are_refused_by_check_and_run_naming_the_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let route = |direction: &str, local: &str, remote: &str| {
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"off\"\n[[links]]\nname = \"a\"\nhost = \"127.0.0.1\"\n\
             [[links.routes]]\ndirection = \"{direction}\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n",
            data.display()
        )
    };
    let loop_through_template = format!(
        "{}[[links.routes]]\ndirection = \"in\"\nremote = \"x/a/#\"\nlocal = \"in/#\"\n",
        route("out", "hub/#", "x/{link}/{#}")
    );
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "capture out",
            route("out", "site/+/+", "e/{3}"),
            10,
            "remote: template \"e/{3}\" uses {3}",
        ),
        (
            "capture in",
            route("in", "hub/{2}", "up/+"),
            9,
            "local: template \"hub/{2}\" uses {2}",
        ),
        ("no hash", route("out", "site/+", "e/{#}"), 10, "has no `#` level"),
        (
            "wildcard",
            route("in", "hub/{1}/#", "up/+/#"),
            9,
            "cannot contain the wildcards",
        ),
        (
            "unknown",
            route("out", "a/+", "b/{one}"),
            10,
            "unknown placeholder \"{one}\"",
        ),
        ("read side", route("out", "a/{1}", "b"), 9, "template placeholder"),
        ("loop", loop_through_template, 11, "bridge loop"),
    ];
    for (what, text, line, needle) in cases {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        for cmd in ["check", "run"] {
            let out = run_ferry(&[cmd, "--config", &path.display().to_string()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what} ({cmd}): exit status; stderr: {stderr}"
            );
            let want = format!("{}:{line}:", path.display());
            assert!(
                stderr.contains(&want) && stderr.contains(needle),
                "{what} ({cmd}): expected {want} and {needle:?} in: {stderr}\n--- config ---\n{text}"
            );
        }
        assert!(
            !data.exists(),
            "{what}: ferry created its data_dir although the config is bad"
        );
    }
    // A good template is accepted and shown as written.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, route("out", "site/+/sensor/#", "edge/{link}/{1}/{#}")).unwrap_or_else(|e| panic!("{e}"));
    let out = run_ferry(&["check", "--config", &good.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("hub:site/+/sensor/# -> edge:edge/{link}/{1}/{#}"),
        "{stdout}"
    );
}
