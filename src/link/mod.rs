//! A link: one remote (edge) broker, its routes, and the tasks that carry
//! messages both ways between it and the hub.
//!
//! For each direction that has routes, a link runs four tasks:
//!
//! ```text
//! source broker -> [connection: ingest] -> [ingest] -> queue
//! queue -> [drain] -> [connection: drain] -> destination broker
//! ```
//!
//! `out` reads the hub and writes the edge; `in` reads the edge and writes
//! the hub. Nothing is shared between links but the store (one sled
//! database, one tree per queue), so a link that fails, stalls or panics
//! cannot hold up another. `supervisor` restarts a link's tasks when one
//! of them dies.

pub mod connection;
pub mod drain;
pub mod ingest;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Direction, HubConfig, LinkConfig};
use crate::store::{Queue, QueueLimits, Store, StoreError};

use connection::{ConnectionSpec, Endpoint, Role, Side, Subscription};

/// The queue name of a link's direction: "<link>/<out|in>".
pub fn queue_name(link: &str, direction: Direction) -> String {
    format!("{link}/{}", direction.as_str())
}

pub fn queue_limits(link: &LinkConfig) -> QueueLimits {
    QueueLimits {
        max_bytes: link.queue_max_bytes,
        max_messages: link.queue_max_messages,
        overflow: link.overflow,
        ttl: link.message_ttl,
    }
}

/// Opens (or creates) the queues of every direction the link has routes for.
pub fn open_queues(store: &Store, link: &LinkConfig) -> Result<Vec<(Direction, Queue)>, StoreError> {
    let mut queues = Vec::new();
    for direction in [Direction::Out, Direction::In] {
        if link.routes(direction).next().is_some() {
            queues.push((direction, store.queue(&queue_name(&link.name, direction), queue_limits(link))?));
        }
    }
    Ok(queues)
}

/// The client ids a link uses. Ingest ids carry persistent sessions, so
/// they must stay the same across restarts; drain ids get "-pub".
pub fn endpoints(link: &LinkConfig, hub: &HubConfig) -> (Endpoint, Endpoint) {
    let hub_ep = Endpoint {
        host: hub.host.clone(),
        port: hub.port,
        client_id: link.hub_client_id(hub),
        username: hub.username.clone(),
        password: hub.password.clone(),
    };
    let edge_ep = Endpoint {
        host: link.host.clone(),
        port: link.port,
        client_id: link.client_id.clone(),
        username: link.username.clone(),
        password: link.password.clone(),
    };
    (hub_ep, edge_ep)
}

/// Connection health of one running link, read by the metrics reporter.
#[derive(Default)]
pub struct Health {
    pub connections: Vec<Arc<AtomicBool>>,
}

impl Health {
    pub fn all_up(&self) -> bool {
        !self.connections.is_empty() && self.connections.iter().all(|c| c.load(Ordering::Relaxed))
    }
}

/// Spawns every task of one link into `tasks`. All of them stop when
/// `stop` is cancelled: ingest first commits and acknowledges what it has.
pub fn spawn_tasks(
    link: &LinkConfig,
    hub: &HubConfig,
    store: &Store,
    queues: &[(Direction, Queue)],
    stop: &CancellationToken,
    tasks: &mut JoinSet<&'static str>,
) -> Health {
    let (hub_ep, edge_ep) = endpoints(link, hub);
    let mut health = Health::default();
    for (direction, queue) in queues {
        let direction = *direction;
        let routes: Vec<_> = link.routes(direction).cloned().collect();
        let (source_side, source_ep, dest_side, mut dest_ep) = match direction {
            Direction::Out => (Side::Hub, hub_ep.clone(), Side::Edge, edge_ep.clone()),
            Direction::In => (Side::Edge, edge_ep.clone(), Side::Hub, hub_ep.clone()),
        };
        dest_ep.client_id.push_str("-pub");
        let base = |side, role, endpoint, subscriptions| ConnectionSpec {
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
        };
        // Subscribe at QoS <= 1: rumqttc forgets incoming QoS 2 state on
        // reconnect and would reject the broker's PUBREL retransmission.
        // The destination still gets the route's QoS.
        let subscriptions = routes
            .iter()
            .enumerate()
            .map(|(i, r)| Subscription {
                filter: r.source_filter().to_string(),
                qos: if r.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
                id: i + 1,
            })
            .collect();
        let ingest_spec = base(source_side, Role::Ingest, source_ep, subscriptions);
        let drain_spec = base(dest_side, Role::Drain, dest_ep, Vec::new());
        let capacity = connection::channel_capacity(link.inflight);

        // Ingest: connection task + committer; the committer stops the
        // connection once its last acks are queued.
        let (ingest_tx, ingest_rx) = mpsc::channel(capacity);
        let ingest_conn_stop = CancellationToken::new();
        let up = Arc::new(AtomicBool::new(false));
        health.connections.push(up.clone());
        tasks.spawn(connection_task(ingest_spec, ingest_tx, ingest_conn_stop.clone(), up));
        let ingest = ingest::Ingest {
            link: link.name.clone(),
            direction,
            routes,
            store: store.clone(),
            queue: queue.clone(),
            events: ingest_rx,
            shutdown: stop.clone(),
            connection_stop: ingest_conn_stop,
            held_max: capacity,
        };
        tasks.spawn(async move {
            ingest.run().await;
            "ingest"
        });

        // Drain: connection task + drainer.
        let (drain_tx, drain_rx) = mpsc::channel(capacity);
        let drain_conn_stop = CancellationToken::new();
        let up = Arc::new(AtomicBool::new(false));
        health.connections.push(up.clone());
        tasks.spawn(connection_task(drain_spec, drain_tx, drain_conn_stop.clone(), up));
        let drain = drain::Drain {
            link: link.name.clone(),
            direction,
            store: store.clone(),
            queue: queue.clone(),
            window: link.inflight as usize,
            ttl: link.message_ttl,
            events: drain_rx,
            shutdown: stop.clone(),
            connection_stop: drain_conn_stop,
        };
        tasks.spawn(async move {
            drain.run().await;
            "drain"
        });
    }
    health
}

async fn connection_task(
    spec: ConnectionSpec,
    events: mpsc::Sender<connection::ConnEvent>,
    stop: CancellationToken,
    up: Arc<AtomicBool>,
) -> &'static str {
    connection::run(spec, events, stop, up).await;
    "connection"
}
