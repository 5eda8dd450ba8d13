//! Paced drains against real mosquitto brokers: a link with `drain_rate`
//! drains a backlog at that rate while an unpaced link on the same ferry
//! keeps its own speed, and `ferry link rate` changes the pace of a running
//! drain within a second, until the next reload.
//!
//! Rates are measured as the edge's subscriber sees them ([`Timeline`]:
//! its distinct-message count, sampled every 5 ms).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const N: u64 = 5_000;

/// `net`'s config with `setting` added to link `link`.
fn config_with(net: &Topology, link: &str, setting: &str) -> String {
    let name = format!("name = \"{link}\"\n");
    net.config().replacen(&name, &format!("{name}{setting}\n"), 1)
}

/// Runs `ferry <args> --admin <net's admin address>` off the async threads
/// (a running Timeline keeps sampling meanwhile); returns its stdout.
async fn ctl(net: &Topology, args: &[&str]) -> String {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--admin".to_string(), format!("127.0.0.1:{}", net.admin_port)]);
    let out: Output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_ferry(FERRY, &args)
    })
    .await
    .expect("the ferry command ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn link_view(net: &Topology, link: &str) -> Value {
    let status: Value = serde_json::from_str(&ctl(net, &["status", "--json"]).await).expect("status --json is JSON");
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["name"] == link).cloned())
        .unwrap_or_else(|| panic!("no link {link} in {status}"))
}

/// Pauses `links`, queues N messages for each on the hub, and waits until
/// ferry holds them all.
async fn queue_backlogs(net: &Topology, ferry: &Ferry, links: &[usize]) {
    for &i in links {
        ctl(net, &["link", "pause", &format!("edge{i}")]).await;
    }
    for &i in links {
        publish_seqs(net.hub.addr(), down_topic(i), 0..N, 64).await;
        net.wait_queued(ferry, i, N).await;
    }
}

