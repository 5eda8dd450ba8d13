//! Drain: queue -> destination broker, removed only when acknowledged.
//!
//! The drainer reads the queue in order from a cursor and keeps up to
//! `window` publishes unacknowledged on the wire. An entry leaves the queue
//! only when the destination's PUBACK (QoS 1) or PUBCOMP (QoS 2) arrives, or
//! when a QoS 0 publish has been written to the socket. After every
//! reconnect the cursor goes back to the oldest entry still queued, so
//! whatever was in flight when the connection dropped is sent again: in
//! order, at least once.
//!
//! rumqttc does not say which publish an ack belongs to, only the packet id.
//! It does emit `Outgoing::Publish(pkid)` for each publish in the order the
//! requests were made, so a FIFO of sent sequence numbers, popped on that
//! event, maps packet ids to queue entries.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use metrics::{counter, histogram};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use rumqttc::Outgoing;
use tokio_util::sync::CancellationToken;

use crate::config::Direction;
use crate::metrics as m;
use crate::store::{DropReason, Entry, Queue, Record, Store};

use super::connection::{ConnEvent, EventReceiver};

pub struct Drain {
    pub link: String,
    pub direction: Direction,
    pub store: Store,
    pub queue: Queue,
    pub window: usize,
    pub ttl: Option<Duration>,
    pub events: EventReceiver,
    pub shutdown: CancellationToken,
    pub connection_stop: CancellationToken,
}

/// A backlog at least this long gets progress lines while it drains.
const PROGRESS_MIN_BACKLOG: u64 = 10_000;
/// How often a draining backlog logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The progress of draining one long backlog, for the log.
#[derive(Default)]
struct Progress {
    /// While a backlog drains: when it started, forwarded total then.
    episode: Option<(std::time::Instant, u64)>,
    last: Option<(std::time::Instant, u64)>,
}

impl Progress {
    fn observe(&mut self, link: &str, direction: Direction, queue: &Queue, connected: bool) {
        let (depth, totals) = queue.stats();
        let (left, forwarded) = (depth.messages, totals.forwarded);
        let now = std::time::Instant::now();
        match self.episode {
            None if connected && left >= PROGRESS_MIN_BACKLOG => {
                tracing::info!(link, %direction, messages_left = left, "draining a backlog");
                self.episode = Some((now, forwarded));
            }
            None => {}
            Some((began, forwarded_before)) if left == 0 => {
                let secs = now.duration_since(began).as_secs_f64().max(0.001);
                let sent = forwarded.saturating_sub(forwarded_before);
                tracing::info!(link, %direction, forwarded = sent, secs = format!("{secs:.1}"), rate_per_sec = (sent as f64 / secs) as u64, "backlog drained");
                self.episode = None;
            }
            Some(_) if connected => {
                if let Some((at, before)) = self.last {
                    let rate =
                        forwarded.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64().max(0.001);
                    let eta = if rate >= 1.0 {
                        format!("{:.0}s", left as f64 / rate)
                    } else {
                        "unknown (no progress)".to_string()
                    };
                    tracing::info!(link, %direction, messages_left = left, rate_per_sec = rate as u64, eta = %eta, "draining a backlog");
                }
            }
            Some(_) => {}
        }
        self.last = Some((now, forwarded));
    }
}

/// One publish on the wire.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    qos: QoS,
    received_at_ms: u64,
}

#[derive(Default)]
struct Window {
    client: Option<(u64, AsyncClient)>,
    /// Next sequence number to read.
    cursor: u64,
    /// Requested but not yet written (no packet id known yet), in order.
    unmatched: VecDeque<Sent>,
    /// Written, waiting for PUBACK/PUBCOMP, by packet id.
    inflight: HashMap<u16, Sent>,
    /// Highest sequence number published by this process (redelivery count).
    highest_sent: Option<u64>,
    /// Deliveries by this task (for fault injection in tests).
    delivered_count: u64,
    delivered: Vec<Sent>,
    rejected: Vec<u64>,
    /// The flush making earlier removals durable, running in the background.
    flushing: Option<tokio::task::JoinHandle<Result<(), crate::store::StoreError>>>,
}

