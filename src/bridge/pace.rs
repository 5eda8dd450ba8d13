//! Paced drains: token buckets that space out a link's sends, so an edge on a
//! thin link (a cellular modem back after hours) is not buried under its
//! backlog.
//!
//! A link has one [`Pace`]: its rates (`drain_rate`, messages per second,
//! and `drain_bytes_rate`, bytes per second; each off by default), set from
//! the config and changeable at run time (`ferry link rate`, the admin API)
//! until the next reload or restart. Each of the link's drains (one per
//! direction) takes a [`Bucket`] from it, so each direction is paced at the
//! link's rates on its own.
//!
//! A bucket only decides *when* the next publish may go: the drain still
//! sends in queue order, keeps its in-flight window, and removes an entry only
//! when it is acknowledged. Every publish costs tokens, a resend after a
//! reconnect too (it crosses the link again). A message costs one message
//! token and its topic plus payload in byte tokens (an entry found expired
//! just then costs its tokens too, and is dropped).
//!
//! Burst: a bucket holds a tenth of a second's worth of tokens (at least one
//! message), so above the rate a drain never sends more than that at once,
//! and a backlog of N messages at R/s takes about N/R seconds. A message
//! larger than the byte bucket goes when the bucket is full and leaves it in
//! debt, so the rate holds on average. A drain blocked on its bucket waits
//! for a batch of about 10 ms worth (not one token at a time), and wakes at
//! once when the rates change.

use std::sync::Mutex;

use metrics::gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::metrics as m;

/// A link's drain rates; None is off (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// Messages per second.
    pub drain_rate: Option<u64>,
    /// Bytes (topic + payload) per second.
    pub drain_bytes_rate: Option<u64>,
}

/// What the admin API shows of a link's pace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaceView {
    /// The rates in force.
    #[serde(flatten)]
    pub now: Rates,
    /// The rates of the config file; they differ from `now` after a
    /// run-time change, until the next reload or restart.
    pub config: Rates,
}

/// A run-time change of one or both rates: Some(None) turns a rate off,
/// None leaves it as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateChange {
    pub drain_rate: Option<Option<u64>>,
    pub drain_bytes_rate: Option<Option<u64>>,
}

/// Reads a change from the admin API's query, `drain_rate=500/s` and/or
/// `drain_bytes_rate=1MiB/s` (either may be `off`), spelled as in the config.
pub fn parse_change(query: &str) -> Result<RateChange, String> {
    let mut change = RateChange::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace("%2F", "/").replace("%2f", "/").replace('+', " ");
        match key {
            "drain_rate" => change.drain_rate = Some(crate::config::parse_drain_rate(&value)?),
            "drain_bytes_rate" => change.drain_bytes_rate = Some(crate::config::parse_drain_bytes_rate(&value)?),
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}; use drain_rate and drain_bytes_rate"
                ))
            }
        }
    }
    if change == RateChange::default() {
        return Err("nothing to change: give drain_rate=N/s and/or drain_bytes_rate=SIZE/s (or off)".to_string());
    }
    Ok(change)
}

/// The pace of one link, shared by its drains, its status and the admin API.
pub struct Pace {
    link: String,
    config: Mutex<Rates>,
    now: watch::Sender<Rates>,
}

impl Pace {
    /// A pace that is off until [`Pace::configure`].
    pub fn new(link: &str) -> Pace {
        Pace {
            link: link.to_string(),
            config: Mutex::new(Rates::default()),
            now: watch::Sender::new(Rates::default()),
        }
    }

