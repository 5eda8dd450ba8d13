//! A ready-made test network: a hub and `n` edge brokers, and the ferry
//! configuration that links them.

use std::path::Path;
use tokio::task::JoinHandle;

use crate::{check_in_order, free_port, publish_seqs, Broker, Collector, Ferry, PublishReport, QoS, Received, LONG};

/// The hub topic of edge `i`'s `out` route in a [`Topology`].
pub fn down_topic(edge: usize) -> String {
    format!("edge/{edge}/down/t")
}

/// A hub and `n` edges, each edge a link `edge<i>` with an `out` route
/// `edge/<i>/down/#` -> `down/#` and an `in` route `up/#` -> `edge/<i>/up/#`.
pub struct Topology {
    pub hub: Broker,
    pub edges: Vec<Broker>,
    pub data: tempfile::TempDir,
    pub metrics_port: u16,
    /// Where ferry's admin API listens (`ferry status --admin`).
    pub admin_port: u16,
    pub extra: String,
    /// `keepalive_secs` of every link (default 5).
    pub keepalive_secs: u64,
}

impl Topology {
    pub fn start(n: usize, extra_defaults: &str) -> Topology {
        Topology {
            hub: Broker::start(),
            edges: (0..n).map(|_| Broker::start()).collect(),
            data: Ferry::data_dir_for_test(),
            metrics_port: free_port(),
            admin_port: free_port(),
            extra: extra_defaults.to_string(),
            keepalive_secs: 5,
        }
    }

    pub fn config(&self) -> String {
        self.config_with_ports(|i| self.edges[i].port())
    }

    /// The config with link `i` pointing at `edge_port(i)` (e.g. a proxy).
    pub fn config_with_ports(&self, edge_port: impl Fn(usize) -> u16) -> String {
        let mut c = self.config_head(self.data.path(), self.metrics_port, self.admin_port);
        c.push_str(&self.links_toml(edge_port));
        c
    }

