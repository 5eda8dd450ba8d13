//! MQTT v5 test clients: a publisher that waits for every ack, a collector
//! that records everything it receives, and the checks run on what arrived.
//!
//! Messages carry their sequence number: [`seq_payload`] puts it in the first
//! 8 bytes (big-endian) and fills the rest with a pattern derived from it, so
//! [`check_in_order`] can tell loss, reordering and duplicates apart, and
//! [`seq_payload_intact`] can tell a corrupted payload.
//!
//! Both clients reconnect by themselves (every 100-200 ms) when the broker
//! goes away, so tests can kill and restart brokers under them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::task::JoinHandle;

use crate::wait_until;

/// Largest packet the test clients send or accept (ferry passes 1 MiB payloads).
const MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024;
/// QoS 1/2 publishes [`publish_n`] keeps unacknowledged on the wire.
const PUBLISH_WINDOW: usize = 100;
/// [`publish_n`] gives up when no message was acked for this long.
const PUBLISH_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before a client tries to reconnect.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

static CLIENT_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_client_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        CLIENT_COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// A payload of `size` bytes (at least 8): `seq` as 8 big-endian bytes, then
/// a filler pattern derived from `seq`.
pub fn seq_payload(seq: u64, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(8));
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend((8..size).map(|index| filler_byte(seq, index)));
    payload
}

/// The sequence number in a [`seq_payload`]; panics on a payload shorter than 8 bytes.
pub fn payload_seq(payload: &[u8]) -> u64 {
    try_payload_seq(payload).unwrap_or_else(|| panic!("payload of {} bytes carries no seq", payload.len()))
}

/// True when `payload` is exactly what [`seq_payload`] made for its seq and length.
pub fn seq_payload_intact(payload: &[u8]) -> bool {
    match try_payload_seq(payload) {
        Some(seq) => payload[8..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == filler_byte(seq, i + 8)),
        None => false,
    }
}

