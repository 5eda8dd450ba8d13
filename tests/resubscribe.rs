//! A link whose routes are edited keeps every message: on each connect the
//! persistent session's subscriptions are brought in line with the routes
//! (SUBSCRIBE what is new, UNSUBSCRIBE what is gone), and a route's
//! subscription identifier does not move when other routes come or go.
//! Real mosquitto on both sides, both directions, MQTT 5 and 3.1.1.
//!
//! Route `n` of a test is a pair: `out` `{n}/#` -> `r{n}/#` (hub -> edge)
//! and `in` `u{n}/#` -> `hub/u{n}/#` (edge -> hub).

use std::time::Duration;

use testkit::*;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const N: u64 = 100;

struct Net {
    topology: Topology,
    protocol: &'static str,
}

impl Net {
    fn start(protocol: &'static str) -> Net {
        Net {
            topology: Topology::start(1, ""),
            protocol,
        }
    }

    /// The config with one link `e` carrying the route pairs `routes`, in order.
    fn config(&self, routes: &[&str]) -> String {
        let net = &self.topology;
        let head = net
            .config_head(net.data.path(), net.metrics_port, net.admin_port)
            .replace("[hub]\n", &format!("[hub]\nprotocol = \"{}\"\n", self.protocol));
        let mut c = format!(
            "{head}[[links]]\nname = \"e\"\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"{}\"\n",
            self.edge().port(),
            self.protocol
        );
        for n in routes {
            c.push_str(&format!(
                "[[links.routes]]\ndirection = \"out\"\nlocal = \"{n}/#\"\nremote = \"r{n}/#\"\nqos = 1\n\
                 [[links.routes]]\ndirection = \"in\"\nremote = \"u{n}/#\"\nlocal = \"hub/u{n}/#\"\nqos = 1\n"
            ));
        }
        c
    }

    fn edge(&self) -> &Broker {
        &self.topology.edges[0]
    }
}

/// Collectors of what ferry delivers: on the edge (out routes) and the hub (in routes).
struct Seen {
    edge: Collector,
    hub: Collector,
}

impl Seen {
    async fn start(net: &Net) -> Seen {
        Seen {
            edge: Collector::start(net.edge().addr(), "seen-edge", "#", QoS::AtLeastOnce).await,
            hub: Collector::start(net.topology.hub.addr(), "seen-hub", "hub/#", QoS::AtLeastOnce).await,
        }
    }

    fn on(&self, topic: &str) -> Vec<Received> {
        let all = if topic.starts_with("hub/") {
            self.hub.messages()
        } else {
            self.edge.messages()
        };
        all.into_iter().filter(|m| m.topic == topic).collect()
    }
}

/// Publishes a probe to route `n` both ways until each arrives: its
/// subscriptions are in place. Panics (the test fails) when they never are.
async fn wait_routed(net: &Net, seen: &Seen, n: &str) {
    for (src, topic, dest) in [
        (net.topology.hub.addr(), format!("{n}/probe"), format!("r{n}/probe")),
        (net.edge().addr(), format!("u{n}/probe"), format!("hub/u{n}/probe")),
    ] {
        let mut arrived = false;
        for _ in 0..150 {
            publish_one(src, &topic, b"probe", QoS::AtLeastOnce, false).await;
            if wait_until(Duration::from_millis(400), Duration::from_millis(20), || {
                !seen.on(&dest).is_empty()
            })
            .await
            {
                arrived = true;
                break;
            }
        }
        assert!(
            arrived,
            "route {n}: nothing published on {topic} reached {dest} within 60 s (not subscribed?)"
        );
    }
}

/// Sends `N` numbered messages on route `n` both ways and checks that all
/// arrive, in order, on the mapped topics.
async fn send_and_check(net: &Net, seen: &Seen, n: &str) {
    publish_seqs(net.topology.hub.addr(), format!("{n}/x"), 0..N, 32).await;
    publish_seqs(net.edge().addr(), format!("u{n}/x"), 0..N, 32).await;
    for dest in [format!("r{n}/x"), format!("hub/u{n}/x")] {
        let all = wait_until(LONG, Duration::from_millis(50), || {
            let got = seen.on(&dest);
            check_in_order(&got, N).is_ok()
        })
        .await;
        let got = seen.on(&dest);
        assert!(
            all,
            "{}: route {n}: {dest} got {} of {N}: {:?}",
            net.protocol,
            got.len(),
            check_in_order(&got, N).err()
        );
    }
}

