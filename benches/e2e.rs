//! End-to-end benchmark: ferry against mosquitto's own bridge and a direct
//! connection, with the same Rust publisher and subscriber, on loopback.
//!
//! Profiles (`FERRY_E2E_PROFILE=defaults,tuned`, both by default; the
//! paths and WAN scenarios run once per profile, the backlog scenario at
//! `FERRY_E2E_BACKLOG_PROFILE`, by default `defaults` only, or the profiles
//! of `FERRY_E2E_PROFILE` when that is set):
//! - `defaults`: every mosquitto at its shipped defaults but for what the
//!   harness needs (`Broker::start_bare`: listener, persistence, `user`, a
//!   large `max_queued_messages`; plus `autosave_interval 0`), so an
//!   in-flight window of 20 and Nagle on; mosquitto's bridge with only
//!   `connection`, `address` and `topic` (and `bridge_cafile` for TLS);
//!   ferry with no `[defaults]` at all (inflight 100, keepalive 30 s,
//!   reconnect 200 ms .. 30 s); the publisher unthrottled (as fast as the
//!   hub's PUBACKs allow, a bounded count).
//! - `tuned`: every broker at `max_inflight_messages 1000` and
//!   `set_tcp_nodelay true` (testkit's standard broker), the bridge with
//!   `restart_timeout 1` / `try_private false`, ferry with `inflight = 1000`,
//!   keepalive 10 s, reconnect 100 ms .. 1 s, and the publisher at most
//!   [`E2E_WINDOW`] messages ahead of the subscriber.
//!
//! Scenarios (`FERRY_E2E=paths,backlog,wan,scale`, all by default):
//! - `paths`: for each profile and payload size, QoS 1 through: direct
//!   (publisher and subscriber on one mosquitto), mosquitto-bridge (publisher
//!   on a hub mosquitto whose `connection` section bridges `down/#` out to an
//!   edge mosquitto), ferry (release build, between the same two kinds of
//!   broker), and the same two bridges over TLS to the edge
//!   (mosquitto-bridge-tls, ferry-tls: a TLS listener on the edge with a
//!   certificate from `testkit::tls`; the subscriber uses a plain listener of
//!   the same edge). Each: a saturated run (msg/s at the subscriber, every
//!   message counted, CPU of the bridging process per million messages) and
//!   a paced run (latency publish -> delivery at `FERRY_E2E_RATE`).
//! - `backlog`: 1,000,000 messages queued while the edge is down, then the
//!   edge returns: drain rate and time to empty, ferry (with 37 links
//!   configured, RSS measured with the backlog) and mosquitto's bridge.
//! - `wan`: a `testkit::DelayProxy` (on its own tokio runtime) between the
//!   bridge and the edge, at each RTT of `FERRY_E2E_RTTS` (ms, 50,200): (a)
//!   sustained msg/s of `FERRY_E2E_WAN_MSGS` (20,000) messages, stopped at
//!   `FERRY_E2E_WAN_SECS` (15 s: the rate reached and "not finished"), and
//!   (b) the drain of `FERRY_E2E_WAN_BACKLOG` (100,000) queued while the
//!   edge is down, limited to `FERRY_E2E_WAN_BACKLOG_SECS` (15 s) from the
//!   first delivery after the edge's restart (the reconnect: up to 60 s).
//! - `scale`: ferry's RSS and CPU with 37 links idle, 37 under load, and
//!   1,000 idle links (sharing a few edge brokers, each link its own client
//!   id and topic prefix); testkit's standard brokers, ferry's default
//!   window unless `FERRY_E2E_SCALE_INFLIGHT`.
//!
//! Every figure is printed with the load average (`/proc/loadavg`) and as a
//! ratio to mosquitto's bridge of the same run and profile; a summary table
//! at the end lists each target of issue 11 with the measured value and
//! MET / MISSED, then the elapsed time.
//!
//! Run: `cargo bench --bench e2e` (everything: 20.4 minutes measured on
//! this machine's 2 cores at load 7-40 (paths 6, backlog 4, wan 9.6, scale
//! 0.8), so about 20-22 minutes, plus the build), `cargo bench --bench e2e
//! -- quick` (small sizes, about 6 minutes), and select with environment
//! variables:
//! `FERRY_E2E`, `FERRY_E2E_PROFILE`, `FERRY_E2E_MSGS` (per saturated run),
//! `FERRY_E2E_PAYLOADS=128,4096`, `FERRY_E2E_RATE` and `FERRY_E2E_PACED_SECS`
//! (paced run), `FERRY_E2E_BACKLOG`, `FERRY_E2E_BACKLOG_SECS` (drain time
//! limit), `FERRY_E2E_LINKS` (the many-links count),
//! `FERRY_E2E_PATHS=direct,mosquitto-bridge,ferry,mosquitto-bridge-tls,ferry-tls`
//! (also selects the bridges of the backlog and WAN scenarios),
//! the `FERRY_E2E_WAN_*` and `FERRY_E2E_RTTS` above,
//! `FERRY_E2E_STORE_CACHE=64MiB` (ferry's `store_cache`),
//! `FERRY_E2E_SCALE_INFLIGHT` (the scale scenario's window).
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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tempfile::TempDir;
use testkit::tls::{tls_listener, Pki, ServerCert};
use testkit::{cpu_secs, status_kib, wait_until, Broker, DelayProxy, Ferry, MAX_INFLIGHT};

/// The ferry binary Cargo built for this benchmark (a release build under
/// `cargo bench`).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// End-to-end window of the tuned profile's saturated runs: the publisher
/// stays at most this many messages ahead of the subscriber, so a path is
/// measured at the rate it sustains, not by how fast a broker's queue can grow.
const E2E_WINDOW: u64 = 5000;
/// Sequence numbers of each measured run start at a new multiple of this.
const RUN_SPAN: u64 = 1_000_000_000;
/// A saturated loopback run ends when nothing new arrived for this long (a
/// path that lost messages), or at [`RUN_LIMIT`].
const STALL: Duration = Duration::from_secs(20);
const RUN_LIMIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- settings

