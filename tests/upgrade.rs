//! Upgrade: a data_dir written by the previous store format (format 1, one
//! record per sled value, ferry at 9345624; `tests/data/store-v1.tar.gz`,
//! made by `scripts/make-v1-store.sh`) is drained by `ferry run` after the
//! upgrade to batch values: every queued message delivered, in order, and the
//! lifetime counters carried on.

use testkit::*;

/// The ferry binary Cargo built for these tests (testkit runs the one it is given).
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Payloads in order of first arrival (a resend after a reconnect repeats one).
fn first_payloads(down: &Collector) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    down.messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_run_drains_a_store_of_the_previous_format_in_order() {
    let net = Topology::start(2, "");
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(net.data.path())
        .arg("--strip-components=1")
        .status()
        .expect("tar runs");
    assert!(status.success(), "cannot extract {}", archive.display());
    // The sinks first: what the queues hold reaches them once ferry starts.
    let downs = net.down_collectors().await;
    let ferry = net.start_ferry(FERRY);
    for (i, (from, to)) in [(0, 150), (100, 250)].into_iter().enumerate() {
        let n = to - from;
        assert!(
            wait_until(LONG, std::time::Duration::from_millis(100), || first_payloads(
                &downs[i]
            )
            .len()
                >= n)
            .await,
            "edge{i} got {} of {n}: {}\n{}",
            first_payloads(&downs[i]).len(),
            downs[i].describe(),
            ferry.log_tail(30)
        );
        let want: Vec<String> = (from..to).map(|k| format!("v1-edge{i}-{k}")).collect();
        assert_eq!(first_payloads(&downs[i]), want, "edge{i}: the old queue out of order");
        let link = format!("edge{i}");
        let labels = [("link", link.as_str()), ("direction", "out")];
        ferry
            .wait_metric("ferry_messages_forwarded_total", &labels, |v| v == to as f64, LONG)
            .await
            .unwrap_or_else(|e| panic!("edge{i}: forwarded total carried over from the old store: {e}"));
        ferry.assert_invariant(&link, "out", true).await;
    }
}