/// Publishes on a route that is gone, then on one that stays (`marker`):
/// once the marker arrived, the gone route's messages would have arrived
/// before it if its filter were still subscribed. None may be delivered,
/// none counted as unrouted.
async fn check_gone(net: &Net, seen: &Seen, gone: &str, marker: &str) {
    publish_seqs(net.topology.hub.addr(), format!("{gone}/x"), 0..10, 32).await;
    publish_seqs(net.edge().addr(), format!("u{gone}/x"), 0..10, 32).await;
    seen.edge.clear();
    seen.hub.clear();
    wait_routed(net, seen, marker).await;
    for dest in [format!("r{gone}/x"), format!("hub/u{gone}/x")] {
        assert!(
            seen.on(&dest).is_empty(),
            "{}: {dest} still delivered after its route was removed",
            net.protocol
        );
    }
}

fn assert_nothing_unrouted(ferry: &Ferry, protocol: &str) {
    let unrouted = ferry
        .scrape()
        .get_or_zero("ferry_messages_unrouted_total", &[("link", "e")]);
    assert_eq!(
        unrouted,
        0.0,
        "{protocol}: messages acknowledged as unrouted\n{}",
        ferry.log_tail(30)
    );
}

fn reload(net: &Net) {
    let admin = format!("127.0.0.1:{}", net.topology.admin_port);
    let out = run_ferry(FERRY, &["reload", "--admin", &admin]);
    assert!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A route inserted before another by a reload, then one removed: every
/// message of both arrives, none is misrouted or counted as unrouted.
async fn insert_then_remove(protocol: &'static str) {
    let net = Net::start(protocol);
    let mut ferry = Ferry::start(FERRY, &net.config(&["a"]));
    ferry.wait_link_up("e", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let seen = Seen::start(&net).await;
    wait_routed(&net, &seen, "a").await;
    send_and_check(&net, &seen, "a").await;

    // b before a: a's identifier must not become b's.
    ferry.write_config(&net.config(&["b", "a"]));
    reload(&net);
    seen.edge.clear();
    seen.hub.clear();
    wait_routed(&net, &seen, "b").await;
    send_and_check(&net, &seen, "a").await;
    send_and_check(&net, &seen, "b").await;
    assert_nothing_unrouted(&ferry, protocol);

    // a removed: unsubscribed on both brokers.
    ferry.write_config(&net.config(&["b"]));
    reload(&net);
    check_gone(&net, &seen, "a", "b").await;
    seen.edge.clear();
    seen.hub.clear();
    send_and_check(&net, &seen, "b").await;
    assert_nothing_unrouted(&ferry, protocol);
}

/// A restart with one route added and one removed, then a filter changed in
/// place by a reload.
async fn restart_and_change_in_place(protocol: &'static str) {
    let net = Net::start(protocol);
    let mut ferry = Ferry::start(FERRY, &net.config(&["a", "b"]));
    ferry.wait_link_up("e", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let seen = Seen::start(&net).await;
    wait_routed(&net, &seen, "a").await;
    wait_routed(&net, &seen, "b").await;

    ferry.restart_with_config(&net.config(&["c", "b"]));
    ferry.wait_link_up("e", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    wait_routed(&net, &seen, "c").await;
    send_and_check(&net, &seen, "c").await;
    check_gone(&net, &seen, "a", "b").await;
    assert_nothing_unrouted(&ferry, protocol);

    // c's filter changed in place (same position): d replaces it.
    ferry.write_config(&net.config(&["d", "b"]));
    reload(&net);
    seen.edge.clear();
    seen.hub.clear();
    wait_routed(&net, &seen, "d").await;
    send_and_check(&net, &seen, "d").await;
    send_and_check(&net, &seen, "b").await;
    check_gone(&net, &seen, "c", "b").await;
    assert_nothing_unrouted(&ferry, protocol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_inserted_or_removed_by_a_reload_loses_nothing_mqtt5() {
    insert_then_remove("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_inserted_or_removed_by_a_reload_loses_nothing_mqtt311() {
    insert_then_remove("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_edited_across_a_restart_or_in_place_lose_nothing_mqtt5() {
    restart_and_change_in_place("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_edited_across_a_restart_or_in_place_lose_nothing_mqtt311() {
    restart_and_change_in_place("3.1.1").await;
}
