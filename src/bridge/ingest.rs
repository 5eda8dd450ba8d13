//! Ingest: source broker -> queue, acknowledged only once on disk.
//!
//! The connection task hands every PUBLISH it receives to this task. Here
//! messages are routed (which route, which destination topic), appended to
//! the queue in batches, and the batch is flushed to disk with one fsync
//! (group commit). Only then is each message acknowledged to the source
//! broker. A crash before the ack makes the broker deliver the message again:
//! a duplicate, never a loss.
//!
//! Messages that cannot be stored yet stay *held*, unacknowledged, in order:
//! the queue is full under the `block` policy, or the store failed (a full
//! disk). The broker keeps everything after them; ingest retries until they
//! fit. While held messages reach `held_max`, ingest takes no more events;
//! the broker may send at most its Receive Maximum (`inflight`)
//! unacknowledged, and what a broker sends beyond it is bounded by the
//! connection task (see `connection::Intake`).
//!
//! Ingest never waits on the connection task: acknowledgements are queued
//! with `try_ack`, and any that do not fit in rumqttc's request channel wait
//! here, in order, and are queued again shortly. (Waiting in `ack().await`
//! while the connection task waited to hand over the next event was the
//! wedge of issue 8.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Event;
use tokio_util::sync::CancellationToken;

use crate::config::Route;
use crate::metrics as m;
use crate::names::Direction;
use crate::store::{Properties, Queue, Record, Store};

use super::connection::{ConnEvent, EventReceiver};
use super::v311::Client;

/// A batch up to this size is appended on the ingest task; a larger one
/// through `spawn_blocking`, so that one link's burst does not hold a
/// runtime thread.
const INLINE_APPEND_BYTES: usize = 256 * 1024;

/// A received message on its way to disk.
struct Pending {
    epoch: u64,
    /// What to acknowledge (QoS 1/2 only): pkid and QoS, payload dropped.
    ack: Option<Publish>,
    /// One record per matching route; empty once stored.
    records: Vec<Record>,
    stored: bool,
}

pub struct Ingest {
    pub link: String,
    pub direction: Direction,
    pub routes: Vec<Route>,
    /// The subscription identifier of each route's filter (None: none).
    pub route_ids: Vec<Option<usize>>,
    pub store: Store,
    pub queue: Queue,
    pub events: EventReceiver,
    /// Cancelled by the link: finish the current batch, then stop.
    pub shutdown: CancellationToken,
    /// Cancelled by ingest when its last acks are queued: the connection closes.
    pub connection_stop: CancellationToken,
    pub held_max: usize,
}

struct State {
    client: Option<(u64, Client)>,
    held: VecDeque<Pending>,
    /// Acknowledgements of stored messages that rumqttc's request channel
    /// had no room for yet, in order, with their connection's epoch.
    unsent_acks: VecDeque<(u64, Publish)>,
    /// Appended but the flush failed: must be flushed before any ack.
    unflushed: bool,
    blocked_since: Option<Instant>,
}

