//! Self-test of the integration-test harness (testkit/): if these fail,
//! no other integration test can be trusted. Each test checks one promise the
//! harness makes to the others, against real mosquitto processes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn accepts_tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A port is free when we can listen on it ourselves.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn metrics_text_is_parsed_with_label_subsets() {
    let text = "# HELP ferry_link_up 1 when up\n\
                # TYPE ferry_link_up gauge\n\
                ferry_link_up{link=\"edge1\"} 1\n\
                ferry_messages_dropped_total{link=\"edge1\",direction=\"out\",reason=\"overflow\"} 3\n\
                ferry_messages_dropped_total{link=\"edge1\",direction=\"out\",reason=\"expired\"} 4\n\
                odd{v=\"a \\\"quoted\\\", {brace}\\\\\"} 2.5 1700000000000\n\
                lat_bucket{le=\"+Inf\"} 7\n\
                plain 42\n";
    let metrics = Metrics::parse(text).expect("valid exposition text");
    assert_eq!(metrics.get("ferry_link_up", &[("link", "edge1")]), Some(1.0));
    assert_eq!(
        metrics.get("ferry_messages_dropped_total", &[("link", "edge1")]),
        Some(7.0)
    );
    assert_eq!(
        metrics.get("ferry_messages_dropped_total", &[("reason", "expired")]),
        Some(4.0)
    );
    assert_eq!(metrics.get("ferry_link_up", &[("link", "edge2")]), None);
    assert_eq!(metrics.get_or_zero("ferry_link_up", &[("link", "edge2")]), 0.0);
    assert_eq!(metrics.get("odd", &[("v", "a \"quoted\", {brace}\\")]), Some(2.5));
    assert_eq!(metrics.get("lat_bucket", &[("le", "+Inf")]), Some(7.0));
    assert_eq!(metrics.values.get("plain"), Some(&42.0));
    assert_eq!(metrics.values.get("ferry_link_up{link=\"edge1\"}"), Some(&1.0));
    assert!(Metrics::parse("broken{link=\"x} 1\n").is_err());
}

fn message(topic: &str, seq: u64) -> Received {
    Received {
        topic: topic.to_string(),
        payload: seq_payload(seq, 16).into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        dup: false,
    }
}

#[test]
fn order_check_finds_loss_reordering_and_counts_duplicates() {
    let in_order: Vec<Received> = (0..5).map(|s| message("a", s)).collect();
    let report = check_in_order(&in_order, 5).expect("in order");
    assert_eq!((report.distinct, report.duplicates, report.topics), (5, 0, 1));

    // A replay from seq 2 after a reconnect: duplicates, still in order.
    let replayed: Vec<Received> = [0, 1, 2, 3, 2, 3, 4].iter().map(|&s| message("a", s)).collect();
    let report = check_in_order(&replayed, 5).expect("duplicates are allowed");
    assert_eq!((report.distinct, report.duplicates), (5, 2));

    let missing: Vec<Received> = [0, 1, 3, 4].iter().map(|&s| message("a", s)).collect();
    let error = check_in_order(&missing, 5).expect_err("seq 2 is missing");
    assert!(error.contains("missing 1 of 5 seqs: [2]"), "{error}");

    let swapped: Vec<Received> = [0, 2, 1, 3, 4].iter().map(|&s| message("a", s)).collect();
    let error = check_in_order(&swapped, 5).expect_err("1 after 2");
    assert!(error.contains("seq 1 first seen after seq 2"), "{error}");

    let out_of_range: Vec<Received> = [0, 1, 2, 3, 4, 9].iter().map(|&s| message("a", s)).collect();
    assert!(check_in_order(&out_of_range, 5).is_err());

    // Two topics interleaved: in order per topic, not across them.
    let interleaved = vec![message("a", 0), message("b", 2), message("a", 1), message("b", 3)];
    assert!(check_in_order(&interleaved, 4).is_ok());
    assert!(check_in_order_across_topics(&interleaved, 4).is_err());
}

#[test]
fn seq_payloads_round_trip_and_detect_corruption() {
    let payload = seq_payload(123_456, 128);
    assert_eq!(payload.len(), 128);
    assert_eq!(payload_seq(&payload), 123_456);
    assert!(seq_payload_intact(&payload));
    let mut corrupt = payload.clone();
    corrupt[100] ^= 1;
    assert!(!seq_payload_intact(&corrupt));
    assert_eq!(seq_payload(7, 0).len(), 8, "a seq payload has at least the seq");
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    assert!(ports.iter().all(|&p| port_is_free(p)), "{ports:?}");
}

