//! ferry: a durable store-and-forward MQTT bridge.
//!
//! Every message is on disk before ferry acknowledges it to the broker it
//! came from, and leaves the disk only after the broker it goes to
//! acknowledged it. See docs/architecture.md for the delivery chain.

pub mod admin;
pub mod admin_client;
pub mod backoff;
pub mod config;
pub mod control;
pub mod fault;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod human;
pub mod link;
pub mod metrics;
pub mod names;
pub mod queue_tools;
pub mod run;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod topic;
