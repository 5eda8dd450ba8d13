//! Fault injection for tests, compiled only with the `fault-injection`
//! feature (the test suite enables it; release builds never have it).
//!
//! `FERRY_FAULT_PANIC=<link>:<n>` makes the drain task of `<link>` panic
//! once, after `n` messages were delivered on it in this process, so tests
//! can check that the supervisor restarts the link and that nothing else
//! notices.
//!
//! `FERRY_FAULT_UNSYNCED_COMMIT=1` makes store commits skip ferry's syncs
//! (read in `src/store/durable.rs`, which depends on nothing else in ferry),
//! for the power-loss test to show what they prevent.

#[cfg(feature = "fault-injection")]
pub fn after_delivery(link: &str, delivered: u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Ok(spec) = std::env::var("FERRY_FAULT_PANIC") else {
        return;
    };
    let Some((target, after)) = spec.split_once(':') else {
        return;
    };
    let Ok(after) = after.parse::<u64>() else { return };
    if target == link && delivered >= after && !FIRED.swap(true, Ordering::SeqCst) {
        panic!("injected fault: drain of link {link} panics after {delivered} deliveries");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_delivery(_link: &str, _delivered: u64) {}
