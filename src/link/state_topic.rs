//! The link's state as a retained message on the hub (`[hub] state_topic`,
//! by default `ferry/<link>/state`), for dashboards and other clients.
//!
//! Each link has one small extra hub connection for it, client id
//! "<hub client id>-<link>-state", whose last will is the retained state
//! `offline`: when ferry dies without a goodbye (kill -9, power loss, a
//! partition), the hub itself publishes that. While the link runs, its state
//! (`connected`, `connecting`, `paused`, ...) is published whenever it
//! changes; a clean stop publishes `stopped`.
//!
//! Payload: JSON, e.g. `{"link":"edge1","state":"connected","since_ms":1764000000000,
//! "protocol":{"edge":"3.1.1","hub":"5"}}`: `protocol` is the MQTT version each
//! side's connections speak (with `protocol = "auto"`, the one in use).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::bridge::v311::Client;
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use tokio_util::sync::CancellationToken;

use crate::config::{HubConfig, LinkConfig};
use crate::metrics::now_ms;
use crate::names::{self, Direction, Role, Side};

use super::status::LinkStatus;
use crate::bridge::connection::{self, ConnEvent};

/// How often the state is compared with what was last published.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// In-flight window of the state connection.
const STATE_INFLIGHT: u16 = 4;

/// The JSON payload for `state` (a `State::as_str`, or "offline"/"stopped")
/// and the protocol of each side (see the module doc).
pub fn payload(link: &str, state: &str, protocol: &BTreeMap<&'static str, String>) -> Vec<u8> {
    serde_json::json!({ "link": link, "state": state, "since_ms": now_ms(), "protocol": protocol })
        .to_string()
        .into_bytes()
}

/// Publishes the link's state on `topic` until `stop`, then `stopped`.
pub async fn run(link: LinkConfig, hub: HubConfig, topic: String, status: Arc<LinkStatus>, stop: CancellationToken) {
    let (mut endpoint, _) = crate::bridge::endpoints(&link, &hub);
    endpoint.client_id = names::state_client_id(&endpoint.client_id);
    let mut spec = crate::bridge::connection_spec(&link, Side::Hub, Role::State, endpoint, Vec::new());
    // A few small messages: a small window and packet limit keep the
    // connection's buffers small (1,000 links have 1,000 of these).
    spec.inflight = STATE_INFLIGHT;
    spec.max_packet_bytes = 64 * 1024;
    let offline = serde_json::json!({ "link": link.name, "state": "offline", "reason": "ferry's connection to the hub ended without a goodbye" });
    spec.will = Some(LastWill::new(
        topic.clone(),
        offline.to_string().into_bytes(),
        QoS::AtLeastOnce,
        true,
        None,
    ));

    let (events_tx, mut events) = connection::event_channel();
    let connection_stop = CancellationToken::new();
    // Not one of the link's forwarding connections: not in its status.
    let connection_status = connection::ConnStatus::new(Direction::Out, Side::Hub, Role::State);
    let connection = tokio::spawn(connection::run(
        spec,
        events_tx,
        connection_stop.clone(),
        connection_status,
    ));

    let mut client: Option<Client> = None;
    let mut published: Option<(&'static str, BTreeMap<&'static str, String>)> = None;
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(ConnEvent::Up { client: c, .. }) => {
                    client = Some(c);
                    published = None;
                }
                Some(ConnEvent::Down { .. }) => client = None,
                Some(ConnEvent::Packet { .. } | ConnEvent::Window { .. }) => {}
                None => break,
            },
            _ = check.tick() => {}
        }
        let Some(c) = &client else { continue };
        let now = (status.state().as_str(), status.protocols());
        if published.as_ref() != Some(&now)
            && c.try_publish(
                topic.clone(),
                QoS::AtLeastOnce,
                true,
                payload(&link.name, now.0, &now.1),
            )
            .is_ok()
        {
            tracing::debug!(link = %link.name, state = now.0, %topic, "state published");
            published = Some(now);
        }
    }
    if let Some(c) = &client {
        let _ = c.try_publish(
            topic.clone(),
            QoS::AtLeastOnce,
            true,
            payload(&link.name, "stopped", &status.protocols()),
        );
    }
    // The connection sends what is queued, then DISCONNECT (so no will).
    connection_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while events.recv().await.is_some() {} }).await;
    connection.abort();
}
