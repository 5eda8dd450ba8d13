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
//! Which of these run, and when, is decided by the link's control
//! ([`crate::link`]).

pub mod connection;
pub mod drain;
pub mod ingest;
