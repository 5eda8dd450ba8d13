//! Delivery timelines: how many distinct messages a [`Collector`] had at each
//! moment, sampled every few milliseconds, for tests that check a delivery
//! rate as the subscriber sees it (paced drains).

use std::time::{Duration, Instant};

use crate::Collector;

/// (when, distinct messages received by then), in time order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    samples: Vec<(Instant, usize)>,
}

impl Timeline {
    /// Samples `collector` every 5 ms until it has `n` distinct messages or
    /// `timeout` passed (then the timeline ends short; check [`Timeline::last`]).
    pub async fn record(collector: &Collector, n: usize, timeout: Duration) -> Timeline {
        let deadline = Instant::now() + timeout;
        let mut timeline = Timeline::default();
        loop {
            let count = collector.distinct_count();
            timeline.samples.push((Instant::now(), count));
            if count >= n || Instant::now() >= deadline {
                return timeline;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Distinct messages at the end.
    pub fn last(&self) -> usize {
        self.samples.last().map_or(0, |&(_, count)| count)
    }

    /// When the count first reached `count`.
    pub fn reached(&self, count: usize) -> Option<Instant> {
        self.samples.iter().find(|&&(_, c)| c >= count).map(|&(at, _)| at)
    }

    /// The count at `at` (the last sample not after it).
    pub fn count_at(&self, at: Instant) -> usize {
        self.samples
            .iter()
            .take_while(|&&(t, _)| t <= at)
            .last()
            .map_or(0, |&(_, c)| c)
    }

    /// Messages per second received in `[from, from + span]`.
    pub fn rate(&self, from: Instant, span: Duration) -> f64 {
        let got = self.count_at(from + span).saturating_sub(self.count_at(from));
        got as f64 / span.as_secs_f64()
    }
}