fn try_payload_seq(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

fn filler_byte(seq: u64, index: usize) -> u8 {
    seq.wrapping_mul(31).wrapping_add(index as u64) as u8
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

/// What [`publish_n`] had to do to get every message acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Messages acknowledged (QoS 0: written), one per seq: equals `n`.
    pub acked: u64,
    /// Connections lost and made again while publishing.
    pub reconnects: u64,
    /// Publishes sent again after a reconnect (the broker may have them twice).
    pub resent: u64,
}

/// Publishes messages `0..n` to the broker at `addr`, message `seq` on
/// `topic_fn(seq)` with payload `payload_fn(seq)`, and returns once every one
/// is acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2, written for QoS 0).
///
/// Uses a clean session (no state kept by the broker) and keeps up to 100
/// publishes in flight. If the connection is lost, it reconnects and sends
/// the unacknowledged messages again, oldest first, before going on: a broker
/// restarted meanwhile may see some twice, never miss one. Panics when no
/// message is acknowledged for 60 s, or the broker rejects one.
pub async fn publish_n(
    addr: SocketAddr,
    topic_fn: impl Fn(u64) -> String,
    n: u64,
    qos: QoS,
    payload_fn: impl Fn(u64) -> Vec<u8>,
) -> PublishReport {
    publish_all(addr, n, qos, false, topic_fn, payload_fn).await
}

/// The common case of [`publish_n`]: messages numbered `seqs`, all on
/// `topic`, QoS 1, [`seq_payload`]s of `size` bytes; returns once every one
/// is acknowledged.
pub async fn publish_seqs(
    addr: SocketAddr,
    topic: impl Into<String>,
    seqs: std::ops::Range<u64>,
    size: usize,
) -> PublishReport {
    let topic = topic.into();
    let first = seqs.start;
    publish_n(
        addr,
        |_| topic.clone(),
        seqs.end.saturating_sub(first),
        QoS::AtLeastOnce,
        move |s| seq_payload(first + s, size),
    )
    .await
}

/// Publishes one message (e.g. a retained one) and waits for its acknowledgement.
pub async fn publish_one(addr: SocketAddr, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
    publish_all(addr, 1, qos, retain, |_| topic.to_string(), |_| payload.to_vec()).await;
}

async fn publish_all(
    addr: SocketAddr,
    n: u64,
    qos: QoS,
    retain: bool,
    topic_fn: impl Fn(u64) -> String,
    payload_fn: impl Fn(u64) -> Vec<u8>,
) -> PublishReport {
    let client_id = unique_client_id("harness-pub");
    let mut report = PublishReport::default();
    // Seqs to send again after a reconnect, sent before any new one.
    let mut resend: BTreeSet<u64> = BTreeSet::new();
    let mut next_new: u64 = 0;
    let mut last_progress = Instant::now();
    loop {
        let mut options = MqttOptions::new(client_id.clone(), addr.ip().to_string(), addr.port());
        options
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(MAX_PACKET_SIZE))
            .set_outgoing_inflight_upper_limit(PUBLISH_WINDOW as u16);
        let (client, mut eventloop) = AsyncClient::new(options, PUBLISH_WINDOW + 10);
        // Seqs handed to the client, waiting for rumqttc to assign a packet id
        // (it does so in the order it takes them, reported as Outgoing::Publish).
        let mut awaiting_pkid: VecDeque<u64> = VecDeque::new();
        let mut in_flight: HashMap<u16, u64> = HashMap::new();
        let lost = loop {
            while awaiting_pkid.len() + in_flight.len() < PUBLISH_WINDOW {
                let seq = match resend.pop_first() {
                    Some(seq) => seq,
                    None if next_new < n => {
                        next_new += 1;
                        next_new - 1
                    }
                    None => break,
                };
                if client.try_publish(topic_fn(seq), qos, retain, payload_fn(seq)).is_err() {
                    resend.insert(seq);
                    break;
                }
                awaiting_pkid.push_back(seq);
            }
            if report.acked == n {
                break None;
            }
            let patience = PUBLISH_STALL_TIMEOUT.saturating_sub(last_progress.elapsed());
            let event = match tokio::time::timeout(patience, eventloop.poll()).await {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => break Some(e.to_string()),
                Err(_) => break Some(format!("no event for {PUBLISH_STALL_TIMEOUT:?}")),
            };
            let acked_pkid = match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    let Some(seq) = awaiting_pkid.pop_front() else {
                        continue;
                    };
                    if qos == QoS::AtMostOnce {
                        report.acked += 1;
                        last_progress = Instant::now();
                    } else {
                        in_flight.insert(pkid, seq);
                    }
                    None
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    if !matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
                        panic!("publish_n to {addr}: broker rejected a publish: {:?}", ack.reason);
                    }
                    Some(ack.pkid)
                }
                Event::Incoming(Packet::PubRec(rec)) => {
                    if !matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers) {
                        panic!("publish_n to {addr}: broker rejected a publish: {:?}", rec.reason);
                    }
                    None
                }
                Event::Incoming(Packet::PubComp(comp)) => {
                    if comp.reason != PubCompReason::Success {
                        panic!("publish_n to {addr}: PUBCOMP failed: {:?}", comp.reason);
                    }
                    Some(comp.pkid)
                }
                _ => None,
            };
            if let Some(pkid) = acked_pkid {
                if in_flight.remove(&pkid).is_some() {
                    report.acked += 1;
                    last_progress = Instant::now();
                }
            }
        };
        match lost {
            None => {
                disconnect(&client, &mut eventloop).await;
                return report;
            }
            Some(error) => {
                report.reconnects += 1;
                report.resent += in_flight.len() as u64;
                resend.extend(in_flight.values().copied());
                resend.extend(awaiting_pkid.iter().copied());
                drop(client);
                drop(eventloop);
                if last_progress.elapsed() >= PUBLISH_STALL_TIMEOUT {
                    panic!(
                        "publish_n to {addr}: {} of {n} acknowledged, none for {PUBLISH_STALL_TIMEOUT:?}; last error: {error}",
                        report.acked
                    );
                }
                tokio::time::sleep(RECONNECT_DELAY * 2).await;
            }
        }
    }
}

/// Sends DISCONNECT and drives the event loop until it is written (at most 2 s).
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Collecting
// ---------------------------------------------------------------------------

/// One message as a [`Collector`] received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
}

impl Received {
    /// The seq of a [`seq_payload`]; `None` for a payload shorter than 8 bytes.
    pub fn seq(&self) -> Option<u64> {
        try_payload_seq(&self.payload)
    }
}

#[derive(Default)]
struct CollectorState {
    messages: Vec<Received>,
    /// (topic, seq) pairs seen, to count messages without their duplicates.
    distinct: HashSet<(String, u64)>,
    connects: u64,
    session_present: bool,
    subscribed: bool,
    subscribe_error: Option<String>,
    last_error: Option<String>,
}

