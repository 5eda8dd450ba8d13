//! Power loss: ferry's data_dir on powerfs (testkit/src/powerfs.rs), which
//! drops every write not yet fsynced when the test cuts the power.
//!
//! A publisher streams numbered QoS 1 messages into the hub for one link
//! whose edge is down, so everything ferry acknowledges waits in its store.
//! The hub (on a normal disk) keeps ferry's session: what ferry did not
//! acknowledge, it delivers again after a restart; what ferry acknowledged,
//! it has discarded. Then, at least 20 times, at a random moment: freeze
//! ferry (SIGSTOP), cut the power, kill -9, remount, check that the store
//! opens and its counters hold, and start ferry again. At the end the edge
//! comes back and must receive every message published, in order.
//!
//! `FERRY_TEST_UNSYNCED_COMMIT=1` runs the same test with commits made the
//! way ferry made them before it synced sled's files (the fault
//! `FERRY_FAULT_UNSYNCED_COMMIT`): it then loses acknowledged messages or
//! finds the store damaged.

use std::time::{Duration, Instant};

use testkit::powerfs::PowerFs;
use testkit::{check_in_order, free_port, publish_seqs, run_ferry, Broker, Collector, Ferry, QoS, LONG};

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Waits until link `edge0` is connected to the hub (it takes messages).
async fn wait_hub_side_up(ferry: &Ferry) -> Result<f64, String> {
    ferry
        .wait_metric(
            "ferry_connection_up",
            &[("link", "edge0"), ("side", "hub")],
            |v| v >= 1.0,
            LONG,
        )
        .await
}

const MESSAGES: u64 = 20_000;
/// At least this many power cuts, and more until the stream has ended.
const ROUNDS: usize = 20;
const CHUNK: u64 = 200;
const PACE: Duration = Duration::from_millis(200);

fn config(data_dir: &std::path::Path, metrics_port: u16, hub: &Broker, edge_port: u16) -> String {
    format!(
        "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[admin]\nlisten = \"off\"\n\
         [hub]\nhost = \"127.0.0.1\"\nport = {}\n[defaults]\nkeepalive_secs = 5\nreconnect_max_ms = 500\n\
         [[links]]\nname = \"edge0\"\nhost = \"127.0.0.1\"\nport = {edge_port}\n\
         [[links.routes]]\ndirection = \"out\"\nlocal = \"edge/0/down/#\"\nremote = \"down/#\"\nqos = 1\n",
        data_dir.display(),
        hub.port()
    )
}

