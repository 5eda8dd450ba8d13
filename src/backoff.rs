//! Capped, jittered exponential backoff.
//!
//! Every retry loop in ferry (reconnecting to a broker, restarting a link
//! task, retrying a write on a full disk) waits through one of these, so that
//! a hundred links that lost the same broker do not hammer it in lock-step,
//! and a broker that is away for hours is retried forever at a bounded rate.

use std::time::Duration;

/// Exponential backoff from `min` doubling up to `max`, with "equal jitter":
/// each delay is uniformly drawn from `[d/2, d]` where `d` is the current step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff { min, max, current: min }
    }

    /// The next delay to wait; each call doubles the step up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        let jitter_ms = fastrand::u64(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut step = 100u64;
        for _ in 0..20 {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= step / 2 && d <= step, "delay {d} outside [{}, {step}]", step / 2);
            step = (step * 2).min(1000);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
