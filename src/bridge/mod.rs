//! The data path: the tasks that carry messages between a broker and a queue.
//!
//! ```text
//! source broker -> [connection: ingest] -> [ingest] -> queue
//! queue -> [drain] -> [connection: drain] -> destination broker
//! ```
//!
//! `connection` keeps one MQTT connection up; `ingest` turns what a source
//! broker sends into durable queue entries and acknowledges them only then;
//! `drain` publishes a queue in order and removes what was acknowledged.
//! [`spawn_half`] starts them for one link: its two halves ([`Half`]) can be
//! stopped and started separately. Which of these run, and when, is decided
//! by the link's control ([`crate::link`]).

pub mod connection;
pub mod drain;
pub mod failover;
pub mod ingest;
pub mod pace;
pub mod tls;
pub mod v311;
pub mod window;

use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{HubConfig, LinkConfig};
use crate::names::{self, Direction, Role, Side};
use crate::store::{Queue, Store};

use connection::{ConnStatus, ConnectionSpec, Endpoint, Subscription};

/// The client ids a link uses. Ingest ids carry persistent sessions, so
/// they must stay the same across restarts; drain ids get "-pub".
pub fn endpoints(link: &LinkConfig, hub: &HubConfig) -> (Endpoint, Endpoint) {
    let hub_ep = Endpoint {
        addresses: hub.addresses.clone(),
        failback: hub.failback,
        tls: hub.tls.clone(),
        client_id: link.hub_client_id(hub),
        username: hub.username.clone(),
        password: hub.password.clone(),
        protocol: hub.protocol,
    };
    let edge_ep = Endpoint {
        addresses: link.addresses.clone(),
        failback: link.failback,
        tls: link.tls.clone(),
        client_id: link.client_id.clone(),
        username: link.username.clone(),
        password: link.password.clone(),
        protocol: link.protocol,
    };
    (hub_ep, edge_ep)
}

/// The two halves of a running link, which the operator can stop and
/// start separately: receiving into the queues, and forwarding from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// The ingest connections and their committers.
    Ingest,
    /// The drain connections and their drainers.
    Drain,
}

impl Half {
    pub fn as_str(self) -> &'static str {
        match self {
            Half::Ingest => "ingest",
            Half::Drain => "drain",
        }
    }
}

/// Spawns one half of a link, for every direction it has, into `tasks`.
/// All of them stop when `stop` is cancelled: ingest first commits and
/// acknowledges what it holds. Each drain is paced by a bucket of `pace`.
/// Returns the status of each connection.
// One caller passes its link's parts; a struct for them would only move the list.
#[allow(clippy::too_many_arguments)]
pub fn spawn_half(
    half: Half,
    link: &LinkConfig,
    hub: &HubConfig,
    store: &Store,
    queues: &[(Direction, Queue)],
    stop: &CancellationToken,
    tasks: &mut JoinSet<&'static str>,
    pace: &pace::Pace,
) -> Vec<Arc<ConnStatus>> {
    let (hub_ep, edge_ep) = endpoints(link, hub);
    let mut connections = Vec::new();
    for (direction, queue) in queues {
        let direction = *direction;
        let routes: Vec<_> = link.routes(direction).cloned().collect();
        let (source_side, source_ep, dest_side, mut dest_ep) = match direction {
            Direction::Out => (Side::Hub, hub_ep.clone(), Side::Edge, edge_ep.clone()),
            Direction::In => (Side::Edge, edge_ep.clone(), Side::Hub, hub_ep.clone()),
        };
        dest_ep.client_id = names::drain_client_id(&dest_ep.client_id);
        let capacity = connection::channel_capacity(link.inflight);
        let (events_tx, events_rx) = connection::event_channel();
        let connection_stop = CancellationToken::new();
        match half {
            Half::Ingest => {
                let subscriptions = ingest_subscriptions(link, store, &source_ep.client_id, &routes);
                let route_ids = routes
                    .iter()
                    .map(|r| {
                        subscriptions
                            .iter()
                            .find(|s| s.filter == r.source_filter())
                            .and_then(|s| s.id)
                    })
                    .collect();
                let book = connection::Book {
                    store: store.clone(),
                    client_id: source_ep.client_id.clone(),
                };
                let mut spec = connection_spec(link, source_side, Role::Ingest, source_ep, subscriptions);
                spec.book = Some(book);
                let status = ConnStatus::new(direction, source_side, Role::Ingest);
                connections.push(status.clone());
                tasks.spawn(connection_task(spec, events_tx, connection_stop.clone(), status));
                // The committer stops the connection once its last acks are queued.
                let ingest = ingest::Ingest {
                    link: link.name.clone(),
                    direction,
                    routes,
                    route_ids,
                    store: store.clone(),
                    queue: queue.clone(),
                    events: events_rx,
                    shutdown: stop.clone(),
                    connection_stop,
                    held_max: capacity,
                };
                tasks.spawn(async move {
                    ingest.run().await;
                    "ingest"
                });
            }
            Half::Drain => {
                let mut spec = connection_spec(link, dest_side, Role::Drain, dest_ep, Vec::new());
                let control = window::Control::new();
                spec.window = Some(control.clone());
                let status = ConnStatus::new(direction, dest_side, Role::Drain);
                connections.push(status.clone());
                tasks.spawn(connection_task(
                    spec,
                    events_tx,
                    connection_stop.clone(),
                    status.clone(),
                ));
                let drain = drain::Drain {
                    link: link.name.clone(),
                    direction,
                    store: store.clone(),
                    queue: queue.clone(),
                    inflight: link.inflight,
                    control,
                    ttl: link.message_ttl,
                    ack_timeout: link.ack_timeout,
                    status,
                    events: events_rx,
                    shutdown: stop.clone(),
                    connection_stop,
                    pace: pace.bucket(),
                };
                tasks.spawn(async move {
                    drain.run().await;
                    "drain"
                });
            }
        }
    }
    connections
}

