//! The drain's window across a WAN link (issue 11): a real mosquitto edge at
//! its default `max_inflight_messages` (20, which it announces to an MQTT 5
//! client as its Receive Maximum) behind a 50 ms round trip ([`DelayProxy`]).
//!
//! - `auto_drain_capped_by_a_default_edge_speaks_3_1_1_and_grows_its_window`:
//!   `protocol = "auto"` (the default) and a backlog: the drain switches to
//!   MQTT 3.1.1 (logged, shown on the state topic), its window grows past
//!   `inflight`, and every message arrives, in order, none lost.
//! - `idle_auto_drain_speaks_3_1_1_before_any_traffic`: a Receive Maximum
//!   (20) below `inflight` (100) is lifted at connect, not during the first
//!   burst: the idle link already shows 3.1.1.
//! - `a_message_with_v5_properties_moves_the_drain_back_to_mqtt_5`: after
//!   `auto` moved the drain to 3.1.1, a message with MQTT 5 properties
//!   arrives with them (the drain went back to MQTT 5, for good), and
//!   nothing is counted as sent without its properties.
//! - `protocol_5_keeps_mqtt_5_and_the_brokers_cap`: `protocol = "5"` stays on
//!   MQTT 5 with the broker's 20 in flight (and the warning), and delivers
//!   everything in order.
//!
//! Speed is not asserted here (benchmarks do that); the window metric and
//! the protocol are.

use std::time::Duration;

use testkit::peer::one_link_config;
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// mosquitto's shipped default, which testkit's brokers raise.
const EDGE_DEFAULTS: &str = "max_inflight_messages 20\n";

/// A hub, an edge at its default in-flight limit behind a 50 ms round trip,
/// and ferry's one link `e1` to it (state topic on), with `extra` in `[defaults]`.
struct Wan {
    hub: Broker,
    edge: Broker,
    _proxy: DelayProxy,
    _data: tempfile::TempDir,
    ferry: Ferry,
}

impl Wan {
    async fn start(extra: &str) -> Wan {
        let hub = Broker::start();
        let edge = Broker::start_with(EDGE_DEFAULTS);
        let proxy = DelayProxy::start(edge.addr(), Duration::from_millis(25)).await;
        let data = Ferry::data_dir_for_test();
        let config = one_link_config(data.path(), free_port(), hub.port(), proxy.port(), extra)
            .replace("state_topic = \"off\"\n", "");
        let ferry = Ferry::start(FERRY, &config);
        ferry.wait_link_up("e1", LONG).await.unwrap_or_else(|e| panic!("{e}"));
        Wan {
            hub,
            edge,
            _proxy: proxy,
            _data: data,
            ferry,
        }
    }

    /// Publishes `n` numbered messages on the hub and checks they all reach
    /// the edge, in order.
    async fn send_and_check(&self, n: u64) {
        let down = Collector::start(self.edge.addr(), "t-down", "down/#", QoS::AtLeastOnce).await;
        publish_seqs(self.hub.addr(), "edge/1/down/x", 0..n, 128).await;
        assert!(down.wait_distinct(n as usize, LONG).await, "{}", down.describe());
        check_in_order(&down.messages(), n).unwrap_or_else(|e| panic!("{e}"));
        self.ferry.assert_invariant("e1", "out", true).await;
    }

    /// The edge protocol the link's retained state shows, once it is `want`.
    async fn wait_edge_protocol(&self, want: &str) -> bool {
        let states = Collector::start(self.hub.addr(), "t-states", "ferry/e1/state", QoS::AtLeastOnce).await;
        wait_until_async(LONG, Duration::from_millis(200), || {
            let shown = states
                .messages()
                .into_iter()
                .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
                .last()
                .is_some_and(|s| s["protocol"]["edge"] == want);
            async move { shown }
        })
        .await
    }

