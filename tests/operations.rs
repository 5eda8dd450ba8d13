//! Operating a running ferry through its admin API and CLI, against real
//! mosquitto brokers: pause/resume, drain-then-pause, restart of one link,
//! hot reload (API and SIGHUP), the retained state topic, and the errors an
//! operator sees.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn admin(net: &Topology) -> String {
    format!("127.0.0.1:{}", net.admin_port)
}

/// Runs `ferry <args> --admin <net's admin address>`.
fn ctl(net: &Topology, args: &[&str]) -> Output {
    let addr = admin(net);
    let mut all = args.to_vec();
    all.extend(["--admin", addr.as_str()]);
    run_ferry(FERRY, &all)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(net: &Topology) -> Value {
    serde_json::from_str(&ok(ctl(net, &["status", "--json"]))).expect("status --json prints JSON")
}

fn link_state(net: &Topology, link: &str) -> Option<String> {
    let s = status(net);
    s["links"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == link)
        .and_then(|l| l["state"].as_str())
        .map(str::to_string)
}

async fn wait_state(net: &Topology, link: &str, state: &str) {
    let mut last = None;
    let reached = wait_until(LONG, Duration::from_millis(100), || {
        last = link_state(net, link);
        last.as_deref() == Some(state)
    })
    .await;
    assert!(
        reached,
        "link {link} never reached state {state:?}; last {last:?}; status: {}",
        status(net)
    );
}

/// How many times ferry's log says a connection of `link` came up.
fn connects(ferry: &Ferry, link: &str) -> usize {
    ferry.log().matches(&format!("connected link=\"{link}\"")).count()
}

/// The config of `net` with only the links `keep` (by index).
fn with_links(net: &Topology, keep: &[usize]) -> String {
    let full = net.config();
    let mut parts = full.split("[[links]]\n");
    let mut out = parts.next().unwrap_or_default().to_string();
    for block in parts {
        if keep.iter().any(|i| block.starts_with(&format!("name = \"edge{i}\"\n"))) {
            out.push_str("[[links]]\n");
            out.push_str(block);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_forwarding_while_queueing_continues_and_resume_drains() {
    const N: u64 = 2_000;
    let net = Topology::start(2, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let sink0 = Collector::start(net.edges[0].addr(), "t-sink0", "down/#", QoS::AtLeastOnce).await;
    let sink1 = Collector::start(net.edges[1].addr(), "t-sink1", "down/#", QoS::AtLeastOnce).await;

    let said = ok(ctl(&net, &["link", "pause", "edge0"]));
    assert!(said.contains("edge0: paused"), "{said}");
    wait_state(&net, "edge0", "paused").await;
    let edge1_connects = connects(&ferry, "edge1");

    publish_seqs(net.hub.addr(), down_topic(0), 0..N, 128).await;
    publish_seqs(net.hub.addr(), down_topic(1), 0..N, 128).await;
    // Queueing goes on for the paused link; the other link forwards.
    net.wait_queued(&ferry, 0, N).await;
    assert!(
        sink1.wait_distinct(N as usize, LONG).await,
        "edge1: {}",
        sink1.describe()
    );
    assert_eq!(sink0.count(), 0, "a paused link forwarded messages");
    let table = ok(ctl(&net, &["status"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("edge0"))
        .unwrap_or_else(|| panic!("no edge0 row:\n{table}"));
    assert!(
        row.contains("paused") && row.contains(&format!("{N} (")),
        "edge0 row: {row}\n{table}"
    );
    eprintln!("ferry status while edge0 is paused:\n{table}");

    ok(ctl(&net, &["link", "resume", "edge0"]));
    assert!(
        sink0.wait_distinct(N as usize, LONG).await,
        "edge0 after resume: {}",
        sink0.describe()
    );
    let report = check_in_order(&sink0.messages(), N).unwrap_or_else(|e| panic!("edge0: {e}"));
    eprintln!("edge0 after resume: {report}");
    wait_state(&net, "edge0", "connected").await;
    assert_eq!(
        connects(&ferry, "edge1"),
        edge1_connects,
        "edge1 reconnected while edge0 was paused/resumed"
    );
    net.assert_invariant(&ferry, "edge0", "out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_pause_empties_the_queue_then_pauses() {
    const N: u64 = 1_500;
    let net = Topology::start(1, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let sink = Collector::start(net.edges[0].addr(), "t-sink0", "down/#", QoS::AtLeastOnce).await;
    ok(ctl(&net, &["link", "pause", "edge0"]));
    wait_state(&net, "edge0", "paused").await;
    publish_seqs(net.hub.addr(), down_topic(0), 0..N, 128).await;
    net.wait_queued(&ferry, 0, N).await;

    let said = ok(ctl(&net, &["link", "drain", "edge0"]));
    assert!(said.contains("draining"), "{said}");
    assert!(sink.wait_distinct(N as usize, LONG).await, "{}", sink.describe());
    wait_state(&net, "edge0", "paused").await;
    assert!(
        ferry.log().contains("queues drained; link paused"),
        "{}",
        ferry.log_tail(20)
    );
    check_in_order(&sink.messages(), N).unwrap_or_else(|e| panic!("{e}"));

    // Paused after the drain: new messages are queued, not forwarded.
    publish_seqs(net.hub.addr(), down_topic(0), N..N + 100, 128).await;
    net.wait_queued(&ferry, 0, 100).await;
    ok(ctl(&net, &["link", "resume", "edge0"]));
    assert!(sink.wait_distinct(N as usize + 100, LONG).await, "{}", sink.describe());
    check_in_order(&sink.messages(), N + 100).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_link_leaves_the_others_flowing() {
    const N: u64 = 6_000;
    let net = Topology::start(2, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let sink0 = Collector::start(net.edges[0].addr(), "t-sink0", "down/#", QoS::AtLeastOnce).await;
    let sink1 = Collector::start(net.edges[1].addr(), "t-sink1", "down/#", QoS::AtLeastOnce).await;
    let edge1_connects = connects(&ferry, "edge1");
    let hub = net.hub.addr();
    let publishers =
        [0usize, 1].map(|i| tokio::spawn(async move { publish_seqs(hub, down_topic(i), 0..N, 128).await }));

    // Restart edge0 three times while both links carry traffic, and watch
    // edge1's deliveries: the longest pause between two of them.
    let mut longest_gap = Duration::ZERO;
    let mut restarts = 0;
    let mut last_count = sink1.count();
    let mut last_change = Instant::now();
    let deadline = Instant::now() + LONG;
    // Until edge1 has everything and edge0 was restarted three times (a fast
    // edge1 may be done before edge0, slowed by its restarts, is).
    while (sink1.distinct_count() < N as usize || restarts < 3) && Instant::now() < deadline {
        let count = sink1.count();
        if count != last_count {
            longest_gap = longest_gap.max(last_change.elapsed());
            last_count = count;
            last_change = Instant::now();
        }
        if restarts < 3 && sink0.count() > (restarts + 1) * N as usize / 5 {
            ok(ctl(&net, &["link", "restart", "edge0"]));
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    assert_eq!(
        restarts,
        3,
        "edge0 was not restarted 3 times (sink0 {})",
        sink0.describe()
    );
    assert!(
        sink1.wait_distinct(N as usize, LONG).await,
        "edge1: {}",
        sink1.describe()
    );
    assert!(
        sink0.wait_distinct(N as usize, LONG).await,
        "edge0: {}",
        sink0.describe()
    );
    let r0 = check_in_order(&sink0.messages(), N).unwrap_or_else(|e| panic!("edge0: {e}"));
    let r1 = check_in_order(&sink1.messages(), N).unwrap_or_else(|e| panic!("edge1: {e}"));
    eprintln!("edge0 (restarted 3x): {r0}\nedge1: {r1}; longest gap between edge1 deliveries: {longest_gap:?}");
    assert_eq!(ferry.log().matches("link restarting on request").count(), 3);
    assert_eq!(r1.duplicates, 0, "edge1 got duplicates: it was disturbed");
    assert_eq!(
        connects(&ferry, "edge1"),
        edge1_connects,
        "edge1's connections were re-established"
    );
    // Generous: edge1's flow never stopped for anything like a reconnect.
    assert!(
        longest_gap < Duration::from_secs(3),
        "edge1 stalled for {longest_gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_changes_links_and_refuses_a_bad_file() {
    let net = Topology::start(4, "");
    let mut ferry = Ferry::start(FERRY, &with_links(&net, &[0, 1, 2]));
    for i in 0..3 {
        ferry
            .wait_link_up(&format!("edge{i}"), LONG)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let edge0_connects = connects(&ferry, "edge0");

    // edge2 removed, edge1 changed, edge3 added, edge0 untouched.
    let new = with_links(&net, &[0, 1, 3]).replace("name = \"edge1\"\n", "name = \"edge1\"\ninflight = 50\n");
    ferry.write_config(&new);
    let said = ok(ctl(&net, &["reload"]));
    assert!(
        said.contains("added: edge3; removed: edge2; changed: edge1; unchanged: 1"),
        "{said}"
    );
    ferry
        .wait_link_up("edge3", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = status(&net)["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["edge0", "edge1", "edge3"]);
    wait_state(&net, "edge1", "connected").await;
    assert!(ferry.log().contains("link removed by reload"), "{}", ferry.log_tail(20));
    ferry
        .wait_metric("ferry_link_up", &[("link", "edge2")], |v| v == 0.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("the removed link still looks up: {e}"));
    assert_eq!(
        connects(&ferry, "edge0"),
        edge0_connects,
        "edge0 blinked on a reload that did not change it"
    );

    // Traffic flows on the added link; the removed one forwards nothing.
    let sink3 = Collector::start(net.edges[3].addr(), "t-sink3", "down/#", QoS::AtLeastOnce).await;
    publish_seqs(net.hub.addr(), down_topic(3), 0..200, 64).await;
    assert!(sink3.wait_distinct(200, LONG).await, "{}", sink3.describe());

    // A bad file is refused with the line, and the running config stays.
    let bad = format!("{new}\n[[links]]\nname = \"edge9\"\nhost = \"127.0.0.1\"\nport = \"x\"\n");
    let bad_line = bad.lines().position(|l| l == "port = \"x\"").unwrap() + 1;
    ferry.write_config(&bad);
    let out = ctl(&net, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(":{bad_line}:")),
        "the error must name line {bad_line}: {err}"
    );
    assert_eq!(status(&net)["links"].as_array().unwrap().len(), 3);
    assert!(ferry.is_running());

    // SIGHUP reloads too: edge2 comes back.
    ferry.write_config(
        &with_links(&net, &[0, 1, 2, 3]).replace("name = \"edge1\"\n", "name = \"edge1\"\ninflight = 50\n"),
    );
    let pid = ferry.pid().expect("ferry runs");
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        ferry
            .wait_log("added: edge2; removed: none; changed: none; unchanged: 3", LONG)
            .await,
        "{}",
        ferry.log_tail(20)
    );
    ferry
        .wait_link_up("edge2", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(connects(&ferry, "edge0"), edge0_connects, "edge0 blinked on SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_topic_is_retained_and_flips_to_offline_when_ferry_is_killed() {
    let net = Topology::start(1, "");
    let mut ferry = net.start_ferry_all_up(FERRY).await;
    let watcher = Collector::start(net.hub.addr(), "t-state", "ferry/+/state", QoS::AtLeastOnce).await;
    let last_state = |c: &Collector| {
        c.messages()
            .iter()
            .rev()
            .find(|m| m.topic == "ferry/edge0/state")
            .map(|m| {
                serde_json::from_slice::<Value>(&m.payload).expect("state payload is JSON")["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
    };
    let wait_for = |state: &'static str| {
        let watcher = &watcher;
        async move {
            let mut last = None;
            let seen = wait_until(LONG, Duration::from_millis(50), || {
                last = last_state(watcher);
                last.as_deref() == Some(state)
            })
            .await;
            assert!(seen, "state topic never said {state:?}; last {last:?}");
        }
    };
    wait_for("connected").await;
    assert!(
        watcher
            .messages()
            .iter()
            .any(|m| m.topic == "ferry/edge0/state" && m.retain),
        "the state is retained"
    );
    ok(ctl(&net, &["link", "pause", "edge0"]));
    wait_for("paused").await;
    ferry.kill9();
    wait_for("offline").await;
    ferry.restart();
    wait_for("connected").await;
    ferry.terminate();
    wait_for("stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_errors_say_what_to_do_and_health_endpoints_answer() {
    let net = Topology::start(1, "");
    // Nothing runs yet.
    let out = ctl(&net, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is ferry running"),
        "{}",
        text(&out)
    );

    let ferry = net.start_ferry_all_up(FERRY).await;
    let out = ctl(&net, &["link", "pause", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no link named \"nosuch\"; the links are: edge0"),
        "{}",
        text(&out)
    );
    // --config finds the admin address in the file.
    let config = ferry.config_path();
    let table = ok(run_ferry(FERRY, &["status", "--config", config.to_str().unwrap()]));
    assert!(
        table.contains("ready") && table.lines().any(|l| l.starts_with("edge0") && l.contains("connected")),
        "{table}"
    );

    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin(&net)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(get("/livez").starts_with("HTTP/1.1 200"));
    let ready = get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\":true"),
        "{ready}"
    );
    assert!(get("/v1/links/edge0").contains("\"name\":\"edge0\""));
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
}
