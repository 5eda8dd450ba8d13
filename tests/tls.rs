//! TLS links against real mosquitto brokers with TLS listeners, certificates
//! made by the test (testkit::tls): server verification and mutual TLS
//! deliver everything both ways; a wrong CA, an expired certificate and a
//! name mismatch are refused with errors that say so while a plain link on
//! the same ferry works; a client certificate rotated on disk is used after
//! `ferry reload`, and links that did not change are not reconnected.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::tls::{tls_listener, CertFiles, Pki, ServerCert};
use testkit::*;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const N: u64 = 300;

/// An edge broker whose main port is TLS, plus a plain port for the test's clients.
struct TlsEdge {
    broker: Broker,
    plain: SocketAddr,
}

fn tls_edge(ca: &Path, server: &CertFiles, require_certificate: bool) -> TlsEdge {
    let plain_port = free_port();
    let broker = Broker::start_with(&tls_listener(ca, server, require_certificate, plain_port));
    TlsEdge {
        broker,
        plain: SocketAddr::from(([127, 0, 0, 1], plain_port)),
    }
}

fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// One `[[links]]` named `name` to `port`, routes like the Topology's, with `tls` lines.
fn link(i: usize, name: &str, port: u16, tls: &str) -> String {
    let table = if tls.is_empty() {
        String::new()
    } else {
        format!("[links.tls]\n{tls}\n")
    };
    format!(
        "[[links]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n{table}\
         [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/{i}/down/#\"\nremote = \"down/#\"\nqos = 1\n\
         [[links.routes]]\ndirection = \"in\"\nremote = \"up/#\"\nlocal = \"edge/{i}/up/#\"\nqos = 1\n"
    )
}

struct Setup {
    hub: Broker,
    data: tempfile::TempDir,
    admin_port: u16,
    metrics_port: u16,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            hub: Broker::start(),
            data: Ferry::data_dir_for_test(),
            admin_port: free_port(),
            metrics_port: free_port(),
        }
    }

    fn config(&self, links: &[String]) -> String {
        format!(
            "data_dir = {}\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[hub]\nhost = \"127.0.0.1\"\nport = {}\n\
             [defaults]\nkeepalive_secs = 5\nreconnect_max_ms = 1000\n{}",
            path(self.data.path()),
            self.metrics_port,
            self.admin_port,
            self.hub.port(),
            links.concat()
        )
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let admin = format!("127.0.0.1:{}", self.admin_port);
        let mut all = args.to_vec();
        all.extend(["--admin", admin.as_str()]);
        run_ferry(FERRY, &all)
    }

    fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The edge connections of `link` in `ferry status --json`.
    fn edge_connections(&self, link: &str) -> Vec<Value> {
        let status = self.status();
        let links = status["links"].as_array().cloned().unwrap_or_default();
        let Some(l) = links.into_iter().find(|l| l["name"] == link) else {
            return Vec::new();
        };
        let conns = l["connections"].as_array().cloned().unwrap_or_default();
        conns.into_iter().filter(|c| c["side"] == "edge").collect()
    }

    /// Waits until an edge connection of `link` shows a last_error containing `needle`.
    async fn wait_error(&self, link: &str, needle: &str) {
        let mut seen = String::new();
        let found = wait_until_async(LONG, Duration::from_millis(200), || {
            let conns = self.edge_connections(link);
            seen = format!("{conns:?}");
            let hit = conns
                .iter()
                .any(|c| c["last_error"].as_str().is_some_and(|e| e.contains(needle)));
            async move { hit }
        })
        .await;
        assert!(
            found,
            "link {link}: no last_error containing {needle:?}; connections: {seen}"
        );
    }
}