/// Waits until `ferry_link_drain_rate{link}` shows `rate` (0: off).
async fn wait_drain_rate(ferry: &Ferry, link: &str, rate: f64) {
    ferry
        .wait_metric("ferry_link_drain_rate", &[("link", link)], |v| v == rate, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn secs_between(timeline: &Timeline, from: usize, to: usize) -> f64 {
    match (timeline.reached(from), timeline.reached(to)) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => panic!("the timeline never reached {to} (last {})", timeline.last()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_backlog_drains_at_its_rate_while_an_unpaced_link_keeps_its_own() {
    let net = Topology::start(2, "");
    let ferry = Ferry::start(FERRY, &config_with(&net, "edge0", "drain_rate = \"1000/s\""));
    net.wait_all_up(&ferry).await;
    let sink0 = Collector::start(net.edges[0].addr(), "t-sink0", "down/#", QoS::AtLeastOnce).await;
    let sink1 = Collector::start(net.edges[1].addr(), "t-sink1", "down/#", QoS::AtLeastOnce).await;
    wait_drain_rate(&ferry, "edge0", 1000.0).await;
    wait_drain_rate(&ferry, "edge1", 0.0).await;
    queue_backlogs(&net, &ferry, &[0, 1]).await;

    let resume = async {
        ctl(&net, &["link", "resume", "edge0"]).await;
        ctl(&net, &["link", "resume", "edge1"]).await;
    };
    let (paced, unpaced, ()) = tokio::join!(
        Timeline::record(&sink0, N as usize, LONG),
        Timeline::record(&sink1, N as usize, LONG),
        resume
    );
    let paced_secs = secs_between(&paced, 1, N as usize);
    let unpaced_secs = secs_between(&unpaced, 1, N as usize);
    eprintln!(
        "edge0 at drain_rate 1000/s: {N} in {paced_secs:.2} s ({:.0}/s); edge1 unpaced: {N} in {unpaced_secs:.2} s ({:.0}/s)",
        N as f64 / paced_secs,
        N as f64 / unpaced_secs
    );
    assert!(
        (4.5..=6.0).contains(&paced_secs),
        "a backlog of {N} at 1000/s took {paced_secs:.2} s (want 4.5..6)"
    );
    assert!(
        unpaced_secs < 4.5,
        "the unpaced link was held back: {N} took {unpaced_secs:.2} s"
    );
    for (name, sink) in [("edge0", &sink0), ("edge1", &sink1)] {
        let report = check_in_order(&sink.messages(), N).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: {report}");
        net.assert_invariant(&ferry, name, "out").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_changed_at_run_time_applies_within_a_second_until_the_next_reload() {
    let net = Topology::start(1, "");
    let ferry = Ferry::start(FERRY, &config_with(&net, "edge0", "drain_rate = \"200/s\""));
    net.wait_all_up(&ferry).await;
    let sink = Collector::start(net.edges[0].addr(), "t-sink0", "down/#", QoS::AtLeastOnce).await;
    queue_backlogs(&net, &ferry, &[0]).await;

    let mut changed_at = None;
    let steer = async {
        ctl(&net, &["link", "resume", "edge0"]).await;
        // At 200/s for more than a second, then faster.
        assert!(
            wait_until(LONG, Duration::from_millis(5), || sink.distinct_count() >= 250).await,
            "{}",
            sink.describe()
        );
        let at = Instant::now();
        changed_at = Some(at);
        let said = ctl(&net, &["link", "rate", "edge0", "2000/s"]).await;
        assert!(
            said.contains("drain pace 2000/s") && said.contains("until the next reload or restart"),
            "{said}"
        );
        let metric = ferry.scrape().get("ferry_link_drain_rate", &[("link", "edge0")]);
        assert_eq!(metric, Some(2000.0), "the gauge shows the new rate");
        tokio::time::sleep_until((at + Duration::from_millis(1500)).into()).await;
        let said = ctl(&net, &["link", "rate", "edge0", "off"]).await;
        assert!(said.contains("drain pace off"), "{said}");
    };
    let (timeline, ()) = tokio::join!(Timeline::record(&sink, N as usize, LONG), steer);
    let at = changed_at.expect("the rate was changed");
    let second = Duration::from_secs(1);
    let before = timeline.rate(at - second, second);
    let within = timeline.rate(at, second);
    let after = timeline.rate(at + Duration::from_millis(500), Duration::from_millis(1000));
    eprintln!(
        "edge0: {before:.0}/s in the second before `rate 2000/s`, {within:.0}/s in the second after, \
         {after:.0}/s from 0.5 s to 1.5 s after"
    );
    assert!(before <= 300.0, "before the change: {before:.0}/s at drain_rate 200/s");
    assert!(
        within >= 800.0,
        "the new rate did not apply within a second: {within:.0}/s in the second after"
    );
    assert!(
        (1000.0..=2600.0).contains(&after),
        "after the change: {after:.0}/s, want about 2000/s"
    );
    assert_eq!(timeline.last(), N as usize, "{}", sink.describe());
    check_in_order(&sink.messages(), N).unwrap_or_else(|e| panic!("edge0: {e}"));

    // Shown in status until a reload puts the config's rate back.
    let pace = &link_view(&net, "edge0").await["pace"];
    assert_eq!(pace["drain_rate"], Value::Null, "{pace}");
    assert_eq!(pace["config"]["drain_rate"], 200, "{pace}");
    let table = ctl(&net, &["status"]).await;
    assert!(table.contains("off (run-time)"), "{table}");
    ctl(&net, &["reload"]).await;
    let pace = &link_view(&net, "edge0").await["pace"];
    assert_eq!(pace["drain_rate"], 200, "after a reload: {pace}");
    wait_drain_rate(&ferry, "edge0", 200.0).await;
    net.assert_invariant(&ferry, "edge0", "out").await;
}
