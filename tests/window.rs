//! The drain's window across a WAN link (issue 11): a real mosquitto edge at
//! its default `max_inflight_messages` (20, which it announces to an MQTT 5
//! client as its Receive Maximum) behind a 50 ms round trip ([`DelayProxy`]).
//!
//! - `auto_drain_capped_by_a_default_edge_speaks_3_1_1_and_grows_its_window`:
//!   `protocol = "auto"` (the default) and a backlog: the drain switches to
//!   MQTT 3.1.1 (logged, shown on the state topic), its window grows past
//!   `inflight`, and every message arrives, in order, none lost.
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
