//! Failover between two edge brokers of one link (`hosts`): the first is
//! killed -9, the link moves to the second and delivers there; the first
//! comes back, the link returns to it within `failback_secs` and delivers
//! there. Nothing is lost across the moves (duplicates are allowed).

use std::collections::HashSet;
use std::time::Duration;

use testkit::*;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const N: u64 = 200;

fn config(hub: &Broker, a: &Broker, b: &Broker, data: &std::path::Path, metrics_port: u16) -> String {
    format!(
        "data_dir = {:?}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[admin]\nlisten = \"off\"\n\
         [hub]\nhost = \"127.0.0.1\"\nport = {}\n\
         [[links]]\nname = \"edge0\"\nhosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nfailback_secs = 2\n\
         keepalive_secs = 5\nreconnect_max_ms = 1000\n\
         [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/0/down/#\"\nremote = \"down/#\"\nqos = 1\n\
         [[links.routes]]\ndirection = \"in\"\nremote = \"up/#\"\nlocal = \"edge/0/up/#\"\nqos = 1\n",
        data.display().to_string(),
        hub.port(),
        a.port(),
        b.port()
    )
}

/// Waits until every edge connection of edge0 is up on address `index`.
async fn wait_on_address(ferry: &Ferry, index: usize) {
    for role in ["ingest", "drain"] {
        ferry
            .wait_metric(
                "ferry_connection_address_index",
                &[("link", "edge0"), ("side", "edge"), ("role", role)],
                |v| v == index as f64,
                LONG,
            )
            .await
            .unwrap();
        ferry
            .wait_metric(
                "ferry_connection_up",
                &[("link", "edge0"), ("side", "edge"), ("role", role)],
                |v| v == 1.0,
                LONG,
            )
            .await
            .unwrap();
    }
}

/// Distinct seqs received on `topic` by any of `collectors`.
fn seqs(collectors: &[&Collector], topic: &str) -> HashSet<u64> {
    collectors
        .iter()
        .flat_map(|c| c.messages())
        .filter(|m| m.topic == topic)
        .map(|m| payload_seq(&m.payload))
        .collect()
}

async fn wait_all(collectors: &[&Collector], topic: &str) {
    let ok = wait_until(LONG, Duration::from_millis(50), || {
        seqs(collectors, topic).len() as u64 >= N
    })
    .await;
    let got = seqs(collectors, topic).len();
    assert!(ok, "{topic}: {got} of {N} distinct messages arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_moves_to_the_second_host_and_back_to_the_first_losing_nothing() {
    let hub = Broker::start();
    let mut a = Broker::start();
    let b = Broker::start();
    let data = Ferry::data_dir_for_test();
    let ferry = Ferry::start(FERRY, &config(&hub, &a, &b, data.path(), free_port()));
    wait_on_address(&ferry, 0).await;

    let down_a = Collector::start(a.addr(), "t-down-a", "down/#", QoS::AtLeastOnce).await;
    let down_b = Collector::start(b.addr(), "t-down-b", "down/#", QoS::AtLeastOnce).await;
    let up = Collector::start(hub.addr(), "t-up", "edge/0/up/#", QoS::AtLeastOnce).await;
    let both = [&down_a, &down_b];

    // On the first broker.
    publish_n(
        hub.addr(),
        |_| "edge/0/down/1".into(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    wait_all(&[&down_a], "down/1").await;
    publish_n(a.addr(), |_| "up/1".into(), N, QoS::AtLeastOnce, |s| seq_payload(s, 64)).await;
    wait_all(&[&up], "edge/0/up/1").await;

    // The first dies: published meanwhile, delivered on the second.
    a.checkpoint();
    a.kill9();
    publish_n(
        hub.addr(),
        |_| "edge/0/down/2".into(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    wait_on_address(&ferry, 1).await;
    wait_all(&[&down_b], "down/2").await;
    publish_n(b.addr(), |_| "up/2".into(), N, QoS::AtLeastOnce, |s| seq_payload(s, 64)).await;
    wait_all(&[&up], "edge/0/up/2").await;

    // The first comes back: the link returns to it (failback_secs = 2) and delivers there.
    a.restart();
    wait_on_address(&ferry, 0).await;
    publish_n(
        hub.addr(),
        |_| "edge/0/down/3".into(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    wait_all(&[&down_a], "down/3").await;
    publish_n(a.addr(), |_| "up/3".into(), N, QoS::AtLeastOnce, |s| seq_payload(s, 64)).await;
    wait_all(&[&up], "edge/0/up/3").await;

    for topic in ["down/1", "down/2", "down/3"] {
        assert_eq!(seqs(&both, topic).len() as u64, N, "{topic}");
    }
    let log = ferry.log();
    assert!(
        log.contains("moving back to it"),
        "no failback in the log: {}",
        ferry.log_tail(30)
    );
}
