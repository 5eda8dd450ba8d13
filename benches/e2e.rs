//! End-to-end benchmark: ferry against mosquitto's own bridge and a direct
//! connection, with the same Rust publisher and subscriber, on loopback.
//!
//! Scenarios (all in one run by default):
//! - `paths`: for each payload size, three paths, QoS 1:
//!   direct (publisher and subscriber on one mosquitto), mosquitto's bridge
//!   (publisher on a hub mosquitto whose `connection` section bridges
//!   `down/#` out to an edge mosquitto) and ferry (release build, between
//!   the same two kinds of broker). Each path: a saturated run (sustained
//!   msg/s, measured at the subscriber, and CPU of the bridging process per
//!   million messages) and a paced run (latency publish -> delivery).
//! - `backlog`: 1,000,000 messages queued while the edge is down, then the
//!   edge returns: drain rate and time to empty, ferry (with 37 links
//!   configured, RSS measured with the backlog) and mosquitto's bridge.
//! - `scale`: ferry's RSS and CPU with 37 links idle, 37 under load, and
//!   1,000 idle links (sharing a few edge brokers, each link its own client
//!   id and topic prefix).
//!
//! Run: `cargo bench --bench e2e` (everything), `cargo bench --bench e2e --
//! quick` (small sizes), and select with environment variables:
//! `FERRY_E2E=paths,backlog,scale`, `FERRY_E2E_MSGS` (per saturated run),
//! `FERRY_E2E_PAYLOADS=128,4096`, `FERRY_E2E_RATE` and `FERRY_E2E_PACED_SECS`
//! (paced run), `FERRY_E2E_BACKLOG`, `FERRY_E2E_BACKLOG_SECS` (drain time
//! limit), `FERRY_E2E_LINKS` (the many-links count),
//! `FERRY_E2E_PATHS=direct,mosquitto-bridge,ferry` (also skips mosquitto's
//! backlog run), `FERRY_E2E_STORE_CACHE=64MiB` (ferry's `store_cache`),
//! `FERRY_E2E_SCALE_INFLIGHT` (the scale scenario's window; ferry's default
//! otherwise; the other scenarios use 1000, like mosquitto's).
//!
//! The brokers and the ferry process are testkit's (the harness of the
//! integration tests); the load generator and the latency meter are this
//! file's. Every process started here is killed when its guard drops, also
//! on panic.
//! Payload: 20 digits of sequence number, 20 digits of publish time (ns since
//! the epoch), then filler.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tempfile::TempDir;
use testkit::{cpu_secs, status_kib, wait_until, Broker, Ferry, MAX_INFLIGHT};

/// The ferry binary Cargo built for this benchmark (a release build under
/// `cargo bench`).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// In-flight QoS 1 messages: mosquitto's `max_inflight_messages` on every
/// broker (testkit's, so for its bridge too) and ferry's `inflight`.
const INFLIGHT: usize = MAX_INFLIGHT;
/// End-to-end window of the saturated runs: the publisher stays at most
/// this many messages ahead of the subscriber, so a path is measured at
/// the rate it sustains, not by how fast a broker's queue can grow.
const E2E_WINDOW: u64 = 5000;
/// Sequence numbers of each measured run start at a new multiple of this.
const RUN_SPAN: u64 = 1_000_000_000;

// ---------------------------------------------------------------- settings

