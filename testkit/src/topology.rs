//! A ready-made test network: a hub and `n` edge brokers, and the ferry
//! configuration that links them.

use std::path::Path;
use std::time::Duration;

use crate::{free_port, publish_n, seq_payload, wait_until_async, Broker, Ferry, QoS, LONG};

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

    pub async fn wait_all_up(&self, ferry: &Ferry) {
        for i in 0..self.edges.len() {
            ferry.wait_link_up(&format!("edge{i}"), LONG).await.unwrap();
        }
    }

    /// Stops edge `i` (cleanly: its sessions are kept) and publishes `n`
    /// messages for it on the hub (`edge/<i>/down/t`, seq payloads of
    /// `size` bytes); returns once ferry has all of them queued.
    pub async fn queue_backlog(&mut self, ferry: &Ferry, i: usize, n: u64, size: usize) {
        self.edges[i].stop();
        publish_n(
            self.hub.addr(),
            move |_| down_topic(i),
            n,
            QoS::AtLeastOnce,
            move |s| seq_payload(s, size),
        )
        .await;
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

    /// received = forwarded + dropped + queued, as exported.
    pub async fn assert_invariant(&self, ferry: &Ferry, link: &str, direction: &str) {
        let labels = [("link", link), ("direction", direction)];
        // Counters are exported once a second; wait for a consistent sample.
        let mut last = String::new();
        let ok = wait_until_async(Duration::from_secs(10), Duration::from_millis(200), || {
            let m = ferry.scrape();
            let r = m.get_or_zero("ferry_messages_received_total", &labels);
            let f = m.get_or_zero("ferry_messages_forwarded_total", &labels);
            let d = m.get_or_zero("ferry_messages_dropped_total", &labels);
            let q = m.get_or_zero("ferry_queue_messages", &labels);
            last = format!("received {r} forwarded {f} dropped {d} queued {q}");
            let holds = r > 0.0 && r == f + d + q;
            async move { holds }
        })
        .await;
        assert!(ok, "{link}/{direction}: invariant broken: {last}");
    }
}
