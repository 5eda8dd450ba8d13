//! One MQTT v5 connection, kept up forever.
//!
//! A link has up to four of these: for each direction one *ingest*
//! connection on the source broker (persistent session, manual acks, the
//! route filters subscribed) and one *drain* connection on the destination
//! broker (clean session: the queue, not the broker, knows what is unsent).
//!
//! The task here owns the rumqttc event loop and nothing else. It never
//! waits on its owner except to hand over events, so keepalive pings keep
//! flowing. Every connection attempt gets a fresh rumqttc client and event
//! loop and a new *epoch* number, so no state of a dead connection (packet
//! ids, half-sent requests) can leak into the next one; owners use the epoch
//! to ignore late events of a previous connection.
//!
//! A peer that stops answering (a powered-off host sends no FIN and no RST)
//! is noticed by a deadline: rumqttc pings every `keepalive`, so a healthy
//! broker sends *something* at least that often; silence for 1.5 x keepalive
//! drops the connection.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{counter, gauge};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, RetainForwardRule, SubscribeProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics as m;
use crate::metrics::now_ms;
use crate::names::Direction;
use crate::names::{Role, Side};
use crate::secret::Secret;

/// One connection's state, written by its connection task and read by the
/// link's status ([`crate::link::status`]).
#[derive(Debug)]
pub struct ConnStatus {
    pub direction: Direction,
    pub side: Side,
    pub role: Role,
    state: Mutex<ConnState>,
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
}

