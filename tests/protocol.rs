//! MQTT 3.1.1 links (issue 9, item 3): the same delivery chain as MQTT 5.
//!
//! - `v311_and_v5_links_side_by_side_deliver_everything_in_order`: one ferry,
//!   two real mosquitto edges, `protocol = "3.1.1"` forced on one link; all
//!   messages arrive both ways, in order, and the state topic shows the
//!   protocol each side speaks.
//! - `ferry_killed_mid_stream_on_a_v311_link_loses_nothing`: kill -9 while
//!   the edge publishes over a 3.1.1 ingest session; after the restart the
//!   persistent 3.1.1 session gives ferry everything it had not stored.
//! - `auto_reaches_a_broker_that_refuses_v5`: a scripted edge that answers a
//!   v5 CONNECT with reason 0x84 and speaks only 3.1.1; `protocol = "auto"`
//!   (the default) reaches it and delivers everything, in order.
//! - `v311_source_sending_everything_at_once_is_taken_on_one_connection`: the
//!   wedge of issue 8 over 3.1.1 (which has no Receive Maximum at all): a
//!   scripted 3.1.1 hub sends 20,000 messages at once; ferry's ingest keeps
//!   reading and acknowledging on the one connection (connection::Intake).

use testkit::peer::{one_link_config, Peer, PeerScript};
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `net`'s config with link `edge<i>` forced to MQTT 3.1.1 on its edge side.
fn with_v311_link(net: &Topology, i: usize) -> String {
    let name = format!("name = \"edge{i}\"\n");
    net.config().replace(&name, &format!("{name}protocol = \"3.1.1\"\n"))
}