/// Publishes N each way over link `i` (edge reachable on `edge`) and checks all arrive in order.
async fn deliver_both_ways(hub: SocketAddr, edge: SocketAddr, i: usize) {
    let down = Collector::start(edge, &format!("t-down-{i}"), "down/#", QoS::AtLeastOnce).await;
    let up = Collector::start(hub, &format!("t-up-{i}"), &format!("edge/{i}/up/#"), QoS::AtLeastOnce).await;
    publish_n(hub, |_| down_topic(i), N, QoS::AtLeastOnce, |s| seq_payload(s, 64)).await;
    publish_n(
        edge,
        |_| "up/t".to_string(),
        N,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    assert!(
        down.wait_distinct(N as usize, LONG).await,
        "link {i} out: {}",
        down.describe()
    );
    check_in_order(&down.messages(), N).unwrap_or_else(|e| panic!("link {i} out: {e}"));
    assert!(
        up.wait_distinct(N as usize, LONG).await,
        "link {i} in: {}",
        up.describe()
    );
    check_in_order(&up.messages(), N).unwrap_or_else(|e| panic!("link {i} in: {e}"));
}

fn tls_lines(ca: &Path, client: Option<&CertFiles>) -> String {
    let mut lines = format!("ca_file = {}\n", path(ca));
    if let Some(c) = client {
        lines.push_str(&format!("cert_file = {}\nkey_file = {}\n", path(&c.cert), path(&c.key)));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_verification_and_mutual_tls_deliver_everything_both_ways() {
    let pki = Pki::new("main");
    let server = pki.server("edge", ServerCert::Valid);
    let client = pki.client("ferry");
    let verified = tls_edge(&pki.ca_file(), &server, false);
    let mutual = tls_edge(&pki.ca_file(), &server, true);
    let setup = Setup::new();
    let cfg = setup.config(&[
        link(0, "verified", verified.broker.port(), &tls_lines(&pki.ca_file(), None)),
        link(
            1,
            "mutual",
            mutual.broker.port(),
            &tls_lines(&pki.ca_file(), Some(&client)),
        ),
    ]);
    let ferry = Ferry::start(FERRY, &cfg);
    ferry.wait_link_up("verified", LONG).await.unwrap();
    ferry.wait_link_up("mutual", LONG).await.unwrap();
    deliver_both_ways(setup.hub.addr(), verified.plain, 0).await;
    deliver_both_ways(setup.hub.addr(), mutual.plain, 1).await;
    assert!(
        !ferry.log().contains("PRIVATE KEY"),
        "key material in the log: {}",
        ferry.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_expired_certificate_and_name_mismatch_are_refused_and_say_so() {
    let pki = Pki::new("trusted");
    let stranger = Pki::new("stranger");
    let wrong_ca = tls_edge(&stranger.ca_file(), &stranger.server("edge", ServerCert::Valid), false);
    let expired = tls_edge(&pki.ca_file(), &pki.server("expired", ServerCert::Expired), false);
    let mismatch = tls_edge(&pki.ca_file(), &pki.server("other", ServerCert::OtherName), false);
    let plain = Broker::start();
    let setup = Setup::new();
    let ca = tls_lines(&pki.ca_file(), None);
    let cfg = setup.config(&[
        link(0, "wrongca", wrong_ca.broker.port(), &ca),
        link(1, "expired", expired.broker.port(), &ca),
        link(2, "mismatch", mismatch.broker.port(), &ca),
        link(3, "plain", plain.port(), ""),
    ]);
    let ferry = Ferry::start(FERRY, &cfg);
    ferry.wait_link_up("plain", LONG).await.unwrap();
    setup.wait_error("wrongca", "unknown issuer").await;
    setup.wait_error("expired", "expired").await;
    // It names the name it checked (the host here) and what the certificate carries.
    setup
        .wait_error(
            "mismatch",
            "name mismatch: the broker's certificate is not valid for \"127.0.0.1\": it names",
        )
        .await;
    deliver_both_ways(setup.hub.addr(), plain.addr(), 3).await;
    let log = ferry.log();
    assert!(
        log.contains("unknown issuer") && log.contains("link"),
        "log: {}",
        ferry.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_rotated_on_disk_is_used_after_reload_and_other_links_keep_running() {
    let pki = Pki::new("main");
    let stranger = Pki::new("stranger");
    let server = pki.server("edge", ServerCert::Valid);
    // The certificate ferry starts with is one the broker does not trust.
    let client = stranger.client("ferry");
    let edge = tls_edge(&pki.ca_file(), &server, true);
    let plain = Broker::start();
    let setup = Setup::new();
    let cfg = setup.config(&[
        link(
            0,
            "rotated",
            edge.broker.port(),
            &tls_lines(&pki.ca_file(), Some(&client)),
        ),
        link(1, "plain", plain.port(), ""),
    ]);
    let ferry = Ferry::start(FERRY, &cfg);
    ferry.wait_link_up("plain", LONG).await.unwrap();
    setup.wait_error("rotated", "refused the handshake").await;
    let since = |link: &str| -> Vec<Value> {
        setup
            .edge_connections(link)
            .iter()
            .map(|c| c["since_ms"].clone())
            .collect()
    };
    let plain_since = since("plain");

    // Rotate: a certificate from the broker's CA, written over the same files.
    let renewed = pki.client("ferry-renewed");
    std::fs::copy(&renewed.cert, &client.cert).unwrap();
    std::fs::copy(&renewed.key, &client.key).unwrap();
    let out = setup.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("changed: rotated"),
        "reload: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ferry.wait_link_up("rotated", LONG).await.unwrap();
    deliver_both_ways(setup.hub.addr(), edge.plain, 0).await;
    assert_eq!(
        since("plain"),
        plain_since,
        "the untouched plain link was reconnected by the reload"
    );
    deliver_both_ways(setup.hub.addr(), plain.addr(), 1).await;
}
