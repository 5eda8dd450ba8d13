//! A link: one remote (edge) broker, its routes, and the control of the
//! tasks that carry messages both ways between it and the hub.
//!
//! For each direction that has routes, a link runs the four tasks of the
//! data path ([`crate::bridge`]) over one queue per direction (opened
//! here). `out` reads the hub and writes the edge; `in` reads the edge and
//! writes the hub. Nothing is shared between links but the store (one sled
//! database, one tree per queue), so a link that fails, stalls or panics
//! cannot hold up another. `supervisor` restarts a link's tasks when one
//! of them dies, and starts and stops the two halves
//! ([`crate::bridge::Half`]: ingest, drain) when the operator pauses,
//! drains or resumes the link. `status` is what the admin API shows of it;
//! `state_topic` publishes its state on the hub.

pub mod state_topic;
pub mod status;
pub mod supervisor;

use crate::config::LinkConfig;
use crate::names::{queue_name, Direction};
use crate::store::{Queue, QueueLimits, Store, StoreError};

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
            queues.push((
                direction,
                store.queue(&queue_name(&link.name, direction), queue_limits(link))?,
            ));
        }
    }
    Ok(queues)
}
