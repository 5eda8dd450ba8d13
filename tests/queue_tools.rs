//! `ferry queue stats|peek|export|purge` on what a real ferry queued for a
//! real edge that was down; and their refusal while ferry runs.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = run_ferry(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_tools_show_export_and_purge_what_ferry_queued() {
    const N: u64 = 300;
    let mut net = Topology::start(1, "");
    let mut ferry = net.start_ferry();
    net.wait_all_up(&ferry).await;
    net.queue_backlog(&ferry, 0, N, 64).await;
    let config = ferry.config_path();
    let config = config.to_str().unwrap();

    // While ferry runs: refused, naming the data_dir and what to do.
    let (ok, _, err) = run(&["queue", "stats", "--config", config]);
    assert!(!ok, "queue stats must refuse a store in use");
    assert!(err.contains("ferry is running with this data_dir") && err.contains(&net.data.path().display().to_string()), "{err}");

    assert!(ferry.terminate().success());

    let (ok, out, err) = run(&["queue", "stats", "--config", config, "--json"]);
    assert!(ok, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let edge0_out = stats.as_array().unwrap().iter().find(|q| q["queue"] == "edge0/out").unwrap_or_else(|| panic!("{out}"));
    let queued = edge0_out["messages"].as_u64().unwrap();
    assert!(queued >= N, "stats shows {queued} queued, want {N}: {out}");
    let (ok, table, err) = run(&["queue", "stats", "--config", config]);
    assert!(ok, "{err}");
    assert!(table.lines().any(|l| l.starts_with("edge0/out") && l.contains(&format!(" {queued} "))), "{table}");
    eprintln!("ferry queue stats:\n{table}");

    let (ok, peek, err) = run(&["queue", "peek", "edge0", "--direction", "out", "-n", "3", "--config", config]);
    assert!(ok, "{err}");
    eprintln!("ferry queue peek:\n{peek}");
    let rows: Vec<&str> = peek.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{peek}");
    for (i, row) in rows.iter().enumerate() {
        assert!(row.contains("down/t") && row.contains(&format!("hex {i:016x}")), "row {i}: {row}\n{peek}");
    }

    let (ok, export, err) = run(&["queue", "export", "edge0", "--config", config]);
    assert!(ok, "{err}");
    let mut seqs = Vec::new();
    for line in export.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["topic"], "down/t");
        let payload = base64::engine::general_purpose::STANDARD.decode(v["payload_base64"].as_str().unwrap()).unwrap();
        assert!(seq_payload_intact(&payload), "payload damaged: {line}");
        seqs.push(payload_seq(&payload));
    }
    assert_eq!(seqs.len() as u64, queued, "export lines");
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct, (0..N).collect::<Vec<_>>(), "export is not the published messages in order");

    let (ok, dry, err) = run(&["queue", "purge", "edge0", "--config", config]);
    assert!(ok, "{err}");
    assert!(dry.contains(&format!("edge0/out: would purge {queued} messages")) && dry.contains("--yes"), "{dry}");
    let (_, after_dry, _) = run(&["queue", "stats", "--config", config, "--json"]);
    assert!(after_dry.contains(&format!("\"messages\": {queued}")), "a purge without --yes deleted something: {after_dry}");

    let (ok, done, err) = run(&["queue", "purge", "edge0", "--yes", "--config", config]);
    assert!(ok, "{err}");
    assert!(done.contains(&format!("edge0/out: purged {queued} messages")), "{done}");

    // ferry starts with an empty queue, and the metrics still add up.
    net.edges[0].restart();
    ferry.restart();
    net.wait_all_up(&ferry).await;
    ferry
        .wait_metric("ferry_messages_dropped_total", &[("link", "edge0"), ("direction", "out"), ("reason", "purged")], |v| v == queued as f64, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    net.assert_invariant(&ferry, "edge0", "out").await;

    // Unknown links are named with what exists.
    ferry.terminate();
    let (ok, _, err) = run(&["queue", "peek", "nosuch", "--config", config]);
    assert!(!ok);
    assert!(err.contains("no queue \"nosuch/out\"") && err.contains("edge0/out"), "{err}");
}