    /// Applies the config file's rates (at start and on every reload),
    /// replacing any run-time change.
    pub fn configure(&self, rates: Rates) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = rates;
        if *self.now.borrow() != rates {
            tracing::info!(link = %self.link, drain_rate = %show(rates.drain_rate, "/s"), drain_bytes_rate = %show(rates.drain_bytes_rate, " B/s"), "drain pace set from the config");
        }
        self.publish(rates);
    }

    /// Changes the rates at run time (until the next reload or restart).
    pub fn change(&self, change: RateChange) -> PaceView {
        let mut rates = *self.now.borrow();
        if let Some(rate) = change.drain_rate {
            rates.drain_rate = rate;
        }
        if let Some(rate) = change.drain_bytes_rate {
            rates.drain_bytes_rate = rate;
        }
        tracing::info!(link = %self.link, drain_rate = %show(rates.drain_rate, "/s"), drain_bytes_rate = %show(rates.drain_bytes_rate, " B/s"), "operator changed the drain pace (until the next reload or restart)");
        self.publish(rates);
        self.view()
    }

    pub fn view(&self) -> PaceView {
        PaceView {
            now: *self.now.borrow(),
            config: *self.config.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// A bucket for one drain, full, following this pace's changes.
    pub fn bucket(&self) -> Bucket {
        let mut rx = self.now.subscribe();
        let rates = *rx.borrow_and_update();
        Bucket {
            rx,
            messages: Tokens::full(rates.drain_rate),
            bytes: Tokens::full(rates.drain_bytes_rate),
            rates,
            refilled: Instant::now(),
            blocked_on: None,
        }
    }

    fn publish(&self, rates: Rates) {
        self.now.send_replace(rates);
        let gauge_of = |rate: Option<u64>| rate.map_or(0.0, |r| r as f64);
        gauge!(m::LINK_DRAIN_RATE, "link" => self.link.clone()).set(gauge_of(rates.drain_rate));
        gauge!(m::LINK_DRAIN_BYTES_RATE, "link" => self.link.clone()).set(gauge_of(rates.drain_bytes_rate));
    }
}

fn show(rate: Option<u64>, unit: &str) -> String {
    rate.map_or("off".to_string(), |r| format!("{r}{unit}"))
}

/// One bucket: its level (may be below zero after a large message) and size.
#[derive(Debug, Clone, Copy)]
struct Tokens {
    level: f64,
}

impl Tokens {
    fn full(rate: Option<u64>) -> Tokens {
        Tokens {
            level: rate.map_or(0.0, capacity),
        }
    }
}

/// A tenth of a second's worth, at least one.
fn capacity(rate: u64) -> f64 {
    (rate as f64 / 10.0).max(1.0)
}

/// The tokens one send of `cost` needs before it may go: all of it, or a
/// full bucket for a send larger than the bucket.
fn need(rate: u64, cost: f64) -> f64 {
    cost.min(capacity(rate))
}

/// The token buckets of one drain (messages and bytes).
pub struct Bucket {
    rx: watch::Receiver<Rates>,
    rates: Rates,
    messages: Tokens,
    bytes: Tokens,
    refilled: Instant,
    /// The byte cost of the send that was refused last, until one succeeds.
    blocked_on: Option<u64>,
}

impl Bucket {
    /// How many messages may go now, at most (the drain reads no more).
    pub fn allowance(&mut self) -> usize {
        self.update(Instant::now());
        match self.rates.drain_rate {
            None => usize::MAX,
            Some(_) => self.messages.level.max(1.0) as usize,
        }
    }

    /// Takes the tokens for one publish of `bytes`, or says it must wait
    /// (then [`Bucket::ready`] resolves when it may go).
    pub fn try_take(&mut self, bytes: u64) -> bool {
        self.try_take_at(bytes, Instant::now())
    }

    fn try_take_at(&mut self, bytes: u64, now: Instant) -> bool {
        self.update(now);
        if !self.wait_for(bytes).is_zero() {
            self.blocked_on = Some(bytes);
            return false;
        }
        self.blocked_on = None;
        if self.rates.drain_rate.is_some() {
            self.messages.level -= 1.0;
        }
        if self.rates.drain_bytes_rate.is_some() {
            self.bytes.level -= bytes as f64;
        }
        true
    }

    /// True while a send waits for tokens.
    pub fn is_blocked(&self) -> bool {
        self.blocked_on.is_some()
    }

    /// Resolves when the refused send may go, or when the rates change.
    pub async fn ready(&mut self) {
        let wait = self.wait_at(Instant::now());
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Ok(()) = self.rx.changed() => {}
        }
    }

    /// Refills to now, and takes a change of the rates (a bucket turned on
    /// starts full; a smaller one keeps no more than it holds).
    fn update(&mut self, now: Instant) {
        let secs = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        for (tokens, rate) in [
            (&mut self.messages, self.rates.drain_rate),
            (&mut self.bytes, self.rates.drain_bytes_rate),
        ] {
            if let Some(rate) = rate {
                tokens.level = (tokens.level + secs * rate as f64).min(capacity(rate));
            }
        }
        // Compared, not `has_changed`: `ready` may have seen the change already.
        let new = *self.rx.borrow_and_update();
        if new != self.rates {
            for (tokens, old, new) in [
                (&mut self.messages, self.rates.drain_rate, new.drain_rate),
                (&mut self.bytes, self.rates.drain_bytes_rate, new.drain_bytes_rate),
            ] {
                *tokens = match (old, new) {
                    (_, None) => Tokens { level: 0.0 },
                    (None, Some(rate)) => Tokens::full(Some(rate)),
                    (Some(_), Some(rate)) => Tokens {
                        level: tokens.level.min(capacity(rate)),
                    },
                };
            }
            self.rates = new;
        }
    }

    /// How long until a send of `bytes` may go (zero: now).
    fn wait_for(&self, bytes: u64) -> Duration {
        self.wait_until(1.0, bytes as f64)
    }

    /// How long a blocked send waits: for about 10 ms worth of messages, so
    /// a blocked drain wakes for a batch, not for every token.
    fn wait_at(&mut self, now: Instant) -> Duration {
        let Some(bytes) = self.blocked_on else {
            return Duration::ZERO;
        };
        self.update(now);
        let batch = self.rates.drain_rate.map_or(1.0, |rate| (rate as f64 / 100.0).max(1.0));
        self.wait_until(batch, bytes as f64)
    }

    fn wait_until(&self, messages: f64, bytes: f64) -> Duration {
        let short = |tokens: &Tokens, rate: Option<u64>, cost: f64| match rate {
            None => 0.0,
            Some(rate) => (need(rate, cost) - tokens.level).max(0.0) / rate as f64,
        };
        let secs = short(&self.messages, self.rates.drain_rate, messages).max(short(
            &self.bytes,
            self.rates.drain_bytes_rate,
            bytes,
        ));
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `count` messages of `bytes` as fast as the bucket allows, on a
    /// simulated clock that jumps to each wake-up; returns how long it took.
    fn send(bucket: &mut Bucket, count: usize, bytes: u64, clock: &mut Instant) -> Duration {
        let start = *clock;
        let mut sent = 0;
        while sent < count {
            if bucket.try_take_at(bytes, *clock) {
                sent += 1;
            } else {
                let wait = bucket.wait_at(*clock);
                assert!(!wait.is_zero(), "a refused send must wait");
                *clock += wait;
            }
        }
        *clock - start
    }

    fn pace(drain_rate: Option<u64>, drain_bytes_rate: Option<u64>) -> (Pace, Bucket, Instant) {
        let pace = Pace::new("edge1");
        pace.configure(Rates {
            drain_rate,
            drain_bytes_rate,
        });
        let bucket = pace.bucket();
        let clock = bucket.refilled;
        (pace, bucket, clock)
    }

    fn between(took: Duration, min_ms: u64, max_ms: u64) -> bool {
        took >= Duration::from_millis(min_ms) && took <= Duration::from_millis(max_ms)
    }

    #[test]
    fn a_message_rate_spaces_out_a_backlog() {
        let (_pace, mut bucket, mut clock) = pace(Some(1000), None);
        // A full bucket holds 100 (a tenth of a second), the other 4,900 take 4.9 s.
        let took = send(&mut bucket, 5000, 100, &mut clock);
        assert!(between(took, 4890, 4910), "{took:?}");
    }

    #[test]
    fn a_byte_rate_spaces_out_a_backlog_and_large_messages_pass() {
        let (_pace, mut bucket, mut clock) = pace(None, Some(100_000));
        // 100 messages of 10 kB: 1 MB at 100 kB/s, less the full bucket (10 kB).
        let took = send(&mut bucket, 100, 10_000, &mut clock);
        assert!(between(took, 9890, 9910), "{took:?}");
        // Messages larger than the whole bucket still go, and their debt is paid.
        let took = send(&mut bucket, 3, 50_000, &mut clock);
        assert!(between(took, 900, 1100), "{took:?}");
    }

    #[test]
    fn both_rates_hold_at_once() {
        let (_pace, mut bucket, mut clock) = pace(Some(100), Some(1000));
        // 100 messages of 100 bytes: 1 s by count, 10 s by bytes; bytes win.
        let took = send(&mut bucket, 100, 100, &mut clock);
        assert!(between(took, 9800, 10_000), "{took:?}");
    }

    #[test]
    fn off_never_waits() {
        let (_pace, mut bucket, mut clock) = pace(None, None);
        assert_eq!(bucket.allowance(), usize::MAX);
        assert_eq!(send(&mut bucket, 100_000, 1 << 20, &mut clock), Duration::ZERO);
    }

    #[test]
    fn the_burst_is_a_tenth_of_a_second_however_long_it_idled() {
        let (_pace, mut bucket, mut clock) = pace(Some(50), None);
        clock += Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(bucket.try_take_at(1, clock));
        }
        assert!(!bucket.try_take_at(1, clock));
    }

    #[test]
    fn a_change_applies_to_the_next_send_and_a_reload_restores_the_config() {
        let (pace, mut bucket, mut clock) = pace(Some(10), None);
        send(&mut bucket, 1, 1, &mut clock);
        pace.change(RateChange {
            drain_rate: Some(Some(10_000)),
            drain_bytes_rate: None,
        });
        // 2,000 at 10,000/s: 0.2 s, not 200 s.
        let took = send(&mut bucket, 2000, 1, &mut clock);
        assert!(between(took, 0, 200), "{took:?}");
        let view = pace.change(RateChange {
            drain_rate: Some(None),
            drain_bytes_rate: Some(Some(1000)),
        });
        assert_eq!(
            view.now,
            Rates {
                drain_rate: None,
                drain_bytes_rate: Some(1000)
            }
        );
        assert_eq!(view.config.drain_rate, Some(10), "the config's rate is still shown");
        pace.configure(view.config);
        assert_eq!(pace.view().now, view.config);
    }

    /// Real time, short: a drain waiting on a 1/s bucket goes on at once
    /// when the pace is turned off.
    #[tokio::test]
    async fn a_change_wakes_a_waiting_drain_at_once() {
        let (pace, mut bucket, _) = pace(Some(1), None);
        assert!(bucket.try_take(10));
        assert!(!bucket.try_take(10), "the second message waits a second at 1/s");
        let start = Instant::now();
        let waiting = async {
            bucket.ready().await;
            bucket.try_take(10)
        };
        let change = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pace.change(RateChange {
                drain_rate: Some(None),
                drain_bytes_rate: None,
            });
        };
        let (sent, ()) = tokio::join!(waiting, change);
        assert!(sent, "turned off: the message goes");
        assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
    }

    #[test]
    fn the_admin_query_reads_like_the_config() {
        let change = parse_change("drain_rate=500/s&drain_bytes_rate=1MiB%2Fs").unwrap();
        assert_eq!(change.drain_rate, Some(Some(500)));
        assert_eq!(change.drain_bytes_rate, Some(Some(1 << 20)));
        assert_eq!(parse_change("drain_rate=off").unwrap().drain_rate, Some(None));
        assert!(parse_change("").unwrap_err().contains("nothing to change"));
        assert!(parse_change("rate=5/s").unwrap_err().contains("unknown parameter"));
        assert!(parse_change("drain_rate=5").unwrap_err().contains("must end in"));
    }
}
