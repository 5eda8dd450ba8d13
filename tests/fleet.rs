//! A fleet of ferries (`[fleet]`, src/fleet.rs) against real mosquitto brokers:
//! three processes, shards 0, 1 and 2 of 3, share the links of one config
//! (30 links, one hub, 30 edges). Every link runs in exactly one process (each
//! broker sees each of ferry's client ids connect once), nothing is delivered
//! twice in steady state, a process killed with -9 stops only its own links
//! (the hub keeps their messages in the links' persistent sessions), and once
//! it is back its backlog arrives, none lost.
//!
//! The three processes run on one machine, so each has its own `data_dir` and
//! listen ports (in Kubernetes, its own volume and pod IP); everything that
//! decides which links run where (`[hub]`, `[fleet]` with `shard = "auto"`,
//! the links) is the same text, and `FERRY_SHARD` tells each which it is.
//!
//! Also here: a shard refuses to start while its data_dir holds queued
//! messages of a link the layout gives to another shard.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use testkit::*;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const LINKS: usize = 30;
const SHARDS: usize = 3;
const PER_LINK: u64 = 100;

const FLEET: &str = "[fleet]\nshards = 3\nshard = \"auto\"\n";

/// One process of the fleet: its ferry and its own placement (data, ports).
struct Member {
    ferry: Ferry,
    admin_port: u16,
    _data: tempfile::TempDir,
}

fn start_member(net: &Topology, shard: usize) -> Member {
    let data = Ferry::data_dir_for_test();
    let admin_port = free_port();
    let config = format!(
        "{}{FLEET}{}",
        net.config_head(data.path(), free_port(), admin_port),
        net.links_toml(|i| net.edges[i].port())
    );
    let ferry = Ferry::start_with_env(FERRY, &config, &[("FERRY_SHARD", &shard.to_string())]);
    Member {
        ferry,
        admin_port,
        _data: data,
    }
}

