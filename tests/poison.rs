//! No poison message (issue 8, item 5): a message the destination can never
//! take, or a destination that refuses or ignores messages for a while,
//! neither blocks a queue nor loops forever.
//!
//! Real mosquitto where it can misbehave on purpose (a `max_packet_size`);
//! the scripted peer ([`testkit::peer`]) where it cannot (chosen PUBACK reason
//! codes, no acknowledgement at all, a PUBLISH on an invalid topic).

use std::sync::Arc;
use std::time::Duration;

use testkit::peer::{start_one_link, Peer, PeerScript, PeerState};
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
use rumqttc::v5::mqttbytes::v5::PubAckReason;

/// The seqs of `payloads`, first occurrences only, in order of arrival.
fn first_seqs(payloads: &[Vec<u8>]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    payloads
        .iter()
        .map(|p| payload_seq(p))
        .filter(|s| seen.insert(*s))
        .collect()
}

const OUT: [(&str, &str); 2] = [("link", "e1"), ("direction", "out")];

/// The labels of link e1's `out` route with `("reason", reason)` first.
fn out_with_reason(reason: &str) -> [(&str, &str); 3] {
    [("reason", reason), OUT[0], OUT[1]]
}

/// Waits until `down` got every seq of `0..n` but `skipped`, and checks that
/// their first arrivals came in order.
async fn assert_delivered_in_order_but(down: &Collector, ferry: &Ferry, n: u64, skipped: u64) {
    assert!(
        down.wait_distinct(n as usize - 1, LONG).await,
        "{}\n{}",
        down.describe(),
        ferry.log_tail(20)
    );
    let payloads: Vec<Vec<u8>> = down.messages().iter().map(|m| m.payload.to_vec()).collect();
    let expected: Vec<u64> = (0..n).filter(|s| *s != skipped).collect();
    assert_eq!(first_seqs(&payloads), expected);
}

