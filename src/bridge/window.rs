//! The drain's window: how many publishes it keeps in flight, and when that
//! grows (issue 11).
//!
//! A drain moves at most one window per round trip, so the window it needs
//! is the bandwidth-delay product: 35,000 msg/s over a 200 ms link is 7,000
//! in flight. A fixed window that large would cost every connection memory
//! while idle (rumqttc allocates one slot per window entry at connect), so
//! the window **starts at `inflight` and grows only while the drain is
//! window-bound with a backlog**: the window is full, at least another
//! window waits in the queue, and a whole window was acknowledged within two
//! round trips of the first of them being sent (the shortest send-to-ack
//! time seen on the connection). A window that takes longer to turn over is
//! larger than the bandwidth-delay product already: something else (the
//! link's bandwidth, the broker) sets the rate, and more in flight would
//! only wait in buffers. It then grows eightfold, or at once to the backlog
//! waiting when that is more (each step costs a round trip with nothing in
//! flight), up to [`MAX`] (the packet id space) and
//! [`MAX_BYTES`] of messages in flight, and on MQTT 5 never beyond the
//! broker's Receive Maximum. Every new connection starts again at
//! `inflight`, and a window that grew goes back to `inflight` after
//! [`IDLE_SHRINK`] with nothing to send (its memory is given back).
//!
//! Growing (and shrinking) is done in place, without a reconnect: the drain
//! stops sending, and once nothing is in flight it asks its connection
//! ([`Control`]) to replace rumqttc's in-flight state by one of the new size
//! ([`super::v311::EventLoop::resize`]); the connection answers with
//! [`super::connection::ConnEvent::Window`]. That costs one round trip per
//! step (100 -> 800 -> 6,400, or 100 -> 65,535 for a long backlog of small
//! messages).
//!
//! `protocol = "auto"` on a drain whose MQTT 5 broker caps the window (its
//! Receive Maximum: mosquitto announces `max_inflight_messages`, 20 by
//! default) lifts the cap with MQTT 3.1.1, which has no Receive Maximum:
//! at connect when the cap is below `inflight` (the connection closes before
//! the drain sees it), or when the window would grow past it and no message
//! sent on the connection carried MQTT 5 properties (the drain finishes
//! what is in flight first). It is logged (why, and that `protocol = "5"`
//! keeps v5), the status and the state topic show 3.1.1. On such a 3.1.1
//! connection a message with MQTT 5 properties is not sent without them:
//! the drain stops before it, lets the window empty and asks for MQTT 5
//! again ([`Request::SpeakV5`]), which that connection then keeps. A
//! connection that fails to connect
//! tries MQTT 5 first again ([`super::v311::Choice`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The largest window: packet ids are 16 bits (0 is not one).
pub const MAX: u16 = u16::MAX;

/// How much a window-bound window grows at least per step: 100 -> 800 -> 6,400.
const GROWTH: u64 = 8;

/// Bytes of messages (topic + payload) a window may hold in flight before it
/// stops growing: 8,192 messages of 4 KiB, 35,000 msg/s of 4 KiB over 240 ms.
pub const MAX_BYTES: u64 = 32 * 1024 * 1024;

/// A grown window with nothing in flight and nothing queued for this long
/// goes back to its start.
pub const IDLE_SHRINK: Duration = Duration::from_secs(60);

/// What a drain asks of its connection, once nothing is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Replace the in-flight state by one of this size.
    Resize(u16),
    /// Close, and connect again over MQTT 3.1.1 (`protocol = "auto"`).
    SpeakV311 { receive_maximum: u16 },
    /// Close, and connect again over MQTT 5, for good: a message needs its
    /// MQTT 5 properties (`protocol = "auto"` on a 3.1.1 it chose for a cap).
    SpeakV5,
}

/// The drain's requests to its connection: at most one waiting, for the
/// connection of one epoch (a request for an older connection is ignored).
#[derive(Debug, Default)]
pub struct Control {
    request: Mutex<Option<(u64, Request)>>,
    notify: Notify,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }

    pub fn ask(&self, epoch: u64, request: Request) {
        *self.request.lock().unwrap_or_else(|p| p.into_inner()) = Some((epoch, request));
        self.notify.notify_one();
    }

    /// Resolves when a request may be waiting.
    pub async fn asked(&self) {
        self.notify.notified().await
    }

    /// The waiting request for the connection of `epoch`, if any.
    pub fn take(&self, epoch: u64) -> Option<Request> {
        let mut r = self.request.lock().unwrap_or_else(|p| p.into_inner());
        match *r {
            Some((e, req)) if e == epoch => {
                *r = None;
                Some(req)
            }
            Some((e, _)) if e < epoch => {
                *r = None;
                None
            }
            _ => None,
        }
    }
}