/// `ferry status --json` of a member: (its shard index, its links).
fn status(member: &Member) -> (u64, BTreeSet<String>) {
    let out = run_ferry(
        FERRY,
        &[
            "status",
            "--json",
            "--admin",
            &format!("127.0.0.1:{}", member.admin_port),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}"));
    let links = view["links"]
        .as_array()
        .unwrap_or_else(|| panic!("no links in {view}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    (view["shard"]["index"].as_u64().unwrap_or(u64::MAX), links)
}

/// Each shard's links as `ferry check` prints them (`  shard K: N links: a, b`).
fn check_layout(ferry: &Ferry) -> Vec<BTreeSet<String>> {
    let out = run_ferry(
        FERRY,
        &["check", "--config", ferry.config_path().to_str().unwrap_or_default()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let layout: Vec<BTreeSet<String>> = (0..SHARDS)
        .map(|k| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("  shard {k}: ")))
                .unwrap_or_else(|| panic!("no shard {k} in:\n{text}"));
            line.splitn(3, ": ")
                .nth(2)
                .map_or(BTreeSet::new(), |names| names.split(", ").map(String::from).collect())
        })
        .collect();
    assert_eq!(layout.iter().map(BTreeSet::len).sum::<usize>(), LINKS, "{text}");
    layout
}

/// How often the broker's log shows client `id` connecting, and taking over
/// a connection of the same id.
fn connects(broker: &Broker, id: &str) -> (usize, usize) {
    let log = std::fs::read_to_string(broker.dir().join("mosquitto.log")).unwrap_or_default();
    let connected = log.matches(&format!(" as {id} (")).count();
    let taken_over = log.matches(&format!("Client {id} already connected")).count();
    (connected, taken_over)
}

/// Publishes seqs `from..from + PER_LINK` for each link in `links` on the hub.
async fn publish_for(net: &Topology, links: impl Iterator<Item = usize>, from: u64) {
    for i in links {
        publish_n(
            net.hub.addr(),
            move |_| down_topic(i),
            PER_LINK,
            QoS::AtLeastOnce,
            move |s| seq_payload(from + s, 64),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_run_each_link_once_and_a_killed_shard_catches_up() {
    let net = Topology::start(LINKS, "");
    let mut members: Vec<Member> = (0..SHARDS).map(|k| start_member(&net, k)).collect();

    // Each process runs exactly the links `ferry check` lists for its shard; together, every link once.
    let expected = check_layout(&members[0].ferry);
    let mut owner = vec![usize::MAX; LINKS];
    for (k, member) in members.iter().enumerate() {
        let mut last = (u64::MAX, BTreeSet::new());
        let listed = wait_until(LONG, Duration::from_millis(100), || {
            last = status(member);
            last.1 == expected[k]
        })
        .await;
        assert!(listed, "member {k} runs {last:?}, `ferry check` says {:?}", expected[k]);
        assert_eq!(last.0, k as u64, "member {k} reports shard {}", last.0);
        for name in &last.1 {
            let i: usize = name
                .trim_start_matches("edge")
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(owner[i], usize::MAX, "{name} runs in shards {} and {k}", owner[i]);
            owner[i] = k;
            member
                .ferry
                .wait_link_up(name, LONG)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    assert!(owner.iter().all(|&k| k < SHARDS), "links run nowhere: {owner:?}");
    let per_shard: Vec<usize> = (0..SHARDS).map(|k| owner.iter().filter(|&&o| o == k).count()).collect();
    eprintln!("fleet: links per shard {per_shard:?}");

    let sinks: Vec<Collector> = collectors(&net).await;
    publish_for(&net, 0..LINKS, 0).await;
    let mut delivered = 0;
    for (i, sink) in sinks.iter().enumerate() {
        assert!(
            sink.wait_distinct(PER_LINK as usize, LONG).await,
            "edge{i}: {}",
            sink.describe()
        );
        let report = check_in_order(&sink.messages(), PER_LINK).unwrap_or_else(|e| panic!("edge{i}: {e}"));
        assert_eq!(
            report.duplicates, 0,
            "edge{i}: delivered twice in steady state: {report}"
        );
        delivered += report.distinct;
    }
    // Client ids never collided: each broker saw each of ferry's ids connect once.
    for (i, edge) in net.edges.iter().enumerate() {
        for id in [format!("ferry-edge{i}"), format!("ferry-edge{i}-pub")] {
            assert_eq!(connects(edge, &id), (1, 0), "edge{i}: connects and takeovers of {id}");
        }
        for id in [
            format!("ferry-hub-edge{i}"),
            format!("ferry-hub-edge{i}-pub"),
            format!("ferry-hub-edge{i}-state"),
        ] {
            assert_eq!(connects(&net.hub, &id), (1, 0), "hub: connects and takeovers of {id}");
        }
    }
    eprintln!(
        "fleet: steady state delivered {delivered} of {}, 0 duplicates",
        LINKS as u64 * PER_LINK
    );

    // Kill the shard with the most links: only its links stop.
    let killed = (0..SHARDS).max_by_key(|&k| per_shard[k]).unwrap_or(0);
    members[killed].ferry.kill9();
    publish_for(&net, 0..LINKS, PER_LINK).await;
    for (i, sink) in sinks.iter().enumerate().filter(|(i, _)| owner[*i] != killed) {
        assert!(
            sink.wait_distinct(2 * PER_LINK as usize, LONG).await,
            "edge{i}: {}",
            sink.describe()
        );
    }
    for (i, sink) in sinks.iter().enumerate().filter(|(i, _)| owner[*i] == killed) {
        assert_eq!(
            sink.distinct_count(),
            PER_LINK as usize,
            "edge{i} of the killed shard got messages: {}",
            sink.describe()
        );
    }

    // Back again: the hub held its links' messages in their sessions; they all arrive.
    let restarted = Instant::now();
    members[killed].ferry.restart();
    for (i, sink) in sinks.iter().enumerate().filter(|(i, _)| owner[*i] == killed) {
        assert!(
            sink.wait_distinct(2 * PER_LINK as usize, LONG).await,
            "edge{i}: {}",
            sink.describe()
        );
    }
    let drained = restarted.elapsed();
    // None lost anywhere; the other shards' links delivered nothing twice. The
    // killed shard may send again what it forwarded after its last commit (at least once).
    let mut duplicates_after_kill = 0;
    for (i, sink) in sinks.iter().enumerate() {
        let report = check_in_order(&sink.messages(), 2 * PER_LINK).unwrap_or_else(|e| panic!("edge{i}: {e}"));
        if owner[i] == killed {
            duplicates_after_kill += report.duplicates;
        } else {
            assert_eq!(report.duplicates, 0, "edge{i} (shard {}): {report}", owner[i]);
        }
    }
    let (_, links) = status(&members[killed]);
    assert_eq!(links.len(), per_shard[killed], "{links:?}");
    eprintln!(
        "fleet: killed shard {killed} ({} links, {} messages held by the hub) drained in {:.2} s after its restart; \
         {} of {} delivered, {duplicates_after_kill} duplicates on the killed shard's links, 0 on the others",
        per_shard[killed],
        per_shard[killed] as u64 * PER_LINK,
        drained.as_secs_f64(),
        sinks.iter().map(|s| s.distinct_count()).sum::<usize>(),
        LINKS as u64 * 2 * PER_LINK
    );
}

/// A Collector on each edge's `down/#`.
async fn collectors(net: &Topology) -> Vec<Collector> {
    let mut sinks = Vec::new();
    for (i, edge) in net.edges.iter().enumerate() {
        sinks.push(Collector::start(edge.addr(), &format!("t-sink{i}"), "down/#", QoS::AtLeastOnce).await);
    }
    sinks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_refuses_to_strand_a_moved_links_queue() {
    // With 3 shards, edge0 is shard 0's and edge1 shard 1's (pinned in src/fleet.rs).
    let mut net = Topology::start(2, "");
    let mut ferry = net.start_ferry(FERRY);
    net.wait_all_up(&ferry).await;
    net.queue_backlog(&ferry, 1, 50, 64).await;
    ferry.terminate();

    let as_shard_0 = format!("{}[fleet]\nshards = 3\nshard = 0\n", net.config());
    let path = net.data.path().join("shard0.toml");
    std::fs::write(&path, &as_shard_0).unwrap_or_else(|e| panic!("{e}"));
    let path = path.to_str().unwrap_or_default().to_owned();
    let (exited, said) = run_briefly(&path);
    assert!(
        exited.is_some_and(|s| !s.success()),
        "started with a stranded queue:\n{said}"
    );
    for needle in [
        "this is shard 0 of 3 (config)",
        "edge1/out (50 messages",
        "now shard 1's",
        "ferry link drain NAME",
        "run the old layout until their queues are empty",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from:\n{said}");
    }
    assert!(!said.contains("edge0/"), "its own link is not stranded:\n{said}");

    // Run the old layout until edge1's queue is empty: then shard 0 starts, without edge1.
    net.edges[1].restart();
    ferry.restart();
    ferry
        .wait_metric(
            "ferry_queue_messages",
            &[("link", "edge1"), ("direction", "out")],
            |v| v == 0.0,
            LONG,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ferry.restart_with_config(&as_shard_0);
    ferry
        .wait_link_up("edge0", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = ferry.scrape();
    assert_eq!(metrics.get("ferry_fleet_shard", &[("shards", "3")]), Some(0.0));
    assert_eq!(
        metrics.get("ferry_link_up", &[("link", "edge1")]),
        None,
        "edge1 runs on shard 0"
    );
    let status = run_ferry(FERRY, &["status", "--config", &path]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("shard 0 of 3 (config)"), "{table}");
}

/// `ferry run --config path`, given 30 s to exit; its exit status (None: it
/// kept running and was killed) and what it wrote.
fn run_briefly(path: &str) -> (Option<std::process::ExitStatus>, String) {
    let log = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    let stderr = log.reopen().unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(FERRY)
        .args(["run", "--config", path])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ferry: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    (status, std::fs::read_to_string(log.path()).unwrap_or_default())
}

#[test]
fn check_prints_each_shards_links_and_the_moves() {
    let net = Topology::start(0, "");
    let mut config = net.config_head(net.data.path(), free_port(), free_port());
    config.push_str("[fleet]\nshards = 4\nshard = \"auto\"\n");
    for i in 0..12 {
        config.push_str(&format!(
            "[[links]]\nname = \"edge{i}\"\nhost = \"h\"\n[[links.routes]]\ndirection = \"out\"\nlocal = \"e/{i}/#\"\nremote = \"d/#\"\n"
        ));
    }
    let path = net.data.path().join("fleet.toml");
    std::fs::write(&path, &config).unwrap_or_else(|e| panic!("{e}"));
    let out = run_ferry(
        FERRY,
        &[
            "check",
            "--config",
            path.to_str().unwrap_or_default(),
            "--from-shards",
            "3",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("fleet     4 shards"), "{text}");
    for shard in 0..4 {
        assert!(text.contains(&format!("  shard {shard}: ")), "{text}");
    }
    // Growing 3 -> 4 moves links only to the new shard 3.
    let moves: Vec<&str> = text.lines().filter(|l| l.contains(" -> shard ")).collect();
    assert!(!moves.is_empty(), "{text}");
    assert!(moves.iter().all(|l| l.ends_with("-> shard 3")), "{moves:?}");
    assert!(
        text.contains(&format!("from 3 to 4 shards: {} of 12 links move", moves.len())),
        "{text}"
    );
}
