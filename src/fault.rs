//! Fault injection for tests, compiled only with the `fault-injection`
//! feature (the test suite enables it; release builds never have it).
//!
//! `FERRY_FAULT_PANIC=<link>:<n>` makes the drain task of `<link>` panic
//! once, after `n` messages were delivered on it in this process, so tests
//! can check that the supervisor restarts the link and that nothing else
//! notices.
//!
//! `FERRY_FAULT_STALL=<link>:<role>:<n>` makes that connection task (role
//! `ingest` or `drain`) stop driving its event loop once, forever, after its
//! `n`-th event in this process: what a task stuck outside `poll()` looks like
//! to its watchdog.
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

#[cfg(feature = "fault-injection")]
pub async fn connection_stall(link: &str, role: &str) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    static FIRED: AtomicBool = AtomicBool::new(false);
    static EVENTS: AtomicU64 = AtomicU64::new(0);
    static SPEC: OnceLock<Option<(String, String, u64)>> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let spec = std::env::var("FERRY_FAULT_STALL").ok()?;
        let mut parts = spec.split(':');
        let (target, role, after) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
        Some((target.to_string(), role.to_string(), after))
    });
    let Some((target, target_role, after)) = spec else {
        return;
    };
    if target != link || target_role != role || FIRED.load(Ordering::SeqCst) {
        return;
    }
    if EVENTS.fetch_add(1, Ordering::SeqCst) + 1 >= *after && !FIRED.swap(true, Ordering::SeqCst) {
        tracing::warn!(
            link,
            role,
            "injected fault: connection task stops driving its event loop"
        );
        std::future::pending::<()>().await;
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn connection_stall(_link: &str, _role: &str) {}