    /// The config before the links: `data_dir`, `[metrics]` and `[admin]`
    /// listen on the given ports, `[hub]`, `[defaults]` (with `extra`).
    /// A fleet test runs several ferries, each with its own head and the same links.
    pub fn config_head(&self, data_dir: &Path, metrics_port: u16, admin_port: u16) -> String {
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[hub]\nhost = \"127.0.0.1\"\nport = {}\n[defaults]\nkeepalive_secs = {}\nreconnect_max_ms = 1000\ninflight = 200\n{}\n",
            data_dir.display(),
            metrics_port,
            admin_port,
            self.hub.port(),
            self.keepalive_secs,
            self.extra
        )
    }

    /// The `[[links]]` of the config, link `i` pointing at `edge_port(i)`.
    pub fn links_toml(&self, edge_port: impl Fn(usize) -> u16) -> String {
        let mut c = String::new();
        for i in 0..self.edges.len() {
            c.push_str(&format!(
                "[[links]]\nname = \"edge{i}\"\nhost = \"127.0.0.1\"\nport = {}\n\
                 [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/{i}/down/#\"\nremote = \"down/#\"\nqos = 1\n\
                 [[links.routes]]\ndirection = \"in\"\nremote = \"up/#\"\nlocal = \"edge/{i}/up/#\"\nqos = 1\n",
                edge_port(i)
            ));
        }
        c
    }

    pub fn start_ferry(&self, ferry_bin: impl AsRef<Path>) -> Ferry {
        Ferry::start(ferry_bin, &self.config())
    }

    /// Starts ferry with [`Topology::config`] and waits until every link is up.
    pub async fn start_ferry_all_up(&self, ferry_bin: impl AsRef<Path>) -> Ferry {
        let ferry = self.start_ferry(ferry_bin);
        self.wait_all_up(&ferry).await;
        ferry
    }

    pub async fn wait_all_up(&self, ferry: &Ferry) {
        for i in 0..self.edges.len() {
            ferry.wait_link_up(&format!("edge{i}"), LONG).await.unwrap();
        }
    }

    /// Spawns, for every edge `i`, a publisher of seqs `0..n` on the hub
    /// (`down_topic(i)`, the `out` route) and one on the edge (`up/t`, the
    /// `in` route), 128-byte seq payloads; the handles in that order.
    pub fn spawn_traffic_both_ways(&self, n: u64) -> Vec<JoinHandle<PublishReport>> {
        let hub = self.hub.addr();
        let mut publishers = Vec::new();
        for (i, edge) in self.edges.iter().enumerate() {
            publishers.push(tokio::spawn(publish_seqs(hub, down_topic(i), 0..n, 128)));
            publishers.push(tokio::spawn(publish_seqs(edge.addr(), "up/t", 0..n, 128)));
        }
        publishers
    }

    /// One [`Collector`] per edge on `down/#` (client ids `t-down-<i>`): what
    /// each edge gets from its `out` route.
    pub async fn down_collectors(&self) -> Vec<Collector> {
        let mut down = Vec::new();
        for (i, edge) in self.edges.iter().enumerate() {
            down.push(Collector::start(edge.addr(), &format!("t-down-{i}"), "down/#", QoS::AtLeastOnce).await);
        }
        down
    }

    /// Stops edge `i` (cleanly: its sessions are kept) and publishes `n`
    /// messages for it on the hub (`edge/<i>/down/t`, seq payloads of
    /// `size` bytes); returns once ferry has all of them queued.
    pub async fn queue_backlog(&mut self, ferry: &Ferry, i: usize, n: u64, size: usize) {
        self.edges[i].stop();
        publish_seqs(self.hub.addr(), down_topic(i), 0..n, size).await;
        self.wait_queued(ferry, i, n).await;
    }

    /// Waits until ferry's `out` queue of edge `i` holds at least `n`
    /// messages (more when the hub redelivered some after a reconnect:
    /// duplicates are allowed, loss is not).
    pub async fn wait_queued(&self, ferry: &Ferry, i: usize, n: u64) {
        let link = format!("edge{i}");
        ferry
            .wait_metric(
                "ferry_queue_messages",
                &[("link", &link), ("direction", "out")],
                |v| v >= n as f64,
                LONG,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Publishes `n` messages each way on every link at once (hub
    /// `edge/<i>/down/t` and edge `up/t`, 128-byte seq payloads) and asserts
    /// that every one arrives, in order per link and direction.
    pub async fn send_both_ways_and_check(&self, n: u64) {
        let down = self.down_collectors().await;
        let up = Collector::start(self.hub.addr(), "t-up", "edge/+/up/#", QoS::AtLeastOnce).await;
        for p in self.spawn_traffic_both_ways(n) {
            p.await.expect("publisher task");
        }
        for (i, c) in down.iter().enumerate() {
            assert!(
                c.wait_distinct(n as usize, LONG).await,
                "edge {i} out: {}",
                c.describe()
            );
            let report = check_in_order(&c.messages(), n).unwrap_or_else(|e| panic!("edge {i} out: {e}"));
            assert_eq!(report.distinct, n as usize);
        }
        let all = self.edges.len() * n as usize;
        assert!(up.wait_distinct(all, LONG).await, "in: {}", up.describe());
        for i in 0..self.edges.len() {
            let topic = format!("edge/{i}/up/t");
            let mine: Vec<Received> = up.messages().into_iter().filter(|m| m.topic == topic).collect();
            check_in_order(&mine, n).unwrap_or_else(|e| panic!("edge {i} in: {e}"));
        }
    }

    /// received = forwarded + dropped + queued, as exported
    /// ([`Ferry::assert_invariant`]).
    pub async fn assert_invariant(&self, ferry: &Ferry, link: &str, direction: &str) {
        ferry.assert_invariant(link, direction, false).await;
    }
}
