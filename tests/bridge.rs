//! End-to-end tests of the delivery chain against real mosquitto brokers:
//! every message arrives, in order per route, through edge outages, ferry
//! being killed -9, and the hub restarting.

use std::time::{Duration, Instant};

use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_edges_both_directions_deliver_everything_in_order() {
    const N: u64 = 2_000;
    let net = Topology::start(8, "");
    let ferry = net.start_ferry_all_up(FERRY).await;

    net.send_both_ways_and_check(N).await;
    for i in 0..net.edges.len() {
        let link = format!("edge{i}");
        ferry
            .wait_metric(
                "ferry_messages_forwarded_total",
                &[("link", &link), ("direction", "out")],
                |v| v >= N as f64,
                LONG,
            )
            .await
            .unwrap();
        net.assert_invariant(&ferry, &link, "out").await;
        net.assert_invariant(&ferry, &link, "in").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_during_a_50k_backlog_gets_all_of_it_in_order_and_others_are_not_delayed() {
    const BACKLOG: u64 = 50_000;
    const OTHERS: u64 = 500;
    let mut net = Topology::start(8, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let victim = Collector::start(net.edges[0].addr(), "t-victim", "down/#", QoS::AtLeastOnce).await;
    let mut others = Vec::new();
    for i in 1..8 {
        others.push(Collector::start(net.edges[i].addr(), &format!("t-other-{i}"), "down/#", QoS::AtLeastOnce).await);
    }
    // The victim's session and subscription must survive its power cut.
    net.edges[0].checkpoint();
    net.edges[0].kill9();

    let hub = net.hub.addr();
    let backlog = tokio::spawn(async move { publish_seqs(hub, down_topic(0), 0..BACKLOG, 128).await });
    // While the backlog piles up, the other seven edges get their traffic.
    let started = Instant::now();
    let mut publishers = Vec::new();
    for i in 1..8usize {
        publishers.push(tokio::spawn(async move {
            publish_seqs(hub, down_topic(i), 0..OTHERS, 128).await
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for (i, c) in others.iter().enumerate() {
        assert!(
            c.wait_distinct(OTHERS as usize, Duration::from_secs(30)).await,
            "edge {}: {}",
            i + 1,
            c.describe()
        );
        check_in_order(&c.messages(), OTHERS).unwrap();
    }
    let others_took = started.elapsed();
    backlog.await.expect("backlog publisher");
    net.wait_queued(&ferry, 0, BACKLOG).await;
    assert_eq!(victim.distinct_count(), 0, "the victim was down");
    eprintln!("other edges got {OTHERS} messages each in {others_took:?} while edge0's backlog was queued");

    net.edges[0].restart();
    let drain_started = Instant::now();
    assert!(
        victim.wait_distinct(BACKLOG as usize, LONG).await,
        "victim: {}",
        victim.describe()
    );
    let report = check_in_order(&victim.messages(), BACKLOG).unwrap();
    eprintln!("edge0 drained {BACKLOG} in {:?}: {report}", drain_started.elapsed());
    ferry
        .wait_metric(
            "ferry_queue_messages",
            &[("link", "edge0"), ("direction", "out")],
            |v| v == 0.0,
            LONG,
        )
        .await
        .unwrap();
    net.assert_invariant(&ferry, "edge0", "out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_killed_with_a_queued_backlog_loses_nothing() {
    const N: u64 = 5_000;
    let mut net = Topology::start(1, "");
    let mut ferry = net.start_ferry_all_up(FERRY).await;
    let sink = Collector::start(net.edges[0].addr(), "t-sink", "down/#", QoS::AtLeastOnce).await;
    // The edge stops cleanly: the collector's subscription survives.
    net.queue_backlog(&ferry, 0, N, 128).await;
    ferry.kill9();
    // More traffic while ferry is dead: the hub keeps it in ferry's session.
    publish_seqs(net.hub.addr(), down_topic(0), N..2 * N, 128).await;

    ferry.restart();
    net.wait_queued(&ferry, 0, 2 * N).await;
    net.edges[0].restart();
    assert!(sink.wait_distinct(2 * N as usize, LONG).await, "{}", sink.describe());
    let report = check_in_order(&sink.messages(), 2 * N).unwrap();
    eprintln!("after kill -9 of ferry: {report}");
    net.assert_invariant(&ferry, "edge0", "out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restarted_under_traffic_loses_nothing_either_way() {
    const N: u64 = 4_000;
    let mut net = Topology::start(1, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let down = Collector::start(net.edges[0].addr(), "t-down", "down/#", QoS::AtLeastOnce).await;
    let up = Collector::start(net.hub.addr(), "t-up", "edge/0/up/#", QoS::AtLeastOnce).await;

    let hub = net.hub.addr();
    let edge = net.edges[0].addr();
    let out_pub = tokio::spawn(async move { publish_seqs(hub, down_topic(0), 0..N, 128).await });
    let in_pub = tokio::spawn(async move { publish_seqs(edge, "up/t", 0..N, 128).await });
    // Restart the hub (clean stop: it saves sessions) while both flows run.
    assert!(
        wait_until(LONG, Duration::from_millis(20), || down.distinct_count() >= 500).await,
        "{}",
        down.describe()
    );
    net.hub.restart();
    out_pub.await.expect("out publisher");
    in_pub.await.expect("in publisher");

    assert!(down.wait_distinct(N as usize, LONG).await, "out: {}", down.describe());
    assert!(up.wait_distinct(N as usize, LONG).await, "in: {}", up.describe());
    check_in_order(&down.messages(), N).unwrap();
    check_in_order(&up.messages(), N).unwrap();
    net.assert_invariant(&ferry, "edge0", "out").await;
    net.assert_invariant(&ferry, "edge0", "in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_sizes_utf8_topics_retain_and_qos_pass_unchanged() {
    let net = Topology::start(1, "");
    let _ferry = net.start_ferry_all_up(FERRY).await;
    let sink = Collector::start(net.edges[0].addr(), "t-sink", "down/#", QoS::AtLeastOnce).await;
    let cases: Vec<(String, Vec<u8>)> = vec![
        ("edge/0/down/one".into(), vec![0x5a]),
        (
            "edge/0/down/200k".into(),
            (0..200 * 1024).map(|i| (i % 251) as u8).collect(),
        ),
        (
            "edge/0/down/1m".into(),
            (0..1024 * 1024).map(|i| (i % 253) as u8).collect(),
        ),
        ("edge/0/down/Grüße/日本語/🚚".into(), "ペイロード ✓".as_bytes().to_vec()),
    ];
    for (topic, payload) in &cases {
        publish_one(net.hub.addr(), topic, payload, QoS::AtLeastOnce, false).await;
    }
    publish_one(net.hub.addr(), "edge/0/down/state", b"retained", QoS::AtLeastOnce, true).await;
    assert!(sink.wait_count(cases.len() + 1, LONG).await, "{}", sink.describe());
    let got = sink.messages();
    for (topic, payload) in &cases {
        let want = topic.replacen("edge/0/down/", "down/", 1);
        let m = got
            .iter()
            .find(|m| m.topic == want)
            .unwrap_or_else(|| panic!("{want} not received: {}", sink.describe()));
        assert_eq!(m.payload.len(), payload.len(), "{want}: size");
        assert!(m.payload[..] == payload[..], "{want}: payload changed");
    }
    // Retain-as-published: the edge keeps it, a new subscriber gets it.
    let late = Collector::start(net.edges[0].addr(), "t-late", "down/state", QoS::AtLeastOnce).await;
    assert!(
        late.wait_count(1, LONG).await,
        "retained message not kept on the edge: {}",
        late.describe()
    );
    let m = &late.messages()[0];
    assert!(m.retain && &m.payload[..] == b"retained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_and_qos2_routes_deliver() {
    const N: u64 = 500;
    let hub = Broker::start();
    let edge = Broker::start();
    let data = Ferry::data_dir_for_test();
    let metrics = free_port();
    let config = format!(
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
name = "e"
host = "127.0.0.1"
port = {edge}
[[links.routes]]
direction = "out"
local = "q0/#"
remote = "r0/#"
qos = 0
[[links.routes]]
direction = "out"
local = "q2/#"
remote = "r2/#"
qos = 2
"#,
        data = data.path().display(),
        hub = hub.port(),
        edge = edge.port()
    );
    let ferry = Ferry::start(FERRY, &config);
    ferry.wait_link_up("e", LONG).await.unwrap();
    let r0 = Collector::start(edge.addr(), "t-r0", "r0/#", QoS::AtLeastOnce).await;
    let r2 = Collector::start(edge.addr(), "t-r2", "r2/#", QoS::ExactlyOnce).await;
    publish_n(
        hub.addr(),
        |_| "q2/x".into(),
        N,
        QoS::ExactlyOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    assert!(r2.wait_distinct(N as usize, LONG).await, "{}", r2.describe());
    check_in_order(&r2.messages(), N).unwrap();
    assert!(
        r2.messages().iter().all(|m| m.qos == QoS::ExactlyOnce),
        "qos 2 route must publish with QoS 2"
    );
    // QoS 0 end to end is best effort on the wire, but ferry queues it:
    // with nothing failing, all of it arrives.
    publish_seqs(hub.addr(), "q0/x", 0..N, 64).await;
    assert!(r0.wait_distinct(N as usize, LONG).await, "{}", r0.describe());
    assert!(r0.messages().iter().all(|m| m.qos == QoS::AtMostOnce));
}

#[test]
fn bad_configs_are_refused_with_the_line_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = format!("data_dir = \"{}\"\n[metrics]\nlisten = \"off\"\n", data.display());
    let link = |name: &str, local: &str, remote: &str| {
        format!("[[links]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\n[[links.routes]]\ndirection = \"out\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n")
    };
    let cases: Vec<(&str, String, usize, &str)> = vec![
        ("unknown key", format!("{base}[hub]\nhots = \"x\"\n"), 5, "hots"),
        ("bad filter", format!("{base}{}", link("a", "edge/#/x", "x/#")), 9, "#"),
        (
            "duplicate link",
            format!("{base}{}{}", link("a", "a/#", "b/#"), link("a", "c/#", "d/#")),
            12,
            "a",
        ),
        (
            "loop",
            format!(
                "{base}{}[[links.routes]]\ndirection = \"in\"\nremote = \"down/x/#\"\nlocal = \"up/#\"\n",
                link("a", "edge/#", "down/#")
            ),
            11,
            "loop",
        ),
        (
            "url host",
            format!("{base}{}", link("a", "a/#", "b/#"))
                .replace("host = \"127.0.0.1\"", "host = \"mqtt://127.0.0.1:1884\""),
            6,
            "write host = \"127.0.0.1\" and port = 1884",
        ),
        (
            "shared subscription",
            format!("{base}{}", link("a", "$share/g/a/#", "b/#")),
            9,
            "shared subscription",
        ),
        (
            "loop across links",
            format!(
                "{base}{}[[links]]\nname = \"b\"\nhost = \"127.0.0.1\"\n[[links.routes]]\ndirection = \"in\"\n\
                 remote = \"x/#\"\nlocal = \"b/#\"\n",
                link("a", "a/#", "x/#")
            ),
            14,
            "(link \"b\") form a bridge loop through the edge broker 127.0.0.1:1883",
        ),
        (
            "password env unset",
            format!("{base}{}", link("a", "a/#", "b/#")).replace(
                "host = \"127.0.0.1\"\n",
                "host = \"127.0.0.1\"\nusername = \"u\"\npassword_env = \"FERRY_TEST_NEVER_SET\"\n",
            ),
            8,
            "FERRY_TEST_NEVER_SET is not set",
        ),
    ];
    for (what, text, line, needle) in cases {
        assert_config_refused(FERRY, dir.path(), &data, what, &text, line, needle);
    }
    // And a good one is accepted and explained.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("{base}{}", link("edge1", "edge/1/down/#", "down/#"))).unwrap();
    let out = run_ferry(FERRY, &["check", "--config", good.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("edge1") && stdout.contains("edge/1/down/#") && stdout.contains("down/#"),
        "{stdout}"
    );
    // An inline password is accepted with a warning line, and never shown.
    let inline = dir.path().join("inline.toml");
    let text = format!("{base}{}", link("edge1", "edge/1/down/#", "down/#")).replace(
        "host = \"127.0.0.1\"\n",
        "host = \"127.0.0.1\"\nusername = \"u\"\npassword = \"pw-inline-Q8\"\n",
    );
    std::fs::write(&inline, text).unwrap();
    let out = run_ferry(FERRY, &["check", "--config", inline.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: {}:8:", inline.display())) && stderr.contains("prefer password_file"),
        "{stderr}"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("pw-inline-Q8"),
        "{stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_closes_and_exits_zero() {
    const N: u64 = 1_000;
    let mut net = Topology::start(1, "");
    let mut ferry = net.start_ferry_all_up(FERRY).await;
    net.queue_backlog(&ferry, 0, N, 128).await;
    let status = ferry.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", ferry.log_tail(30));
    net.edges[0].restart();
    let sink = Collector::start(net.edges[0].addr(), "t-sink", "down/#", QoS::AtLeastOnce).await;
    ferry.restart();
    assert!(sink.wait_distinct(N as usize, LONG).await, "{}", sink.describe());
    check_in_order(&sink.messages(), N).unwrap();
}
