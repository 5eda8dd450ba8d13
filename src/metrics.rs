//! Metric names, their descriptions, and the Prometheus exporter.
//!
//! Every metric ferry exports is named here, once, so the docs and the code
//! cannot drift apart. Per-queue counters (received, forwarded, dropped) are
//! not counted in memory: they are the totals the store keeps on disk,
//! updated atomically with the queue itself, and exported as absolute values.
//! That is what makes `received = forwarded + dropped + queued` hold exactly,
//! across restarts, in what Prometheus shows.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::names::Direction;
use crate::store::{BudgetView, DropReason, Queue};

pub const RECEIVED: &str = "ferry_messages_received_total";
pub const FORWARDED: &str = "ferry_messages_forwarded_total";
pub const DROPPED: &str = "ferry_messages_dropped_total";
pub const REDELIVERED: &str = "ferry_messages_redelivered_total";
pub const UNROUTED: &str = "ferry_messages_unrouted_total";
pub const QUEUE_MESSAGES: &str = "ferry_queue_messages";
pub const QUEUE_BYTES: &str = "ferry_queue_bytes";
pub const QUEUE_OLDEST_AGE: &str = "ferry_queue_oldest_age_seconds";
pub const LINK_UP: &str = "ferry_link_up";
pub const LINK_PAUSED: &str = "ferry_link_paused";
pub const LINK_DRAIN_RATE: &str = "ferry_link_drain_rate";
pub const LINK_DRAIN_BYTES_RATE: &str = "ferry_link_drain_bytes_rate";
pub const CONNECTION_UP: &str = "ferry_connection_up";
pub const CONNECTION_ADDRESS_INDEX: &str = "ferry_connection_address_index";
pub const RECONNECTS: &str = "ferry_reconnects_total";
pub const WATCHDOG_RESTARTS: &str = "ferry_connection_watchdog_restarts_total";
pub const RECEIVE_MAXIMUM_EXCEEDED: &str = "ferry_receive_maximum_exceeded_total";
pub const PUBLISHES_DEFERRED: &str = "ferry_publishes_deferred_total";
pub const DRAIN_WINDOW: &str = "ferry_drain_window";
pub const V5_PROPERTIES_DROPPED: &str = "ferry_v5_properties_dropped_total";
pub const LINK_STALLED: &str = "ferry_link_stalled";
pub const REFUSED: &str = "ferry_messages_refused_total";
pub const ACK_TIMEOUTS: &str = "ferry_ack_timeouts_total";
pub const PUBLISH_RETRIES: &str = "ferry_publish_retries_total";
pub const TASK_RESTARTS: &str = "ferry_task_restarts_total";
pub const INGEST_BLOCKED: &str = "ferry_ingest_blocked";
pub const STORE_ERRORS: &str = "ferry_store_errors_total";
pub const FORWARD_LATENCY: &str = "ferry_forward_latency_seconds";
pub const COMMIT_SECONDS: &str = "ferry_store_commit_seconds";
pub const COMMIT_BATCH: &str = "ferry_store_commit_batch_messages";
pub const STORE_BYTES: &str = "ferry_store_bytes";
pub const STORE_BUDGET: &str = "ferry_store_budget_bytes";
pub const STORE_BUDGET_HELD: &str = "ferry_store_budget_held_queues";
/// This process's shard index (label `shards`: the fleet's size); see src/fleet.rs.
pub const FLEET_SHARD: &str = "ferry_fleet_shard";

