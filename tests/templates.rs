//! Topic templates end to end through real mosquitto brokers, in both
//! directions: levels reordered, a level dropped, the link's name put in,
//! and the edge cases users meet (a `#` that matched nothing, an empty `+`
//! level). Every message arrives once, in order, on the topic the template
//! makes.

use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const N: u64 = 60;
const LINK: &str = "e7";

/// The routes' filters and templates, after `o/` (read on the hub) and
/// `down/` (written on the edge) for `out`, `up/` and `hub/` for `in`:
/// reorder, drop a level, the link's name.
const ROUTES: [(&str, &str); 3] = [("r/+/+", "r/{2}/{1}"), ("d/+/#", "d/{#}"), ("l/#", "{link}/{#}")];

/// One link with each of [`ROUTES`] as an `out` and as an `in` route.
fn config(data: &std::path::Path, hub: &Broker, edge: &Broker) -> String {
    let mut text = format!(
        "data_dir = \"{data}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[admin]\nlisten = \"off\"\n\
         [hub]\nport = {hub}\n[defaults]\nreconnect_max_ms = 1000\n\
         [[links]]\nname = \"{LINK}\"\nhost = \"127.0.0.1\"\nport = {edge}\n",
        data = data.display(),
        metrics = free_port(),
        hub = hub.port(),
        edge = edge.port()
    );
    for (read, written) in ROUTES {
        for (direction, local, remote) in [("out", "o/", "down/"), ("in", "hub/", "up/")] {
            let (local, remote) = match direction {
                "out" => (format!("{local}{read}"), format!("{remote}{written}")),
                _ => (format!("{local}{written}"), format!("{remote}{read}")),
            };
            text.push_str(&format!(
                "[[links.routes]]\ndirection = \"{direction}\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n"
            ));
        }
    }
    text
}

/// A route's test traffic: the topic message `seq` is published on, and
/// the topic the template must turn it into, each after its direction's
/// prefix (`o`/`down` out, `up`/`hub` in).
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

/// The same three cases serve both directions (see the routes in [`config`]).
const CASES: [Case; 3] = [
    Case {
        name: "reorder",
        source: |s| format!("r/{}/b{}", a_level(s), s % 2),
        dest: |s| format!("r/b{}/{}", s % 2, a_level(s)),
    },
    Case {
        name: "drop a level",
        // Every 5th message is the parent level of `#`: nothing after it.
        source: |s| match s % 5 {
            0 => format!("d/x{}", s % 3),
            _ => format!("d/x{}/t/{}", s % 3, s % 2),
        },
        dest: |s| match s % 5 {
            0 => "d".to_owned(),
            _ => format!("d/t/{}", s % 2),
        },
    },
    Case {
        name: "link name",
        source: |s| format!("l/q{}", s % 4),
        dest: |s| format!("{LINK}/q{}", s % 4),
    },
];

/// Publishes each case's N messages on the source broker and checks that
/// the destination received every one, in order, on the templated topic.
async fn run_direction(out: bool) {
    let hub = Broker::start();
    let edge = Broker::start();
    let data = Ferry::data_dir_for_test();
    let ferry = Ferry::start(FERRY, &config(data.path(), &hub, &edge));
    let (source, dest, source_prefix, dest_prefix) = if out {
        (hub.addr(), edge.addr(), "o", "down")
    } else {
        (edge.addr(), hub.addr(), "up", "hub")
    };
    let sink = Collector::start(dest, "t-sink", &format!("{dest_prefix}/#"), QoS::AtLeastOnce).await;
    ferry.wait_link_up(LINK, LONG).await.unwrap_or_else(|e| panic!("{e}"));
    for case in &CASES {
        let topic = |s| format!("{source_prefix}/{}", (case.source)(s));
        publish_n(source, topic, N, QoS::AtLeastOnce, |s| seq_payload(s, 32)).await;
    }
    let is_dest_of = |case: &Case, m: &Received| {
        m.seq()
            .is_some_and(|s| m.topic == format!("{dest_prefix}/{}", (case.dest)(s)))
    };
    let total = N as usize * CASES.len();
    assert!(sink.wait_distinct(total, LONG).await, "{}", sink.describe());
    let got = sink.messages();
    for case in &CASES {
        // Each case's messages are the ones on topics it can produce.
        let mine: Vec<Received> = got.iter().filter(|m| is_dest_of(case, m)).cloned().collect();
        check_in_order_across_topics(&mine, N).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
    // Nothing arrived anywhere else: every message is on its case's topic.
    let stray: Vec<&Received> = got
        .iter()
        .filter(|m| !CASES.iter().any(|case| is_dest_of(case, m)))
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
        assert_config_refused(FERRY, dir.path(), &data, what, &text, line, needle);
    }
    // A good template is accepted and shown as written.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, route("out", "site/+/sensor/#", "edge/{link}/{1}/{#}")).unwrap_or_else(|e| panic!("{e}"));
    let out = run_ferry(FERRY, &["check", "--config", &good.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("hub:site/+/sensor/# -> edge:edge/{link}/{1}/{#}"),
        "{stdout}"
    );
}
