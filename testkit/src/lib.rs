//! testkit: the harness of ferry's integration tests and benchmarks: real
//! processes on loopback, no mocks.
//!
//! Every test starts its own mosquitto brokers ([`Broker`]) and its own ferry
//! ([`Ferry`]) on free 127.0.0.1 ports, each with its own temp directory, so
//! tests run in parallel threads of one `cargo test` without sharing anything.
//! Every process is killed when its handle is dropped, also when the test
//! panics; a panicking test prints the tail of ferry's and the brokers' logs.
//!
//! The ferry binary is always passed in by the caller: Cargo tells only the
//! ferry package's own tests and benchmarks where it built it
//! (`env!("CARGO_BIN_EXE_ferry")`), so each of those files has
//! `const FERRY: &str = env!("CARGO_BIN_EXE_ferry");` and hands `FERRY` to
//! [`Ferry::start`], [`run_ferry`] and [`Topology::start_ferry`]. No
//! environment variable or search path can make a test run a stale binary.
//!
//! MQTT traffic is made and checked with MQTT v5 clients (rumqttc): [`publish_n`]
//! publishes numbered messages ([`seq_payload`]) and waits for every ack;
//! a [`Collector`] records everything it receives on a persistent session and
//! survives broker restarts; [`check_in_order`] verifies completeness and order.
//! [`SilentProxy`] simulates a peer that goes silent (powered off, partitioned);
//! [`DelayProxy`] a WAN link (a fixed one-way delay each direction).
//! [`SmallFs`] is a tiny real filesystem for disk-full tests; [`dir_size`] and
//! [`free_bytes`] measure disk use; [`status_kib`] and [`cpu_secs`] read a
//! process's memory and CPU from /proc.
//!
//! Tests wait for conditions ([`wait_until`], [`Collector::wait_count`],
//! [`Ferry::wait_metric`]) with generous timeouts ([`LONG`]), never for fixed
//! times. Async tests use `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
//!
//! A test, in short (the config text is ferry's TOML, with the harness's ports):
//! ```ignore
//! const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
//! let hub = Broker::start();
//! let edge = Broker::start();
//! let data_dir = Ferry::data_dir_for_test();        // outlives ferry's restarts
//! let ferry = Ferry::start(FERRY, &config(data_dir.path(), free_port(), &hub, &edge));
//! let down = Collector::start(edge.addr(), "test-edge1", "down/#", QoS::AtLeastOnce).await;
//! ferry.wait_link_up("edge1", LONG).await.unwrap_or_else(|e| panic!("{e}"));
//! publish_n(hub.addr(), |_| "edge/1/down/x".into(), 1_000, QoS::AtLeastOnce, |s| seq_payload(s, 128)).await;
//! assert!(down.wait_distinct(1_000, LONG).await, "{}", down.describe());
//! check_in_order(&down.messages(), 1_000).unwrap_or_else(|e| panic!("{e}"));
//! ```
//! Before `edge.kill9()`, call `edge.checkpoint()` so the Collector's session
//! (its subscription) is on the broker's disk: otherwise the restarted broker
//! may take ferry's messages before the Collector has subscribed again.
//!
//! One concept per module; a new one (say a test filesystem) is a file here,
//! a `mod` line and a `pub use` line below.

mod broker;
mod delay;
mod disk;
mod ferry;
mod http;
mod metrics;
mod mqtt;
pub mod peer;
mod ports;
pub mod powerfs;
mod process;
mod procfs;
mod proxy;
mod smallfs;
mod timeline;
pub mod tls;
mod topology;
mod wait;

pub use broker::{Broker, MAX_INFLIGHT};
pub use delay::DelayProxy;
pub use disk::{cut_in_half, dir_size, free_bytes};
pub use ferry::{assert_config_refused, run_ferry, run_ferry_bounded, scrape_addr, Ferry};
pub use http::{http_request, HttpReply};
pub use metrics::{Metrics, Sample};
pub use mqtt::{
    check_in_order, check_in_order_across_topics, payload_seq, publish_n, publish_one, publish_seqs, seq_payload,
    seq_payload_intact, Collector, OrderReport, PublishReport, Received,
};
pub use ports::free_port;
pub use procfs::{cpu_secs, status_kib};
pub use proxy::SilentProxy;
pub use rumqttc::v5::mqttbytes::QoS;
pub use smallfs::SmallFs;
pub use timeline::Timeline;
pub use topology::{down_topic, Topology};
pub use wait::{wait_until, wait_until_async, LONG};

/// The last `lines` lines of a text file, or a note saying why there are none.
fn file_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