struct Settings {
    scenarios: Vec<String>,
    profiles: Vec<Profile>,
    /// The backlog scenario's (two 1,000,000 backlogs per profile cost
    /// minutes each): `defaults` unless FERRY_E2E_BACKLOG_PROFILE or
    /// FERRY_E2E_PROFILE says otherwise.
    backlog_profiles: Vec<Profile>,
    paths: Vec<String>,
    msgs: u64,
    payloads: Vec<usize>,
    rate: f64,
    paced_secs: f64,
    backlog: u64,
    backlog_secs: u64,
    links: usize,
    rtts: Vec<u64>,
    wan_msgs: u64,
    wan_secs: u64,
    wan_backlog: u64,
    wan_backlog_secs: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("e2e: cannot parse {name}={v:?}")),
        Err(_) => default,
    }
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn numbers<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    list(name, default)
        .iter()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("e2e: {name}: {v:?} is not a number"))
        })
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::args().any(|a| a == "quick");
        let profiles = |name: &str, default: &str| -> Vec<Profile> {
            list(name, default).iter().map(|p| Profile::parse(p)).collect()
        };
        let backlog_default = std::env::var("FERRY_E2E_PROFILE").unwrap_or_else(|_| "defaults".into());
        Settings {
            scenarios: list("FERRY_E2E", "paths,backlog,wan,scale"),
            profiles: profiles("FERRY_E2E_PROFILE", "defaults,tuned"),
            backlog_profiles: profiles("FERRY_E2E_BACKLOG_PROFILE", &backlog_default),
            paths: list(
                "FERRY_E2E_PATHS",
                "direct,mosquitto-bridge,ferry,mosquitto-bridge-tls,ferry-tls",
            ),
            msgs: env_or("FERRY_E2E_MSGS", if quick { 20_000 } else { 100_000 }),
            payloads: numbers("FERRY_E2E_PAYLOADS", "128,4096"),
            rate: env_or("FERRY_E2E_RATE", 5000.0),
            paced_secs: env_or("FERRY_E2E_PACED_SECS", if quick { 2.0 } else { 5.0 }),
            backlog: env_or("FERRY_E2E_BACKLOG", if quick { 50_000 } else { 1_000_000 }),
            backlog_secs: env_or("FERRY_E2E_BACKLOG_SECS", if quick { 60 } else { 180 }),
            links: env_or("FERRY_E2E_LINKS", if quick { 100 } else { 1000 }),
            rtts: numbers("FERRY_E2E_RTTS", if quick { "50" } else { "50,200" }),
            wan_msgs: env_or("FERRY_E2E_WAN_MSGS", if quick { 5_000 } else { 20_000 }),
            wan_secs: env_or("FERRY_E2E_WAN_SECS", if quick { 10 } else { 15 }),
            wan_backlog: env_or("FERRY_E2E_WAN_BACKLOG", if quick { 20_000 } else { 100_000 }),
            wan_backlog_secs: env_or("FERRY_E2E_WAN_BACKLOG_SECS", if quick { 10 } else { 15 }),
        }
    }
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
    fn wants_path(&self, kind: PathKind) -> bool {
        self.paths.iter().any(|p| p == kind.name())
    }
}

// ---------------------------------------------------------------- profiles

/// How brokers, bridges and the publisher are set up (see the file's doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Profile {
    Defaults,
    Tuned,
}

impl Profile {
    fn parse(name: &str) -> Profile {
        match name {
            "defaults" => Profile::Defaults,
            "tuned" => Profile::Tuned,
            other => panic!("e2e: FERRY_E2E_PROFILE: unknown profile {other:?} (defaults, tuned)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Defaults => "defaults",
            Profile::Tuned => "tuned",
        }
    }

    /// A mosquitto of this profile, saving its state only at a clean stop
    /// (so sessions survive a restart without periodic saves costing CPU),
    /// with `extra` config lines appended (a bridge section, a listener).
    fn broker(self, extra: &str) -> Broker {
        let extra = format!("autosave_interval 0\n{extra}");
        match self {
            Profile::Defaults => Broker::start_bare(&extra),
            Profile::Tuned => Broker::start_with(&extra),
        }
    }

    /// The config section that makes a hub mosquitto bridge `down/#` to the
    /// edge at `address` (over TLS, verified against `ca`, when given).
    /// `cleansession false`, a persistent session, is mosquitto's default.
    fn bridge_section(self, address: SocketAddr, ca: Option<&Path>) -> String {
        let mut section = format!("connection edge\naddress {address}\ntopic down/# out 1\n");
        if self == Profile::Tuned {
            section.push_str("cleansession false\nclientid hub-bridge\nrestart_timeout 1\ntry_private false\n");
        }
        if let Some(ca) = ca {
            section.push_str(&format!("bridge_cafile {}\n", ca.display()));
        }
        section
    }

    /// ferry's `[defaults]` table: none at the defaults profile.
    fn ferry_defaults(self) -> String {
        match self {
            Profile::Defaults => String::new(),
            Profile::Tuned => tuned_ferry_defaults(Some(MAX_INFLIGHT)),
        }
    }

    /// The publisher's gate: the subscriber's count at the tuned profile
    /// (at most [`E2E_WINDOW`] ahead), none at the defaults profile.
    fn gate(self, sub: &Meter) -> Option<Arc<AtomicU64>> {
        (self == Profile::Tuned).then(|| sub.delivered.clone())
    }
}

/// ferry's `[defaults]` of the tuned runs: quick dead-peer detection and
/// reconnects, and `inflight` (None: ferry's default).
fn tuned_ferry_defaults(inflight: Option<usize>) -> String {
    format!(
        "[defaults]\nkeepalive_secs = 10\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n{}",
        inflight.map(|n| format!("inflight = {n}\n")).unwrap_or_default()
    )
}

// ---------------------------------------------------------------- processes

fn broker_pid(broker: &Broker) -> u32 {
    broker.pid().expect("e2e: broker not running")
}

/// A link of a ferry config: name, edge port, hub filter, edge topic, and
/// the lines of its `[links.tls]` table (empty: plain TCP).
struct LinkSpec {
    name: String,
    port: u16,
    local: String,
    remote: String,
    tls: String,
}

impl LinkSpec {
    fn new(name: impl Into<String>, port: u16, local: impl Into<String>, remote: impl Into<String>) -> LinkSpec {
        LinkSpec {
            name: name.into(),
            port,
            local: local.into(),
            remote: remote.into(),
            tls: String::new(),
        }
    }

