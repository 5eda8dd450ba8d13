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
//! What the destination can never take does not block the queue:
//! - a message larger than its Maximum Packet Size (CONNACK) is dropped as
//!   `too_large` before it is sent;
//! - a PUBACK/PUBREC with a permanent error (not authorized, topic name
//!   invalid, payload format invalid) drops the message as `rejected`;
//! - a transient error (unspecified, implementation specific, quota
//!   exceeded, packet identifier in use) is retried: sending pauses for a
//!   backoff, then replays from the oldest entry still queued, one message
//!   at a time until the destination accepts one, then with the full window
//!   again. Nothing is dropped; the order holds unless the destination
//!   accepted a later message of the same window while refusing an earlier
//!   one (what it accepted cannot be taken back);
//! - no acknowledgement for `ack_timeout` while connected: the link is
//!   *stalled* (status, `ferry_link_stalled`), the connection is reset and
//!   the window replays after the reconnect.
//!
//! rumqttc does not say which publish an ack belongs to, only the packet id.
//! It does emit `Outgoing::Publish(pkid)` for each publish in the order the
//! requests were made, so a FIFO of sent sequence numbers, popped on that
//! event, maps packet ids to queue entries.
//!
//! The window grows while a backlog waits ([`super::window`]): `inflight`
//! is where each connection starts.
//!
//! A paced link ([`super::pace`]) gives the drain a token bucket: `fill`
//! stops before a publish the bucket refuses (that entry is read again), and
//! the loop waits for the bucket beside everything else, so acks and
//! reconnects are handled while it waits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::Event;
use rumqttc::Outgoing;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics as m;
use crate::names::Direction;
use crate::store::{DropReason, Entry, Queue, Record, Store};

use super::connection::ConnStatus;
use super::connection::{ConnEvent, EventReceiver};
use super::v311::Client;
use super::window::{self, Sizer, Step};

pub struct Drain {
    pub link: String,
    pub direction: Direction,
    pub store: Store,
    pub queue: Queue,
    /// The window each connection starts with (`inflight`).
    pub inflight: u16,
    /// Where the drain asks its connection to grow the window.
    pub control: Arc<window::Control>,
    pub ttl: Option<Duration>,
    /// No acknowledgement for this long while connected: stalled, reset.
    pub ack_timeout: Duration,
    /// The drain connection's status (where `stalled` shows).
    pub status: Arc<ConnStatus>,
    pub events: EventReceiver,
    pub shutdown: CancellationToken,
    pub connection_stop: CancellationToken,
    pub pace: super::pace::Bucket,
}

/// The pause before a transiently refused message is sent again: doubling
/// from the first to the second, reset when a message is accepted.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(200);
/// The most entries `fill` reads from the queue at once. Reads and removals
/// run on the drain's task rather than through `spawn_blocking`: sled
/// answers them from its page cache (a page read from disk when it is not
/// cached, rarely per entry: a page holds many batches), and the two thread
/// hand-offs per call cost more than the work. Measured at the defaults
/// profile, 128 B: ferry's CPU 23-24 -> 16.5-18.5 s per million messages,
/// 4 KiB: 73-95 -> 71. A chunk of 1,024 bounds how long one drain holds a
/// runtime thread between two awaits (about a millisecond at 4 KiB).
const READ_CHUNK: usize = 1_024;
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
    /// When it was handed to the connection (for the ack timeout).
    at: tokio::time::Instant,
}

/// What an acknowledgement's reason code means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Delivered,
    /// The destination will never take it: drop as `rejected`.
    Refused,
    /// Not now: send it again after a backoff.
    Retry,
}

fn puback_verdict(reason: PubAckReason) -> Verdict {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Verdict::Delivered,
        PubAckReason::NotAuthorized | PubAckReason::TopicNameInvalid | PubAckReason::PayloadFormatInvalid => {
            Verdict::Refused
        }
        PubAckReason::UnspecifiedError
        | PubAckReason::ImplementationSpecificError
        | PubAckReason::QuotaExceeded
        | PubAckReason::PacketIdentifierInUse => Verdict::Retry,
    }
}

