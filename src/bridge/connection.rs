//! One MQTT connection (v5 or 3.1.1, see [`super::v311`]), kept up forever.
//!
//! A link has up to four of these: for each direction one *ingest*
//! connection on the source broker (persistent session, manual acks, the
//! route filters subscribed) and one *drain* connection on the destination
//! broker (clean session: the queue, not the broker, knows what is unsent).
//!
//! The task here owns the rumqttc event loop and nothing else. rumqttc does
//! all of a connection's I/O inside `EventLoop::poll()`: reading, writing the
//! owner's acks and publishes, and pinging. So this task **never waits on
//! anything but `poll()`**: events go to the owner over an unbounded channel,
//! and the owner never waits on the connection either (it queues requests
//! with `try_*`). A slow owner can no longer stop acks and pings (the wedge
//! of issue 8: the task waited for room in a bounded channel to ingest while
//! ingest waited for room in rumqttc's request channel).
//!
//! Every connection attempt gets a fresh rumqttc client and event loop and a
//! new *epoch* number, so no state of a dead connection (packet ids,
//! half-sent requests) can leak into the next one; owners use the epoch to
//! ignore late events of a previous connection.
//!
//! A peer that stops answering (a powered-off host sends no FIN and no RST)
//! is noticed by a deadline: rumqttc pings every `keepalive`, so a healthy
//! broker sends *something* at least that often; silence for 1.5 x keepalive
//! drops the connection. A **watchdog** checks the task itself: if the event
//! loop has not been polled for longer than `keepalive` (the task is stuck
//! outside `poll()`), the connection is declared dead, counted
//! (`ferry_connection_watchdog_restarts_total`) and made again.
//!
//! A subscribing connection announces a Receive Maximum (`inflight`), but
//! brokers do not always hold to it (mosquitto 2.0.11 sends everything). The
//! excess is read and handed on, unacknowledged until stored ([`Intake`]).
//! Only when the excess held in memory passes [`EXCESS_MAX_BYTES`] does the
//! connection stop keeping what arrives: it leaves it unacknowledged (the
//! broker keeps it), goes on acknowledging and pinging, and once everything
//! it kept is acknowledged it reconnects, so the broker sends the rest again,
//! in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{counter, gauge};
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, Publish, RetainForwardRule, SubscribeProperties, SubscribeReasonCode, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Event, MqttOptions};
use rumqttc::Outgoing;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bridge::failover::Failover;
use crate::metrics as m;
use crate::metrics::now_ms;
use crate::names::{Direction, Protocol, Role, Side};
use crate::secret::Secret;
use crate::store::Subscribed;

use super::v311::{self, Choice, Client, EventLoop, Version};
use super::window;

/// One connection's state, written by its connection task and read by the
/// link's status ([`crate::link::status`]).
#[derive(Debug)]
pub struct ConnStatus {
    pub direction: Direction,
    pub side: Side,
    pub role: Role,
    state: Mutex<ConnState>,
    /// Since when (ms since the epoch) the connection task is outside
    /// `EventLoop::poll()` while connected; 0 while it polls or is not connected.
    outside_poll_since_ms: AtomicU64,
    /// A connection whose event loop is not driven for longer than this is dead.
    watchdog_ms: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    pub up: bool,
    /// When the connection last came up or went down (ms since the epoch).
    pub since_ms: Option<u64>,
    /// When the next connection attempt is due, while down.
    pub next_attempt_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// The address ("host:port", one of `hosts`) connected to, or last tried.
    #[serde(default)]
    pub address: Option<String>,
    /// A drain connection whose destination stopped acknowledging.
    #[serde(default)]
    pub stalled: bool,
    /// The MQTT version of the current (or last) connection: "5" or "3.1.1".
    #[serde(default)]
    pub protocol: Option<String>,
}