/// What a new connection allows the drain's window (sent with its `Up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The window rumqttc was set up with on this connection.
    pub start: u16,
    /// The most it may grow to: [`MAX`], or the broker's Receive Maximum on v5.
    pub ceiling: u16,
    /// The broker's Receive Maximum is what caps `ceiling`, and `auto` may
    /// switch this drain to 3.1.1 to lift it.
    pub may_speak_v311: bool,
    /// The broker's Receive Maximum (v5), for the log.
    pub receive_maximum: Option<u16>,
    /// This 3.1.1 connection is `auto`'s answer to a Receive Maximum cap:
    /// a message with MQTT 5 properties moves the drain back to MQTT 5.
    pub may_speak_v5: bool,
}

impl Limits {
    /// The limits of a connection set up with `inflight`, of MQTT 5 when
    /// `receive_maximum` is known, that `auto` may switch when `auto`.
    pub fn new(inflight: u16, receive_maximum: Option<u16>, auto_v5: bool) -> Limits {
        let rm = receive_maximum.unwrap_or(MAX);
        Limits {
            start: inflight.min(rm).max(1),
            ceiling: rm.max(1),
            may_speak_v311: auto_v5 && rm < MAX,
            receive_maximum,
            may_speak_v5: false,
        }
    }
}

/// What the drain should do about its window now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// Stop sending; once nothing is in flight, make this request.
    Ask(Request),
}

/// The drain's side: the window of the current connection and when to grow it.
#[derive(Debug, Clone)]
pub struct Sizer {
    limits: Limits,
    size: u16,
    /// Acknowledged in this round: since the window last changed (or the
    /// connection came up, or the last check found it not window-bound).
    acked: u64,
    /// When the round's first publish was sent.
    round_start: Option<tokio::time::Instant>,
    /// The shortest send-to-acknowledgement time seen on this connection.
    rtt_min: Option<std::time::Duration>,
    /// A message with MQTT 5 properties was sent on this connection.
    properties_sent: bool,
    /// A request was made and not yet answered.
    pending: bool,
    /// The cap was logged for this connection.
    told: bool,
    /// Since when nothing was in flight or queued (while grown).
    idle_since: Option<tokio::time::Instant>,
}

impl Sizer {
    pub fn new(inflight: u16) -> Sizer {
        Sizer::up(Limits::new(inflight, None, false))
    }