fn pubrec_verdict(reason: PubRecReason) -> Verdict {
    match reason {
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Verdict::Delivered,
        PubRecReason::NotAuthorized | PubRecReason::TopicNameInvalid | PubRecReason::PayloadFormatInvalid => {
            Verdict::Refused
        }
        PubRecReason::UnspecifiedError
        | PubRecReason::ImplementationSpecificError
        | PubRecReason::QuotaExceeded
        | PubRecReason::PacketIdentifierInUse => Verdict::Retry,
    }
}

struct Window {
    client: Option<(u64, Client)>,
    /// The size of the window and when it grows.
    sizer: Sizer,
    /// A request for the connection, made once nothing is in flight.
    want: Option<window::Request>,
    /// The destination's Maximum Packet Size, from its CONNACK.
    max_packet_size: Option<u32>,
    /// Resets the current connection (taken when used: once per connection).
    reset: Option<CancellationToken>,
    /// After a transient refusal: when to replay from the oldest entry.
    retry_at: Option<tokio::time::Instant>,
    retry_backoff: Option<Backoff>,
    /// After a transient refusal: one message in flight until one is accepted.
    probing: bool,
    /// No acknowledgement within the ack timeout; cleared by the next one.
    stalled: bool,
    /// When the current connection last acknowledged anything.
    last_ack: Option<tokio::time::Instant>,
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
    too_large: Vec<u64>,
    /// The flush making earlier removals durable, running in the background.
    flushing: Option<tokio::task::JoinHandle<Result<(), crate::store::StoreError>>>,
}

impl Window {
    fn new(inflight: u16) -> Window {
        Window {
            client: None,
            sizer: Sizer::new(inflight),
            want: None,
            max_packet_size: None,
            reset: None,
            retry_at: None,
            retry_backoff: None,
            probing: false,
            stalled: false,
            last_ack: None,
            cursor: 0,
            unmatched: VecDeque::new(),
            inflight: HashMap::new(),
            highest_sent: None,
            delivered_count: 0,
            delivered: Vec::new(),
            rejected: Vec::new(),
            too_large: Vec::new(),
            flushing: None,
        }
    }
    fn outstanding(&self) -> usize {
        self.unmatched.len() + self.inflight.len()
    }
    fn reset(&mut self) {
        self.unmatched.clear();
        self.inflight.clear();
    }
    /// When the oldest publish still waiting for its acknowledgement was sent.
    fn oldest_outstanding(&self) -> Option<tokio::time::Instant> {
        self.inflight.values().chain(self.unmatched.iter()).map(|s| s.at).min()
    }
}