/// `ferry queue stats --json` of `edge0/out`: (received, forwarded,
/// dropped, queued); zeros when there is no store yet. Err(ferry's error)
/// when the store does not open.
fn stats(config_path: &std::path::Path) -> Result<(u64, u64, u64, u64), String> {
    let config = config_path.to_str().unwrap_or_else(|| panic!("config path not UTF-8"));
    let out = run_ferry(FERRY, &["queue", "stats", "--json", "--config", config]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stats --json: {e}"));
    let Some(q) = doc["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["queue"] == "edge0/out"))
    else {
        return Ok((0, 0, 0, 0));
    };
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let dropped = q["dropped"].as_object().map_or(0, |d| d.values().map(n).sum());
    Ok((n(&q["received"]), n(&q["forwarded"]), dropped, n(&q["messages"])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_power_cuts() {
    let Some(mut fs) = PowerFs::mount() else {
        eprintln!("skipped: needs root, /dev/fuse and fusermount3 (FUSE) to mount powerfs");
        return;
    };
    let unsynced = std::env::var_os("FERRY_TEST_UNSYNCED_COMMIT").is_some_and(|v| v == "1");
    let env: &[(&str, &str)] = if unsynced {
        &[("FERRY_FAULT_UNSYNCED_COMMIT", "1")]
    } else {
        &[]
    };
    let hub = Broker::start();
    let mut edge = Broker::start();
    let down = Collector::start(edge.addr(), "test-power-edge", "down/#", QoS::AtLeastOnce).await;
    edge.stop();
    let data_dir = fs.path().join("ferry");
    let mut ferry = Ferry::start_with_env(FERRY, &config(&data_dir, free_port(), &hub, edge.port()), env);

    // Messages published before ferry subscribed would go nowhere.
    wait_hub_side_up(&ferry).await.unwrap_or_else(|e| panic!("{e}"));
    let hub_addr = hub.addr();
    // A steady stream: CHUNK messages every PACE, numbered 0..MESSAGES.
    let publisher = tokio::spawn(async move {
        let began = Instant::now();
        let mut acked = 0;
        for chunk in 0..MESSAGES / CHUNK {
            let base = chunk * CHUNK;
            let report = publish_seqs(hub_addr, "edge/0/down/t", base..base + CHUNK, 64).await;
            acked += report.acked;
            tokio::time::sleep_until((began + PACE * (chunk as u32 + 1)).into()).await;
        }
        acked
    });

    let mut rng = fastrand::Rng::with_seed(8);
    let mut last_received = 0;
    let mut damaged = Vec::new();
    let mut round = 0;
    while round < ROUNDS || !publisher.is_finished() {
        round += 1;
        // Every third cut falls at a random moment of the start-up (store
        // creation and recovery); the others while ferry ingests.
        if round % 3 != 1 {
            wait_hub_side_up(&ferry)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let deadline = Instant::now() + Duration::from_millis(rng.u64(50..1200));
        let mut seen = 0.0;
        while Instant::now() < deadline {
            if let Ok(m) = ferry.try_scrape() {
                seen = m.get_or_zero(
                    "ferry_messages_received_total",
                    &[("link", "edge0"), ("direction", "out")],
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ferry.is_running(),
            "round {round}: ferry exited\n{}",
            ferry.log_tail(30)
        );
        let pid = ferry
            .pid()
            .unwrap_or_else(|| panic!("round {round}: ferry is not running"));
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        fs.cut_power();
        ferry.kill9();
        fs.remount();
        let (received, forwarded, dropped, queued) = match stats(&ferry.config_path()) {
            Ok(counts) => counts,
            Err(e) => {
                // Go on as an operator would, to count what else is lost.
                eprintln!("round {round:2}: THE STORE DOES NOT OPEN: {e}");
                damaged.push(round);
                let config = ferry.config_path();
                let config = config.to_str().unwrap_or_else(|| panic!("config path not UTF-8"));
                let out = run_ferry(FERRY, &["store", "quarantine", "--config", config]);
                assert!(
                    out.status.success(),
                    "quarantine: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                last_received = 0;
                ferry.restart();
                continue;
            }
        };
        assert_eq!(
            received,
            forwarded + dropped + queued,
            "round {round}: counters after the cut: received {received} forwarded {forwarded} dropped {dropped} queued {queued}"
        );
        let gone = (seen as u64).saturating_sub(received);
        eprintln!(
            "round {round:2}: received before the cut (metrics, <= 1 s old) {seen:>6}; durable after it {received:>6} (before this run {last_received:>6}); gone {gone}"
        );
        last_received = received;
        ferry.restart();
    }

    let published = publisher.await.unwrap_or_else(|e| panic!("publisher task: {e}"));
    assert_eq!(published, MESSAGES);
    edge.restart();
    let delivered = down.wait_distinct(MESSAGES as usize, LONG).await;
    let seqs = down.distinct_seqs();
    let missing: Vec<u64> = (0..MESSAGES).filter(|s| !seqs.contains(s)).collect();
    eprintln!(
        "power cuts: {round}; store damaged after {}; published {MESSAGES}; delivered {} distinct ({} in all); lost {}{}",
        damaged.len(),
        seqs.len(),
        down.count(),
        missing.len(),
        if unsynced { " (unsynced commits)" } else { "" }
    );
    assert!(
        damaged.is_empty(),
        "the store did not open after the power cuts of rounds {damaged:?}"
    );
    assert!(
        delivered && missing.is_empty(),
        "{} messages lost, the first {:?}; {}",
        missing.len(),
        &missing[..missing.len().min(20)],
        down.describe()
    );
    check_in_order(&down.messages(), MESSAGES).unwrap_or_else(|e| panic!("{e}"));
    ferry.terminate();
    let (received, forwarded, dropped, queued) =
        stats(&ferry.config_path()).unwrap_or_else(|e| panic!("after the test: {e}"));
    assert_eq!(received, forwarded + dropped + queued);
    assert!(fs.syncs() > 0);
}
