//! ferry: a durable store-and-forward MQTT bridge.
//!
//! Every message is on disk before ferry acknowledges it to the broker it
//! came from, and leaves the disk only after the broker it goes to
//! acknowledged it. docs/architecture.md tells the whole story.
//!
//! # The delivery chain
//!
//! ```text
//! source broker --PUBLISH--> bridge::connection (ingest role, persistent session, manual acks)
//!   --> bridge::ingest: a batch appended to the queue, one flush, then PUBACK to the source
//!   --> store: one sled tree per link and direction; counters change with the records
//!   --> bridge::drain: publishes in order, a window of `inflight`, removes on PUBACK/PUBCOMP
//!   --> bridge::connection (drain role, clean session) --PUBLISH--> destination broker
//! ```
//!
//! # Modules
//!
//! - [`cli`]: the `ferry` command line (the binary's `main` is two lines);
//!   the admin client, the offline queue tools and how numbers are shown.
//! - `daemon`: `ferry run`: the run loop that owns the store and the links,
//!   run-time control, the admin API, signals.
//! - `link`: one link's control: its supervisor (restarts, pause, drain),
//!   the status the admin API shows, the retained state topic.
//! - `bridge`: the data path: one MQTT connection, ingest, drain.
//! - [`store`]: the durable queues (sled), their invariants and counters.
//! - `config`: the configuration file: types, parsing, validation, `ferry check`'s summary.
//! - `topic`: MQTT filter rules and topic mapping.
//! - `fleet`: `[fleet]` sharding: which links this process runs (rendezvous hashing of link names).
//! - `names`: the one owner of directions, sides, roles, client ids and queue names.
//! - `secret`: a string that never shows itself in `Debug` or logs (passwords).
//! - `metrics`, `backoff`, `fault` (test-only fault injection).
//! - `fuzzing` (feature `fuzzing`): the bodies of the fuzz targets.
//!
//! Only `cli::main`, `store` and `fuzzing` are used outside the crate (by the
//! binary, tests/, benches/ and fuzz/); everything else is `pub(crate)`, so
//! an item nothing uses is reported as dead code.
//!
//! # Errors
//!
//! - Errors a caller matches on (to choose an HTTP status, or to decide
//!   whether to retry) are `thiserror` enums: `store::StoreError`,
//!   `daemon::control::{CommandError, ReloadError}`.
//! - `config::ConfigError` is written by hand: it points at a file, line and
//!   column, and is shown as is.
//! - Everything else returns `anyhow::Result`, with `.context(...)` saying
//!   what was being done and where. Small validators whose message is the
//!   whole error (topic filters, the admin client) return `String`.
//! - Link tasks return no errors: a connection logs a failure and retries
//!   after a backoff; a task that dies is restarted by its supervisor.
//! - One place prints an error: `cli::main`, as `error: {e:#}` (the error and
//!   its context), then exits 1 (2 for a command line that cannot be run).

pub(crate) mod backoff;
pub(crate) mod bridge;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod fault;
pub(crate) mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod link;
pub(crate) mod metrics;
pub(crate) mod names;
pub(crate) mod secret;
pub mod store;
pub(crate) mod topic;