impl Ingest {
    pub async fn run(mut self) {
        let mut st = State {
            client: None,
            held: VecDeque::new(),
            unsent_acks: VecDeque::new(),
            unflushed: false,
            blocked_since: None,
        };
        let labels = [
            ("link", self.link.clone()),
            ("direction", self.direction.as_str().to_string()),
        ];
        let mut retry = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            // Wait for work: a new event, or (when stuck) space or a retry tick.
            let stuck = !st.held.is_empty();
            let can_read = st.held.len() < self.held_max;
            let acks_waiting = !st.unsent_acks.is_empty();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                ev = self.events.recv(), if can_read => match ev {
                    Some(ev) => self.on_event(&mut st, ev).await,
                    None => return,
                },
                _ = self.queue.space_freed().notified(), if stuck => {}
                _ = tokio::time::sleep(retry.next_delay()), if stuck => {}
                _ = tokio::time::sleep(Duration::from_millis(5)), if acks_waiting => {}
            }
            // Take everything else that is already waiting: one batch.
            while st.held.len() < self.held_max {
                match self.events.try_recv() {
                    Ok(ev) => self.on_event(&mut st, ev).await,
                    Err(_) => break,
                }
            }
            let progressed = self.commit(&mut st).await;
            if progressed {
                retry.reset();
            }
            let blocked = !st.held.is_empty();
            match (blocked, st.blocked_since) {
                (true, None) => {
                    st.blocked_since = Some(Instant::now());
                    gauge!(m::INGEST_BLOCKED, &labels).set(1.0);
                }
                (false, Some(since)) => {
                    st.blocked_since = None;
                    gauge!(m::INGEST_BLOCKED, &labels).set(0.0);
                    tracing::info!(link = %self.link, direction = %self.direction, held_for_s = since.elapsed().as_secs_f64(), "ingest resumed: messages stored again");
                }
                _ => {}
            }
        }
        // Shutdown: whatever already arrived is committed and acknowledged
        // once more if possible; the rest is redelivered by the broker.
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(&mut st, ev).await;
        }
        self.commit(&mut st).await;
        // Give acks that found rumqttc's request channel full a moment to fit.
        for _ in 0..200 {
            if st.unsent_acks.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            send_acks(&mut st);
        }
        if !st.held.is_empty() {
            tracing::info!(link = %self.link, direction = %self.direction, held = st.held.len(), "stopping with unacknowledged messages; the source broker keeps them");
        }
        self.connection_stop.cancel();
    }

    async fn on_event(&mut self, st: &mut State, ev: ConnEvent) {
        match ev {
            ConnEvent::Up { epoch, client, .. } => {
                st.client = Some((epoch, client));
                // Acks of an earlier connection cannot be sent any more.
                st.unsent_acks.retain(|(e, _)| *e == epoch);
            }
            ConnEvent::Down { epoch } => {
                if matches!(st.client, Some((e, _)) if e == epoch) {
                    st.client = None;
                    st.unsent_acks.clear();
                }
            }
            ConnEvent::Packet {
                epoch,
                event: Event::Incoming(Packet::Publish(p)),
            } => {
                let mut refused = 0;
                let records = self.route(&p, &mut refused);
                let ack = (p.qos != QoS::AtMostOnce).then(|| Publish {
                    payload: Default::default(),
                    topic: Default::default(),
                    properties: None,
                    ..p
                });
                if records.is_empty() && refused == 0 {
                    counter!(m::UNROUTED, "link" => self.link.clone(), "direction" => self.direction.as_str())
                        .increment(1);
                }
                st.held.push_back(Pending {
                    epoch,
                    ack,
                    records,
                    stored: false,
                });
            }
            ConnEvent::Packet { .. } | ConnEvent::Window { .. } => {}
        }
    }

    /// The records a received message becomes: one per route it is for.
    /// With subscription identifiers (MQTT v5) the broker says which
    /// subscriptions matched: the routes of those filters that match the
    /// topic. Without them, or when they name no such route (an identifier
    /// of an older config, still on its way), every route whose filter
    /// matches. Routes whose mapped topic is invalid refuse the message
    /// (counted in `refused`).
    fn route(&self, p: &Publish, refused: &mut usize) -> Vec<Record> {
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            tracing::warn!(link = %self.link, direction = %self.direction, "ignoring a message whose topic is not UTF-8");
            return Vec::new();
        };
        let ids: &[usize] = p
            .properties
            .as_ref()
            .map(|pr| pr.subscription_identifiers.as_slice())
            .unwrap_or(&[]);
        let received_at_ms = m::now_ms();
        let properties = p.properties.as_ref().map(carry_properties).unwrap_or_default();
        let named = |i: usize| {
            self.route_ids
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|id| ids.contains(&id))
        };
        let matching = |r: &Route| crate::topic::matches(r.source_filter(), topic);
        let by_id = self.routes.iter().enumerate().any(|(i, r)| named(i) && matching(r));
        self.routes
            .iter()
            .enumerate()
            .filter(|(i, r)| matching(r) && (!by_id || named(*i)))
            .filter_map(|(_, r)| {
                let dest = r.map_to_dest(topic)?;
                if let Err(reason) = crate::topic::validate_topic(&dest) {
                    // The destination would refuse it (or drop the connection):
                    // never let it into the queue.
                    counter!(m::REFUSED, "link" => self.link.clone(), "direction" => self.direction.as_str(), "reason" => "invalid_topic").increment(1);
                    let shown: String = dest.chars().take(200).collect();
                    tracing::warn!(link = %self.link, direction = %self.direction, topic = %shown, %reason, "mapped topic is not a valid topic name; message refused (reason=invalid_topic)");
                    *refused += 1;
                    return None;
                }
                Some(Record {
                    topic: dest,
                    payload: p.payload.to_vec(),
                    qos: r.qos,
                    retain: p.retain,
                    received_at_ms,
                    properties: properties.clone(),
                })
            })
            .collect()
    }

    /// Stores what is held (append, then one flush) and acknowledges what
    /// is on disk. Returns whether anything moved.
    async fn commit(&mut self, st: &mut State) -> bool {
        let started = Instant::now();
        let labels = [
            ("link", self.link.clone()),
            ("direction", self.direction.as_str().to_string()),
        ];
        // 1. Append the held records that are not stored yet (a suffix of held).
        let first_unstored = st.held.iter().position(|p| !p.stored).unwrap_or(st.held.len());
        let batch: Vec<Record> = st
            .held
            .iter()
            .skip(first_unstored)
            .flat_map(|p| p.records.iter().cloned())
            .collect();
        let mut appended = 0usize;
        if first_unstored < st.held.len() {
            let queue = self.queue.clone();
            let n = batch.len();
            let bytes: usize = batch.iter().map(|r| r.payload.len() + r.topic.len()).sum();
            let result = if bytes <= INLINE_APPEND_BYTES {
                Ok(queue.append(&batch))
            } else {
                tokio::task::spawn_blocking(move || queue.append(&batch)).await
            };
            match result {
                Ok(Ok(outcome)) => {
                    // `refused` records at the tail were not stored (block).
                    let mut consumed = n - outcome.refused;
                    for p in st.held.iter_mut().skip(first_unstored) {
                        if p.records.len() > consumed {
                            // Part of a multi-route message fit: keep the rest.
                            p.records.drain(..consumed);
                            break;
                        }
                        consumed -= p.records.len();
                        p.records = Vec::new();
                        p.stored = true;
                        appended += 1;
                    }
                    if appended > 0 {
                        st.unflushed = true;
                    }
                }
                Ok(Err(e)) => {
                    counter!(m::STORE_ERRORS, &labels).increment(1);
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, held = st.held.len(), "cannot store messages; holding them unacknowledged and retrying");
                    return false;
                }
                Err(join) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %join, "store task failed");
                    return false;
                }
            }
        }
        // 2. One flush for the whole batch: the group commit.
        if st.unflushed {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => st.unflushed = false,
                Ok(Err(e)) => {
                    counter!(m::STORE_ERRORS, &labels).increment(1);
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot flush the store; messages stay unacknowledged, retrying");
                    return appended > 0;
                }
                Err(join) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %join, "flush task failed");
                    return appended > 0;
                }
            }
            histogram!(m::COMMIT_SECONDS, &labels).record(started.elapsed().as_secs_f64());
            histogram!(m::COMMIT_BATCH, &labels).record(appended as f64);
        }
        tracing::debug!(link = %self.link, direction = %self.direction, appended, held = st.held.len(), "committed");
        // 3. Acknowledge what is durable, in order of arrival.
        let mut acked = 0usize;
        while st.held.front().is_some_and(|p| p.stored) {
            let Some(p) = st.held.pop_front() else { break };
            acked += 1;
            let (Some(ack), Some((epoch, _))) = (p.ack, &st.client) else {
                continue;
            };
            if *epoch != p.epoch {
                continue; // a previous connection's message: the broker resends it
            }
            st.unsent_acks.push_back((p.epoch, ack));
        }
        send_acks(st);
        tracing::debug!(link = %self.link, direction = %self.direction, acked, client = st.client.is_some(), "acknowledged");
        appended > 0 || acked > 0
    }
}

/// Queues the waiting acknowledgements on the connection, in order, without
/// waiting: what does not fit stays for the next round.
fn send_acks(st: &mut State) {
    let Some((epoch, client)) = &st.client else {
        st.unsent_acks.clear();
        return;
    };
    while let Some((e, ack)) = st.unsent_acks.front() {
        if e != epoch {
            st.unsent_acks.pop_front();
            continue;
        }
        // Full (or closing: then its Down event clears what is left).
        if client.try_ack(ack).is_err() {
            break;
        }
        st.unsent_acks.pop_front();
    }
}

/// The v5 properties worth carrying to the destination. Topic aliases and
/// subscription identifiers belong to one connection and are not copied.
fn carry_properties(p: &rumqttc::v5::mqttbytes::v5::PublishProperties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
        user_properties: p.user_properties.clone(),
        content_type: p.content_type.clone(),
    }
}