impl ConnStatus {
    pub fn new(direction: Direction, side: Side, role: Role) -> Arc<ConnStatus> {
        Arc::new(ConnStatus {
            direction,
            side,
            role,
            state: Mutex::new(ConnState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_up(&self) -> bool {
        self.lock().up
    }

    pub fn snapshot(&self) -> ConnState {
        self.lock().clone()
    }

    pub fn set_up(&self) {
        let mut st = self.lock();
        st.up = true;
        st.since_ms = Some(now_ms());
        st.next_attempt_ms = None;
    }

    /// The connection failed (or could not be made); the next attempt is in `retry_in_ms`.
    pub fn set_down(&self, error: &str, retry_in_ms: u64) {
        let now = now_ms();
        let mut st = self.lock();
        if st.up || st.since_ms.is_none() {
            st.since_ms = Some(now);
        }
        st.up = false;
        st.next_attempt_ms = Some(now + retry_in_ms);
        st.last_error = Some(error.to_string());
        st.last_error_ms = Some(now);
    }

    /// The connection was closed on purpose.
    pub fn set_closed(&self) {
        let mut st = self.lock();
        st.up = false;
        st.since_ms = Some(now_ms());
        st.next_attempt_ms = None;
    }
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// One subscription of an ingest connection. `id` is the MQTT v5
/// subscription identifier, which tells ingest which route a message is for.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: String,
    pub qos: QoS,
    pub id: usize,
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
    /// Outgoing in-flight limit and the receive maximum announced to the broker.
    pub inflight: u16,
    pub max_packet_bytes: u32,
    pub subscriptions: Vec<Subscription>,
    /// What the broker publishes when the connection dies without a DISCONNECT.
    pub will: Option<rumqttc::v5::mqttbytes::v5::LastWill>,
}

/// What the connection task hands to its owner, in order.
// `Packet` is the one sent per message: boxing it would allocate for each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ConnEvent {
    /// Connected; `client` is valid until the matching `Down`.
    Up { epoch: u64, client: AsyncClient },
    /// A packet that the owner cares about (publishes and their acks).
    Packet { epoch: u64, event: Event },
    /// The connection of `epoch` is gone.
    Down { epoch: u64 },
}

/// Capacity of the channel from the connection task to its owner: a full
/// in-flight window plus control packets. Ingest also holds at most this
/// many messages unacknowledged before it stops reading.
pub fn channel_capacity(inflight: u16) -> usize {
    2 * inflight as usize + 64
}

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

impl ConnectionSpec {
    fn options(&self) -> MqttOptions {
        let e = &self.endpoint;
        let mut o = MqttOptions::new(e.client_id.clone(), e.host.clone(), e.port);
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
        o.set_outgoing_inflight_upper_limit(self.inflight);
        o.set_max_packet_size(Some(self.max_packet_bytes));
        o.set_connection_timeout(connect_timeout(self.keepalive).as_secs().max(1));
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
/// cannot subscribe, connection lost) is retried the same way: after the
/// backoff's next delay.
pub async fn run(
    spec: ConnectionSpec,
    events: mpsc::Sender<ConnEvent>,
    stop: CancellationToken,
    status: Arc<ConnStatus>,
) {
    let labels = spec.labels();
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let addr = format!("{}:{}", spec.endpoint.host, spec.endpoint.port);
    let mut backoff = Backoff::new(spec.reconnect_min, spec.reconnect_max);
    let mut epoch = 0u64;

    while !stop.is_cancelled() {
        epoch += 1;
        let Some(failure) = attempt(&spec, &addr, epoch, &events, &stop, &status).await else {
            return;
        };
        if failure.up_for.is_some_and(|up| up >= Duration::from_secs(10)) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        let error = failure.error.as_deref().map(tracing::field::display);
        tracing::warn!(link, side, role, %addr, error, retry_in_ms, "{}", failure.event);
        counter!(m::RECONNECTS, &labels).increment(1);
        status.set_down(&failure.shown, retry_in_ms);
        if failure.up_for.is_some() && events.send(ConnEvent::Down { epoch }).await.is_err() {
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
}

/// One connection: connect, subscribe when the session is new, then hand
/// events to the owner. Returns why it failed, or None when stopped (or
/// the owner went away).
async fn attempt(
    spec: &ConnectionSpec,
    addr: &str,
    epoch: u64,
    events: &mpsc::Sender<ConnEvent>,
    stop: &CancellationToken,
    status: &ConnStatus,
) -> Option<Failure> {
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let never_up = |event, error: Option<String>, shown| {
        Some(Failure {
            event,
            error,
            shown,
            up_for: None,
        })
    };
    let (client, mut eventloop) = AsyncClient::new(spec.options(), request_capacity(spec.inflight));
    let session_present = tokio::select! {
        _ = stop.cancelled() => return None,
        r = tokio::time::timeout(connect_timeout(spec.keepalive) + Duration::from_secs(1), eventloop.poll()) => match r {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack.session_present,
            Ok(Ok(other)) => {
                tracing::warn!(link, side, role, %addr, event = ?other, "unexpected first packet from broker");
                false
            }
            Ok(Err(e)) => return never_up("cannot connect", Some(e.to_string()), format!("cannot connect to {addr}: {e}")),
            Err(_) => return never_up("cannot connect: timed out", None, format!("cannot connect to {addr}: timed out")),
        }
    };
    if !session_present {
        // Subscribing again on a resumed session would make the broker
        // resend every retained message: a storm on each reconnect.
        if let Err(e) = subscribe(&client, &spec.subscriptions).await {
            return never_up(
                "cannot subscribe",
                Some(e.to_string()),
                format!("cannot subscribe on {addr}: {e}"),
            );
        }
    }
    let connected_at = Instant::now();
    status.set_up();
    let labels = spec.labels();
    gauge!(m::CONNECTION_UP, &labels).set(1.0);
    tracing::info!(link, side, role, %addr, session_present, "connected");
    let up = ConnEvent::Up {
        epoch,
        client: client.clone(),
    };
    if events.send(up).await.is_err() {
        return None;
    }

    let reason = drive(spec, &mut eventloop, events, stop, epoch, spec.keepalive * 3 / 2).await;
    gauge!(m::CONNECTION_UP, &labels).set(0.0);
    let Some(reason) = reason else {
        // Stopped on purpose: flush what the owner queued, then close.
        status.set_closed();
        close(&client, &mut eventloop).await;
        let _ = events.send(ConnEvent::Down { epoch }).await;
        return None;
    };
    Some(Failure {
        event: "connection lost",
        shown: format!("connection to {addr} lost: {reason}"),
        error: Some(reason),
        up_for: Some(connected_at.elapsed()),
    })
}

/// Polls until the connection fails (returns why) or `stop` (returns None).
async fn drive(
    spec: &ConnectionSpec,
    eventloop: &mut EventLoop,
    events: &mpsc::Sender<ConnEvent>,
    stop: &CancellationToken,
    epoch: u64,
    dead_after: Duration,
) -> Option<String> {
    let (link, side, role) = (spec.link.as_str(), spec.side.as_str(), spec.role.as_str());
    let mut last_heard = Instant::now();
    loop {
        let deadline = last_heard + dead_after;
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            r = tokio::time::timeout_at(deadline, eventloop.poll()) => r,
        };
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
                for code in &ack.return_codes {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        tracing::error!(link, side, role, reason = ?code, "broker refused a subscription: check its ACL for this client id");
                    }
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                return Some(format!("broker sent DISCONNECT: {:?}", d.reason_code));
            }
            _ => {}
        }
        let wanted = matches!(
            event,
            Event::Incoming(Packet::Publish(_))
                | Event::Incoming(Packet::PubAck(_))
                | Event::Incoming(Packet::PubRec(_))
                | Event::Incoming(Packet::PubComp(_))
                | Event::Outgoing(Outgoing::Publish(_))
        );
        if wanted && events.send(ConnEvent::Packet { epoch, event }).await.is_err() {
            return None;
        }
    }
}

async fn subscribe(client: &AsyncClient, subs: &[Subscription]) -> Result<(), rumqttc::v5::ClientError> {
    for sub in subs {
        let mut filter = Filter::new(sub.filter.clone(), sub.qos);
        // Retain-as-published: live retained messages keep their flag.
        filter.preserve_retain = true;
        filter.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
        let props = SubscribeProperties {
            id: Some(sub.id),
            user_properties: Vec::new(),
        };
        client.subscribe_many_with_properties([filter], props).await?;
    }
    Ok(())
}

/// Sends a DISCONNECT after whatever is queued and polls until it is out.
async fn close(client: &AsyncClient, eventloop: &mut EventLoop) {
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