/// The subscriptions of an ingest connection: one per distinct filter its
/// routes read, with the filter's stable identifier from the store (see
/// `store::sessions`). Subscribed at QoS <= 1: rumqttc forgets incoming QoS 2
/// state on reconnect and would reject the broker's PUBREL retransmission;
/// the destination still gets the route's QoS. Where the store cannot give
/// identifiers, none are used: ingest then routes by filter alone.
fn ingest_subscriptions(
    link: &LinkConfig,
    store: &Store,
    client_id: &str,
    routes: &[crate::config::Route],
) -> Vec<Subscription> {
    let mut filters: Vec<(String, QoS)> = Vec::new();
    for r in routes {
        let qos = if r.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        match filters.iter_mut().find(|(f, _)| f == r.source_filter()) {
            Some((_, q)) if qos == QoS::AtLeastOnce => *q = qos,
            Some(_) => {}
            None => filters.push((r.source_filter().to_string(), qos)),
        }
    }
    let names: Vec<String> = filters.iter().map(|(f, _)| f.clone()).collect();
    let ids = store.subscription_ids(client_id, &names).unwrap_or_else(|e| {
        tracing::error!(link = %link.name, error = %e, "cannot read or keep subscription identifiers; routing by filter alone");
        Default::default()
    });
    filters
        .into_iter()
        .map(|(filter, qos)| Subscription {
            id: ids.get(&filter).map(|id| *id as usize),
            filter,
            qos,
        })
        .collect()
}

/// The settings of one of the link's connections.
pub fn connection_spec(
    link: &LinkConfig,
    side: Side,
    role: Role,
    endpoint: Endpoint,
    subscriptions: Vec<Subscription>,
) -> ConnectionSpec {
    ConnectionSpec {
        link: link.name.clone(),
        side,
        role,
        endpoint,
        keepalive: link.keepalive,
        reconnect_min: link.reconnect_min,
        reconnect_max: link.reconnect_max,
        inflight: link.inflight,
        max_packet_bytes: link.max_message_bytes.saturating_add(64 * 1024),
        subscriptions,
        book: None,
        will: None,
        window: None,
    }
}

async fn connection_task(
    spec: ConnectionSpec,
    events: connection::EventSender,
    stop: CancellationToken,
    status: Arc<ConnStatus>,
) -> &'static str {
    connection::run(spec, events, stop, status).await;
    "connection"
}