    /// The one link of the paths and WAN scenarios: `down/#` both sides.
    fn single(port: u16) -> LinkSpec {
        LinkSpec::new("edge0", port, "down/#", "down/#")
    }
}

/// ferry (testkit's process handle, killed on drop) with a generated config,
/// and its data directory.
struct BenchFerry {
    ferry: Ferry,
    _data: TempDir,
}

impl BenchFerry {
    /// `defaults`: the config's `[defaults]` table (or nothing). The metrics
    /// and admin listeners get free ports (the admin API's default port may
    /// be taken by another ferry on this machine).
    fn start(hub: &Broker, links: &[LinkSpec], defaults: &str) -> BenchFerry {
        let data = Ferry::data_dir_for_test();
        let metrics_port = testkit::free_port();
        let admin_port = testkit::free_port();
        let mut c = format!(
            "data_dir = \"{}\"\n{}[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[hub]\nhost = \"127.0.0.1\"\nport = {}\n{defaults}",
            data.path().display(),
            std::env::var("FERRY_E2E_STORE_CACHE").map(|c| format!("store_cache = \"{c}\"\n")).unwrap_or_default(),
            hub.port(),
        );
        for l in links {
            let tls = if l.tls.is_empty() {
                String::new()
            } else {
                format!("[links.tls]\n{}", l.tls)
            };
            c.push_str(&format!(
                "[[links]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n{tls}[[links.routes]]\ndirection = \"out\"\nlocal = \"{}\"\nremote = \"{}\"\nqos = 1\n",
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

/// A [`DelayProxy`] on a tokio runtime of its own (one worker thread), so
/// the publisher's and subscriber's work on the main runtime does not delay
/// its writes (which would lengthen the round trip it stands for).
struct WanLink {
    proxy: Option<DelayProxy>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl WanLink {
    async fn start(target: SocketAddr, rtt: Duration) -> WanLink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("e2e-wan")
            .enable_all()
            .build()
            .expect("e2e: the delay proxy's runtime");
        let proxy = runtime
            .spawn(DelayProxy::start(target, rtt / 2))
            .await
            .expect("e2e: starting the delay proxy");
        WanLink {
            proxy: Some(proxy),
            runtime: Some(runtime),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.as_ref().expect("e2e: proxy").addr()
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        drop(self.proxy.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
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

/// One publisher run: `n` QoS 1 messages with sequence numbers from `base`,
/// round robin over `topics`, at `rate` msg/s (None: as fast as acks allow,
/// with rumqttc's in-flight window, which the broker's Receive Maximum
/// sets), and with `gate` (the subscribers' delivered count) at most
/// [`E2E_WINDOW`] ahead of delivery.
#[derive(Clone)]
struct Publish {
    addr: SocketAddr,
    topics: Vec<String>,
    base: u64,
    n: u64,
    size: usize,
    rate: Option<f64>,
    gate: Option<Arc<AtomicU64>>,
}

impl Publish {
    /// Unpaced and ungated, to one topic.
    fn new(addr: SocketAddr, topic: &str, base: u64, n: u64, size: usize) -> Publish {
        Publish {
            addr,
            topics: vec![topic.to_string()],
            base,
            n,
            size,
            rate: None,
            gate: None,
        }
    }

    /// Publishes, and returns when every PUBACK arrived.
    async fn run(self) {
        let Publish {
            addr,
            topics,
            base,
            n,
            size,
            rate,
            gate,
        } = self;
        let id = format!(
            "e2e-pub-{}-{}",
            std::process::id(),
            CLIENTS.fetch_add(1, Ordering::Relaxed)
        );
        let (client, mut eventloop) = AsyncClient::new(options(addr, &id), 1000);
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
}

/// What a subscriber saw of the current run.
#[derive(Default)]
struct Seen {
    base: u64,
    n: u64,
    flags: Vec<bool>,
    distinct: u64,
    /// Messages of the run received again.
    dups: u64,
    lat_ns: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    warm: u64,
    subscribed: bool,
}

/// A subscriber (QoS 1, persistent session) counting distinct sequence
/// numbers of the current run, duplicates, and latencies. Reconnects when
/// the broker goes away; stops when dropped. Not testkit's `Collector`,
/// which keeps every message for the tests' order checks: at a million
/// messages that would cost the benchmark process memory and CPU the
/// figures would then include; this keeps a flag and a latency per message.
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
                        if s.flags[i] {
                            s.dups += 1;
                        } else {
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
        self.wait_progress(n, timeout, timeout).await
    }

    /// Waits until `n` distinct arrived, nothing new arrived for `stall`, or
    /// `limit` passed; returns how many did.
    async fn wait_progress(&self, n: u64, stall: Duration, limit: Duration) -> u64 {
        let began = Instant::now();
        let (mut seen, mut moved) = (0, began);
        loop {
            let d = self.lock().distinct;
            let now = Instant::now();
            if d != seen {
                (seen, moved) = (d, now);
            }
            if d >= n || now >= began + limit || now >= moved + stall {
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
    let deadline = Instant::now() + Duration::from_secs(90);
    while sub.lock().warm == 0 {
        assert!(
            Instant::now() < deadline,
            "e2e: nothing crossed {pub_addr} -> subscriber on {warm_topic} within 90 s"
        );
        Publish::new(pub_addr, warm_topic, 0, 1, 64).run().await;
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

/// One saturated run as the subscriber saw it.
#[derive(Clone)]
struct Run {
    sent: u64,
    got: u64,
    /// Not all arrived, and the run stopped at its time limit (rather than
    /// because nothing arrived for its stall time: lost or stuck).
    at_limit: bool,
    dups: u64,
    /// Distinct messages / (last delivery - first publish).
    rate: f64,
    /// Seconds from the first publish to the last delivery.
    secs: f64,
    /// Latency p50 / p99 (ms).
    p50: f64,
    p99: f64,
    load: String,
}

impl Run {
    fn finished(&self) -> bool {
        self.got >= self.sent
    }

    /// "200000/200000", with what went wrong when something did.
    fn delivered(&self) -> String {
        let mut s = format!("{}/{}", self.got, self.sent);
        if self.got < self.sent && self.at_limit {
            s.push_str(&format!(
                " ({} not delivered within the time limit)",
                self.sent - self.got
            ));
        } else if self.got < self.sent {
            s.push_str(&format!(" ({} missing: nothing more arrived)", self.sent - self.got));
        }
        if self.dups > 0 {
            s.push_str(&format!(" ({} duplicates)", self.dups));
        }
        s
    }
}

/// Publishes `publish` (a fresh run of `sub`) and waits for its messages at
/// `sub` until all came, nothing came for `stall`, or `limit` passed since
/// the first publish; the publisher is stopped then if it is still going.
async fn saturate(publish: Publish, sub: &Meter, stall: Duration, limit: Duration) -> Run {
    let n = publish.n;
    sub.reset(publish.base, n);
    let t0 = Instant::now();
    let publisher = tokio::spawn(publish.run());
    let got = sub.wait_progress(n, stall, limit).await;
    let at_limit = got < n && t0.elapsed() >= limit;
    let load = load();
    if got >= n {
        // Every message arrived: its PUBACK is due at once.
        match tokio::time::timeout(Duration::from_secs(60), publisher).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("e2e: publisher failed: {e}"),
            Err(_) => panic!("e2e: every message arrived, but the publisher got no PUBACK for 60 s"),
        }
    } else {
        publisher.abort();
    }
    let mut g = sub.lock();
    let end = g.last.unwrap_or_else(Instant::now);
    let secs = end.duration_since(t0).as_secs_f64().max(1e-9);
    g.lat_ns.sort_unstable();
    Run {
        sent: n,
        got: g.distinct,
        at_limit,
        dups: g.dups,
        rate: g.distinct as f64 / secs,
        secs,
        p50: percentile(&g.lat_ns, 0.5),
        p99: percentile(&g.lat_ns, 0.99),
        load,
    }
}

/// `a / b` as "0.83x"; "-" without both.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

// ---------------------------------------------------------------- paths

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum PathKind {
    Direct,
    MosquittoBridge,
    Ferry,
    MosquittoBridgeTls,
    FerryTls,
}

impl PathKind {
    const ALL: [PathKind; 5] = [
        PathKind::Direct,
        PathKind::MosquittoBridge,
        PathKind::Ferry,
        PathKind::MosquittoBridgeTls,
        PathKind::FerryTls,
    ];

    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::MosquittoBridge => "mosquitto-bridge",
            PathKind::Ferry => "ferry",
            PathKind::MosquittoBridgeTls => "mosquitto-bridge-tls",
            PathKind::FerryTls => "ferry-tls",
        }
    }

    fn cpu_of(self) -> &'static str {
        match self {
            PathKind::Direct => "the broker",
            PathKind::MosquittoBridge | PathKind::MosquittoBridgeTls => "hub mosquitto (hosts the bridge)",
            PathKind::Ferry | PathKind::FerryTls => "ferry",
        }
    }

    /// The mosquitto bridge a figure is compared with: the TLS one for TLS paths.
    fn reference(self) -> PathKind {
        match self {
            PathKind::MosquittoBridgeTls | PathKind::FerryTls => PathKind::MosquittoBridgeTls,
            _ => PathKind::MosquittoBridge,
        }
    }

    fn tls(self) -> bool {
        matches!(self, PathKind::MosquittoBridgeTls | PathKind::FerryTls)
    }
}

struct PathResult {
    sat: Run,
    paced: Run,
    max: f64,
    cpu_per_m: f64,
}

/// The brokers (and ferry) of one path; dropping it stops them all.
struct Setup {
    _edge: Option<Broker>,
    _hub: Broker,
    _ferry: Option<BenchFerry>,
    _pki: Option<Pki>,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    bridge_pid: u32,
}

/// The edge of a path: a broker of `profile`, with its main listener TLS
/// (a certificate for 127.0.0.1 signed by a new CA) when `tls`; then the
/// subscriber's address (a plain listener of the same broker) and the CA.
fn edge_broker(profile: Profile, tls: bool) -> (Broker, SocketAddr, Option<Pki>) {
    if !tls {
        let edge = profile.broker("");
        let addr = edge.addr();
        return (edge, addr, None);
    }
    let pki = Pki::new("e2e");
    let server = pki.server("edge", ServerCert::Valid);
    let plain = testkit::free_port();
    let edge = profile.broker(&tls_listener(&pki.ca_file(), &server, false, plain));
    (edge, SocketAddr::from(([127, 0, 0, 1], plain)), Some(pki))
}

async fn setup(kind: PathKind, profile: Profile) -> Setup {
    if kind == PathKind::Direct {
        let b = profile.broker("");
        let (addr, pid) = (b.addr(), broker_pid(&b));
        return Setup {
            _edge: None,
            _hub: b,
            _ferry: None,
            _pki: None,
            pub_addr: addr,
            sub_addr: addr,
            bridge_pid: pid,
        };
    }
    let (edge, sub_addr, pki) = edge_broker(profile, kind.tls());
    let ca = pki.as_ref().map(|p| p.ca_file());
    let (hub, ferry) = match kind {
        PathKind::MosquittoBridge | PathKind::MosquittoBridgeTls => (
            profile.broker(&profile.bridge_section(edge.addr(), ca.as_deref())),
            None,
        ),
        _ => {
            let hub = profile.broker("");
            let mut link = LinkSpec::single(edge.port());
            if let Some(ca) = &ca {
                link.tls = format!("ca_file = {:?}\n", ca.display().to_string());
            }
            let ferry = BenchFerry::start(&hub, &[link], &profile.ferry_defaults());
            ferry.wait_links_up(1, Duration::from_secs(60)).await;
            (hub, Some(ferry))
        }
    };
    let pid = ferry.as_ref().map_or_else(|| broker_pid(&hub), |f| f.pid());
    Setup {
        pub_addr: hub.addr(),
        _edge: Some(edge),
        _hub: hub,
        _ferry: ferry,
        _pki: pki,
        sub_addr,
        bridge_pid: pid,
    }
}

async fn run_path(kind: PathKind, profile: Profile, payload: usize, s: &Settings) -> PathResult {
    let setup = setup(kind, profile).await;
    let sub = Meter::start(setup.sub_addr, "down/#");
    warm_up(setup.pub_addr, "down/warm", &sub).await;

    // Saturated: as fast as the profile's publisher goes.
    let mut publish = Publish::new(setup.pub_addr, "down/t", RUN_SPAN, s.msgs, payload);
    publish.gate = profile.gate(&sub);
    let cpu0 = cpu_secs(setup.bridge_pid);
    let sat = saturate(publish, &sub, STALL, RUN_LIMIT).await;
    let cpu = cpu_secs(setup.bridge_pid) - cpu0;

    // Paced: latency at a rate every path sustains.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = (s.rate * s.paced_secs) as u64;
    let mut publish = Publish::new(setup.pub_addr, "down/t", 2 * RUN_SPAN, m, payload);
    publish.rate = Some(s.rate);
    let paced = saturate(publish, &sub, STALL, Duration::from_secs(120)).await;
    let max = sub.lock().lat_ns.last().map_or(f64::NAN, |v| *v as f64 / 1e6);
    PathResult {
        cpu_per_m: cpu / (sat.got.max(1) as f64 / 1e6),
        sat,
        paced,
        max,
    }
}

type PathResults = HashMap<(Profile, PathKind, usize), PathResult>;

async fn paths(s: &Settings, results: &mut PathResults) {
    println!(
        "\n## paths: QoS 1, {} messages saturated, then {} msg/s for {} s (latency)",
        s.msgs, s.rate, s.paced_secs
    );
    let kinds: Vec<PathKind> = PathKind::ALL.into_iter().filter(|k| s.wants_path(*k)).collect();
    for &profile in &s.profiles {
        for &payload in &s.payloads {
            for &kind in &kinds {
                println!(
                    "running {} {} {payload} B (load {}) ...",
                    profile.name(),
                    kind.name(),
                    load()
                );
                let r = run_path(kind, profile, payload, s).await;
                println!(
                    "  {:.0} msg/s, delivered {}, paced p99 {:.2} ms (load {})",
                    r.sat.rate,
                    r.sat.delivered(),
                    r.paced.p99,
                    r.sat.load
                );
                results.insert((profile, kind, payload), r);
            }
        }
    }
    println!(
        "\n| profile | path | payload | msg/s (saturated) | x bridge | delivered/sent | latency p50 / p99 saturated (ms) | latency p50 / p99 / max at {} msg/s (ms) | p99 x bridge | CPU s per 1M msgs | x bridge | of | load avg after |",
        s.rate
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &profile in &s.profiles {
        for &payload in &s.payloads {
            for &kind in &kinds {
                let Some(r) = results.get(&(profile, kind, payload)) else {
                    continue;
                };
                let b = results.get(&(profile, kind.reference(), payload));
                println!(
                    "| {} | {} | {payload} B | {:.0} | {} | {} | {:.1} / {:.1} | {:.2} / {:.2} / {:.2} | {} | {:.1} | {} | {} | {} |",
                    profile.name(),
                    kind.name(),
                    r.sat.rate,
                    ratio(Some(r.sat.rate), b.map(|b| b.sat.rate)),
                    r.sat.delivered(),
                    r.sat.p50,
                    r.sat.p99,
                    r.paced.p50,
                    r.paced.p99,
                    r.max,
                    ratio(Some(r.paced.p99), b.map(|b| b.paced.p99)),
                    r.cpu_per_m,
                    ratio(Some(r.cpu_per_m), b.map(|b| b.cpu_per_m)),
                    kind.cpu_of(),
                    r.sat.load
                );
            }
        }
    }
    println!("\n(x bridge: ratio to mosquitto-bridge of the same profile and payload; TLS paths to mosquitto-bridge-tls. paced runs: every message of the plain and TLS paths is counted too, see delivered in the lines above.)");
    for &profile in &s.profiles {
        for &payload in &s.payloads {
            let get = |k| results.get(&(profile, k, payload));
            if let (Some(f), Some(d)) = (get(PathKind::Ferry), get(PathKind::Direct)) {
                println!(
                    "{} {payload} B: ferry/direct {:.2}; paced run delivered {}",
                    profile.name(),
                    f.sat.rate / d.sat.rate,
                    f.paced.delivered()
                );
            }
        }
    }
}

// ---------------------------------------------------------------- backlog

/// Publishes `n` messages of `size` bytes (a run from [`RUN_SPAN`]) in chunks, each chunk once ferry has queued the
/// previous one: the hub's own queue for ferry stays small (mosquitto
/// delivers a large session queue slowly).
async fn publish_backlog_through_ferry(hub: &Broker, ferry: &BenchFerry, topic: &str, n: u64, size: usize) -> f64 {
    let chunk = 20_000u64;
    let t0 = Instant::now();
    let mut done = 0;
    while done < n {
        let take = chunk.min(n - done);
        Publish::new(hub.addr(), topic, RUN_SPAN + done, take, size).run().await;
        done += take;
        if let Err(e) = ferry
            .ferry
            .wait_metric(
                "ferry_queue_messages",
                &[("link", "edge0"), ("direction", "out")],
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

/// What one drain of a backlog gave.
#[derive(Clone)]
struct Drain {
    n: u64,
    got: u64,
    /// Seconds from the edge's restart to the first / last delivery.
    first: Option<f64>,
    last: Option<f64>,
    cpu: f64,
    limit: u64,
    load: String,
}

impl Drain {
    /// Distinct messages / (last delivery - first delivery).
    fn rate(&self) -> Option<f64> {
        let (first, last) = (self.first?, self.last?);
        Some(self.got as f64 / (last - first).max(1e-3))
    }

    fn finished(&self) -> bool {
        self.got >= self.n
    }

    fn report(&self, name: &str) {
        match (self.first, self.last, self.rate()) {
            (Some(first), Some(last), Some(rate)) if self.finished() => println!(
                "{name}: drained {} in {last:.1} s from the edge's restart (first delivery after {first:.2} s): {rate:.0} msg/s (load {})",
                self.got, self.load
            ),
            (Some(first), _, Some(rate)) => println!(
                "{name}: not finished: only {} of {} delivered within {} s of the first (first after {first:.2} s): {rate:.0} msg/s; at that rate, emptying takes ~{:.0} s (load {})",
                self.got,
                self.n,
                self.limit,
                self.n as f64 / rate,
                self.load
            ),
            _ => println!(
                "{name}: nothing delivered within {} s of the edge's restart (load {})",
                RECONNECT_LIMIT.as_secs(),
                self.load
            ),
        }
    }
}

/// How long a bridge may take to reconnect to a restarted edge (ferry's and
/// mosquitto's default backoffs cap at 30 s) before a drain counts as empty.
const RECONNECT_LIMIT: Duration = Duration::from_secs(60);

/// Restarts the edge and waits for `n` messages at `sub`: for the first up
/// to [`RECONNECT_LIMIT`], then for the rest up to `secs` after the first
/// (so a bridge's reconnect backoff does not eat the measured drain).
/// `pid`: the process whose CPU the drain costs.
async fn restart_and_drain(edge: &mut Broker, sub: &Meter, pid: u32, n: u64, secs: u64) -> Drain {
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    edge.restart();
    sub.wait(1, RECONNECT_LIMIT).await;
    let got = sub.wait(n, Duration::from_secs(secs)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let g = sub.lock();
    let since = |at: Option<Instant>| at.map(|t| t.duration_since(t0).as_secs_f64());
    Drain {
        n,
        got,
        first: since(g.first),
        last: since(g.last),
        cpu,
        limit: secs,
        load: load(),
    }
}

/// The backlog scenario's figures of one profile.
struct BacklogResult {
    ferry: Drain,
    bridge: Option<Drain>,
    /// ferry's RSS with the backlog queued (MiB).
    rss: f64,
    n: u64,
    load: String,
}

async fn backlog(s: &Settings, profile: Profile) -> BacklogResult {
    let n = s.backlog;
    println!(
        "\n## backlog ({}): {n} x 128 B queued while the edge is down, then the edge returns (limit {} s from the first delivery)",
        profile.name(),
        s.backlog_secs
    );

    // ferry, 37 links: link 0 to its own edge, 36 idle links to another.
    let (ferry_drain, rss, rss_load) = {
        let mut edge = profile.broker("");
        let others = profile.broker("");
        let hub = profile.broker("");
        let mut links = vec![LinkSpec::new("edge0", edge.port(), "edge/0/down/#", "down/#")];
        for i in 1..37 {
            links.push(LinkSpec::new(
                format!("edge{i}"),
                others.port(),
                format!("edge/{i}/down/#"),
                format!("down/{i}/#"),
            ));
        }
        let ferry = BenchFerry::start(&hub, &links, &profile.ferry_defaults());
        ferry.wait_links_up(37, Duration::from_secs(60)).await;
        let sub = Meter::start(edge.addr(), "down/#");
        warm_up(hub.addr(), "edge/0/down/warm", &sub).await;
        edge.stop();
        sub.reset(RUN_SPAN, n);
        let ingest = publish_backlog_through_ferry(&hub, &ferry, "edge/0/down/t", n, 128).await;
        let pid = ferry.pid();
        let rss_backlog = mib(status_kib(pid, "VmRSS"));
        let rss_load = load();
        println!(
            "ferry: {n} queued, ingest {ingest:.0} msg/s (publish in chunks of 20,000 + wait for ferry); RSS with the backlog {rss_backlog:.1} MiB (anonymous {:.1} MiB), peak so far {:.1} MiB (37 links; load {rss_load})",
            mib(status_kib(pid, "RssAnon")),
            mib(status_kib(pid, "VmHWM")),
        );
        let drain = restart_and_drain(&mut edge, &sub, pid, n, s.backlog_secs).await;
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
        drain.report("ferry");
        println!(
            "ferry: queue after drain {empty}, CPU {:.1} s for the drain ({:.1} s per 1M), RSS after the drain {:.1} MiB, peak RSS over the whole run {:.1} MiB (load {})",
            drain.cpu,
            drain.cpu / (drain.got.max(1) as f64 / 1e6),
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM")),
            load()
        );
        (drain, rss_backlog, rss_load)
    };

    // mosquitto's bridge, unlimited queue in the hub's memory.
    let bridge = if s.wants_path(PathKind::MosquittoBridge) {
        let mut edge = profile.broker("");
        let hub = profile.broker(&profile.bridge_section(edge.addr(), None));
        let sub = Meter::start(edge.addr(), "down/#");
        warm_up(hub.addr(), "down/warm", &sub).await;
        edge.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        sub.reset(RUN_SPAN, n);
        let t = Instant::now();
        Publish::new(hub.addr(), "down/t", RUN_SPAN, n, 128).run().await;
        let pid = broker_pid(&hub);
        println!(
            "mosquitto-bridge: {n} queued in the hub in {:.1} s ({:.0} msg/s); hub RSS {:.1} MiB (load {})",
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64(),
            mib(status_kib(pid, "VmRSS")),
            load()
        );
        let drain = restart_and_drain(&mut edge, &sub, pid, n, s.backlog_secs).await;
        drain.report("mosquitto-bridge");
        println!("mosquitto-bridge: hub CPU {:.1} s during the drain", drain.cpu);
        Some(drain)
    } else {
        None
    };
    println!(
        "backlog ({}): drain rate ferry/mosquitto-bridge {}",
        profile.name(),
        ratio(ferry_drain.rate(), bridge.as_ref().and_then(Drain::rate))
    );
    BacklogResult {
        ferry: ferry_drain,
        bridge,
        rss,
        n,
        load: rss_load,
    }
}

// ---------------------------------------------------------------- wan

/// The figures of one bridge across one WAN link.
struct WanResult {
    sustained: Run,
    drain: Drain,
}

/// Hub, edge, the delay proxy between the bridge and the edge, and the
/// bridge (mosquitto's, in the hub, or ferry); dropping it stops them all.
struct WanSetup {
    edge: Broker,
    hub: Broker,
    ferry: Option<BenchFerry>,
    _link: WanLink,
}

impl WanSetup {
    async fn start(kind: PathKind, profile: Profile, rtt: Duration) -> WanSetup {
        let edge = profile.broker("");
        let link = WanLink::start(edge.addr(), rtt).await;
        let (hub, ferry) = if kind == PathKind::Ferry {
            let hub = profile.broker("");
            let ferry = BenchFerry::start(&hub, &[LinkSpec::single(link.addr().port())], &profile.ferry_defaults());
            ferry.wait_links_up(1, Duration::from_secs(60)).await;
            (hub, Some(ferry))
        } else {
            (profile.broker(&profile.bridge_section(link.addr(), None)), None)
        };
        WanSetup {
            edge,
            hub,
            ferry,
            _link: link,
        }
    }

    fn bridge_pid(&self) -> u32 {
        self.ferry.as_ref().map_or_else(|| broker_pid(&self.hub), |f| f.pid())
    }
}

async fn wan_run(kind: PathKind, profile: Profile, rtt_ms: u64, payload: usize, s: &Settings) -> WanResult {
    let rtt = Duration::from_millis(rtt_ms);
    let name = format!("{} {} {rtt_ms} ms {payload} B", profile.name(), kind.name());

    // (a) sustained: a bounded count, time-bounded.
    let sustained = {
        let setup = WanSetup::start(kind, profile, rtt).await;
        let sub = Meter::start(setup.edge.addr(), "down/#");
        warm_up(setup.hub.addr(), "down/warm", &sub).await;
        let mut publish = Publish::new(setup.hub.addr(), "down/t", RUN_SPAN, s.wan_msgs, payload);
        publish.gate = profile.gate(&sub);
        let limit = Duration::from_secs(s.wan_secs);
        let run = saturate(publish, &sub, limit, limit).await;
        println!(
            "{name}: sustained {:.0} msg/s, {} in {:.1} s{} (load {})",
            run.rate,
            run.delivered(),
            run.secs,
            if run.finished() { "" } else { ", not finished" },
            run.load
        );
        run
    };

    // (b) the drain of a backlog queued while the edge was down.
    let drain = {
        let mut setup = WanSetup::start(kind, profile, rtt).await;
        let sub = Meter::start(setup.edge.addr(), "down/#");
        warm_up(setup.hub.addr(), "down/warm", &sub).await;
        setup.edge.stop();
        let n = s.wan_backlog;
        sub.reset(RUN_SPAN, n);
        match &setup.ferry {
            Some(ferry) => {
                publish_backlog_through_ferry(&setup.hub, ferry, "down/t", n, payload).await;
            }
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Publish::new(setup.hub.addr(), "down/t", RUN_SPAN, n, payload)
                    .run()
                    .await;
            }
        }
        let pid = setup.bridge_pid();
        let drain = restart_and_drain(&mut setup.edge, &sub, pid, n, s.wan_backlog_secs).await;
        drain.report(&format!("{name}: backlog {n}"));
        drain
    };
    WanResult { sustained, drain }
}

type WanResults = HashMap<(Profile, u64, usize, PathKind), WanResult>;

async fn wan(s: &Settings, results: &mut WanResults) {
    println!(
        "\n## wan: delay proxy between bridge and edge; sustained {} messages (limit {} s), backlog {} drained (limit {} s from the first delivery)",
        s.wan_msgs, s.wan_secs, s.wan_backlog, s.wan_backlog_secs
    );
    let kinds: Vec<PathKind> = [PathKind::MosquittoBridge, PathKind::Ferry]
        .into_iter()
        .filter(|k| s.wants_path(*k))
        .collect();
    for &profile in &s.profiles {
        for &rtt in &s.rtts {
            for &payload in &s.payloads {
                for &kind in &kinds {
                    println!(
                        "running wan {} {} {rtt} ms {payload} B (load {}) ...",
                        profile.name(),
                        kind.name(),
                        load()
                    );
                    let r = wan_run(kind, profile, rtt, payload, s).await;
                    results.insert((profile, rtt, payload, kind), r);
                }
            }
        }
    }
    println!("\n| profile | RTT | payload | bridge | sustained msg/s | x bridge | delivered/sent | load | backlog drain msg/s | x bridge | delivered | first delivery / empty after the edge's restart (s) | load |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &profile in &s.profiles {
        for &rtt in &s.rtts {
            for &payload in &s.payloads {
                for &kind in &kinds {
                    let Some(r) = results.get(&(profile, rtt, payload, kind)) else {
                        continue;
                    };
                    let b = results.get(&(profile, rtt, payload, PathKind::MosquittoBridge));
                    let fmt_s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                    println!(
                        "| {} | {rtt} ms | {payload} B | {} | {:.0}{} | {} | {} | {} | {} | {} | {}/{}{} | {} / {} | {} |",
                        profile.name(),
                        kind.name(),
                        r.sustained.rate,
                        if r.sustained.finished() { "" } else { " (not finished)" },
                        ratio(Some(r.sustained.rate), b.map(|b| b.sustained.rate)),
                        r.sustained.delivered(),
                        r.sustained.load,
                        r.drain.rate().map_or("-".into(), |v| format!("{v:.0}")),
                        ratio(r.drain.rate(), b.and_then(|b| b.drain.rate())),
                        r.drain.got,
                        r.drain.n,
                        if r.drain.finished() { "" } else { " (not finished)" },
                        fmt_s(r.drain.first),
                        if r.drain.finished() { fmt_s(r.drain.last) } else { format!("> first + {}", r.drain.limit) },
                        r.drain.load
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- scale

/// `count` links spread over `edges` brokers; link i: `edge/<i>/down/#` ->
/// `down/<i>/#`.
fn many_links(count: usize, edges: &[Broker]) -> Vec<LinkSpec> {
    (0..count)
        .map(|i| {
            LinkSpec::new(
                format!("edge{i}"),
                edges[i % edges.len()].port(),
                format!("edge/{i}/down/#"),
                format!("down/{i}/#"),
            )
        })
        .collect()
}

/// RSS (MiB) after `secs` idle, printed with the CPU used meanwhile.
fn idle_sample(name: &str, pid: u32, secs: u64) -> f64 {
    let cpu0 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_secs(pid) - cpu0;
    let rss = mib(status_kib(pid, "VmRSS"));
    println!(
        "{name}: RSS {rss:.1} MiB (peak {:.1} MiB), CPU {:.3} s over {secs} s idle ({:.1}% of a core) (load {})",
        mib(status_kib(pid, "VmHWM")),
        cpu,
        cpu / secs as f64 * 100.0,
        load()
    );
    rss
}

/// The links' window in the scale scenario: ferry's default (100) unless
/// `FERRY_E2E_SCALE_INFLIGHT` says otherwise.
fn scale_inflight() -> Option<usize> {
    std::env::var("FERRY_E2E_SCALE_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The scale scenario; returns the many-links count, their idle RSS (MiB)
/// and the load average then.
async fn scale(s: &Settings) -> (usize, f64, String) {
    println!(
        "\n## scale (testkit's brokers; ferry inflight {})",
        scale_inflight().map_or("100, the default".to_string(), |n| n.to_string())
    );
    let defaults = tuned_ferry_defaults(scale_inflight());
    {
        let edges: Vec<Broker> = (0..4).map(|_| Profile::Tuned.broker("")).collect();
        let hub = Profile::Tuned.broker("");
        let links = many_links(37, &edges);
        let started = Instant::now();
        let ferry = BenchFerry::start(&hub, &links, &defaults);
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
        let mut publish = Publish::new(hub.addr(), "", RUN_SPAN, n, 128);
        publish.topics = (0..37).map(|i| format!("edge/{i}/down/t")).collect();
        publish.gate = Some(delivered.clone());
        let pid = ferry.pid();
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        publish.run().await;
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
        let dups = subs.iter().map(|c| c.lock().dups).sum::<u64>();
        println!(
            "37 links under load: {got} of {n} x 128 B delivered ({dups} duplicates) in {secs:.1} s: {:.0} msg/s; ferry CPU {:.1} s per 1M; RSS {:.1} MiB, peak {:.1} MiB (load {})",
            got as f64 / secs,
            cpu / (got.max(1) as f64 / 1e6),
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM")),
            load()
        );
    }
    let count = s.links;
    let edges: Vec<Broker> = (0..4).map(|_| Profile::Tuned.broker("")).collect();
    let hub = Profile::Tuned.broker("");
    let links = many_links(count, &edges);
    let started = Instant::now();
    let ferry = BenchFerry::start(&hub, &links, &defaults);
    ferry.wait_links_up(count, Duration::from_secs(300)).await;
    println!(
        "{count} links over 4 edge brokers: all up {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = idle_sample(&format!("{count} links idle"), ferry.pid(), 10);
    (count, rss, load())
}

// ---------------------------------------------------------------- summary

/// Everything measured, for the summary.
#[derive(Default)]
struct Results {
    paths: PathResults,
    wan: WanResults,
    backlog: Vec<(Profile, BacklogResult)>,
    idle_links: Option<(usize, f64, String)>,
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// ferry's saturated rate against the bridge's: the summary's value, and
/// MET when ferry is at least as fast and delivered every message.
fn throughput(f: &PathResult, b: &PathResult) -> (String, &'static str) {
    let value = format!(
        "ferry {:.0} vs bridge {:.0} msg/s = {}; delivered {} (load {})",
        f.sat.rate,
        b.sat.rate,
        ratio(Some(f.sat.rate), Some(b.sat.rate)),
        f.sat.delivered(),
        f.sat.load
    );
    (value, met(f.sat.rate >= b.sat.rate && f.sat.finished()))
}

/// One table: each target of issue 11 (and issue 9's TLS figure) with what
/// this run measured.
fn summary(s: &Settings, r: &Results) {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |target: String, value: String, status: &str| rows.push((target, value, status.to_string()));
    let not_measured = "not measured in this run";

    // 1. WAN, at the defaults profile.
    for &rtt in &s.rtts {
        for &payload in &s.payloads {
            let key = |k| (Profile::Defaults, rtt, payload, k);
            let (Some(f), Some(b)) = (
                r.wan.get(&key(PathKind::Ferry)),
                r.wan.get(&key(PathKind::MosquittoBridge)),
            ) else {
                row(
                    format!("1. WAN {rtt} ms {payload} B, defaults: ferry >= 1.0x bridge"),
                    not_measured.into(),
                    "-",
                );
                continue;
            };
            let ok = f.sustained.finished() && f.sustained.rate >= b.sustained.rate;
            row(
                format!("1. WAN {rtt} ms {payload} B, defaults, sustained >= 1.0x"),
                format!(
                    "ferry {:.0}{} vs bridge {:.0} msg/s = {} (load {})",
                    f.sustained.rate,
                    if f.sustained.finished() { "" } else { " (not finished)" },
                    b.sustained.rate,
                    ratio(Some(f.sustained.rate), Some(b.sustained.rate)),
                    f.sustained.load
                ),
                met(ok),
            );
            let (fr, br) = (f.drain.rate(), b.drain.rate());
            let ok = f.drain.finished() && fr.unwrap_or(0.0) >= br.unwrap_or(f64::INFINITY);
            row(
                format!("1. WAN {rtt} ms {payload} B, defaults, drain of {} >= 1.0x", f.drain.n),
                format!(
                    "ferry {}{} vs bridge {} msg/s = {} (load {})",
                    fr.map_or("-".into(), |v| format!("{v:.0}")),
                    if f.drain.finished() { "" } else { " (not finished)" },
                    br.map_or("-".into(), |v| format!("{v:.0}")),
                    ratio(fr, br),
                    f.drain.load
                ),
                met(ok),
            );
        }
    }
    let path = |p, k, payload| r.paths.get(&(p, k, payload));
    // 2, 3, 4: loopback.
    for &payload in &s.payloads {
        match (
            path(Profile::Defaults, PathKind::Ferry, payload),
            path(Profile::Defaults, PathKind::MosquittoBridge, payload),
        ) {
            (Some(f), Some(b)) => {
                let (value, status) = throughput(f, b);
                row(
                    format!("2. loopback defaults {payload} B: >= 1.0x, every message delivered"),
                    value,
                    status,
                )
            }
            _ => row(format!("2. loopback defaults {payload} B"), not_measured.into(), "-"),
        }
        match (
            path(Profile::Tuned, PathKind::Ferry, payload),
            path(Profile::Tuned, PathKind::MosquittoBridge, payload),
        ) {
            (Some(f), Some(b)) => {
                let (value, status) = throughput(f, b);
                row(format!("3. loopback tuned {payload} B: >= 1.0x"), value, status);
                row(
                    format!("3. loopback tuned {payload} B: paced p99 <= 2x bridge"),
                    format!(
                        "ferry {:.2} vs bridge {:.2} ms = {} (load {})",
                        f.paced.p99,
                        b.paced.p99,
                        ratio(Some(f.paced.p99), Some(b.paced.p99)),
                        f.paced.load
                    ),
                    met(f.paced.p99 <= 2.0 * b.paced.p99),
                );
            }
            _ => row(format!("3. loopback tuned {payload} B"), not_measured.into(), "-"),
        }
        for &profile in &s.profiles {
            if let (Some(f), Some(b)) = (
                path(profile, PathKind::Ferry, payload),
                path(profile, PathKind::MosquittoBridge, payload),
            ) {
                row(
                    format!("4. CPU per msg {payload} B ({}): <= 1.0x hub mosquitto", profile.name()),
                    format!(
                        "ferry {:.1} vs hub {:.1} CPU s per 1M = {} (load {})",
                        f.cpu_per_m,
                        b.cpu_per_m,
                        ratio(Some(f.cpu_per_m), Some(b.cpu_per_m)),
                        f.sat.load
                    ),
                    met(f.cpu_per_m <= b.cpu_per_m),
                );
            }
        }
    }
    // 5. memory.
    if r.backlog.is_empty() {
        row(
            "5. memory: 37 links, 1,000,000 backlog <= 64 MiB".into(),
            not_measured.into(),
            "-",
        );
    }
    for (profile, b) in &r.backlog {
        let at = if b.n == 1_000_000 {
            String::new()
        } else {
            format!(" (backlog {}, not 1,000,000)", b.n)
        };
        row(
            format!("5. memory: 37 links, 1,000,000 backlog <= 64 MiB ({})", profile.name()),
            format!("{:.1} MiB{at} (load {})", b.rss, b.load),
            met(b.rss <= 64.0),
        );
    }
    match &r.idle_links {
        Some((count, rss, load)) => {
            let at = if *count == 1000 {
                String::new()
            } else {
                format!(" ({count} links, not 1,000)")
            };
            row(
                "5. memory: 1,000 idle links <= 128 MiB".into(),
                format!("{rss:.1} MiB{at} (load {load})"),
                met(*rss <= 128.0),
            );
        }
        None => row(
            "5. memory: 1,000 idle links <= 128 MiB".into(),
            not_measured.into(),
            "-",
        ),
    }
    // The loopback backlog (information: no target of issue 11).
    for (profile, b) in &r.backlog {
        row(
            format!("(backlog) loopback drain of {} ({})", b.n, profile.name()),
            format!(
                "ferry {}{} vs bridge {} msg/s = {} (load {})",
                b.ferry.rate().map_or("-".into(), |v| format!("{v:.0}")),
                if b.ferry.finished() { "" } else { " (not finished)" },
                b.bridge
                    .as_ref()
                    .and_then(Drain::rate)
                    .map_or("-".into(), |v| format!("{v:.0}")),
                ratio(b.ferry.rate(), b.bridge.as_ref().and_then(Drain::rate)),
                b.ferry.load
            ),
            "-",
        );
    }
    // Issue 9: TLS beside plain (information, no target).
    for &profile in &s.profiles {
        for &payload in &s.payloads {
            if let (Some(f), Some(b)) = (
                path(profile, PathKind::FerryTls, payload),
                path(profile, PathKind::MosquittoBridgeTls, payload),
            ) {
                let plain = path(profile, PathKind::Ferry, payload).map(|p| p.sat.rate);
                row(
                    format!("(issue 9) TLS {payload} B ({})", profile.name()),
                    format!(
                        "ferry-tls {:.0} vs mosquitto-bridge-tls {:.0} msg/s = {}; ferry-tls/ferry {}; delivered {} (load {})",
                        f.sat.rate,
                        b.sat.rate,
                        ratio(Some(f.sat.rate), Some(b.sat.rate)),
                        ratio(Some(f.sat.rate), plain),
                        f.sat.delivered(),
                        f.sat.load
                    ),
                    "-",
                );
            }
        }
    }
    // By target (the rows start with its number; the informational ones with "(").
    rows.sort_by_key(|row| (row.0.starts_with('('), row.0.split(' ').next().map(str::to_string)));
    println!("\n## summary: the targets of issue 11\n");
    println!("| target | measured | status |");
    println!("|---|---|---|");
    for (target, value, status) in rows {
        println!("| {target} | {value} | {status} |");
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
    let began = Instant::now();
    let s = Settings::from_env();
    println!("# ferry e2e benchmark: {}", machine());
    println!(
        "ferry binary: {FERRY}; scenarios: {}; profiles: {}",
        s.scenarios.join(","),
        s.profiles.iter().map(|p| p.name()).collect::<Vec<_>>().join(",")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("e2e: tokio runtime");
    let mut results = Results::default();
    let mut times = Vec::new();
    rt.block_on(async {
        let mut lap =
            |name: &str, since: Instant| times.push(format!("{name} {:.1} min", since.elapsed().as_secs_f64() / 60.0));
        if s.wants("paths") {
            let t = Instant::now();
            paths(&s, &mut results.paths).await;
            lap("paths", t);
        }
        if s.wants("backlog") {
            let t = Instant::now();
            for &profile in &s.backlog_profiles {
                let b = backlog(&s, profile).await;
                results.backlog.push((profile, b));
            }
            lap("backlog", t);
        }
        if s.wants("wan") {
            let t = Instant::now();
            wan(&s, &mut results.wan).await;
            lap("wan", t);
        }
        if s.wants("scale") {
            let t = Instant::now();
            results.idle_links = Some(scale(&s).await);
            lap("scale", t);
        }
    });
    summary(&s, &results);
    println!(
        "\nelapsed: {:.1} min ({}; load {})",
        began.elapsed().as_secs_f64() / 60.0,
        times.join(", "),
        load()
    );
}