struct Settings {
    scenarios: Vec<String>,
    msgs: u64,
    payloads: Vec<usize>,
    rate: f64,
    paced_secs: f64,
    backlog: u64,
    backlog_secs: u64,
    links: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("e2e: cannot parse {name}={v:?}")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::args().any(|a| a == "quick");
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_string())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Settings {
            scenarios: list("FERRY_E2E", "paths,backlog,scale"),
            msgs: env_or("FERRY_E2E_MSGS", if quick { 20_000 } else { 200_000 }),
            payloads: list("FERRY_E2E_PAYLOADS", "128,4096")
                .iter()
                .map(|p| p.parse().expect("e2e: FERRY_E2E_PAYLOADS: sizes in bytes"))
                .collect(),
            rate: env_or("FERRY_E2E_RATE", 5000.0),
            paced_secs: env_or("FERRY_E2E_PACED_SECS", if quick { 2.0 } else { 5.0 }),
            backlog: env_or("FERRY_E2E_BACKLOG", if quick { 50_000 } else { 1_000_000 }),
            backlog_secs: env_or("FERRY_E2E_BACKLOG_SECS", if quick { 60 } else { 180 }),
            links: env_or("FERRY_E2E_LINKS", if quick { 100 } else { 1000 }),
        }
    }
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ---------------------------------------------------------------- processes

/// A mosquitto of the benchmark: testkit's broker (persistent sessions,
/// `max_queued_messages` unlimited in effect, [`INFLIGHT`] in flight), saving
/// its state only at a clean stop, so sessions survive a restart (the
/// backlog scenario) without periodic saves costing CPU. `extra`: config
/// lines appended (a bridge section).
fn start_broker(extra: &str) -> Broker {
    Broker::start_with(&format!("autosave_interval 0\n{extra}"))
}

fn broker_pid(broker: &Broker) -> u32 {
    broker.pid().expect("e2e: broker not running")
}

/// The config section that makes a hub mosquitto bridge `down/#` to `edge`.
fn bridge_section(edge: &Broker) -> String {
    format!(
        "connection edge\naddress 127.0.0.1:{}\ntopic down/# out 1\ncleansession false\nclientid hub-bridge\n\
         restart_timeout 1\ntry_private false\n",
        edge.port()
    )
}

/// A link of a ferry config: name, edge port, hub filter, edge topic.
struct LinkSpec {
    name: String,
    port: u16,
    local: String,
    remote: String,
}

/// ferry (testkit's process handle, killed on drop) with a generated config,
/// and its data directory.
struct BenchFerry {
    ferry: Ferry,
    _data: TempDir,
}

impl BenchFerry {
    /// `inflight`: the links' window; None: ferry's default.
    fn start(hub: &Broker, links: &[LinkSpec], inflight: Option<usize>) -> BenchFerry {
        let data = Ferry::data_dir_for_test();
        let metrics_port = testkit::free_port();
        let mut c = format!(
            "data_dir = \"{}\"\n{}[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[hub]\nhost = \"127.0.0.1\"\nport = {}\n\
             [defaults]\nkeepalive_secs = 10\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n{}",
            data.path().display(),
            std::env::var("FERRY_E2E_STORE_CACHE").map(|c| format!("store_cache = \"{c}\"\n")).unwrap_or_default(),
            hub.port(),
            inflight.map(|n| format!("inflight = {n}\n")).unwrap_or_default()
        );
        for l in links {
            c.push_str(&format!(
                "[[links]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n[[links.routes]]\ndirection = \"out\"\nlocal = \"{}\"\nremote = \"{}\"\nqos = 1\n",
                l.name, l.port, l.local, l.remote
            ));
        }
        let ferry = Ferry::start_with_env(FERRY, &c, &[("RUST_LOG", "warn")]);
        BenchFerry { ferry, _data: data }
    }

    fn pid(&self) -> u32 {
        self.ferry.pid().expect("e2e: ferry not running")
    }

    /// Sum of `name` over the samples whose labels contain every `labels`
    /// pair; 0 when it is not exported or the scrape fails.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.ferry
            .try_scrape()
            .map_or(0.0, |metrics| metrics.get_or_zero(name, labels))
    }

    /// Waits until `n` links report up.
    async fn wait_links_up(&self, n: usize, timeout: Duration) {
        let up = || {
            self.ferry.try_scrape().map_or(0, |metrics| {
                metrics
                    .matching("ferry_link_up", &[])
                    .iter()
                    .filter(|s| s.value == 1.0)
                    .count()
            })
        };
        let all_up = wait_until(timeout, Duration::from_millis(200), || up() >= n).await;
        assert!(
            all_up,
            "e2e: only {} of {n} links up after {timeout:?}:\n{}",
            up(),
            self.ferry.log_tail(20)
        );
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- load

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(16 << 20));
    o
}