/// The last retained state of `link` that `states` received.
fn last_state(states: &Collector, link: &str) -> Option<serde_json::Value> {
    states
        .messages()
        .into_iter()
        .filter(|m| m.topic == format!("ferry/{link}/state"))
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .last()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_and_v5_links_side_by_side_deliver_everything_in_order() {
    const N: u64 = 2_000;
    let net = Topology::start(2, "");
    let ferry = Ferry::start(FERRY, &with_v311_link(&net, 0));
    net.wait_all_up(&ferry).await;

    net.send_both_ways_and_check(N).await;
    for link in ["edge0", "edge1"] {
        for direction in ["out", "in"] {
            net.assert_invariant(&ferry, link, direction).await;
        }
    }

    // The state topic says which protocol each side speaks.
    let states = Collector::start(net.hub.addr(), "t-states", "ferry/+/state", QoS::AtLeastOnce).await;
    let shown = wait_until_async(LONG, std::time::Duration::from_millis(200), || {
        let ok = [("edge0", "3.1.1"), ("edge1", "5")].iter().all(|(link, edge)| {
            last_state(&states, link).is_some_and(|s| s["protocol"]["edge"] == *edge && s["protocol"]["hub"] == "5")
        });
        async move { ok }
    })
    .await;
    assert!(
        shown,
        "state topic: edge0 {:?}, edge1 {:?}",
        last_state(&states, "edge0"),
        last_state(&states, "edge1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_killed_mid_stream_on_a_v311_link_loses_nothing() {
    const N: u64 = 20_000;
    let net = Topology::start(1, "");
    let mut ferry = Ferry::start(FERRY, &with_v311_link(&net, 0));
    net.wait_all_up(&ferry).await;
    let up = Collector::start(net.hub.addr(), "t-up", "edge/0/up/#", QoS::AtLeastOnce).await;

    let edge = net.edges[0].addr();
    let publisher = tokio::spawn(async move {
        publish_n(
            edge,
            |_| "up/t".to_string(),
            N,
            QoS::AtLeastOnce,
            |s| seq_payload(s, 128),
        )
        .await
    });
    // Mid-stream: some messages are through, most are not.
    let started = up.wait_count(N as usize / 10, LONG).await;
    assert!(started, "nothing forwarded before the kill: {}", up.describe());
    ferry.kill9();
    assert!(up.distinct_count() < N as usize, "the stream ended before the kill");
    publisher.await.expect("publisher task");

    // What ferry had not stored waits in its 3.1.1 session on the edge.
    ferry.restart();
    assert!(up.wait_distinct(N as usize, LONG).await, "{}", up.describe());
    let report = check_in_order(&up.messages(), N).unwrap();
    eprintln!("3.1.1 link after kill -9 of ferry: {report}");
    net.assert_invariant(&ferry, "edge0", "in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reaches_a_broker_that_refuses_v5() {
    const N: u64 = 1_000;
    let edge = Peer::start(PeerScript {
        refuse_v5: true,
        ..PeerScript::default()
    })
    .await;
    let hub = Broker::start();
    let data = Ferry::data_dir_for_test();
    // No `protocol` anywhere: "auto" is the default.
    let ferry = Ferry::start(
        FERRY,
        &one_link_config(data.path(), free_port(), hub.port(), edge.port(), ""),
    );
    ferry
        .wait_link_up("e1", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}; peer {:?}", edge.state()));
    publish_n(
        hub.addr(),
        |_| "edge/1/down/t".to_string(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 128),
    )
    .await;
    let delivered = wait_until_async(LONG, std::time::Duration::from_millis(100), || {
        let n = edge.state().accepted.len();
        async move { n >= N as usize }
    })
    .await;
    let st = edge.state();
    assert!(
        delivered,
        "accepted {} of {N}; peer {:?}",
        st.accepted.len(),
        st.refused_v5
    );
    let seqs: Vec<u64> = st.accepted.iter().map(|p| payload_seq(p)).collect();
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct, (0..N).collect::<Vec<_>>(), "out of order or missing");
    assert!(st.refused_v5 >= 1, "ferry never tried MQTT 5");
    assert!(st.connections_v311 >= 1);
    assert!(
        ferry.log().contains("broker refuses MQTT 5; trying MQTT 3.1.1"),
        "{}",
        ferry.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_source_sending_everything_at_once_is_taken_on_one_connection() {
    const N: u64 = 20_000;
    let hub = Peer::start(PeerScript {
        refuse_v5: true,
        publish_on_subscribe: Some(("edge/1/down/t".to_string(), N, 1024)),
        ..PeerScript::default()
    })
    .await;
    let edge = Broker::start();
    let data = Ferry::data_dir_for_test();
    let cfg = one_link_config(data.path(), free_port(), hub.port(), edge.port(), "");
    let ferry = Ferry::start(FERRY, &cfg.replace("[hub]\n", "[hub]\nprotocol = \"3.1.1\"\n"));
    let down = Collector::start(edge.addr(), "t-down", "down/#", QoS::AtLeastOnce).await;
    let all = down.wait_distinct(N as usize, LONG).await;
    let peer = hub.state();
    assert!(
        all,
        "delivered {} of {N}; peer sent {} acked {}\n{}",
        down.distinct_count(),
        peer.sent,
        peer.acked,
        ferry.log_tail(30)
    );
    check_in_order(&down.messages(), N).unwrap_or_else(|e| panic!("{e}"));
    let acked = wait_until(LONG, std::time::Duration::from_millis(100), || hub.state().acked == N).await;
    assert!(acked, "acknowledged {} of {N}", hub.state().acked);
    let peer = hub.state();
    assert_eq!(
        (peer.refused_v5, peer.connections_v311, peer.connections),
        (0, 1, 1),
        "one 3.1.1 connection: {}",
        ferry.log_tail(30)
    );
    assert!(
        peer.max_unacked > 1_000,
        "the peer must have sent far more than inflight: {}",
        peer.max_unacked
    );
    let hub_ingest = [("link", "e1"), ("side", "hub"), ("role", "ingest")];
    assert!(
        ferry
            .scrape()
            .get_or_zero("ferry_receive_maximum_exceeded_total", &hub_ingest)
            > 0.0
    );
}