/// Installs the global recorder and serves `/metrics` on `listen`.
/// Fails (instead of running blind) when the address cannot be bound.
pub fn install(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let latency_buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
    ];
    let batch_buckets = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), &batch_buckets)?;
    match listen {
        Some(addr) => {
            let (recorder, exporter) = builder
                .with_http_listener(addr)
                .build()
                .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
            metrics::set_global_recorder(recorder)
                .map_err(|e| anyhow::anyhow!("metrics: recorder already installed: {e}"))?;
            tokio::spawn(async move {
                if let Err(e) = exporter.await {
                    tracing::error!(error = ?e, "metrics listener stopped");
                }
            });
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        }
        None => {
            let recorder = builder.build_recorder();
            metrics::set_global_recorder(recorder)
                .map_err(|e| anyhow::anyhow!("metrics: recorder already installed: {e}"))?;
        }
    }
    describe();
    Ok(())
}

fn describe() {
    describe_counter!(
        RECEIVED,
        "Messages accepted into a queue (link, direction), persisted across restarts."
    );
    describe_counter!(
        FORWARDED,
        "Messages acknowledged by the destination broker and removed from the queue."
    );
    describe_counter!(
        DROPPED,
        "Messages removed without delivery, by reason: overflow, expired, too_large, rejected, corrupt, purged."
    );
    describe_counter!(
        REDELIVERED,
        "Publishes sent again after a reconnect (duplicates the destination may see)."
    );
    describe_counter!(
        UNROUTED,
        "Messages received that matched no route (acknowledged and ignored)."
    );
    describe_gauge!(QUEUE_MESSAGES, "Messages waiting in the queue.");
    describe_gauge!(
        QUEUE_BYTES,
        Unit::Bytes,
        "Bytes (encoded records) waiting in the queue."
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest queued message; 0 when empty."
    );
    describe_gauge!(LINK_UP, "1 when every connection of the link is up.");
    describe_gauge!(
        LINK_PAUSED,
        "1 while the operator has the link paused or draining (ferry link pause|drain)."
    );
    describe_gauge!(
        LINK_DRAIN_RATE,
        "The link's drain pace in messages per second (drain_rate, or ferry link rate); 0 when off."
    );
    describe_gauge!(
        LINK_DRAIN_BYTES_RATE,
        "The link's drain pace in bytes per second (drain_bytes_rate, or ferry link rate --bytes); 0 when off."
    );
    describe_gauge!(CONNECTION_UP, "1 when the connection (link, side, role) is up.");
    describe_gauge!(
        CONNECTION_ADDRESS_INDEX,
        "Which of the connection's hosts it is connected to (0: the first), set on each connect."
    );
    describe_counter!(RECONNECTS, "Connections lost and attempted again (link, side, role).");
    describe_counter!(
        WATCHDOG_RESTARTS,
        "Connections declared dead because their event loop was not driven for longer than the keepalive (link, side, role)."
    );
    describe_counter!(
        RECEIVE_MAXIMUM_EXCEEDED,
        "QoS 1/2 messages a broker sent beyond the Receive Maximum ferry announced; kept, acknowledged once stored (link, side, role)."
    );
    describe_counter!(
        REFUSED,
        "Messages refused at ingest, never queued (not in the queue's received total), by reason: invalid_topic (the mapped topic is not a valid topic name)."
    );
    describe_gauge!(
        LINK_STALLED,
        "1 while the destination (link, direction) acknowledged nothing within ack_timeout_secs; ends with the next acknowledgement."
    );
    describe_counter!(
        ACK_TIMEOUTS,
        "Drain connections reset because nothing was acknowledged within ack_timeout_secs (link, direction)."
    );
    describe_counter!(
        PUBLISH_RETRIES,
        "Publishes the destination refused for now (quota exceeded, unspecified or implementation specific error) and that are sent again (link, direction)."
    );
    describe_gauge!(
        DRAIN_WINDOW,
        "Publishes the drain may keep in flight now: starts at inflight on each connection, grows while a backlog waits (link, direction)."
    );
    describe_counter!(
        V5_PROPERTIES_DROPPED,
        "Messages with MQTT 5 properties sent without them over an MQTT 3.1.1 drain connection (link, direction)."
    );
    describe_counter!(
        PUBLISHES_DEFERRED,
        "Messages left unacknowledged for the broker to resend after a reconnect, because too much beyond the Receive Maximum was held (link, side, role)."
    );
    describe_counter!(
        TASK_RESTARTS,
        "Times the supervisor restarted a link's tasks after one died."
    );
    describe_gauge!(
        INGEST_BLOCKED,
        "1 while ingest holds messages unacknowledged: queue full (block) or store write failing."
    );
    describe_counter!(
        STORE_ERRORS,
        "Store writes that failed (e.g. disk full); ingest retries them."
    );
    describe_histogram!(
        FORWARD_LATENCY,
        Unit::Seconds,
        "Time from receipt to the destination's acknowledgement."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time to append and flush one ingest batch."
    );
    describe_histogram!(COMMIT_BATCH, "Messages per group commit.");
    describe_gauge!(
        STORE_BYTES,
        Unit::Bytes,
        "Size of the store's files, as the store budget counts it (sampled four times a second, plus appends since)."
    );
    describe_gauge!(
        STORE_BUDGET,
        Unit::Bytes,
        "store_max_bytes in force (auto resolved at start); 0 when the budget is off."
    );
    describe_gauge!(
        STORE_BUDGET_HELD,
        "Queues the store budget holds now: the store reached its budget and they grew (their overflow policy applies)."
    );
    describe_gauge!(
        FLEET_SHARD,
        "This process's shard index in its fleet (label shards: how many)."
    );
}