fn digits(b: &[u8]) -> Option<u64> {
    if b.len() != 20 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, d| {
        d.is_ascii_digit().then(|| acc.wrapping_mul(10) + (d - b'0') as u64)
    })
}

static CLIENTS: AtomicU64 = AtomicU64::new(0);

/// Publishes `n` QoS 1 messages with sequence numbers from `base`, round
/// robin over `topics`, at `rate` msg/s (None: as fast as acks allow, with
/// rumqttc's in-flight window), with `gate` (the subscribers' delivered
/// count) at most [`E2E_WINDOW`] ahead of delivery, and returns when every
/// PUBACK arrived.
async fn publish(
    addr: SocketAddr,
    topics: &[String],
    base: u64,
    n: u64,
    size: usize,
    rate: Option<f64>,
    gate: Option<Arc<AtomicU64>>,
) {
    let id = format!(
        "e2e-pub-{}-{}",
        std::process::id(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    );
    let (client, mut eventloop) = AsyncClient::new(options(addr, &id), 1000);
    let topics = topics.to_vec();
    let producer = tokio::spawn(async move {
        let began = Instant::now();
        for i in 0..n {
            if let Some(delivered) = &gate {
                while i >= delivered.load(Ordering::Relaxed) + E2E_WINDOW {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            if let Some(r) = rate {
                let due = began + Duration::from_secs_f64(i as f64 / r);
                tokio::time::sleep_until(due.into()).await;
            }
            let mut payload = vec![b'x'; size.max(40)];
            payload[..40].copy_from_slice(format!("{:020}{:020}", base + i, now_ns()).as_bytes());
            let topic = &topics[(i as usize) % topics.len()];
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut acked = 0;
    while acked < n {
        assert!(Instant::now() < deadline, "e2e: publishing to {addr} took over 600 s");
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("e2e: publisher connection to {addr} failed: {e}"),
        }
    }
    let _ = producer.await;
}

/// What a subscriber saw of the current run.
#[derive(Default)]
struct Seen {
    base: u64,
    n: u64,
    flags: Vec<bool>,
    distinct: u64,
    lat_ns: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    warm: u64,
    subscribed: bool,
}

/// A subscriber (QoS 1, persistent session) counting distinct sequence
/// numbers of the current run and their latencies. Reconnects when the
/// broker goes away; stops when dropped. Not testkit's `Collector`, which
/// keeps every message for the tests' order checks: at a million messages
/// that would cost the benchmark process memory and CPU the figures would
/// then include; this keeps a flag and a latency per message.
struct Meter {
    seen: Arc<Mutex<Seen>>,
    /// Distinct messages of the current run (for the publisher's gate).
    delivered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Meter {
    fn start(addr: SocketAddr, filter: &str) -> Meter {
        Meter::start_counting(addr, filter, Arc::new(AtomicU64::new(0)))
    }

    /// Like `start`, adding what it receives to `delivered` (shared by the
    /// subscribers of several brokers).
    fn start_counting(addr: SocketAddr, filter: &str, delivered: Arc<AtomicU64>) -> Meter {
        let id = format!(
            "e2e-sub-{}-{}",
            std::process::id(),
            CLIENTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut o = options(addr, &id);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let count = delivered.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let _ = client
                                .subscribe_many([Filter::new(filter.clone(), QoS::AtLeastOnce)])
                                .await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => shared.lock().expect("e2e: lock").subscribed = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = Instant::now();
                        let t_ns = now_ns();
                        let mut s = shared.lock().expect("e2e: lock");
                        if p.topic.ends_with(b"/warm") {
                            s.warm += 1;
                            continue;
                        }
                        let (Some(seq), Some(sent_ns)) = (
                            p.payload.get(..20).and_then(digits),
                            p.payload.get(20..40).and_then(digits),
                        ) else {
                            continue;
                        };
                        if seq < s.base || seq >= s.base + s.n {
                            continue;
                        }
                        let i = (seq - s.base) as usize;
                        if !s.flags[i] {
                            s.flags[i] = true;
                            s.distinct += 1;
                            count.fetch_add(1, Ordering::Relaxed);
                            s.lat_ns.push(t_ns.saturating_sub(sent_ns));
                            s.first.get_or_insert(now);
                            s.last = Some(now);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Meter { seen, delivered, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("e2e: lock")
    }

    /// Starts counting a new run of `n` sequence numbers from `base`.
    fn reset(&self, base: u64, n: u64) {
        let mut s = self.lock();
        let warm = s.warm;
        let subscribed = s.subscribed;
        *s = Seen {
            base,
            n,
            flags: vec![false; n as usize],
            warm,
            subscribed,
            ..Seen::default()
        };
        self.delivered.store(0, Ordering::Relaxed);
    }

    async fn wait_subscribed(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.lock().subscribed {
            assert!(Instant::now() < deadline, "e2e: subscriber got no SUBACK within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` distinct arrived or `timeout`; returns how many did.
    async fn wait(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.lock().distinct;
            if d >= n || Instant::now() >= deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `<prefix>/warm` messages until the subscriber sees one: the
/// path (bridge connected, subscriptions in place) is ready.
async fn warm_up(pub_addr: SocketAddr, warm_topic: &str, sub: &Meter) {
    sub.wait_subscribed().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sub.lock().warm == 0 {
        assert!(
            Instant::now() < deadline,
            "e2e: nothing crossed {pub_addr} -> subscriber on {warm_topic} within 60 s"
        );
        publish(pub_addr, &[warm_topic.to_string()], 0, 1, 64, None, None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

// ---------------------------------------------------------------- paths

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum PathKind {
    Direct,
    MosquittoBridge,
    Ferry,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::MosquittoBridge => "mosquitto-bridge",
            PathKind::Ferry => "ferry",
        }
    }
    fn cpu_of(self) -> &'static str {
        match self {
            PathKind::Direct => "the broker",
            PathKind::MosquittoBridge => "hub mosquitto (hosts the bridge)",
            PathKind::Ferry => "ferry",
        }
    }
}

struct PathResult {
    rate: f64,
    delivered: u64,
    sat_p50: f64,
    sat_p99: f64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu_per_m: f64,
    load: String,
}

/// The brokers (and ferry) of one path; dropping it stops them all.
struct Setup {
    _edge: Option<Broker>,
    _hub: Broker,
    _ferry: Option<BenchFerry>,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    bridge_pid: u32,
}

async fn setup(kind: PathKind) -> Setup {
    match kind {
        PathKind::Direct => {
            let b = start_broker("");
            let (addr, pid) = (b.addr(), broker_pid(&b));
            Setup {
                _edge: None,
                _hub: b,
                _ferry: None,
                pub_addr: addr,
                sub_addr: addr,
                bridge_pid: pid,
            }
        }
        PathKind::MosquittoBridge => {
            let edge = start_broker("");
            let hub = start_broker(&bridge_section(&edge));
            let (pub_addr, sub_addr, pid) = (hub.addr(), edge.addr(), broker_pid(&hub));
            Setup {
                _edge: Some(edge),
                _hub: hub,
                _ferry: None,
                pub_addr,
                sub_addr,
                bridge_pid: pid,
            }
        }
        PathKind::Ferry => {
            let edge = start_broker("");
            let hub = start_broker("");
            let link = LinkSpec {
                name: "edge0".into(),
                port: edge.port(),
                local: "down/#".into(),
                remote: "down/#".into(),
            };
            let ferry = BenchFerry::start(&hub, &[link], Some(INFLIGHT));
            ferry.wait_links_up(1, Duration::from_secs(60)).await;
            let (pub_addr, sub_addr, pid) = (hub.addr(), edge.addr(), ferry.pid());
            Setup {
                _edge: Some(edge),
                _hub: hub,
                _ferry: Some(ferry),
                pub_addr,
                sub_addr,
                bridge_pid: pid,
            }
        }
    }
}

async fn run_path(kind: PathKind, payload: usize, s: &Settings) -> PathResult {
    let setup = setup(kind).await;
    let sub = Meter::start(setup.sub_addr, "down/#");
    warm_up(setup.pub_addr, "down/warm", &sub).await;
    let topic = vec!["down/t".to_string()];

    // Saturated: as fast as the publisher's window allows.
    let n = s.msgs;
    sub.reset(RUN_SPAN, n);
    let cpu0 = cpu_secs(setup.bridge_pid);
    let t0 = Instant::now();
    publish(
        setup.pub_addr,
        &topic,
        RUN_SPAN,
        n,
        payload,
        None,
        Some(sub.delivered.clone()),
    )
    .await;
    let delivered = sub.wait(n, Duration::from_secs(300)).await;
    let cpu = cpu_secs(setup.bridge_pid) - cpu0;
    let load_now = load();
    let (rate, sat_p50, sat_p99) = {
        let mut g = sub.lock();
        let end = g.last.unwrap_or_else(Instant::now);
        let rate = g.distinct as f64 / end.duration_since(t0).as_secs_f64().max(1e-9);
        g.lat_ns.sort_unstable();
        (rate, percentile(&g.lat_ns, 0.5), percentile(&g.lat_ns, 0.99))
    };

    // Paced: latency at a rate every path sustains.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = (s.rate * s.paced_secs) as u64;
    sub.reset(2 * RUN_SPAN, m);
    publish(setup.pub_addr, &topic, 2 * RUN_SPAN, m, payload, Some(s.rate), None).await;
    sub.wait(m, Duration::from_secs(120)).await;
    let (p50, p99, max) = {
        let mut g = sub.lock();
        g.lat_ns.sort_unstable();
        (
            percentile(&g.lat_ns, 0.5),
            percentile(&g.lat_ns, 0.99),
            g.lat_ns.last().map_or(f64::NAN, |v| *v as f64 / 1e6),
        )
    };
    drop(sub);
    drop(setup);
    PathResult {
        rate,
        delivered,
        sat_p50,
        sat_p99,
        p50,
        p99,
        max,
        cpu_per_m: cpu / (delivered.max(1) as f64 / 1e6),
        load: load_now,
    }
}

async fn paths(s: &Settings) {
    println!(
        "\n## paths: QoS 1, {} messages saturated, then {} msg/s for {} s (latency)",
        s.msgs, s.rate, s.paced_secs
    );
    let wanted = std::env::var("FERRY_E2E_PATHS").unwrap_or_else(|_| "direct,mosquitto-bridge,ferry".into());
    let kinds: Vec<PathKind> = [PathKind::Direct, PathKind::MosquittoBridge, PathKind::Ferry]
        .into_iter()
        .filter(|k| wanted.split(',').any(|w| w == k.name()))
        .collect();
    let mut results: HashMap<(PathKind, usize), PathResult> = HashMap::new();
    for &payload in &s.payloads {
        for &kind in &kinds {
            println!("running {} {payload} B (load {}) ...", kind.name(), load());
            let r = run_path(kind, payload, s).await;
            results.insert((kind, payload), r);
        }
    }
    println!("\n| path | payload | msg/s (saturated) | delivered | latency p50 / p99 saturated (ms) | latency p50 / p99 / max at {} msg/s (ms) | CPU s per 1M msgs | of | load avg after |", s.rate);
    println!("|---|---|---|---|---|---|---|---|---|");
    for &payload in &s.payloads {
        for &kind in &kinds {
            let r = &results[&(kind, payload)];
            println!(
                "| {} | {payload} B | {:.0} | {} | {:.1} / {:.1} | {:.2} / {:.2} / {:.2} | {:.1} | {} | {} |",
                kind.name(),
                r.rate,
                r.delivered,
                r.sat_p50,
                r.sat_p99,
                r.p50,
                r.p99,
                r.max,
                r.cpu_per_m,
                kind.cpu_of(),
                r.load
            );
        }
    }
    println!();
    for &payload in &s.payloads {
        let (Some(f), Some(b), Some(d)) = (
            results.get(&(PathKind::Ferry, payload)),
            results.get(&(PathKind::MosquittoBridge, payload)),
            results.get(&(PathKind::Direct, payload)),
        ) else {
            continue;
        };
        println!(
            "ratios {payload} B: throughput ferry/mosquitto-bridge {:.2}, ferry/direct {:.2}; paced p99 ferry/mosquitto-bridge {:.2}; CPU per msg ferry/hub-mosquitto {:.2}",
            f.rate / b.rate,
            f.rate / d.rate,
            f.p99 / b.p99,
            f.cpu_per_m / b.cpu_per_m
        );
    }
}

// ---------------------------------------------------------------- backlog

/// Publishes `n` messages in chunks, each chunk once ferry has queued the
/// previous one: the hub's own queue for ferry stays small (mosquitto
/// delivers a large session queue slowly).
async fn publish_backlog_through_ferry(
    hub: &Broker,
    ferry: &BenchFerry,
    link: &str,
    topic: &str,
    base: u64,
    n: u64,
) -> f64 {
    let chunk = 20_000u64;
    let t0 = Instant::now();
    let mut done = 0;
    while done < n {
        let take = chunk.min(n - done);
        publish(hub.addr(), &[topic.to_string()], base + done, take, 128, None, None).await;
        done += take;
        if let Err(e) = ferry
            .ferry
            .wait_metric(
                "ferry_queue_messages",
                &[("link", link), ("direction", "out")],
                |v| v >= done as f64,
                Duration::from_secs(120),
            )
            .await
        {
            panic!("e2e: ferry did not queue {done} messages within 120 s: {e}");
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

async fn backlog(s: &Settings) {
    let n = s.backlog;
    println!(
        "\n## backlog: {n} x 128 B queued while the edge is down, then the edge returns (limit {} s)",
        s.backlog_secs
    );

    // ferry, 37 links: link 0 to its own edge, 36 idle links to another.
    {
        let mut edge = start_broker("");
        let others = start_broker("");
        let hub = start_broker("");
        let mut links = vec![LinkSpec {
            name: "edge0".into(),
            port: edge.port(),
            local: "edge/0/down/#".into(),
            remote: "down/#".into(),
        }];
        for i in 1..37 {
            links.push(LinkSpec {
                name: format!("edge{i}"),
                port: others.port(),
                local: format!("edge/{i}/down/#"),
                remote: format!("down/{i}/#"),
            });
        }
        let ferry = BenchFerry::start(&hub, &links, Some(INFLIGHT));
        ferry.wait_links_up(37, Duration::from_secs(60)).await;
        let sub = Meter::start(edge.addr(), "down/#");
        warm_up(hub.addr(), "edge/0/down/warm", &sub).await;
        edge.stop();
        sub.reset(RUN_SPAN, n);
        let ingest = publish_backlog_through_ferry(&hub, &ferry, "edge0", "edge/0/down/t", RUN_SPAN, n).await;
        let pid = ferry.pid();
        let rss_backlog = status_kib(pid, "VmRSS");
        let hwm_ingest = status_kib(pid, "VmHWM");
        println!(
            "ferry: {n} queued, ingest {ingest:.0} msg/s (publish in chunks of 20,000 + wait for ferry); RSS with the backlog {:.1} MiB (anonymous {:.1} MiB), peak so far {:.1} MiB (37 links; load {})",
            mib(rss_backlog),
            mib(status_kib(pid, "RssAnon")),
            mib(hwm_ingest),
            load()
        );
        let (got, cpu, first, last) = restart_and_drain(&mut edge, &sub, pid, n, s.backlog_secs).await;
        // Metrics are exported once a second: wait for a sample after the drain.
        let _ = ferry
            .ferry
            .wait_metric(
                "ferry_queue_messages",
                &[("link", "edge0"), ("direction", "out")],
                |v| v == 0.0,
                Duration::from_secs(10),
            )
            .await;
        let empty = ferry.metric("ferry_queue_messages", &[("link", "edge0"), ("direction", "out")]);
        let hwm = status_kib(pid, "VmHWM");
        report_drain("ferry", n, got, first, last, s.backlog_secs);
        println!(
            "ferry: queue after drain {empty}, CPU {:.1} s for the drain ({:.1} s per 1M), RSS after the drain {:.1} MiB, peak RSS over the whole run {:.1} MiB (load {})",
            cpu,
            cpu / (got.max(1) as f64 / 1e6),
            mib(status_kib(pid, "VmRSS")),
            mib(hwm),
            load()
        );
    }

    // mosquitto's bridge, unlimited queue in the hub's memory.
    if std::env::var("FERRY_E2E_PATHS").is_ok_and(|p| !p.split(',').any(|k| k == "mosquitto-bridge")) {
        return;
    }
    {
        let mut edge = start_broker("");
        let hub = start_broker(&bridge_section(&edge));
        let sub = Meter::start(edge.addr(), "down/#");
        warm_up(hub.addr(), "down/warm", &sub).await;
        edge.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        sub.reset(RUN_SPAN, n);
        let t = Instant::now();
        publish(hub.addr(), &["down/t".to_string()], RUN_SPAN, n, 128, None, None).await;
        let pid = broker_pid(&hub);
        println!(
            "mosquitto-bridge: {n} queued in the hub in {:.1} s ({:.0} msg/s); hub RSS {:.1} MiB (load {})",
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64(),
            mib(status_kib(pid, "VmRSS")),
            load()
        );
        let (got, cpu, first, last) = restart_and_drain(&mut edge, &sub, pid, n, s.backlog_secs).await;
        report_drain("mosquitto-bridge", n, got, first, last, s.backlog_secs);
        println!(
            "mosquitto-bridge: hub CPU {:.1} s during the drain (load {})",
            cpu,
            load()
        );
    }
}

/// Restarts the edge and waits for `n` messages at `sub`: how many came, the
/// CPU seconds `pid` used meanwhile, and the first and last delivery in
/// seconds from the restart.
async fn restart_and_drain(
    edge: &mut Broker,
    sub: &Meter,
    pid: u32,
    n: u64,
    secs: u64,
) -> (u64, f64, Option<f64>, Option<f64>) {
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    edge.restart();
    let got = sub.wait(n, Duration::from_secs(secs)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let g = sub.lock();
    let since = |at: Option<Instant>| at.map(|t| t.duration_since(t0).as_secs_f64());
    (got, cpu, since(g.first), since(g.last))
}

fn report_drain(name: &str, n: u64, got: u64, first: Option<f64>, last: Option<f64>, limit: u64) {
    match (first, last) {
        (Some(first), Some(last)) => {
            let rate = got as f64 / (last - first).max(1e-9);
            if got >= n {
                println!("{name}: drained {got} in {last:.1} s from the edge's restart (first delivery after {first:.2} s): {rate:.0} msg/s");
            } else {
                println!(
                    "{name}: only {got} of {n} delivered within {limit} s (first after {first:.2} s): {rate:.0} msg/s; at that rate, emptying takes ~{:.0} s",
                    n as f64 / rate
                );
            }
        }
        _ => println!("{name}: nothing delivered within {limit} s"),
    }
}

// ---------------------------------------------------------------- scale

/// `count` links spread over `edges` brokers; link i: `edge/<i>/down/#` ->
/// `down/<i>/#`.
fn many_links(count: usize, edges: &[Broker]) -> Vec<LinkSpec> {
    (0..count)
        .map(|i| LinkSpec {
            name: format!("edge{i}"),
            port: edges[i % edges.len()].port(),
            local: format!("edge/{i}/down/#"),
            remote: format!("down/{i}/#"),
        })
        .collect()
}

fn idle_sample(name: &str, pid: u32, secs: u64) {
    let cpu0 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_secs(pid) - cpu0;
    println!(
        "{name}: RSS {:.1} MiB (peak {:.1} MiB), CPU {:.3} s over {secs} s idle ({:.1}% of a core) (load {})",
        mib(status_kib(pid, "VmRSS")),
        mib(status_kib(pid, "VmHWM")),
        cpu,
        cpu / secs as f64 * 100.0,
        load()
    );
}

/// The links' window in the scale scenario: ferry's default (100) unless
/// `FERRY_E2E_SCALE_INFLIGHT` says otherwise.
fn scale_inflight() -> Option<usize> {
    std::env::var("FERRY_E2E_SCALE_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
}

async fn scale(s: &Settings) {
    println!(
        "\n## scale (ferry inflight {})",
        scale_inflight().map_or("100, the default".to_string(), |n| n.to_string())
    );
    {
        let edges: Vec<Broker> = (0..4).map(|_| start_broker("")).collect();
        let hub = start_broker("");
        let links = many_links(37, &edges);
        let started = Instant::now();
        let ferry = BenchFerry::start(&hub, &links, scale_inflight());
        ferry.wait_links_up(37, Duration::from_secs(60)).await;
        println!(
            "37 links over 4 edge brokers: all up {:.1} s after start",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle_sample("37 links idle", ferry.pid(), 10);

        // Under load: round robin over the 37 hub topics.
        let delivered = Arc::new(AtomicU64::new(0));
        let subs: Vec<Meter> = edges
            .iter()
            .map(|e| Meter::start_counting(e.addr(), "down/#", delivered.clone()))
            .collect();
        for (i, sub) in subs.iter().enumerate() {
            warm_up(hub.addr(), &format!("edge/{i}/down/warm"), sub).await;
        }
        let n = s.msgs;
        for sub in &subs {
            sub.reset(RUN_SPAN, n);
        }
        let topics: Vec<String> = (0..37).map(|i| format!("edge/{i}/down/t")).collect();
        let pid = ferry.pid();
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        publish(hub.addr(), &topics, RUN_SPAN, n, 128, None, Some(delivered.clone())).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut got = 0;
        while Instant::now() < deadline {
            got = subs.iter().map(|c| c.lock().distinct).sum::<u64>();
            if got >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu0;
        println!(
            "37 links under load: {got} of {n} x 128 B delivered in {secs:.1} s: {:.0} msg/s; ferry CPU {:.1} s per 1M; RSS {:.1} MiB, peak {:.1} MiB (load {})",
            got as f64 / secs,
            cpu / (got.max(1) as f64 / 1e6),
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM")),
            load()
        );
    }
    {
        let count = s.links;
        let edges: Vec<Broker> = (0..4).map(|_| start_broker("")).collect();
        let hub = start_broker("");
        let links = many_links(count, &edges);
        let started = Instant::now();
        let ferry = BenchFerry::start(&hub, &links, scale_inflight());
        ferry.wait_links_up(count, Duration::from_secs(300)).await;
        println!(
            "{count} links over 4 edge brokers: all up {:.1} s after start",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle_sample(&format!("{count} links idle"), ferry.pid(), 10);
    }
}

// ---------------------------------------------------------------- main

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}; load {}", load())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: skipped (an end-to-end benchmark of several minutes; run it with `cargo bench --bench e2e`)");
        return;
    }
    let s = Settings::from_env();
    println!("# ferry e2e benchmark: {}", machine());
    println!("ferry binary: {FERRY}; scenarios: {}", s.scenarios.join(","));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("e2e: tokio runtime");
    rt.block_on(async {
        if s.wants("paths") {
            paths(&s).await;
        }
        if s.wants("backlog") {
            backlog(&s).await;
        }
        if s.wants("scale") {
            scale(&s).await;
        }
    });
}