/// Starts ferry from `hub` to the scripted `edge` (`extra`: more
/// `[defaults]` lines) and publishes `n` messages of 64 bytes on the hub.
async fn forward_to_peer(hub: &Broker, edge: &Peer, extra: &str, n: u64) -> (tempfile::TempDir, Ferry) {
    let (data, ferry) = start_one_link(FERRY, hub.port(), edge.port(), extra);
    ferry.wait_link_up("e1", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    publish_seqs(hub.addr(), "edge/1/down/t", 0..n, 64).await;
    (data, ferry)
}

/// Waits until `edge` accepted every seq of `0..n` and checks that their
/// first acceptances came in order; returns what the peer saw.
async fn assert_accepted_in_order(edge: &Peer, ferry: &Ferry, n: u64) -> PeerState {
    let all = wait_until(LONG, Duration::from_millis(100), || {
        first_seqs(&edge.state().accepted).len() == n as usize
    })
    .await;
    let st = edge.state();
    let accepted = first_seqs(&st.accepted);
    assert!(all, "accepted {} of {n}\n{}", accepted.len(), ferry.log_tail(20));
    assert_eq!(accepted, (0..n).collect::<Vec<_>>(), "not in order");
    st
}

/// received = forwarded + dropped + queued, as exported, once it settles,
/// and nothing left queued.
async fn assert_invariant(ferry: &Ferry) {
    ferry.assert_invariant(OUT[0].1, OUT[1].1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_the_destination_maximum_is_dropped_and_the_queue_moves_on() {
    const N: u64 = 41;
    const BIG: u64 = 20;
    let hub = Broker::start();
    // mosquitto announces max_packet_size in its CONNACK (Maximum Packet Size).
    let edge = Broker::start_with("max_packet_size 1024\n");
    let (_data, ferry) = start_one_link(FERRY, hub.port(), edge.port(), "");
    let down = Collector::start(edge.addr(), "t-down", "down/#", QoS::AtLeastOnce).await;
    ferry.wait_link_up("e1", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    publish_n(
        hub.addr(),
        |_| "edge/1/down/t".into(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, if s == BIG { 2048 } else { 100 }),
    )
    .await;
    assert_delivered_in_order_but(&down, &ferry, N, BIG).await;
    let dropped = out_with_reason("too_large");
    ferry
        .wait_metric("ferry_messages_dropped_total", &dropped, |v| v == 1.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let log = ferry.log();
    assert!(
        log.lines().any(|l| l.contains("reason=too_large")
            && l.contains("seq=20")
            && l.contains("link=e1")
            && l.contains("size=")),
        "no log line naming link, sequence and size:\n{}",
        ferry.log_tail(20)
    );
    assert_invariant(&ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_retried_until_accepted_in_order() {
    const N: u64 = 1_000;
    let hub = Broker::start();
    let edge = Peer::start(PeerScript::refuse(PubAckReason::QuotaExceeded, |n| n < 100)).await;
    let (_data, ferry) = forward_to_peer(&hub, &edge, "", N).await;
    let st = assert_accepted_in_order(&edge, &ferry, N).await;
    assert!(
        st.received.len() as u64 >= N + 100,
        "the refused ones were not sent again"
    );
    let m = ferry.scrape();
    let rejected = out_with_reason("rejected");
    assert_eq!(m.get_or_zero("ferry_messages_dropped_total", &rejected), 0.0);
    assert!(m.get_or_zero("ferry_publish_retries_total", &OUT) >= 100.0);
    assert_invariant(&ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_dropped_as_rejected() {
    const N: u64 = 200;
    let hub = Broker::start();
    let edge = Peer::start(PeerScript::refuse(PubAckReason::NotAuthorized, |n| n == 10)).await;
    let (_data, ferry) = forward_to_peer(&hub, &edge, "", N).await;
    let rejected = out_with_reason("rejected");
    ferry
        .wait_metric("ferry_messages_dropped_total", &rejected, |v| v == 1.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ok = wait_until(LONG, Duration::from_millis(100), || {
        edge.state().accepted.len() == N as usize - 1
    })
    .await;
    assert!(ok, "accepted {} of {}", edge.state().accepted.len(), N - 1);
    assert_invariant(&ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_that_never_acknowledges_is_stalled_reset_and_delivered() {
    const N: u64 = 500;
    let hub = Broker::start();
    // First connection: no PUBACK at all (but pings are answered).
    let edge = Peer::start(PeerScript {
        ack: Arc::new(|_, conn| (conn > 1).then_some(PubAckReason::Success)),
        ..PeerScript::default()
    })
    .await;
    let (_data, ferry) = forward_to_peer(&hub, &edge, "ack_timeout_secs = 3", N).await;
    ferry
        .wait_metric("ferry_ack_timeouts_total", &OUT, |v| v >= 1.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ferry.wait_log("destination stalled", LONG).await,
        "{}",
        ferry.log_tail(20)
    );
    let st = assert_accepted_in_order(&edge, &ferry, N).await;
    assert!(st.connections >= 2, "the connection was not reset");
    ferry
        .wait_metric("ferry_link_stalled", &OUT, |v| v == 0.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_invariant(&ferry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_topic_with_a_wildcard_is_refused_at_ingest() {
    const N: u64 = 50;
    const BAD: u64 = 25;
    let hub = Peer::start(PeerScript {
        publish_on_subscribe: Some(("edge/1/down/t".to_string(), N, 64)),
        bad_topic_at: Some((BAD, "edge/1/down/a+b".to_string())),
        ..PeerScript::default()
    })
    .await;
    let edge = Broker::start();
    let (_data, ferry) = start_one_link(FERRY, hub.port(), edge.port(), "");
    let down = Collector::start(edge.addr(), "t-down", "down/#", QoS::AtLeastOnce).await;
    assert_delivered_in_order_but(&down, &ferry, N, BAD).await;
    let refused = out_with_reason("invalid_topic");
    ferry
        .wait_metric("ferry_messages_refused_total", &refused, |v| v == 1.0, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ferry.log().contains("reason=invalid_topic"), "{}", ferry.log_tail(20));
    // Acknowledged to the source all the same: it is not redelivered forever.
    let acked = wait_until(LONG, Duration::from_millis(100), || hub.state().acked == N).await;
    assert!(acked, "acked {} of {N}", hub.state().acked);
}

#[test]
fn check_refuses_a_route_mapping_onto_a_wildcard_naming_the_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ferry.toml");
    let text = "data_dir = \"/tmp/x\"\n\
                [[links]]\nname = \"e1\"\nhost = \"127.0.0.1\"\n\
                [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/1/down\"\nremote = \"down/+\"\n";
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let out = run_ferry(FERRY, &["check", "--config", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("ferry.toml:8:"),
        "the error does not name line 8: {stderr}"
    );
}