#[test]
fn broker_starts_stops_restarts_and_frees_its_port() {
    let mut broker = Broker::start();
    let port = broker.port();
    assert!(broker.is_running());
    assert!(accepts_tcp(broker.addr()));

    assert!(broker.stop().is_some(), "stop returns the exit status");
    assert!(!broker.is_running());
    assert!(port_is_free(port), "port {port} still taken after stop");

    broker.restart();
    assert!(broker.is_running());
    assert_eq!(broker.port(), port, "restart keeps the port");
    assert!(accepts_tcp(broker.addr()));

    broker.kill9();
    assert!(!broker.is_running());
    assert!(!accepts_tcp(broker.addr()));
    assert!(port_is_free(port), "port {port} still taken after kill -9");

    broker.restart();
    assert!(accepts_tcp(broker.addr()));
    assert!(broker.log_tail().contains("running"), "{}", broker.log_tail());

    let extra = Broker::start_with("max_keepalive 120");
    assert!(accepts_tcp(extra.addr()));
    let extra_port = extra.port();
    drop(extra);
    drop(broker);
    assert!(
        port_is_free(port) && port_is_free(extra_port),
        "dropping a Broker kills it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_all_collected_in_order() {
    let broker = Broker::start();
    let collector = Collector::start(broker.addr(), "harness-order", "order/#", QoS::AtLeastOnce).await;

    let report = publish_n(
        broker.addr(),
        |seq| format!("order/{}", seq % 3),
        2_000,
        QoS::AtLeastOnce,
        |seq| seq_payload(seq, 128),
    )
    .await;
    assert_eq!(report.acked, 2_000);
    assert!(collector.wait_count(2_000, LONG).await, "{}", collector.describe());
    let messages = collector.messages();
    let order = check_in_order(&messages, 2_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(order.duplicates, 0);
    assert_eq!(order.topics, 3);
    // One publisher, one broker: the order holds across topics too.
    check_in_order_across_topics(&messages, 2_000).unwrap_or_else(|e| panic!("{e}"));
    assert!(messages
        .iter()
        .all(|m| seq_payload_intact(&m.payload) && m.payload.len() == 128));
    assert_eq!(collector.distinct_seqs().len(), 2_000);

    // QoS 2 goes through its own acknowledgement (PUBREC/PUBREL/PUBCOMP).
    let exactly_once = Collector::start(broker.addr(), "harness-qos2", "qos2/#", QoS::ExactlyOnce).await;
    publish_n(
        broker.addr(),
        |_| "qos2/x".into(),
        300,
        QoS::ExactlyOnce,
        |seq| seq_payload(seq, 32),
    )
    .await;
    assert!(exactly_once.wait_count(300, LONG).await, "{}", exactly_once.describe());
    check_in_order(&exactly_once.messages(), 300).unwrap_or_else(|e| panic!("{e}"));
    assert!(exactly_once.messages().iter().all(|m| m.qos == QoS::ExactlyOnce));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_and_retained_messages_pass_unchanged() {
    let broker = Broker::start();
    let collector = Collector::start(broker.addr(), "harness-large", "large/#", QoS::AtLeastOnce).await;
    let sizes = [8usize, 200 * 1024, 1024 * 1024];
    publish_n(
        broker.addr(),
        |_| "large/x".into(),
        3,
        QoS::AtLeastOnce,
        |seq| seq_payload(seq, sizes[seq as usize]),
    )
    .await;
    assert!(collector.wait_count(3, LONG).await, "{}", collector.describe());
    let received: Vec<usize> = collector.messages().iter().map(|m| m.payload.len()).collect();
    assert_eq!(received, sizes);
    assert!(collector.messages().iter().all(|m| seq_payload_intact(&m.payload)));

    publish_one(broker.addr(), "retained/ü", b"kept", QoS::AtLeastOnce, true).await;
    let late = Collector::start(broker.addr(), "harness-retained", "retained/#", QoS::AtLeastOnce).await;
    assert!(late.wait_count(1, LONG).await, "{}", late.describe());
    let retained = &late.messages()[0];
    assert_eq!(
        (retained.topic.as_str(), &retained.payload[..], retained.retain),
        ("retained/ü", &b"kept"[..], true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_keeps_its_session_across_broker_restarts() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let collector = Collector::start(addr, "harness-session", "session/#", QoS::AtLeastOnce).await;
    publish_n(
        addr,
        |_| "session/a".into(),
        500,
        QoS::AtLeastOnce,
        |seq| seq_payload(seq, 64),
    )
    .await;
    assert!(collector.wait_distinct(500, LONG).await, "{}", collector.describe());

    // Restarted under the connected collector: it reconnects to its saved session.
    broker.stop();
    broker.restart();
    assert!(
        wait_until(LONG, Duration::from_millis(20), || collector.connect_count() >= 2).await,
        "{}",
        collector.describe()
    );
    assert!(collector.session_present(), "the broker saved the session at SIGTERM");
    publish_n(
        addr,
        |_| "session/a".into(),
        500,
        QoS::AtLeastOnce,
        |seq| seq_payload(500 + seq, 64),
    )
    .await;
    assert!(collector.wait_distinct(1_000, LONG).await, "{}", collector.describe());
    let mut all = collector.messages();

    // Away while messages are published and the broker restarts: they are
    // queued in its session, saved, and delivered when it comes back.
    collector.stop().await;
    publish_n(
        addr,
        |_| "session/a".into(),
        500,
        QoS::AtLeastOnce,
        |seq| seq_payload(1_000 + seq, 64),
    )
    .await;
    broker.stop();
    broker.restart();
    let back = Collector::start(addr, "harness-session", "session/#", QoS::AtLeastOnce).await;
    assert!(back.session_present(), "session kept while the collector was away");
    assert!(back.wait_count(500, LONG).await, "{}", back.describe());
    all.extend(back.messages());
    check_in_order(&all, 1_500).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_session_survives_kill9_after_a_checkpoint() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let collector = Collector::start(addr, "harness-kill9", "k/#", QoS::AtLeastOnce).await;
    broker.checkpoint();
    broker.kill9();
    broker.restart();
    assert!(
        wait_until(LONG, Duration::from_millis(20), || collector.connect_count() >= 2).await,
        "{}",
        collector.describe()
    );
    assert!(collector.session_present(), "the autosaved session was restored");
    publish_n(
        addr,
        |_| "k/x".into(),
        200,
        QoS::AtLeastOnce,
        |seq| seq_payload(seq, 16),
    )
    .await;
    assert!(collector.wait_count(200, LONG).await, "{}", collector.describe());
    check_in_order(&collector.messages(), 200).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_resends_across_a_broker_restart() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let collector = Collector::start(addr, "harness-resend", "resend/#", QoS::AtLeastOnce).await;
    let publisher = tokio::spawn(async move {
        publish_n(
            addr,
            |_| "resend/x".into(),
            20_000,
            QoS::AtLeastOnce,
            |seq| seq_payload(seq, 64),
        )
        .await
    });
    assert!(collector.wait_count(2_000, LONG).await, "{}", collector.describe());
    broker.stop();
    broker.restart();
    let report = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("publish_n finishes after the restart")
        .expect("publish_n did not panic");
    assert_eq!(report.acked, 20_000);
    assert!(collector.wait_distinct(20_000, LONG).await, "{}", collector.describe());
    let order = check_in_order(&collector.messages(), 20_000).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("across a broker restart: {order}; publisher: {report:?}");
}

/// MQTT 3.1.1 CONNECT (client id "px", keepalive 60 s), CONNACK, PINGREQ, PINGRESP.
const CONNECT: [u8; 16] = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'p', b'x'];
const PINGREQ: [u8; 2] = [0xC0, 0];
const PINGRESP: [u8; 2] = [0xD0, 0];

/// Reads exactly `len` bytes, or fails after `timeout` (`Err("timeout")`) or at end of stream.
async fn read_exact_within(
    stream: &mut tokio::net::TcpStream,
    len: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut buffer = vec![0u8; len];
    match tokio::time::timeout(timeout, stream.read_exact(&mut buffer)).await {
        Ok(Ok(_)) => Ok(buffer),
        Ok(Err(e)) => Err(format!("read failed: {e}")),
        Err(_) => Err("timeout".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_proxy_passes_holds_and_resumes_bytes() {
    let broker = Broker::start();
    let proxy = SilentProxy::start(broker.addr()).await;
    let quiet = Duration::from_millis(1_500);

    let mut client = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("proxy accepts");
    client.write_all(&CONNECT).await.expect("send CONNECT");
    let connack = read_exact_within(&mut client, 4, LONG)
        .await
        .expect("CONNACK through the proxy");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    client.write_all(&PINGREQ).await.expect("send PINGREQ");
    assert_eq!(
        read_exact_within(&mut client, 2, LONG).await.expect("PINGRESP"),
        PINGRESP
    );

    // Silent: the ping gets no answer, and the socket is not closed either.
    proxy.set_silent(true);
    assert!(proxy.is_silent());
    client
        .write_all(&PINGREQ)
        .await
        .expect("a silent peer still takes bytes");
    assert_eq!(
        read_exact_within(&mut client, 2, quiet).await,
        Err("timeout".to_string())
    );

    // Resumed: the held ping reaches the broker, and its answer comes back.
    proxy.set_silent(false);
    assert_eq!(
        read_exact_within(&mut client, 2, LONG)
            .await
            .expect("PINGRESP after resume"),
        PINGRESP
    );

    // A connection made while silent is held until the proxy resumes.
    proxy.set_silent(true);
    let mut held = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("TCP handshake with the proxy");
    held.write_all(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'p', b'y'])
        .await
        .expect("send");
    assert_eq!(read_exact_within(&mut held, 4, quiet).await, Err("timeout".to_string()));
    proxy.set_silent(false);
    assert_eq!(
        read_exact_within(&mut held, 4, LONG)
            .await
            .expect("CONNACK after resume"),
        [0x20, 2, 0, 0]
    );
    assert_eq!(proxy.accepted_connections(), 2);
    assert_eq!(proxy.open_connections(), 2);

    // Killed: both clients see their connection end.
    proxy.kill_connections();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LONG, client.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "connection closed: {closed:?}"
    );
    let closed = tokio::time::timeout(LONG, held.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "connection closed: {closed:?}"
    );
    assert!(wait_until(LONG, Duration::from_millis(20), || proxy.open_connections() == 0).await);
}

fn ferry_config(data_dir: &std::path::Path, metrics_port: u16, hub: &Broker, edge: &Broker) -> String {
    format!(
        r#"data_dir = "{data}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[admin]
listen = "off"

[hub]
host = "127.0.0.1"
port = {hub_port}
client_id = "ferry-hub"

[[links]]
name = "edge1"
host = "127.0.0.1"
port = {edge_port}
client_id = "ferry-edge1"

[[links.routes]]
direction = "out"
local = "edge/1/down/#"
remote = "down/#"
qos = 1
"#,
        data = data_dir.display(),
        hub_port = hub.port(),
        edge_port = edge.port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_process_is_started_scraped_killed_restarted_and_terminated() {
    let hub = Broker::start();
    let edge = Broker::start();
    let data_dir = Ferry::data_dir_for_test();
    let config = ferry_config(data_dir.path(), free_port(), &hub, &edge);

    let check_dir = tempfile::tempdir().expect("temp dir");
    let check_path = check_dir.path().join("ferry.toml");
    std::fs::write(&check_path, &config).expect("write config");
    let check = run_ferry(FERRY, &["check", "--config", &check_path.display().to_string()]);
    assert!(check.status.success(), "ferry check failed: {check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("edge1"), "{check:?}");

    let mut ferry = Ferry::start(FERRY, &config);
    ferry
        .wait_link_up("edge1", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ferry.scrape().get("ferry_link_up", &[("link", "edge1")]), Some(1.0));
    let missing = ferry
        .wait_metric(
            "ferry_link_up",
            &[("link", "no-such-link")],
            |_| true,
            Duration::from_millis(300),
        )
        .await;
    assert!(missing.is_err(), "a metric never exported times out");

    ferry.kill9();
    assert!(!ferry.is_running());
    assert!(ferry.try_scrape().is_err(), "nothing serves metrics after kill -9");

    ferry.restart();
    ferry
        .wait_link_up("edge1", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = ferry.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean shutdown: {status:?}\n{}",
        ferry.log_tail(40)
    );
    let log = ferry.log();
    assert!(
        log.contains("ferry start #1") && log.contains("ferry start #2"),
        "{log}"
    );
}