    fn window(&self) -> f64 {
        self.ferry
            .scrape()
            .get_or_zero("ferry_drain_window", &[("link", "e1"), ("direction", "out")])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_drain_capped_by_a_default_edge_speaks_3_1_1_and_grows_its_window() {
    const N: u64 = 20_000;
    let wan = Wan::start("").await;
    wan.send_and_check(N).await;

    assert!(
        wan.ferry.wait_log("speaking MQTT 3.1.1 on it", LONG).await,
        "no log line saying why the drain speaks 3.1.1:\n{}",
        wan.ferry.log_tail(40)
    );
    assert!(
        wan.ferry.log().contains("protocol = \"5\""),
        "the log line says how to keep MQTT 5"
    );
    assert!(
        wan.wait_edge_protocol("3.1.1").await,
        "the state topic shows 3.1.1 on the edge"
    );
    // Grown past the broker's 20 and past inflight (100), where each connection starts.
    let window = wan.window();
    assert!(window > 100.0, "drain window {window}: did not grow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_auto_drain_speaks_3_1_1_before_any_traffic() {
    let wan = Wan::start("").await;
    assert!(
        wan.wait_edge_protocol("3.1.1").await,
        "the idle link still speaks MQTT 5 to an edge whose Receive Maximum (20) is below inflight:\n{}",
        wan.ferry.log_tail(20)
    );
    assert!(
        wan.ferry
            .log()
            .contains("is below inflight (100): speaking MQTT 3.1.1 on it"),
        "no log line saying why:\n{}",
        wan.ferry.log_tail(20)
    );
    wan.send_and_check(2_000).await;
}

/// What a v5 subscriber on the edge receives: (topic, user properties).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>;

async fn subscribe_v5(addr: std::net::SocketAddr, filter: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::{mqttbytes::v5::Packet, AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new("t-props", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    let seen: Seen = Default::default();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let filter = filter.to_string();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.map(|pr| pr.user_properties).unwrap_or_default();
                        let topic = String::from_utf8_lossy(&p.topic).to_string();
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push((topic, props));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    tokio::time::timeout(LONG, subscribed_rx)
        .await
        .expect("subscriber: no SUBACK")
        .expect("subscriber task ended");
    (seen, task)
}

async fn publish_with_user_property(addr: std::net::SocketAddr, topic: &str) {
    use rumqttc::v5::{mqttbytes::v5::Packet, mqttbytes::v5::PublishProperties, AsyncClient, Event, MqttOptions};
    let o = MqttOptions::new("t-props-pub", addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let props = PublishProperties {
        user_properties: vec![("origin".to_string(), "line-7".to_string())],
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, "with properties", props)
        .await
        .expect("queue the publish");
    let acked = tokio::time::timeout(LONG, async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the hub did not acknowledge the message with properties");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_v5_properties_moves_the_drain_back_to_mqtt_5() {
    let wan = Wan::start("").await;
    // A backlog without properties: the drain speaks 3.1.1 (at connect, or
    // when the cap binds).
    wan.send_and_check(5_000).await;
    assert!(wan.wait_edge_protocol("3.1.1").await, "the drain moved to 3.1.1");

    let (seen, task) = subscribe_v5(wan.edge.addr(), "down/props/#").await;
    publish_with_user_property(wan.hub.addr(), "edge/1/down/props/x").await;
    let arrived = wait_until(LONG, Duration::from_millis(100), || {
        !seen.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    })
    .await;
    let got = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    task.abort();
    assert!(
        arrived,
        "the message with properties did not arrive:\n{}",
        wan.ferry.log_tail(30)
    );
    assert_eq!(
        got[0],
        (
            "down/props/x".to_string(),
            vec![("origin".to_string(), "line-7".to_string())]
        ),
        "its user property is lost: {got:?}"
    );
    let dropped = wan.ferry.scrape().get_or_zero(
        "ferry_v5_properties_dropped_total",
        &[("link", "e1"), ("direction", "out")],
    );
    assert_eq!(dropped, 0.0, "messages sent without their properties");
    assert!(wan.wait_edge_protocol("5").await, "the state topic shows 5 on the edge");
    // And it stays there: what follows is delivered over MQTT 5, in order.
    let after = Collector::start(wan.edge.addr(), "t-after", "down/x", QoS::AtLeastOnce).await;
    publish_seqs(wan.hub.addr(), "edge/1/down/x", 0..2_000, 128).await;
    assert!(after.wait_distinct(2_000, LONG).await, "{}", after.describe());
    check_in_order(&after.messages(), 2_000).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wan.wait_edge_protocol("5").await,
        "back on 3.1.1 after the message with properties"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_5_keeps_mqtt_5_and_the_brokers_cap() {
    const N: u64 = 2_000;
    let wan = Wan::start("protocol = \"5\"\n").await;
    wan.send_and_check(N).await;

    assert!(wan.wait_edge_protocol("5").await, "the state topic shows 5 on the edge");
    assert_eq!(wan.window(), 20.0, "the broker's Receive Maximum is binding on MQTT 5");
    assert!(
        wan.ferry.log().contains("caps this MQTT 5 connection below inflight"),
        "warned about the cap:\n{}",
        wan.ferry.log_tail(40)
    );
    assert!(!wan.ferry.log().contains("speaking MQTT 3.1.1"));
}