impl Drain {
    pub async fn run(mut self) {
        let mut w = Window::new(self.inflight);
        let mut expiry_tick = tokio::time::interval(Duration::from_secs(1));
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress_tick = tokio::time::interval(PROGRESS_EVERY);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = Progress::default();
        let mut ack_tick = tokio::time::interval(super::connection::check_every(self.ack_timeout));
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One message at a time is retried (see `probing`): a short backoff costs
        // the destination at most 5 messages a second.
        w.retry_backoff = Some(Backoff::new(RETRY_MIN, RETRY_MAX));
        loop {
            self.settle(&mut w).await;
            // After a transient refusal, replay once everything sent has an answer.
            if w.retry_at.is_some_and(|at| at <= tokio::time::Instant::now()) && w.outstanding() == 0 {
                w.retry_at = None;
                w.cursor = 0;
            }
            self.fill(&mut w).await;
            self.size_window(&mut w);
            let room = w.client.is_some() && w.outstanding() < self.window_now(&w) && w.retry_at.is_none();
            let retry_due = w.retry_at.filter(|_| w.outstanding() == 0);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(&mut w, ev),
                    None => return,
                },
                _ = self.queue.appended().notified(), if room => {}
                _ = self.pace.ready(), if room && self.pace.is_blocked() => {}
                _ = sleep_until_some(retry_due), if retry_due.is_some() => {}
                _ = ack_tick.tick() => self.check_acks(&mut w),
                _ = expiry_tick.tick(), if self.ttl.is_some() => self.expire(),
                _ = progress_tick.tick() => progress.observe(&self.link, self.direction, &self.queue, w.client.is_some()),
            }
            // Take every event already waiting before touching the store.
            while let Ok(ev) = self.events.try_recv() {
                self.on_event(&mut w, ev);
            }
        }
        self.settle(&mut w).await;
        self.set_stalled(&mut w, false);
        self.connection_stop.cancel();
    }

    /// A destination that acknowledged nothing for `ack_timeout` while
    /// connected is stalled: reset the connection (the window replays after
    /// the reconnect).
    fn check_acks(&mut self, w: &mut Window) {
        let Some(oldest) = w.oldest_outstanding() else { return };
        // Waiting since the oldest was sent, or since the last ack if later:
        // a destination that acknowledges slowly but steadily is not stalled.
        let waited = w.last_ack.map_or(oldest, |at| at.max(oldest)).elapsed();
        if w.client.is_none() || waited < self.ack_timeout {
            return;
        }
        let Some(reset) = w.reset.take() else { return };
        counter!(m::ACK_TIMEOUTS, "link" => self.link.clone(), "direction" => self.direction.as_str()).increment(1);
        tracing::warn!(link = %self.link, direction = %self.direction, unacknowledged = w.outstanding(), waited_s = waited.as_secs(), ack_timeout_s = self.ack_timeout.as_secs(), "destination stalled: no acknowledgement in time; resetting the connection, the unacknowledged messages are sent again");
        self.set_stalled(w, true);
        reset.cancel();
    }

    fn set_stalled(&self, w: &mut Window, stalled: bool) {
        if w.stalled == stalled {
            return;
        }
        w.stalled = stalled;
        self.status.set_stalled(stalled);
        gauge!(m::LINK_STALLED, "link" => self.link.clone(), "direction" => self.direction.as_str()).set(if stalled {
            1.0
        } else {
            0.0
        });
        if !stalled {
            tracing::info!(link = %self.link, direction = %self.direction, "destination acknowledges again: no longer stalled");
        }
    }

    /// The destination refused `seq` for now: pause, then replay.
    fn retry_later(&self, w: &mut Window, seq: u64, reason: &dyn std::fmt::Debug) {
        counter!(m::PUBLISH_RETRIES, "link" => self.link.clone(), "direction" => self.direction.as_str()).increment(1);
        if w.retry_at.is_some() {
            return;
        }
        let delay = w
            .retry_backoff
            .as_mut()
            .map_or(Duration::from_secs(1), Backoff::next_delay);
        tracing::warn!(link = %self.link, direction = %self.direction, seq, ?reason, retry_in_ms = delay.as_millis() as u64, "destination refused a message for now; sending again from the oldest unacknowledged one after a pause");
        w.retry_at = Some(tokio::time::Instant::now() + delay);
        w.probing = true;
    }

    /// How many publishes may be outstanding now.
    fn window_now(&self, w: &Window) -> usize {
        if w.probing {
            1
        } else if w.sizer.pending() {
            0 // the window is changing: let it empty
        } else {
            w.sizer.size()
        }
    }

    /// Grows the window while the drain is bound by it with a backlog
    /// ([`window`]): decides, then asks the connection once nothing is in flight.
    fn size_window(&self, w: &mut Window) {
        let Some((epoch, _)) = w.client.as_ref() else { return };
        let outstanding = w.outstanding();
        // Only a full window may grow, only an empty one shrink.
        let may_change = outstanding >= w.sizer.size() || (outstanding == 0 && w.sizer.size() > self.inflight as usize);
        if w.want.is_none() && !w.sizer.pending() && may_change {
            let (depth, _) = self.queue.stats();
            let waiting = depth.messages.saturating_sub(w.outstanding() as u64);
            let mean_bytes = depth.bytes / depth.messages.max(1);
            let (step, line) = w
                .sizer
                .step(outstanding, waiting, mean_bytes, tokio::time::Instant::now());
            if let Some(line) = line {
                tracing::warn!(link = %self.link, direction = %self.direction, receive_maximum = w.sizer.limits().receive_maximum, "{line}");
            }
            if let Step::Ask(request) = step {
                w.want = Some(request);
            }
        }
        if w.outstanding() == 0 {
            if let Some(request) = w.want.take() {
                self.control.ask(*epoch, request);
            }
        }
    }

    fn set_window_gauge(&self, w: &Window) {
        gauge!(m::DRAIN_WINDOW, "link" => self.link.clone(), "direction" => self.direction.as_str())
            .set(w.sizer.size() as f64);
    }

    fn on_event(&mut self, w: &mut Window, ev: ConnEvent) {
        match ev {
            ConnEvent::Up {
                epoch,
                client,
                max_packet_size,
                reset,
                window,
            } => {
                w.reset();
                w.sizer = Sizer::up(window);
                w.want = None;
                self.set_window_gauge(w);
                // Replay from the oldest entry still queued.
                w.cursor = 0;
                w.client = Some((epoch, client));
                w.max_packet_size = max_packet_size;
                w.reset = Some(reset);
                w.last_ack = None;
            }
            ConnEvent::Down { epoch } => {
                if matches!(w.client, Some((e, _)) if e == epoch) {
                    w.client = None;
                    w.reset = None;
                    w.reset();
                }
            }
            ConnEvent::Packet { epoch, event } => {
                if !matches!(w.client, Some((e, _)) if e == epoch) {
                    return;
                }
                self.on_packet(w, event);
            }
            ConnEvent::Window { epoch, grown } => {
                if matches!(w.client, Some((e, _)) if e == epoch) {
                    let size = grown.unwrap_or(w.sizer.size() as u16);
                    w.sizer.grown(size);
                    self.set_window_gauge(w);
                }
            }
        }
    }

    fn on_packet(&mut self, w: &mut Window, event: Event) {
        if matches!(
            event,
            Event::Incoming(Packet::PubAck(_))
                | Event::Incoming(Packet::PubRec(_))
                | Event::Incoming(Packet::PubComp(_))
        ) {
            w.last_ack = Some(tokio::time::Instant::now());
        }
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
                self.set_stalled(w, false);
                match puback_verdict(ack.reason) {
                    Verdict::Delivered => {
                        w.sizer.round_trip(sent.at.elapsed());
                        w.delivered.push(sent);
                        w.probing = false;
                        if w.retry_at.is_none() {
                            if let Some(b) = w.retry_backoff.as_mut() {
                                b.reset();
                            }
                        }
                    }
                    Verdict::Refused => self.refused(w, sent, &ack.reason),
                    Verdict::Retry => self.retry_later(w, sent.seq, &ack.reason),
                }
            }
            Event::Incoming(Packet::PubRec(rec)) => {
                let verdict = pubrec_verdict(rec.reason);
                if verdict == Verdict::Delivered {
                    return; // PUBCOMP follows
                }
                let Some(sent) = w.inflight.remove(&rec.pkid) else {
                    return;
                };
                self.set_stalled(w, false);
                if verdict == Verdict::Refused {
                    self.refused(w, sent, &rec.reason);
                } else {
                    self.retry_later(w, sent.seq, &rec.reason);
                }
                // rumqttc 0.25 keeps a refused QoS 2 publish's slot in its
                // in-flight window: a new connection gets the window back.
                if let Some(reset) = w.reset.take() {
                    reset.cancel();
                }
            }
            Event::Incoming(Packet::PubComp(comp)) => {
                if let Some(sent) = w.inflight.remove(&comp.pkid) {
                    self.set_stalled(w, false);
                    w.sizer.round_trip(sent.at.elapsed());
                    w.delivered.push(sent);
                    w.probing = false;
                }
            }
            _ => {}
        }
    }

    fn refused(&self, w: &mut Window, sent: Sent, reason: &dyn std::fmt::Debug) {
        tracing::warn!(link = %self.link, direction = %self.direction, seq = sent.seq, ?reason, "destination refused a message for good; dropped (reason=rejected)");
        w.rejected.push(sent.seq);
    }

    /// Removes acknowledged and refused entries from the queue.
    async fn settle(&mut self, w: &mut Window) {
        if w.delivered.is_empty() && w.rejected.is_empty() && w.too_large.is_empty() {
            return;
        }
        let delivered = std::mem::take(&mut w.delivered);
        let rejected = std::mem::take(&mut w.rejected);
        let too_large = std::mem::take(&mut w.too_large);
        w.delivered_count += delivered.len() as u64;
        w.sizer.acked(delivered.len());
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
        // On this task, not `spawn_blocking` (see `READ_CHUNK`): sled's
        // removals are in memory until a flush, which stays off the runtime.
        let result = self
            .queue
            .ack(&seqs)
            .and_then(|_| self.queue.drop_entries(&rejected, DropReason::Rejected))
            .and_then(|_| self.queue.drop_entries(&too_large, DropReason::TooLarge));
        if let Err(e) = result {
            // Not removed: they are sent again after the next reconnect.
            tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot remove delivered entries; they will be sent again")
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
        while w.outstanding() < self.window_now(w) && w.retry_at.is_none() {
            let Some((_, client)) = w.client.clone() else { return };
            let want = (self.window_now(w) - w.outstanding())
                .min(self.pace.allowance())
                .min(READ_CHUNK);
            let entries = match self.queue.read(w.cursor, want) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot read the queue");
                    return;
                }
            };
            if entries.is_empty() {
                return;
            }
            let got = entries.len();
            let mut expired = Vec::new();
            // Stopped before an entry (paced, or a switch to MQTT 5): read it again later.
            let mut stopped = false;
            for Entry { seq, record } in entries {
                let carries_v5 = has_v5_properties(&record);
                // Its MQTT 5 properties would be lost on this 3.1.1 connection,
                // which `auto` chose for a cap: back to MQTT 5 once the window
                // is empty; this entry and the rest are read again then.
                if carries_v5 && client.is_v311() && w.sizer.limits().may_speak_v5 {
                    if let Some(request) = w.sizer.needs_v5() {
                        w.want = Some(request);
                    }
                    stopped = true;
                    break;
                }
                // Paced: this entry and the rest are read again when the bucket allows.
                if !self.pace.try_take((record.topic.len() + record.payload.len()) as u64) {
                    stopped = true;
                    break;
                }
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
                if carries_v5 {
                    if client.is_v311() {
                        counter!(m::V5_PROPERTIES_DROPPED, "link" => self.link.clone(), "direction" => self.direction.as_str()).increment(1);
                    } else {
                        w.sizer.sent_properties();
                    }
                }
                let qos = qos_of(record.qos);
                let payload = bytes::Bytes::from(record.payload);
                if let Some(max) = w.max_packet_size {
                    let size = Publish::new(record.topic.as_str(), qos, payload.clone(), Some(props.clone())).size();
                    if size > max as usize {
                        tracing::warn!(link = %self.link, direction = %self.direction, seq, size, max_packet_size = max, "message larger than the destination's Maximum Packet Size; dropped (reason=too_large)");
                        w.too_large.push(seq);
                        continue;
                    }
                }
                w.highest_sent = Some(w.highest_sent.map_or(seq, |h| h.max(seq)));
                let at = tokio::time::Instant::now();
                w.sizer.sending(at);
                w.unmatched.push_back(Sent {
                    seq,
                    qos,
                    received_at_ms: record.received_at_ms,
                    at,
                });
                if let Err(e) = client
                    .publish_with_properties(record.topic, qos, record.retain, payload, props)
                    .await
                {
                    // The connection is going away; its Down event resets the window.
                    tracing::debug!(link = %self.link, error = %e, "publish not queued: connection closing");
                    w.unmatched.pop_back();
                    return;
                }
            }
            if !expired.is_empty() {
                // On this task, like the removals in `settle`.
                if let Err(e) = self.queue.drop_entries(&expired, DropReason::Expired) {
                    tracing::error!(link = %self.link, direction = %self.direction, error = %e, "cannot drop expired entries");
                }
            }
            if got < want || stopped {
                return;
            }
            // A window of thousands is read a chunk at a time: let the
            // runtime's other tasks (other links) run between chunks.
            tokio::task::yield_now().await;
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
                Some(left.div_ceil(1000).max(1) as u32)
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

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a message carries anything only MQTT 5 can carry.
fn has_v5_properties(record: &Record) -> bool {
    record.properties != crate::store::Properties::default()
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