/// Exports a queue's persisted counters and depth, labelled by link and direction.
pub fn report_queue(link: &str, direction: Direction, queue: &Queue, now_ms: u64) {
    let labels = [
        ("link", link.to_string()),
        ("direction", direction.as_str().to_string()),
    ];
    let (depth, totals) = queue.stats();
    counter!(RECEIVED, &labels).absolute(totals.received);
    counter!(FORWARDED, &labels).absolute(totals.forwarded);
    for reason in DropReason::ALL {
        let mut with_reason = labels.to_vec();
        with_reason.push(("reason", reason.as_str().to_string()));
        counter!(DROPPED, &with_reason).absolute(totals.dropped(reason));
    }
    gauge!(QUEUE_MESSAGES, &labels).set(depth.messages as f64);
    gauge!(QUEUE_BYTES, &labels).set(depth.bytes as f64);
    let age = queue
        .oldest_received_at_ms()
        .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0)
        .unwrap_or(0.0);
    gauge!(QUEUE_OLDEST_AGE, &labels).set(age);
}

/// Exports the store budget, the store's size and the queues it holds.
pub fn report_store(budget: &BudgetView) {
    gauge!(STORE_BYTES).set(budget.size_bytes as f64);
    gauge!(STORE_BUDGET).set(budget.limits.map_or(0, |l| l.max_bytes) as f64);
    gauge!(STORE_BUDGET_HELD).set(budget.held_queues as f64);
}

/// A link removed by a reload: its gauges go to 0 so alerts on them stop
/// (its counters keep their last values; what is left of its queues on disk
/// shows in `ferry queue stats`).
pub fn forget_link(link: &str) {
    gauge!(LINK_UP, "link" => link.to_string()).set(0.0);
    gauge!(LINK_PAUSED, "link" => link.to_string()).set(0.0);
    gauge!(LINK_DRAIN_RATE, "link" => link.to_string()).set(0.0);
    gauge!(LINK_DRAIN_BYTES_RATE, "link" => link.to_string()).set(0.0);
    for direction in [Direction::Out, Direction::In] {
        let labels = [
            ("link", link.to_string()),
            ("direction", direction.as_str().to_string()),
        ];
        gauge!(QUEUE_MESSAGES, &labels).set(0.0);
        gauge!(QUEUE_BYTES, &labels).set(0.0);
        gauge!(QUEUE_OLDEST_AGE, &labels).set(0.0);
    }
}

/// Milliseconds since the Unix epoch (wall clock: records survive restarts).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
