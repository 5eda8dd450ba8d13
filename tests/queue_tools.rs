//! The offline queue tools (`ferry queue stats | peek | export | purge`) on a
//! real backlog: ferry queues messages for an edge that is down, is stopped,
//! and the tools inspect, export and purge what it left on disk; ferry then
//! starts again and its metrics still add up. Also: the tools refuse a store
//! that a running ferry holds, and say so when there is no store yet.

use std::process::Output;

use base64::Engine as _;
use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `ferry queue <args> --config <config>` and expects exit code `code`.
fn queue_cmd(config: &std::path::Path, args: &[&str], code: i32) -> Output {
    let config = config.to_str().unwrap_or_else(|| panic!("config path is not UTF-8"));
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config]);
    let out = run_ferry(FERRY, &all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ferry {all:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The `ferry queue stats --json` entry of `queue`.
fn stats_of(config: &std::path::Path, queue: &str) -> serde_json::Value {
    let out = queue_cmd(config, &["stats", "--json"], 0);
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stats --json: {e}: {}", stdout(&out)));
    let queues = doc["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("no queues array: {doc}"));
    queues
        .iter()
        .find(|q| q["queue"] == queue)
        .cloned()
        .unwrap_or_else(|| panic!("no {queue} in {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_peek_export_and_purge_a_stopped_ferrys_backlog() {
    const N: u64 = 50;
    let mut net = Topology::start(1, "");
    let mut ferry = net.start_ferry_all_up(FERRY).await;
    net.queue_backlog(&ferry, 0, N, 64).await;
    assert!(
        ferry.terminate().success(),
        "ferry did not stop cleanly\n{}",
        ferry.log_tail(40)
    );
    let config = ferry.config_path();

    // stats: the backlog (at least N: the hub may redeliver a message).
    let out_queue = stats_of(&config, "edge0/out");
    let queued = out_queue["messages"].as_u64().unwrap_or_else(|| panic!("{out_queue}"));
    assert!(queued >= N, "{out_queue}");
    assert_eq!(out_queue["in_config"], true, "{out_queue}");
    assert!(
        out_queue["oldest_received_at"].is_string() && out_queue["bytes"].as_u64() > Some(0),
        "{out_queue}"
    );
    let table = stdout(&queue_cmd(&config, &["stats"], 0));
    eprintln!("ferry queue stats:\n{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("edge0/out "))
        .unwrap_or_else(|| panic!("no edge0/out row:\n{table}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some(queued.to_string().as_str()),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("edge0/in ")), "{table}");

    // A queue whose link left the config is still listed, and marked.
    let renamed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"edge0\"", "name = \"renamed\"");
    let renamed_path = net.data.path().join("renamed.toml");
    std::fs::write(&renamed_path, renamed).unwrap();
    let table = stdout(&queue_cmd(&renamed_path, &["stats"], 0));
    assert!(table.contains("edge0/out (not in config)"), "{table}");

    // export: every message as a JSON line, in order, payloads intact.
    let out = queue_cmd(&config, &["export", "edge0"], 0);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len() as u64, queued, "export must yield every queued message");
    let mut payload_seqs = Vec::new();
    for line in &lines {
        let b64 = line["payload_base64"].as_str().unwrap_or_else(|| panic!("{line}"));
        let payload = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(seq_payload_intact(&payload) && payload.len() == 64, "{line}");
        assert_eq!(line["topic"], "down/t", "{line}");
        let seq = payload_seq(&payload);
        if !payload_seqs.contains(&seq) {
            payload_seqs.push(seq);
        }
    }
    assert_eq!(
        payload_seqs,
        (0..N).collect::<Vec<_>>(),
        "exported payloads must be the published ones, in order"
    );
    let store_seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap_or(u64::MAX)).collect();
    assert!(store_seqs.windows(2).all(|w| w[0] < w[1]), "{store_seqs:?}");

    // peek: the first three, oldest first.
    let text = stdout(&queue_cmd(
        &config,
        &["peek", "edge0", "--direction", "out", "-n", "3"],
        0,
    ));
    eprintln!("ferry queue peek edge0 -n 3:\n{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let peeked: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
    let want: Vec<String> = store_seqs[..3].iter().map(u64::to_string).collect();
    assert_eq!(peeked, want, "{text}");
    assert!(
        rows.iter().all(|r| r.contains(&"down/t") && r.contains(&"hex")),
        "{text}"
    );
    assert!(text.contains(&format!("and {} more", queued - 3)), "{text}");

    // An unknown link: exit 1, naming the queues that exist.
    let err = stderr(&queue_cmd(&config, &["peek", "nosuch"], 1));
    assert!(err.contains("nosuch") && err.contains("edge0/in, edge0/out"), "{err}");

    // purge without --yes: says what it would do, deletes nothing.
    let text = stdout(&queue_cmd(&config, &["purge", "edge0"], 0));
    assert!(
        text.contains(&format!("would purge {queued} messages")) && text.contains("--yes"),
        "{text}"
    );
    assert_eq!(stats_of(&config, "edge0/out")["messages"], queued);

    // purge --yes empties both queues of the link, counted as purged.
    let text = stdout(&queue_cmd(&config, &["purge", "edge0", "--yes"], 0));
    eprintln!("ferry queue purge edge0 --yes:\n{text}");
    assert!(
        text.contains(&format!("purged {queued} messages from edge0/out")),
        "{text}"
    );
    let after = stats_of(&config, "edge0/out");
    assert_eq!(
        (after["messages"].as_u64(), after["dropped"]["purged"].as_u64()),
        (Some(0), Some(queued)),
        "{after}"
    );

    // ferry starts on the purged store, and the invariant holds in its metrics.
    ferry.restart();
    let purged = [("link", "edge0"), ("direction", "out"), ("reason", "purged")];
    ferry
        .wait_metric("ferry_messages_dropped_total", &purged, |v| v == queued as f64, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    net.assert_invariant(&ferry, "edge0", "out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_refuse_the_store_of_a_running_ferry() {
    let net = Topology::start(1, "");
    let ferry = net.start_ferry_all_up(FERRY).await;
    let started = std::time::Instant::now();
    let err = stderr(&queue_cmd(&ferry.config_path(), &["stats"], 1));
    let data_dir = net.data.path().display().to_string();
    assert!(
        err.contains("ferry is running") && err.contains(&data_dir) && err.contains("ferry status"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let err = stderr(&queue_cmd(&ferry.config_path(), &["purge", "edge0", "--yes"], 1));
    assert!(err.contains("the store is locked"), "{err}");
    assert!(ferry.is_running());
}

#[test]
fn a_data_dir_without_a_store_is_reported_not_created() {
    let data = Ferry::data_dir_for_test();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("ferry.toml");
    let text = format!(
        "data_dir = \"{}\"\n[hub]\nhost = \"127.0.0.1\"\nport = 1883\n\
         [[links]]\nname = \"edge0\"\nhost = \"127.0.0.1\"\nport = 1884\n\
         [[links.routes]]\ndirection = \"out\"\nlocal = \"a/#\"\nremote = \"a/#\"\nqos = 1\n",
        data.path().display()
    );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let out = stdout(&queue_cmd(&config, &["stats"], 0));
    assert!(out.contains("no store yet"), "{out}");
    let err = stderr(&queue_cmd(&config, &["export", "edge0"], 1));
    assert!(err.contains("no store here yet"), "{err}");
    assert!(!data.path().join("store").exists(), "a queue tool created a store");
}