impl Window {
    fn outstanding(&self) -> usize {
        self.unmatched.len() + self.inflight.len()
    }
    fn reset(&mut self) {
        self.unmatched.clear();
        self.inflight.clear();
    }
}

impl Drain {
    pub async fn run(mut self) {
        let mut w = Window::default();
        let mut expiry_tick = tokio::time::interval(Duration::from_secs(1));
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress_tick = tokio::time::interval(PROGRESS_EVERY);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = Progress::default();
        loop {
            self.settle(&mut w).await;
            self.fill(&mut w).await;
            let room = w.client.is_some() && w.outstanding() < self.window;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(&mut w, ev),
                    None => return,
                },
                _ = self.queue.appended().notified(), if room => {}
                _ = expiry_tick.tick(), if self.ttl.is_some() => self.expire(),
                _ = progress_tick.tick() => progress.observe(&self.link, self.direction, &self.queue, w.client.is_some()),
            }
            // Take every event already waiting before touching the store.
            while let Ok(ev) = self.events.try_recv() {
                self.on_event(&mut w, ev);
            }
        }
        self.settle(&mut w).await;
        self.connection_stop.cancel();
    }

    fn on_event(&mut self, w: &mut Window, ev: ConnEvent) {
        match ev {
            ConnEvent::Up { epoch, client, .. } => {
                w.reset();
                // Replay from the oldest entry still queued.
                w.cursor = 0;
                w.client = Some((epoch, client));
            }
            ConnEvent::Down { epoch } => {
                if matches!(w.client, Some((e, _)) if e == epoch) {
                    w.client = None;
                    w.reset();
                }
            }
            ConnEvent::Packet { epoch, event } => {
                if !matches!(w.client, Some((e, _)) if e == epoch) {
                    return;
                }
                self.on_packet(w, event);
            }
        }
    }

    fn on_packet(&mut self, w: &mut Window, event: Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(sent) = w.unmatched.pop_front() else { return };
                if sent.qos == QoS::AtMostOnce {
                    w.delivered.push(sent);
                } else {
                    w.inflight.insert(pkid, sent);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let Some(sent) = w.inflight.remove(&ack.pkid) else {
                    return;
                };
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => w.delivered.push(sent),
                    reason => {
                        tracing::warn!(link = %self.link, direction = %self.direction, seq = sent.seq, ?reason, "destination refused a message; dropped (reason=rejected)");
                        w.rejected.push(sent.seq);
                    }
                }
            }
            Event::Incoming(Packet::PubRec(rec)) => match rec.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => {}
                reason => {
                    if let Some(sent) = w.inflight.remove(&rec.pkid) {
                        tracing::warn!(link = %self.link, direction = %self.direction, seq = sent.seq, ?reason, "destination refused a message; dropped (reason=rejected)");
                        w.rejected.push(sent.seq);
                    }
                }
            },
            Event::Incoming(Packet::PubComp(comp)) => {
                if let Some(sent) = w.inflight.remove(&comp.pkid) {
                    w.delivered.push(sent);
                }
            }
            _ => {}
        }
    }

    /// Removes acknowledged and refused entries from the queue.
    async fn settle(&mut self, w: &mut Window) {
        if w.delivered.is_empty() && w.rejected.is_empty() {
            return;
        }
        let delivered = std::mem::take(&mut w.delivered);
        let rejected = std::mem::take(&mut w.rejected);
        w.delivered_count += delivered.len() as u64;
        crate::fault::after_delivery(&self.link, w.delivered_count);
        let now = m::now_ms();
        let labels = [
            ("link", self.link.clone()),
            ("direction", self.direction.as_str().to_string()),
        ];
        // One registry lookup per batch, not per message.
        let latency = histogram!(m::FORWARD_LATENCY, &labels);
        for s in &delivered {
            latency.record(now.saturating_sub(s.received_at_ms) as f64 / 1000.0);
        }
        let seqs: Vec<u64> = delivered.iter().map(|s| s.seq).collect();
        let queue = self.queue.clone();
        let result = tokio::task::spawn_blocking(move || {
            queue.ack(&seqs)?;
            queue.drop_entries(&rejected, DropReason::Rejected)
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            // Not removed: they are sent again after the next reconnect.
            Ok(Err(e)) => {
                tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot remove delivered entries; they will be sent again")
            }
            Err(e) => tracing::error!(link = %self.link, direction = %self.direction, error = %e, "store task failed"),
        }
        self.flush_removals(w).await;
    }

    /// Removals are group-committed like appends, but in the background:
    /// the drain keeps publishing while the fsync runs (waiting for it here
    /// halved ferry's throughput and added a flush to every message's
    /// latency). At most one such flush runs per queue; removals made while
    /// it runs are covered by the next one (or by any other flush of the
    /// store, or sled's own within a second). A crash resends at most the
    /// window in flight plus the removals of about two flushes: duplicates,
    /// never a loss, since an entry is removed only after its ack.
    async fn flush_removals(&mut self, w: &mut Window) {
        if w.flushing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(done) = w.flushing.take() {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot flush removals; delivered entries may be sent again after a crash")
                }
                Err(e) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "flush task failed")
                }
            }
        }
        let store = self.store.clone();
        w.flushing = Some(tokio::task::spawn_blocking(move || store.flush()));
    }

    /// Publishes queued entries until the window is full or the queue is.
    async fn fill(&mut self, w: &mut Window) {
        while w.outstanding() < self.window {
            let Some((_, client)) = w.client.clone() else { return };
            let want = self.window - w.outstanding();
            let queue = self.queue.clone();
            let cursor = w.cursor;
            let entries = match tokio::task::spawn_blocking(move || queue.read(cursor, want)).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot read the queue");
                    return;
                }
                Err(e) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "store task failed");
                    return;
                }
            };
            if entries.is_empty() {
                return;
            }
            let got = entries.len();
            let mut expired = Vec::new();
            for Entry { seq, record } in entries {
                w.cursor = seq + 1;
                let now = m::now_ms();
                let Some(props) = self.properties_now(&record, now) else {
                    expired.push(seq);
                    continue;
                };
                if w.highest_sent.is_some_and(|h| seq <= h) {
                    counter!(m::REDELIVERED, "link" => self.link.clone(), "direction" => self.direction.as_str())
                        .increment(1);
                }
                w.highest_sent = Some(w.highest_sent.map_or(seq, |h| h.max(seq)));
                let qos = qos_of(record.qos);
                w.unmatched.push_back(Sent {
                    seq,
                    qos,
                    received_at_ms: record.received_at_ms,
                });
                if let Err(e) = client
                    .publish_with_properties(record.topic, qos, record.retain, record.payload, props)
                    .await
                {
                    // The connection is going away; its Down event resets the window.
                    tracing::debug!(link = %self.link, error = %e, "publish not queued: connection closing");
                    w.unmatched.pop_back();
                    return;
                }
            }
            if !expired.is_empty() {
                let queue = self.queue.clone();
                let _ = tokio::task::spawn_blocking(move || queue.drop_entries(&expired, DropReason::Expired)).await;
            }
            if got < want {
                return;
            }
        }
    }

    /// The properties to publish with, or None when the message expired
    /// (the link's TTL, or the message's own MQTT v5 expiry interval, which
    /// counts down while it waits in the queue).
    fn properties_now(&self, record: &Record, now_ms: u64) -> Option<PublishProperties> {
        let age_ms = now_ms.saturating_sub(record.received_at_ms);
        if self
            .ttl
            .is_some_and(|ttl| age_ms >= u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        {
            return None;
        }
        let p = &record.properties;
        let message_expiry_interval = match p.message_expiry_interval {
            Some(secs) => {
                let left = (secs as u64 * 1000).checked_sub(age_ms)?;
                Some(((left + 999) / 1000).max(1) as u32)
            }
            None => None,
        };
        Some(PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone().map(Into::into),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: p.content_type.clone(),
        })
    }

    fn expire(&self) {
        if let Err(e) = self.queue.expire(m::now_ms()) {
            tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot drop expired entries");
        }
    }
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
