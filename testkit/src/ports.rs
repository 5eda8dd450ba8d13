//! Free loopback ports for brokers, proxies and ferry's metrics listener.
//!
//! Ports are taken from just below the kernel's ephemeral range, not from
//! `bind(127.0.0.1:0)`: ephemeral ports are also what every client socket gets
//! as its local port, so a broker restarted on such a port could find it taken
//! by some client connection made meanwhile (and a client could even connect
//! to itself). Below the range, only listeners we start ever bind.
//! Each candidate is checked by binding it; a process-wide counter keeps
//! parallel tests from being handed the same port.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range we hand out from.
const POOL_SIZE: u32 = 10_000;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback TCP port that nothing listens on right now.
pub fn free_port() -> u16 {
    let (low, high) = pool();
    let size = high - low;
    // Start each process at a different place, so two test processes running
    // at once rarely race for the same ports.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % size,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..size {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % size;
        let port = (low + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Every port of the pool is busy: fall back to one the kernel picks.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("free_port: cannot bind any loopback port: {e}"))
}

/// The half-open range of ports to use: `POOL_SIZE` ports just below the
/// ephemeral range (32768 on Linux by default).
fn pool() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|s| s.parse::<u32>().ok()))
        .unwrap_or(32768);
    let high = ephemeral_low.clamp(1024 + POOL_SIZE, 65535);
    (high - POOL_SIZE, high)
}