impl ConnStatus {
    pub fn new(direction: Direction, side: Side, role: Role) -> Arc<ConnStatus> {
        Arc::new(ConnStatus {
            direction,
            side,
            role,
            state: Mutex::new(ConnState::default()),
            outside_poll_since_ms: AtomicU64::new(0),
            watchdog_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// The connection's keepalive: the longest its event loop may go undriven.
    pub fn set_watchdog(&self, keepalive: std::time::Duration) {
        self.watchdog_ms.store(
            u64::try_from(keepalive.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn poll_started(&self) {
        self.outside_poll_since_ms.store(0, Ordering::Relaxed);
    }

    pub fn poll_returned(&self) {
        self.outside_poll_since_ms
            .store(monotonic_ms().max(1), Ordering::Relaxed);
    }

    /// The connection is not being driven on purpose (closed, reconnecting).
    pub fn poll_ended(&self) {
        self.outside_poll_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the event loop has not been polled while connected (ms).
    pub fn not_driven_for_ms(&self) -> u64 {
        match self.outside_poll_since_ms.load(Ordering::Relaxed) {
            0 => 0,
            since => monotonic_ms().saturating_sub(since),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up, and really alive: its event loop is being driven (a connection
    /// whose task is stuck is not shown as connected, even before its
    /// watchdog restarts it).
    pub fn is_up(&self) -> bool {
        self.lock().up && self.alive()
    }

    fn alive(&self) -> bool {
        self.not_driven_for_ms() <= self.watchdog_ms.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ConnState {
        let mut st = self.lock().clone();
        st.up = st.up && self.alive();
        st
    }

    pub fn set_up(&self, address: &str, version: Version) {
        let mut st = self.lock();
        st.address = Some(address.to_owned());
        st.up = true;
        st.protocol = Some(version.as_str().to_string());
        st.since_ms = Some(now_ms());
        st.next_attempt_ms = None;
    }

    /// The connection failed (or could not be made); the next attempt is in `retry_in_ms`.
    pub fn set_down(&self, address: &str, error: &str, retry_in_ms: u64) {
        let now = now_ms();
        let mut st = self.lock();
        st.address = Some(address.to_owned());
        if st.up || st.since_ms.is_none() {
            st.since_ms = Some(now);
        }
        st.up = false;
        st.next_attempt_ms = Some(now + retry_in_ms);
        st.last_error = Some(error.to_string());
        st.last_error_ms = Some(now);
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    pub fn is_stalled(&self) -> bool {
        self.lock().stalled
    }

    /// The connection was closed on purpose.
    pub fn set_closed(&self) {
        let mut st = self.lock();
        st.up = false;
        st.since_ms = Some(now_ms());
        st.next_attempt_ms = None;
    }
}

/// Milliseconds on a monotonic clock (since the first call): the watchdog
/// must not fire because the wall clock jumped.
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `hosts` in order (one at least); see [`Failover`].
    pub addresses: Vec<(String, u16)>,
    /// How often the first address is probed while on a later one.
    pub failback: Duration,
    /// None: plain TCP.
    pub tls: Option<crate::bridge::tls::TlsClient>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `protocol` of this side: which MQTT version to speak.
    pub protocol: Protocol,
}

/// One subscription of an ingest connection. `id` is the MQTT v5
/// subscription identifier, stable for its filter (`store::sessions`), which
/// tells ingest which routes a message is for.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: String,
    pub qos: QoS,
    pub id: Option<usize>,
}

/// Where an ingest connection keeps what its persistent session subscribed.
#[derive(Clone)]
pub struct Book {
    pub store: crate::store::Store,
    pub client_id: String,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book").field("client_id", &self.client_id).finish()
    }
}

/// What one connect sends so that the session holds exactly the
/// subscriptions of the config: the filters missing (or held with another
/// identifier or QoS), and the filters no route reads any more. A filter
/// that stays is not subscribed again: that would resend its retained
/// messages.
#[derive(Debug, Default)]
pub struct SubscriptionPlan {
    pub subscribe: Vec<Subscription>,
    pub unsubscribe: Vec<String>,
    /// What the session holds before the plan is carried out.
    pub held: BTreeMap<String, Subscribed>,
}

impl SubscriptionPlan {
    /// The plan for `wanted`, given what a resumed session `held` (empty
    /// for a new session).
    pub fn new(wanted: &[Subscription], held: BTreeMap<String, Subscribed>) -> SubscriptionPlan {
        let subscribe = wanted
            .iter()
            .filter(|s| held.get(&s.filter) != Some(&subscribed(s)))
            .cloned()
            .collect();
        let unsubscribe = held
            .keys()
            .filter(|f| !wanted.iter().any(|s| &s.filter == *f))
            .cloned()
            .collect();
        SubscriptionPlan {
            subscribe,
            unsubscribe,
            held,
        }
    }
}

fn subscribed(s: &Subscription) -> Subscribed {
    Subscribed {
        id: s.id.unwrap_or(0) as u32,
        qos: if s.qos == QoS::AtMostOnce { 0 } else { 1 },
    }
}

/// The SUBSCRIBEs and UNSUBSCRIBEs of a plan on their way: each confirmed
/// one is written to the session's book at once.
struct PlanInFlight {
    book: Book,
    held: BTreeMap<String, Subscribed>,
    /// Requests queued to rumqttc, in order, not yet written.
    queued: VecDeque<Change>,
    /// Written, by packet id, waiting for the broker's answer.
    sent: HashMap<u16, Change>,
}

enum Change {
    Subscribe(String, Subscribed),
    Unsubscribe(String),
}

impl PlanInFlight {
    fn written(&mut self, pkid: u16) {
        // A packet id reused before its answer: the older change is simply
        // not recorded, and sent again at the next connect.
        if let Some(change) = self.queued.pop_front() {
            self.sent.insert(pkid, change);
        }
    }

    /// The broker answered `pkid`: `ok` says whether it did what was asked.
    fn answered(&mut self, pkid: u16, ok: bool, link: &str) {
        let Some(change) = self.sent.remove(&pkid) else {
            return;
        };
        if !ok {
            return;
        }
        match change {
            Change::Subscribe(filter, sub) => self.held.insert(filter, sub),
            Change::Unsubscribe(filter) => self.held.remove(&filter),
        };
        if let Err(e) = self.book.store.set_subscribed(&self.book.client_id, self.held.clone()) {
            tracing::error!(link, error = %e, "cannot record the session's subscriptions; they are sent again at the next connect");
        }
    }
}

/// Everything needed to run one connection.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub link: String,
    pub side: Side,
    pub role: Role,
    pub endpoint: Endpoint,
    pub keepalive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Outgoing in-flight limit at connect (a drain grows it, see
    /// [`window`]) and the receive maximum announced to the broker.
    pub inflight: u16,
    pub max_packet_bytes: u32,
    pub subscriptions: Vec<Subscription>,
    /// Where an ingest connection keeps what its session subscribed; None:
    /// subscribe everything on a new session only.
    pub book: Option<Book>,
    /// What the broker publishes when the connection dies without a DISCONNECT.
    pub will: Option<rumqttc::v5::mqttbytes::v5::LastWill>,
    /// A drain's requests about its window ([`window`]); None for others.
    pub window: Option<Arc<window::Control>>,
}

/// What the connection task hands to its owner, in order.
// `Packet` is the one sent per message: boxing it would allocate for each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ConnEvent {
    /// Connected; `client` is valid until the matching `Down`.
    /// `max_packet_size`: the broker's Maximum Packet Size (CONNACK), if any.
    /// Cancelling `reset` drops this connection and makes a new one (the
    /// owner's remedy for a destination that stopped acknowledging).
    Up {
        epoch: u64,
        client: Client,
        max_packet_size: Option<u32>,
        reset: CancellationToken,
        /// What this connection allows a drain's window.
        window: window::Limits,
    },
    /// The answer to a drain's [`window::Request::Resize`]: the window's new
    /// size, or None when rumqttc's state was not idle (unchanged).
    Window { epoch: u64, grown: Option<u16> },
    /// A packet that the owner cares about (publishes and their acks).
    Packet { epoch: u64, event: Event },
    /// The connection of `epoch` is gone.
    Down { epoch: u64 },
}

/// The channel from the connection task to its owner. Unbounded, so that
/// handing over an event never waits: what bounds it is the peer (a broker
/// honouring the Receive Maximum sends at most `inflight` unacknowledged
/// messages; one that does not is bounded by [`Intake`]).
///
/// A flume channel, not tokio's: tokio's unbounded channel allocates its
/// first block of 32 events (about 12 KiB) when made, for each of a link's
/// connections; flume's queue starts empty and grows as far as the traffic
/// needs. The same API as tokio's: `send` fails once the owner is gone,
/// `recv` is None once the connection task is gone and everything was taken.
pub struct EventSender(flume::Sender<ConnEvent>);
pub struct EventReceiver(flume::Receiver<ConnEvent>);

impl EventSender {
    // The event comes back in the error, as with tokio's channel: it is large.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, event: ConnEvent) -> Result<(), flume::SendError<ConnEvent>> {
        self.0.send(event)
    }
}

impl EventReceiver {
    /// The next event; None when the sender is gone and nothing is left.
    /// Cancel-safe (an event is taken only when this returns it).
    pub async fn recv(&mut self) -> Option<ConnEvent> {
        self.0.recv_async().await.ok()
    }

    pub fn try_recv(&mut self) -> Result<ConnEvent, flume::TryRecvError> {
        self.0.try_recv()
    }
}

pub fn event_channel() -> (EventSender, EventReceiver) {
    let (tx, rx) = flume::unbounded();
    (EventSender(tx), EventReceiver(rx))
}

/// How many messages ingest stores in one batch at most: a full in-flight
/// window plus control packets.
pub fn channel_capacity(inflight: u16) -> usize {
    2 * inflight as usize + 64
}

/// Bytes of messages beyond the Receive Maximum that a subscribing
/// connection keeps in memory, unacknowledged, while ingest stores them.
/// Past it, what arrives is left unacknowledged for the broker to resend
/// after a reconnect (see the module doc).
pub const EXCESS_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Capacity of rumqttc's request channel (the owner's acks and publishes to
/// the connection task). Queueing an ack must never wait: otherwise the
/// owner waits on the connection task while the connection task waits on
/// the owner to take the next event. Acks waiting here are bounded only by
/// what the broker has sent unacknowledged, and brokers do not always honour
/// the receive maximum ferry announces (mosquitto 2.0 sends up to its own
/// `max_inflight_messages`). The one hard bound is the packet id space: a
/// session never has more than 65,535 QoS 1/2 messages unacknowledged. The
/// channel allocates as it fills, so the large bound costs nothing idle.
fn request_capacity(inflight: u16) -> usize {
    u16::MAX as usize + 2 * channel_capacity(inflight) + 64
}

// ---- memory: per-connection sizes (docs/performance.md "Memory") ----
//
// rumqttc sizes a connection's tables when its event loop is made, not as
// they fill: a slot per outgoing in-flight publish (`Option<Publish>`, about
// 200 bytes each) and an event queue of 100 `Event`s (about 36 KiB). With
// three or four connections per link, that was most of an idle link's memory.

impl ConnectionSpec {
    /// How many of its own QoS 1/2 packets the connection may have
    /// unacknowledged: the window for a drain (and the state connection,
    /// which sets its own small `inflight`). An ingest connection publishes
    /// nothing; its only acknowledged requests are its SUBSCRIBEs and
    /// UNSUBSCRIBEs, one per filter. What it *receives* is bounded
    /// by the Receive Maximum it announces, `inflight`, not by this.
    pub fn outgoing_inflight(&self) -> u16 {
        match self.role {
            // Room for an UNSUBSCRIBE per filter dropped from the config too.
            Role::Ingest => u16::try_from(2 * self.subscriptions.len() + 16)
                .unwrap_or(u16::MAX)
                .clamp(1, self.inflight.max(1)),
            _ => self.inflight,
        }
    }
}

/// Gives back the event queue rumqttc preallocates for every event loop
/// (room for 100 events): it grows again as far as the traffic needs, so a
/// busy connection keeps what it uses and an idle one keeps next to nothing.
fn release_preallocated(eventloop: &mut EventLoop) {
    match eventloop {
        EventLoop::V5(l) => l.state.events = VecDeque::new(),
        EventLoop::V4(l) => l.state.events = VecDeque::new(),
    }
}

// ---- end memory ----

impl ConnectionSpec {
    fn options(&self, host: &str, port: u16) -> MqttOptions {
        let e = &self.endpoint;
        let mut o = MqttOptions::new(e.client_id.clone(), host, port);
        o.set_keep_alive(self.keepalive);
        o.set_manual_acks(self.role == Role::Ingest);
        o.set_clean_start(self.role != Role::Ingest);
        if let Some(will) = &self.will {
            o.set_last_will(will.clone());
        }
        if self.role == Role::Ingest {
            // The session (and the messages the broker holds for it) must
            // outlive ferry being away: "never expires" in MQTT v5.
            o.set_session_expiry_interval(Some(u32::MAX));
        }
        o.set_receive_maximum(Some(self.inflight));
        o.set_outgoing_inflight_upper_limit(self.outgoing_inflight());
        o.set_max_packet_size(Some(self.max_packet_bytes));
        o.set_connection_timeout(connect_timeout(self.keepalive).as_secs().max(1));
        if let Some(tls) = &e.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls.config.clone(),
            )));
        }
        if let (Some(user), Some(pass)) = (&e.username, &e.password) {
            o.set_credentials(user.clone(), pass.expose().to_owned());
        } else if let Some(user) = &e.username {
            o.set_credentials(user.clone(), String::new());
        }
        o
    }

    fn labels(&self) -> [(&'static str, String); 3] {
        [
            ("link", self.link.clone()),
            ("side", self.side.as_str().to_string()),
            ("role", self.role.as_str().to_string()),
        ]
    }
}

fn connect_timeout(keepalive: Duration) -> Duration {
    keepalive.clamp(Duration::from_secs(5), Duration::from_secs(30))
}

/// Runs the connection until `stop` is cancelled or the owner goes away.
/// On `stop`, requests already queued on the client (acks, a DISCONNECT)
/// are sent before the socket is closed. Every failure (cannot connect,
/// cannot subscribe, connection lost, the watchdog) is retried the same way:
/// after the backoff's next delay.
pub async fn run(spec: ConnectionSpec, events: EventSender, stop: CancellationToken, status: Arc<ConnStatus>) {
    let labels = spec.labels();
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let mut failover = Failover::new(spec.endpoint.addresses.clone(), spec.endpoint.failback);
    let mut backoff = Backoff::new(spec.reconnect_min, spec.reconnect_max);
    let mut epoch = 0u64;
    let mut choice = Choice::new(spec.endpoint.protocol);
    status.set_watchdog(spec.keepalive);
    if spec
        .endpoint
        .tls
        .as_ref()
        .is_some_and(|tls| tls.settings.insecure_skip_verify)
    {
        tracing::warn!(link, side, role, addr = %failover.current_addr(), "INSECURE: insecure_skip_verify = true: the broker's certificate is NOT verified; anyone on the path can read and change this connection");
    }

    while !stop.is_cancelled() {
        epoch += 1;
        let addr = failover.current_addr();
        let failure = match attempt(&spec, &failover, epoch, &events, &stop, &status, &mut choice).await {
            None => return,
            Some(Ended::Failed(failure)) => failure,
            Some(Ended::Again) => {
                // Closed on purpose to connect again at once (`auto` -> 3.1.1,
                // or to fetch what a broker beyond the Receive Maximum sent).
                if events.send(ConnEvent::Down { epoch }).is_err() {
                    return;
                }
                continue;
            }
        };
        if failure.fail_back {
            failover.fail_back();
        } else if failure.up_for.is_none() {
            // Could not connect: the next address is tried (a connection
            // that was up is tried again where it was first).
            failover.failed();
        }
        if failure.up_for.is_some_and(|up| up >= Duration::from_secs(10)) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        let error = failure.error.as_deref().map(tracing::field::display);
        tracing::warn!(link, side, role, %addr, error, retry_in_ms, "{}", failure.event);
        counter!(m::RECONNECTS, &labels).increment(1);
        status.set_down(&addr, &failure.shown, retry_in_ms);
        if failure.up_for.is_some() && events.send(ConnEvent::Down { epoch }).is_err() {
            return;
        }
        sleep_or_stop(delay, &stop).await;
    }
}

/// Why a connection attempt ended, when it was not stopped on purpose.
struct Failure {
    /// The log line's message.
    event: &'static str,
    /// The log line's `error` field.
    error: Option<String>,
    /// What the status (`ferry status`, LAST ERROR) shows.
    shown: String,
    /// How long the connection was up; None when it never came up (the
    /// owner saw no `Up` for this epoch, so it gets no `Down`).
    up_for: Option<Duration>,
    /// Closed because the first address answers again (failback).
    fail_back: bool,
}

/// How a connection attempt ended, when it was not stopped on purpose.
enum Ended {
    /// Failed: retried after the backoff.
    Failed(Failure),
    /// Closed on purpose to connect again at once, without backoff or
    /// warning (logged where it was decided): another MQTT version, or to
    /// fetch what a broker beyond the Receive Maximum left unacknowledged.
    Again,
}

/// One connection: connect, subscribe when the session is new, then hand
/// events to the owner. Returns how it ended, or None when stopped (or
/// the owner went away). A broker refusing MQTT 5 is tried again at once
/// with 3.1.1 when `choice` allows it (`protocol = "auto"`).
async fn attempt(
    spec: &ConnectionSpec,
    failover: &Failover,
    epoch: u64,
    events: &EventSender,
    stop: &CancellationToken,
    status: &ConnStatus,
    choice: &mut Choice,
) -> Option<Ended> {
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let addr = failover.current_addr();
    let (host, port, address_index) = failover.current();
    let never_up = |event, error: Option<String>, shown| {
        Some(Ended::Failed(Failure {
            event,
            error,
            shown,
            up_for: None,
            fail_back: false,
        }))
    };
    let (version, client, mut eventloop, session_present, connack) = loop {
        let version = choice.next();
        let (client, mut eventloop) =
            v311::connect(spec, version, spec.options(host, port), request_capacity(spec.inflight));
        release_preallocated(&mut eventloop);
        let polled = tokio::select! {
            _ = stop.cancelled() => return None,
            r = tokio::time::timeout(connect_timeout(spec.keepalive) + Duration::from_secs(1), eventloop.poll()) => r,
        };
        match polled {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                break (version, client, eventloop, ack.session_present, ack.properties);
            }
            Ok(Ok(other)) => {
                tracing::warn!(link, side, role, %addr, event = ?other, "unexpected first packet from broker");
                break (version, client, eventloop, false, None);
            }
            Ok(Err(e)) if version == Version::V5 && e.refuses_v5 && choice.v5_refused() => {
                tracing::info!(link, side, role, %addr, error = %e, "broker refuses MQTT 5; trying MQTT 3.1.1 (protocol = \"auto\")");
            }
            Ok(Err(e)) => {
                choice.failed();
                return never_up(
                    "cannot connect",
                    Some(e.to_string()),
                    format!("cannot connect to {addr}: {e}"),
                );
            }
            Err(_) => {
                choice.failed();
                return never_up(
                    "cannot connect: timed out",
                    None,
                    format!("cannot connect to {addr}: timed out"),
                );
            }
        }
    };
    let max_packet_size = connack.as_ref().and_then(|p| p.max_packet_size);
    let receive_maximum = connack.as_ref().and_then(|p| p.receive_max);
    // `auto` lifts the cap itself (see `window`): at once when it is below
    // `inflight`, where every connection starts, else when a backlog waits.
    let auto_v5 = version == Version::V5 && spec.endpoint.protocol == Protocol::Auto && choice.may_lift_cap();
    if let Some(rm) = receive_maximum.filter(|rm| spec.role == Role::Drain && *rm < spec.inflight) {
        // `auto_v5` implies `choice.may_lift_cap()`: the switch is made.
        if auto_v5 && choice.speak_v311() {
            tracing::info!(link, side, role, %addr, receive_maximum = rm, inflight = spec.inflight, "the broker's Receive Maximum ({rm}) is below inflight ({}): speaking MQTT 3.1.1 on it (protocol = \"auto\"), which has no such cap. A message with MQTT 5 properties moves this drain back to MQTT 5 for good; set protocol = \"5\" on this side to keep MQTT 5 and its cap", spec.inflight);
            close(&client, &mut eventloop).await;
            return Some(Ended::Again);
        }
        tracing::warn!(link, side, role, %addr, receive_maximum = rm, inflight = spec.inflight, "the broker's Receive Maximum caps this MQTT 5 connection below inflight: at most that many messages per round trip; raise the broker's max_inflight_messages, or set protocol = \"3.1.1\" for this side if no message needs MQTT 5 properties");
    }
    let held = match (&spec.book, session_present) {
        (Some(book), true) => match book.store.session_book(&book.client_id) {
            Ok(b) => b.subscribed,
            Err(e) => {
                tracing::error!(link, side, role, error = %e, "cannot read what the session subscribed; subscribing every filter again");
                BTreeMap::new()
            }
        },
        _ => BTreeMap::new(),
    };
    let plan = match (&spec.book, session_present) {
        // Without a book, a resumed session is taken to hold what it needs.
        (None, true) => SubscriptionPlan::default(),
        _ => SubscriptionPlan::new(&spec.subscriptions, held),
    };
    let mut in_flight = spec.book.clone().map(|book| PlanInFlight {
        book,
        held: plan.held.clone(),
        queued: VecDeque::new(),
        sent: HashMap::new(),
    });
    if let Err(e) = subscribe(&client, &plan, in_flight.as_mut()).await {
        return never_up(
            "cannot subscribe",
            Some(e.to_string()),
            format!("cannot subscribe on {addr}: {e}"),
        );
    }
    if !plan.subscribe.is_empty() || !plan.unsubscribe.is_empty() {
        tracing::info!(
            link,
            side,
            role,
            subscribe = plan.subscribe.len(),
            unsubscribe = plan.unsubscribe.len(),
            "bringing the session's subscriptions in line with the routes"
        );
    }
    let connected_at = Instant::now();
    status.set_up(&addr, version);
    let labels = spec.labels();
    gauge!(m::CONNECTION_UP, &labels).set(1.0);
    gauge!(m::CONNECTION_ADDRESS_INDEX, &labels).set(address_index as f64);
    let protocol = version.as_str();
    tracing::info!(link, side, role, %addr, session_present, protocol, "connected");
    let reset = CancellationToken::new();
    let up = ConnEvent::Up {
        epoch,
        client: client.clone(),
        max_packet_size,
        reset: reset.clone(),
        window: window::Limits {
            may_speak_v5: version == Version::V311 && choice.may_speak_v5(),
            ..window::Limits::new(
                spec.inflight,
                receive_maximum.filter(|_| version == Version::V5),
                auto_v5,
            )
        },
    };
    if events.send(up).is_err() {
        return None;
    }

    let mut intake = Intake::new(spec);
    let dead_after = spec.keepalive * 3 / 2;
    let mut fail_back = false;
    // The version the drain asked this connection to speak instead (`auto`).
    let mut switch: Option<Version> = None;
    let reason = tokio::select! {
        _ = failover.first_answers() => {
            fail_back = true;
            let first = spec.endpoint.addresses.first().map(|(h, p)| format!("{h}:{p}")).unwrap_or_default();
            tracing::info!(link, side, role, %addr, first = %first, "the first address answers again: moving back to it");
            Some(format!("moving back to the first address {first}"))
        }
        r = drive(spec, &mut eventloop, events, stop, epoch, dead_after, status, &mut intake, &mut switch, &mut in_flight) => r,
        _ = reset.cancelled() => Some("reset by its owner: the destination did not acknowledge in time".to_string()),
        stuck_ms = watchdog(status, spec.keepalive) => {
            counter!(m::WATCHDOG_RESTARTS, &labels).increment(1);
            tracing::error!(link, side, role, %addr, not_driven_ms = stuck_ms, keepalive_s = spec.keepalive.as_secs(), "watchdog: event loop not driven for longer than the keepalive; connection declared dead");
            Some(format!("watchdog: event loop not driven for {:.1}s (keepalive {}s)", stuck_ms as f64 / 1000.0, spec.keepalive.as_secs()))
        }
    };
    status.poll_ended();
    gauge!(m::CONNECTION_UP, &labels).set(0.0);
    let switched = match switch {
        Some(Version::V311) => choice.speak_v311(),
        // Asked only where `choice` allows it; if not, a plain reconnect.
        Some(Version::V5) => {
            choice.speak_v5();
            true
        }
        None => false,
    };
    if switched {
        close(&client, &mut eventloop).await;
        return Some(Ended::Again);
    }
    if let Some(why) = intake.reconnect_due().filter(|_| !fail_back) {
        // Closed on purpose, the broker is healthy: the acks queued are
        // flushed, and the deferred messages are fetched again at once. As
        // a "connection lost" this waited through the reconnect backoff,
        // which grew with every such round (to 17 s within a minute at
        // 4 KiB, unthrottled): the link stood still meanwhile.
        close(&client, &mut eventloop).await;
        tracing::info!(link, side, role, %addr, "{why}");
        return Some(Ended::Again);
    }
    let Some(reason) = reason else {
        // Stopped on purpose: flush what the owner queued, then close.
        status.set_closed();
        close(&client, &mut eventloop).await;
        let _ = events.send(ConnEvent::Down { epoch });
        return None;
    };
    Some(Ended::Failed(Failure {
        event: "connection lost",
        shown: format!("connection to {addr} lost: {reason}"),
        error: Some(reason),
        up_for: Some(connected_at.elapsed()),
        fail_back,
    }))
}

/// Resolves when the event loop has not been polled for longer than
/// `keepalive` (returns for how long, in ms). Checked eight times per
/// keepalive (at most twice a second, at least every 5 s): a dead loop is
/// found within 1.125 keepalives, and 1,000 idle links do not wake 6,000
/// times a second for it.
async fn watchdog(status: &ConnStatus, keepalive: Duration) -> u64 {
    let limit = keepalive.as_millis() as u64;
    let mut tick = tokio::time::interval(check_every(keepalive));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stuck = status.not_driven_for_ms();
        if stuck > limit {
            return stuck;
        }
    }
}

/// How often to check a deadline of `limit`: an eighth of it, between half
/// a second and 5 s (the watchdog's and the drain's ack check).
pub(crate) fn check_every(limit: Duration) -> Duration {
    (limit / 8).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// Polls until the connection fails (returns why) or `stop` (returns None).
/// Nothing here waits but `poll()`: handing events over never blocks.
#[allow(clippy::too_many_arguments)]
async fn drive(
    spec: &ConnectionSpec,
    eventloop: &mut EventLoop,
    events: &EventSender,
    stop: &CancellationToken,
    epoch: u64,
    dead_after: Duration,
    status: &ConnStatus,
    intake: &mut Intake,
    switch: &mut Option<Version>,
    plan: &mut Option<PlanInFlight>,
) -> Option<String> {
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let mut last_heard = Instant::now();
    loop {
        let deadline = last_heard + dead_after;
        status.poll_started();
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = window_asked(spec) => {
                match window_request(spec, eventloop, events, epoch, switch) {
                    Some(why) => return Some(why),
                    None => continue,
                }
            }
            r = tokio::time::timeout_at(deadline, eventloop.poll()) => r,
        };
        status.poll_returned();
        crate::fault::connection_stall(&spec.link, spec.role.as_str()).await;
        let event = match polled {
            Err(_) => {
                return Some(format!(
                    "nothing received for {:.1}s (keepalive {}s): peer presumed dead",
                    dead_after.as_secs_f64(),
                    spec.keepalive.as_secs()
                ))
            }
            Ok(Err(e)) => return Some(e.to_string()),
            Ok(Ok(event)) => event,
        };
        if let Event::Incoming(_) = &event {
            last_heard = Instant::now();
        }
        match &event {
            Event::Incoming(Packet::SubAck(ack)) => {
                let mut ok = true;
                for code in &ack.return_codes {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        ok = false;
                        tracing::error!(link, side, role, reason = ?code, "broker refused a subscription: check its ACL for this client id");
                    }
                }
                if let Some(plan) = plan.as_mut() {
                    plan.answered(ack.pkid, ok, link);
                }
            }
            Event::Incoming(Packet::UnsubAck(ack)) => {
                // 3.1.1 has no reasons; v5's "no subscription existed" is done too.
                let ok = ack
                    .reasons
                    .iter()
                    .all(|r| matches!(r, UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted));
                if let Some(plan) = plan.as_mut() {
                    plan.answered(ack.pkid, ok, link);
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) | Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                if let Some(plan) = plan.as_mut() {
                    plan.written(*pkid);
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                return Some(format!("broker sent DISCONNECT: {:?}", d.reason_code));
            }
            _ => {}
        }
        let wanted = match &event {
            Event::Incoming(Packet::Publish(p)) => intake.keep(spec, p),
            Event::Outgoing(Outgoing::PubAck(pkid)) | Event::Outgoing(Outgoing::PubRec(pkid)) => {
                intake.acked(*pkid);
                false
            }
            Event::Incoming(Packet::PubAck(_))
            | Event::Incoming(Packet::PubRec(_))
            | Event::Incoming(Packet::PubComp(_))
            | Event::Outgoing(Outgoing::Publish(_)) => true,
            _ => false,
        };
        if wanted && events.send(ConnEvent::Packet { epoch, event }).is_err() {
            return None;
        }
        if let Some(why) = intake.reconnect_due() {
            return Some(why);
        }
    }
}

// ---- a drain's window requests (see `window`) ----

/// Resolves when the drain may have asked something of this connection.
async fn window_asked(spec: &ConnectionSpec) {
    match &spec.window {
        Some(control) => control.asked().await,
        None => std::future::pending().await,
    }
}

/// Does what the drain asked, if anything, for this connection (`epoch`).
/// A growth is answered at once, done or not; a switch of version returns
/// why the connection ends (and sets `switch`).
fn window_request(
    spec: &ConnectionSpec,
    eventloop: &mut EventLoop,
    events: &EventSender,
    epoch: u64,
    switch: &mut Option<Version>,
) -> Option<String> {
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    match spec.window.as_ref()?.take(epoch)? {
        window::Request::Resize(size) => {
            let grown = eventloop.resize(size);
            tracing::debug!(link, side, role, size, grown, "drain window");
            let _ = events.send(ConnEvent::Window {
                epoch,
                grown: grown.then_some(size),
            });
            None
        }
        window::Request::SpeakV311 { receive_maximum } => {
            tracing::info!(link, side, role, receive_maximum, "the broker's Receive Maximum caps this MQTT 5 drain at {receive_maximum} messages per round trip while a backlog waits: speaking MQTT 3.1.1 on it (protocol = \"auto\"), which has no such cap. MQTT 3.1.1 does not carry MQTT 5 message properties: a message with them moves this drain back to MQTT 5 for good; set protocol = \"5\" on this side to keep MQTT 5 and its cap");
            *switch = Some(Version::V311);
            Some(format!(
                "the broker's Receive Maximum ({receive_maximum}) capped the drain: speaking MQTT 3.1.1"
            ))
        }
        window::Request::SpeakV5 => {
            tracing::info!(link, side, role, "a message carries MQTT 5 properties: moving this drain back to MQTT 5 for good (protocol = \"auto\"), with the broker's Receive Maximum as its cap");
            *switch = Some(Version::V5);
            Some("a message needs MQTT 5 properties: speaking MQTT 5".to_string())
        }
    }
}

// ---- end of a drain's window requests ----

/// What a subscribing connection keeps of what the broker sends.
///
/// A broker may have at most `receive_maximum` QoS 1/2 messages
/// unacknowledged towards ferry. Messages beyond it are still kept and
/// handed to ingest (counted in `ferry_receive_maximum_exceeded_total`):
/// reading on keeps acks and pings flowing. While more than
/// [`EXCESS_MAX_BYTES`] are kept unacknowledged, what arrives is *deferred*:
/// not handed over, not acknowledged, so the broker keeps it (counted in
/// `ferry_publishes_deferred_total`). Once every kept message is
/// acknowledged, the connection is made again and the broker resends the
/// deferred ones, in order: nothing is stored out of order or twice.
/// (QoS 0 messages deferred that way are lost, as QoS 0 allows.)
struct Intake {
    receive_maximum: usize,
    /// Kept QoS 1/2 messages not yet acknowledged: packet id and size.
    kept: VecDeque<(u16, usize)>,
    kept_bytes: usize,
    exceeded: u64,
    deferring: bool,
}

impl Intake {
    fn new(spec: &ConnectionSpec) -> Intake {
        Intake {
            receive_maximum: spec.inflight as usize,
            kept: VecDeque::new(),
            kept_bytes: 0,
            exceeded: 0,
            deferring: false,
        }
    }

    /// Whether to hand `p` to the owner.
    fn keep(&mut self, spec: &ConnectionSpec, p: &Publish) -> bool {
        let labels = spec.labels();
        let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
        if !self.deferring && self.kept.len() >= self.receive_maximum && self.kept_bytes >= EXCESS_MAX_BYTES {
            self.deferring = true;
            tracing::warn!(link, side, role, kept = self.kept.len(), kept_bytes = self.kept_bytes, receive_maximum = self.receive_maximum, "broker far beyond the Receive Maximum: leaving what it sends unacknowledged until the kept messages are stored, then reconnecting");
        }
        if self.deferring {
            counter!(m::PUBLISHES_DEFERRED, &labels).increment(1);
            return false;
        }
        if p.qos != QoS::AtMostOnce {
            if self.kept.len() >= self.receive_maximum {
                if self.exceeded == 0 {
                    tracing::warn!(link, side, role, receive_maximum = self.receive_maximum, "broker sends more than the Receive Maximum ferry announced; reading on, the excess stays unacknowledged until stored");
                }
                self.exceeded += 1;
                counter!(m::RECEIVE_MAXIMUM_EXCEEDED, &labels).increment(1);
            }
            let size = p.payload.len() + p.topic.len();
            self.kept.push_back((p.pkid, size));
            self.kept_bytes += size;
        }
        true
    }

    /// The owner's acknowledgement of `pkid` was written.
    fn acked(&mut self, pkid: u16) {
        // Ingest acknowledges in order of arrival: normally the front.
        let at = match self.kept.front() {
            Some((front, _)) if *front == pkid => Some(0),
            _ => self.kept.iter().position(|(id, _)| *id == pkid),
        };
        if let Some((_, size)) = at.and_then(|i| self.kept.remove(i)) {
            self.kept_bytes -= size;
        }
    }

    /// Deferring, and every kept message acknowledged: time to reconnect.
    fn reconnect_due(&self) -> Option<String> {
        (self.deferring && self.kept.is_empty()).then(|| {
            format!(
                "broker exceeded the Receive Maximum of {} by {} messages; reconnecting so that it resends what was left unacknowledged",
                self.receive_maximum, self.exceeded
            )
        })
    }
}

/// Queues the plan's requests, one packet per filter (each SUBSCRIBE carries
/// its filter's own identifier), recording each in `in_flight` in order.
async fn subscribe(
    client: &Client,
    plan: &SubscriptionPlan,
    mut in_flight: Option<&mut PlanInFlight>,
) -> Result<(), Box<dyn std::error::Error>> {
    for sub in &plan.subscribe {
        match client {
            Client::V4(c) => {
                // No subscription ids (ingest routes by topic), no retain-as-published.
                let qos = if sub.qos == QoS::AtMostOnce {
                    rumqttc::QoS::AtMostOnce
                } else {
                    rumqttc::QoS::AtLeastOnce
                };
                c.subscribe(sub.filter.clone(), qos).await?;
            }
            Client::V5(c) => {
                let mut filter = Filter::new(sub.filter.clone(), sub.qos);
                // Retain-as-published: live retained messages keep their flag.
                filter.preserve_retain = true;
                filter.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
                let props = SubscribeProperties {
                    id: sub.id,
                    user_properties: Vec::new(),
                };
                c.subscribe_many_with_properties([filter], props).await?;
            }
        }
        if let Some(f) = in_flight.as_deref_mut() {
            f.queued
                .push_back(Change::Subscribe(sub.filter.clone(), subscribed(sub)));
        }
    }
    for filter in &plan.unsubscribe {
        match client {
            Client::V4(c) => c.unsubscribe(filter.clone()).await?,
            Client::V5(c) => c.unsubscribe(filter.clone()).await?,
        }
        if let Some(f) = in_flight.as_deref_mut() {
            f.queued.push_back(Change::Unsubscribe(filter.clone()));
        }
    }
    Ok(())
}

/// Sends a DISCONNECT after whatever is queued and polls until it is out.
async fn close(client: &Client, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, routes: usize, inflight: u16) -> ConnectionSpec {
        ConnectionSpec {
            link: "l".into(),
            side: Side::Hub,
            role,
            endpoint: Endpoint {
                addresses: vec![("127.0.0.1".into(), 1883)],
                failback: Duration::from_secs(60),
                tls: None,
                client_id: "c".into(),
                username: None,
                password: None,
                protocol: Protocol::V5,
            },
            keepalive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            inflight,
            max_packet_bytes: 1 << 20,
            subscriptions: (0..routes)
                .map(|i| Subscription {
                    filter: format!("t/{i}/#"),
                    qos: QoS::AtLeastOnce,
                    id: Some(i + 1),
                })
                .collect(),
            book: None,
            will: None,
            window: None,
        }
    }

    /// An ingest connection announces the full window to the broker but
    /// reserves outgoing slots only for its SUBSCRIBEs (rumqttc allocates one
    /// per slot at connect); a drain keeps its whole window.
    /// Deadlines are checked often enough to be found within an eighth of
    /// their length, never more than twice a second.
    #[test]
    fn deadlines_are_checked_an_eighth_of_their_length_apart_within_bounds() {
        assert_eq!(check_every(Duration::from_secs(30)), Duration::from_millis(3750));
        assert_eq!(check_every(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(check_every(Duration::from_secs(600)), Duration::from_secs(5));
    }

    #[test]
    fn ingest_reserves_outgoing_slots_only_for_its_subscriptions() {
        let ingest = spec(Role::Ingest, 3, 1000).options("127.0.0.1", 1883);
        assert_eq!(ingest.receive_maximum(), Some(1000));
        assert_eq!(ingest.get_outgoing_inflight_upper_limit(), Some(22));
        let one = spec(Role::Ingest, 0, 1000);
        assert_eq!(one.outgoing_inflight(), 16);
        let small_window = spec(Role::Ingest, 8, 4);
        assert_eq!(small_window.outgoing_inflight(), 4);
        let drain = spec(Role::Drain, 0, 1000).options("127.0.0.1", 1883);
        assert_eq!(drain.receive_maximum(), Some(1000));
        assert_eq!(drain.get_outgoing_inflight_upper_limit(), Some(1000));
    }

    /// The event queue rumqttc makes with room for 100 events is given back,
    /// for either MQTT version.
    #[test]
    fn the_preallocated_event_queue_is_given_back() {
        for version in [Version::V5, Version::V311] {
            let s = spec(Role::Drain, 0, 100);
            let (_client, mut eventloop) = v311::connect(&s, version, s.options("127.0.0.1", 1883), 16);
            release_preallocated(&mut eventloop);
            let capacity = match &eventloop {
                EventLoop::V5(l) => l.state.events.capacity(),
                EventLoop::V4(l) => l.state.events.capacity(),
            };
            assert_eq!(capacity, 0, "{version:?}");
        }
    }
}
