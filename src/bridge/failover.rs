//! Which of a connection's addresses (`hosts`) it uses, and when it moves.
//!
//! The addresses are tried in order: a failed connection moves on to the
//! next (after the last, back to the first), each attempt after the usual
//! backoff. While connected to a later address, the first one is probed
//! every `failback_secs` with a TCP connect; when it answers, the
//! connection is closed and made again on the first address. Every move
//! starts a session on another broker: an ingest connection's persistent
//! session lives on one broker, so what was queued there for ferry waits
//! there until ferry comes back to that broker (see docs/operations.md).

use std::time::Duration;

/// How long a failback probe waits for the first address to accept.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Failover {
    addresses: Vec<(String, u16)>,
    index: usize,
    failback: Duration,
}

impl Failover {
    /// `addresses` must not be empty (the config guarantees one at least).
    pub fn new(addresses: Vec<(String, u16)>, failback: Duration) -> Failover {
        Failover {
            addresses,
            index: 0,
            failback,
        }
    }

    /// The address to connect to now, and its index in `hosts`.
    pub fn current(&self) -> (&str, u16, usize) {
        let (host, port) = &self.addresses[self.index.min(self.addresses.len() - 1)];
        (host, *port, self.index)
    }

    /// "host:port" of the current address.
    pub fn current_addr(&self) -> String {
        let (host, port, _) = self.current();
        format!("{host}:{port}")
    }

    /// The connection to the current address failed: the next one is tried.
    pub fn failed(&mut self) {
        self.index = (self.index + 1) % self.addresses.len();
    }

    /// Back to the first address.
    pub fn fail_back(&mut self) {
        self.index = 0;
    }

    /// Resolves when the connection should move back to the first address:
    /// never while on it; otherwise once a probe every `failback` reaches it.
    pub async fn first_answers(&self) {
        if self.index == 0 {
            return std::future::pending().await;
        }
        let (host, port) = &self.addresses[0];
        loop {
            tokio::time::sleep(self.failback).await;
            let probe = tokio::net::TcpStream::connect((host.as_str(), *port));
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_on_in_order_wraps_and_falls_back() {
        let mut f = Failover::new(
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
            Duration::from_secs(1),
        );
        assert_eq!(f.current(), ("a", 1, 0));
        f.failed();
        assert_eq!(f.current_addr(), "b:2");
        f.failed();
        f.failed();
        assert_eq!(f.current(), ("a", 1, 0));
        f.failed();
        f.fail_back();
        assert_eq!(f.current(), ("a", 1, 0));
    }
}
