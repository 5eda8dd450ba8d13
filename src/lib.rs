//! ferry: a durable store-and-forward MQTT bridge.
//!
//! Every message is on disk before ferry acknowledges it to the broker it
//! came from, and leaves the disk only after the broker it goes to
//! acknowledged it. See docs/architecture.md for the delivery chain.

pub mod backoff;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fault;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod link;
pub mod metrics;
pub mod store;
pub mod topic;
