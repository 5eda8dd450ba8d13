//! Waiting for a condition, with a deadline, instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// The generous timeout tests wait with for a condition.
pub const LONG: Duration = Duration::from_secs(120);

/// Polls `condition` every `poll_interval` until it is true (returns true) or
/// `timeout` has passed (returns false). The condition is checked once more at
/// the deadline, so a slow poll never turns a success into a failure.
pub async fn wait_until(timeout: Duration, poll_interval: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll_interval.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Like [`wait_until`], for a condition that has to await something itself.
pub async fn wait_until_async<F, Fut>(timeout: Duration, poll_interval: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll_interval.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