    /// A new connection with `limits`.
    pub fn up(limits: Limits) -> Sizer {
        Sizer {
            limits,
            size: limits.start,
            acked: 0,
            round_start: None,
            rtt_min: None,
            properties_sent: false,
            pending: false,
            told: false,
            idle_since: None,
        }
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Waiting for the window to empty (or for the connection's answer):
    /// nothing new may be sent.
    pub fn pending(&self) -> bool {
        self.pending
    }

    pub fn acked(&mut self, n: usize) {
        self.acked += n as u64;
    }

    /// A publish is sent at `now`.
    pub fn sending(&mut self, now: tokio::time::Instant) {
        self.round_start.get_or_insert(now);
    }

    /// A publish was acknowledged `rtt` after it was sent.
    pub fn round_trip(&mut self, rtt: std::time::Duration) {
        self.rtt_min = Some(self.rtt_min.map_or(rtt, |m| m.min(rtt)));
    }

    fn new_round(&mut self) {
        self.acked = 0;
        self.round_start = None;
    }

    pub fn sent_properties(&mut self) {
        self.properties_sent = true;
    }

    /// A message with MQTT 5 properties is next, on a 3.1.1 connection
    /// `auto` chose for a cap: the request to make once the window is
    /// empty (None when this connection may not, or already asked).
    pub fn needs_v5(&mut self) -> Option<Request> {
        if !self.limits.may_speak_v5 || self.pending {
            return None;
        }
        self.pending = true;
        Some(Request::SpeakV5)
    }

    /// The connection grew the window to `size`.
    pub fn grown(&mut self, size: u16) {
        self.size = size;
        self.new_round();
        self.pending = false;
    }

    /// Whether the window should change, given what is in flight, how many
    /// messages the queue holds beyond it, the mean message size and the time.
    /// Returns the step to take and, the first time the broker's cap stops
    /// growth with MQTT 5 properties in use, a line for the log.
    pub fn step(
        &mut self,
        outstanding: usize,
        waiting: u64,
        mean_bytes: u64,
        now: tokio::time::Instant,
    ) -> (Step, Option<&'static str>) {
        if self.pending || self.size <= self.limits.start || outstanding > 0 || waiting > 0 {
            self.idle_since = None;
        } else if now.duration_since(*self.idle_since.get_or_insert(now)) >= IDLE_SHRINK {
            self.idle_since = None;
            self.pending = true;
            return (Step::Ask(Request::Resize(self.limits.start)), None);
        }
        let size = self.size as u64;
        let bound = !self.pending && outstanding >= self.size() && waiting >= size && self.acked >= size;
        if !bound {
            return (Step::Keep, None);
        }
        // A whole window took longer than two round trips: not window-bound.
        let turned_over_in = self.round_start.map(|start| now.saturating_duration_since(start));
        if let (Some(took), Some(rtt)) = (turned_over_in, self.rtt_min) {
            if took > rtt * 2 {
                self.new_round();
                return (Step::Keep, None);
            }
        }
        let by_bytes = (MAX_BYTES / mean_bytes.max(1)).min(MAX as u64);
        // Eightfold, or at once to what the backlog needs when that is more:
        // each step costs a round trip with nothing in flight.
        let wanted = (size * GROWTH).max(waiting).min(by_bytes).min(MAX as u64) as u16;
        if wanted <= self.size {
            return (Step::Keep, None);
        }
        if self.size < self.limits.ceiling {
            self.pending = true;
            return (Step::Ask(Request::Resize(wanted.min(self.limits.ceiling))), None);
        }
        let Some(receive_maximum) = self.limits.receive_maximum.filter(|_| self.limits.may_speak_v311) else {
            return (Step::Keep, None);
        };
        if self.properties_sent {
            let first = !self.told;
            self.told = true;
            return (Step::Keep, first.then_some("the broker's Receive Maximum caps this MQTT 5 drain while a backlog waits, and its messages carry MQTT 5 properties: staying on MQTT 5 (protocol = \"auto\"); raise the broker's max_inflight_messages for a faster drain"));
        }
        self.pending = true;
        (Step::Ask(Request::SpeakV311 { receive_maximum }), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    const RTT: Duration = Duration::from_millis(50);

    #[test]
    fn grows_eightfold_only_when_window_bound_with_a_backlog() {
        let mut s = Sizer::new(100);
        assert_eq!(s.size(), 100);
        s.sending(t0());
        s.round_trip(RTT);
        // Full, but nothing waiting beyond it: keep.
        s.acked(100);
        assert_eq!(s.step(100, 50, 128, t0()).0, Step::Keep);
        // Not full: keep.
        assert_eq!(s.step(60, 1_000, 128, t0()).0, Step::Keep);
        // Full, a backlog, a window acknowledged: grow.
        assert_eq!(s.step(100, 500, 128, t0()).0, Step::Ask(Request::Resize(800)));
        assert!(s.pending());
        assert_eq!(s.step(100, 500, 128, t0()).0, Step::Keep, "one request at a time");
        s.grown(800);
        s.acked(799);
        assert_eq!(
            s.step(800, 5_000, 128, t0()).0,
            Step::Keep,
            "a full window must be acknowledged first"
        );
        s.acked(1);
        assert_eq!(s.step(800, 5_000, 128, t0()).0, Step::Ask(Request::Resize(6_400)));
    }

    #[test]
    fn a_long_backlog_grows_the_window_at_once_within_its_caps() {
        let mut small = Sizer::new(100);
        small.sending(t0());
        small.round_trip(RTT);
        small.acked(100);
        assert_eq!(
            small.step(100, 100_000, 128, t0()).0,
            Step::Ask(Request::Resize(MAX)),
            "100,000 waiting: no 800 and 6,400 steps on the way"
        );
        let mut big = Sizer::new(100);
        big.sending(t0());
        big.round_trip(RTT);
        big.acked(100);
        assert_eq!(
            big.step(100, 100_000, 4_096, t0()).0,
            Step::Ask(Request::Resize(8_192)),
            "32 MiB in flight at most"
        );
    }

    #[test]
    fn a_window_that_takes_longer_than_two_round_trips_does_not_grow() {
        let start = t0();
        let mut s = Sizer::new(100);
        s.sending(start);
        s.round_trip(RTT);
        s.acked(100);
        assert_eq!(
            s.step(100, 500, 128, start + RTT * 3).0,
            Step::Keep,
            "larger than the bandwidth-delay product already"
        );
        s.acked(99);
        s.sending(start + RTT * 3);
        assert_eq!(
            s.step(100, 500, 128, start + RTT * 4).0,
            Step::Keep,
            "a new round began"
        );
        s.acked(1);
        assert_eq!(
            s.step(100, 500, 128, start + RTT * 4).0,
            Step::Ask(Request::Resize(800))
        );
    }

    #[test]
    fn never_beyond_the_receive_maximum_the_byte_budget_or_the_packet_ids() {
        let mut v5 = Sizer::up(Limits::new(100, Some(300), false));
        v5.acked(100);
        assert_eq!(v5.step(100, 500, 128, t0()).0, Step::Ask(Request::Resize(300)));
        v5.grown(300);
        v5.acked(300);
        assert_eq!(v5.step(300, 1_000, 128, t0()).0, Step::Keep, "protocol 5 keeps the cap");

        let mut big = Sizer::new(4_096);
        big.acked(4_096);
        assert_eq!(
            big.step(4_096, 100_000, 4_096, t0()).0,
            Step::Ask(Request::Resize(8_192)),
            "32 MiB of 4 KiB"
        );
        big.grown(8_192);
        big.acked(8_192);
        assert_eq!(big.step(8_192, 100_000, 4_096, t0()).0, Step::Keep);

        let mut ids = Sizer::new(30_000);
        ids.acked(30_000);
        assert_eq!(ids.step(30_000, 100_000, 1, t0()).0, Step::Ask(Request::Resize(MAX)));
    }

    #[test]
    fn auto_speaks_3_1_1_past_the_cap_unless_properties_were_sent() {
        let limits = Limits::new(100, Some(20), true);
        assert_eq!((limits.start, limits.ceiling), (20, 20));
        let mut s = Sizer::up(limits);
        s.acked(20);
        assert_eq!(
            s.step(20, 1_000, 128, t0()).0,
            Step::Ask(Request::SpeakV311 { receive_maximum: 20 })
        );

        let mut props = Sizer::up(limits);
        props.sent_properties();
        props.acked(20);
        let (step, line) = props.step(20, 1_000, 128, t0());
        assert_eq!(step, Step::Keep);
        assert!(line.is_some(), "told once");
        assert_eq!(props.step(20, 1_000, 128, t0()), (Step::Keep, None));

        let forced = Limits::new(100, Some(20), false);
        let mut s = Sizer::up(forced);
        s.acked(20);
        assert_eq!(s.step(20, 1_000, 128, t0()).0, Step::Keep, "protocol 5: no switch");
    }

    #[test]
    fn a_grown_window_goes_back_to_its_start_when_idle() {
        let mut now = tokio::time::Instant::now();
        let mut s = Sizer::new(100);
        s.acked(100);
        assert_eq!(s.step(100, 500, 128, now).0, Step::Ask(Request::Resize(800)));
        s.grown(800);
        assert_eq!(s.step(0, 0, 128, now).0, Step::Keep);
        now += IDLE_SHRINK / 2;
        assert_eq!(
            s.step(3, 0, 128, now).0,
            Step::Keep,
            "busy again: the idle time starts over"
        );
        assert_eq!(s.step(0, 0, 128, now).0, Step::Keep);
        now += IDLE_SHRINK;
        assert_eq!(s.step(0, 0, 128, now).0, Step::Ask(Request::Resize(100)));
        s.grown(100);
        now += IDLE_SHRINK * 2;
        assert_eq!(
            s.step(0, 0, 128, now).0,
            Step::Keep,
            "at its start: nothing to give back"
        );
    }

    #[test]
    fn a_request_for_an_older_connection_is_ignored() {
        let c = Control::new();
        c.ask(3, Request::Resize(800));
        assert_eq!(c.take(4), None);
        assert_eq!(c.take(3), None, "dropped once a newer connection looked");
        c.ask(5, Request::Resize(800));
        assert_eq!(c.take(5), Some(Request::Resize(800)));
        assert_eq!(c.take(5), None);
    }
}