/// Subscribes to a filter and records every message it receives, in order.
///
/// It uses a fixed client id with a persistent session (clean start off,
/// session expiry 1 h), so the broker queues what arrives while it is away:
/// across a broker restart (SIGTERM) or its own [`Collector::stop`] and a new
/// [`Collector::start`] with the same id, nothing is missed. It reconnects by
/// itself; when the broker lost its session (kill -9 before an autosave) it
/// subscribes again. Payloads are kept as `Bytes` (cheap to clone).
pub struct Collector {
    addr: SocketAddr,
    client_id: String,
    filter: String,
    client: AsyncClient,
    state: Arc<Mutex<CollectorState>>,
    task: Option<JoinHandle<()>>,
}

impl Collector {
    /// Connects as `client_id`, subscribes to `filter` with `qos`, and returns
    /// once the subscription is acknowledged. Panics after 10 s.
    /// (Subscribing again on an existing session keeps what the broker queued
    /// for it, but makes the broker send matching retained messages again.)
    pub async fn start(addr: SocketAddr, client_id: &str, filter: &str, qos: QoS) -> Collector {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(Some(MAX_PACKET_SIZE));
        let (client, eventloop) = AsyncClient::new(options, 10);
        let state = Arc::new(Mutex::new(CollectorState::default()));
        let task = tokio::spawn(run_collector(
            eventloop,
            client.clone(),
            filter.to_string(),
            qos,
            state.clone(),
        ));
        let collector = Collector {
            addr,
            client_id: client_id.to_string(),
            filter: filter.to_string(),
            client,
            state,
            task: Some(task),
        };
        let subscribed = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let state = collector.lock();
            state.subscribed || state.subscribe_error.is_some()
        })
        .await;
        let error = collector.lock().subscribe_error.clone();
        if !subscribed || error.is_some() {
            panic!(
                "Collector::start: not subscribed ({}): {}",
                error.unwrap_or_default(),
                collector.describe()
            );
        }
        collector
    }

    /// Messages received so far, duplicates included.
    pub fn count(&self) -> usize {
        self.lock().messages.len()
    }

    /// Messages received so far, each (topic, seq) counted once.
    pub fn distinct_count(&self) -> usize {
        self.lock().distinct.len()
    }

    /// Waits until at least `n` messages (duplicates included) arrived.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || self.count() >= n).await
    }

    /// Waits until at least `n` distinct (topic, seq) messages arrived.
    pub async fn wait_distinct(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || self.distinct_count() >= n).await
    }

    /// A copy of everything received, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }

    /// The seqs received, on any topic.
    pub fn distinct_seqs(&self) -> BTreeSet<u64> {
        self.lock().messages.iter().filter_map(Received::seq).collect()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.messages.clear();
        state.distinct.clear();
    }

    /// Connections made so far (1 after start; +1 per reconnect).
    pub fn connect_count(&self) -> u64 {
        self.lock().connects
    }

    /// Whether the broker had kept this client's session at the last connect.
    pub fn session_present(&self) -> bool {
        self.lock().session_present
    }

    /// The last connection error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// One line for assertion messages: who, where, what was received.
    pub fn describe(&self) -> String {
        let state = self.lock();
        format!(
            "collector {} on {} filter {:?}: {} messages ({} distinct), {} connects, last error: {}",
            self.client_id,
            self.addr,
            self.filter,
            state.messages.len(),
            state.distinct.len(),
            state.connects,
            state.last_error.as_deref().unwrap_or("none"),
        )
    }

    /// Disconnects cleanly; the broker keeps the session (and queues for it)
    /// until a Collector with the same client id starts again.
    pub async fn stop(mut self) {
        let _ = self.client.disconnect().await;
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, CollectorState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run_collector(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    qos: QoS,
    state: Arc<Mutex<CollectorState>>,
) {
    let lock = || state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                let first = {
                    let mut state = lock();
                    state.connects += 1;
                    state.session_present = connack.session_present;
                    state.connects == 1
                };
                // Always on the first connect (the filter may be new to an
                // existing session); later only if the broker lost the session.
                if first || !connack.session_present {
                    if let Err(e) = client.try_subscribe(filter.clone(), qos) {
                        lock().subscribe_error = Some(format!("subscribe request failed: {e}"));
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let mut state = lock();
                match suback
                    .return_codes
                    .iter()
                    .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                {
                    Some(failure) => state.subscribe_error = Some(format!("SUBACK {failure:?}")),
                    None => state.subscribed = true,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let received = Received {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                    dup: publish.dup,
                };
                let mut state = lock();
                if let Some(seq) = received.seq() {
                    state.distinct.insert((received.topic.clone(), seq));
                }
                state.messages.push(received);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                lock().last_error = Some(e.to_string());
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// What [`check_in_order`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderReport {
    /// Messages looked at.
    pub messages: usize,
    /// Messages with a payload too short to carry a seq (not checked).
    pub without_seq: usize,
    /// Distinct (topic, seq) messages.
    pub distinct: usize,
    /// Messages that repeated a (topic, seq) seen before (allowed: at-least-once).
    pub duplicates: usize,
    /// Topics seen.
    pub topics: usize,
}

impl fmt::Display for OrderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages on {} topics: {} distinct, {} duplicates, {} without seq",
            self.messages, self.topics, self.distinct, self.duplicates, self.without_seq
        )
    }
}

/// Checks messages carrying a seq (see [`seq_payload`]): on each topic, the
/// first occurrences of seqs are increasing (a replay may repeat older seqs,
/// which counts as duplicates, never put a new one before an older one), and
/// together the topics hold every seq in `0..n` and none outside it.
/// Messages shorter than 8 bytes are skipped (counted as `without_seq`).
/// When several sources number their messages from 0 independently, check
/// each source's messages separately (filter by topic first).
/// The error lists the first problems found, then the report.
pub fn check_in_order(messages: &[Received], n: u64) -> Result<OrderReport, String> {
    check_sequence(messages, n, true)
}

/// Like [`check_in_order`], but the first occurrences must be increasing
/// across all topics together: the order of one ferry route whose messages
/// span several topics (filter the route's messages first).
pub fn check_in_order_across_topics(messages: &[Received], n: u64) -> Result<OrderReport, String> {
    check_sequence(messages, n, false)
}

fn check_sequence(messages: &[Received], n: u64, per_topic: bool) -> Result<OrderReport, String> {
    const MAX_LISTED: usize = 10;
    let mut report = OrderReport {
        messages: messages.len(),
        ..OrderReport::default()
    };
    let mut problems: Vec<String> = Vec::new();
    let mut problem_count = 0usize;
    let mut note = |problems: &mut Vec<String>, text: String| {
        problem_count += 1;
        if problems.len() < MAX_LISTED {
            problems.push(text);
        }
    };
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    let mut highest_first: HashMap<&str, u64> = HashMap::new();
    let mut topics: HashSet<&str> = HashSet::new();
    let mut present = vec![false; n as usize];
    for (index, message) in messages.iter().enumerate() {
        let topic = message.topic.as_str();
        topics.insert(topic);
        let Some(seq) = message.seq() else {
            report.without_seq += 1;
            continue;
        };
        if seq >= n {
            note(
                &mut problems,
                format!("message #{index} on {topic:?}: seq {seq} outside 0..{n}"),
            );
            continue;
        }
        if !seen.insert((topic, seq)) {
            report.duplicates += 1;
            continue;
        }
        report.distinct += 1;
        present[seq as usize] = true;
        let order_key = if per_topic { topic } else { "" };
        match highest_first.get(order_key) {
            Some(&highest) if seq < highest => {
                note(
                    &mut problems,
                    format!("message #{index} on {topic:?}: seq {seq} first seen after seq {highest}"),
                );
            }
            _ => {
                highest_first.insert(order_key, seq);
            }
        }
    }
    report.topics = topics.len();
    let missing: Vec<u64> = (0..n).filter(|&seq| !present[seq as usize]).collect();
    if !missing.is_empty() {
        note(
            &mut problems,
            format!(
                "missing {} of {n} seqs: {}",
                missing.len(),
                as_ranges(&missing, MAX_LISTED)
            ),
        );
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        let more = problem_count.saturating_sub(problems.len());
        let more = if more > 0 {
            format!("\n... and {more} more problems")
        } else {
            String::new()
        };
        Err(format!("{}{more}\n{report}", problems.join("\n")))
    }
}

/// `[0..=4, 9, 12..=20, ...]`: sorted numbers as ranges, at most `max` of them.
fn as_ranges(sorted: &[u64], max: usize) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &value in sorted {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == value => *end = value,
            _ => ranges.push((value, value)),
        }
    }
    let mut text: Vec<String> = ranges
        .iter()
        .take(max)
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}..={end}")
            }
        })
        .collect();
    if ranges.len() > max {
        text.push(format!("... ({} ranges)", ranges.len()));
    }
    format!("[{}]", text.join(", "))
}
