//! The client side of the admin API, for `ferry status`, `ferry link ...`
//! and `ferry reload`: one HTTP/1.1 request (with the bearer token when the
//! ferry has one), and the table a person reads at a glance.
//!
//! A hand-written request over `std::net::TcpStream` is enough here (one
//! request, `Connection: close`, JSON back) and keeps an HTTP client stack
//! out of the binary.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::bridge::pace::Rates;
use crate::cli::render::{format_age, format_bytes, render_table};
use crate::config::Config;
use crate::daemon::control::{ErrorReply, ProcessView};
use crate::link::status::State;
use crate::names::Direction;
use crate::secret::Secret;

/// Where `ferry status` finds the admin API of the ferry that runs `config`.
pub fn admin_address(config: &Config) -> Result<SocketAddr, String> {
    let Some(mut addr) = config.admin.listen else {
        return Err(format!(
            "the admin API is off in {} ([admin] listen = \"off\"); turn it on and restart ferry",
            config.source.display()
        ));
    };
    // A wildcard listener is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// A response: status code and parsed JSON body.
pub struct Reply {
    pub code: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The API's `{"error": ...}` text, or the raw body.
    pub fn error_text(&self) -> String {
        match ErrorReply::deserialize(&self.body) {
            Ok(reply) => reply.error,
            Err(_) => self.body.to_string(),
        }
    }

    /// The body as the type the server sent it as.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&self.body).map_err(|e| format!("the admin API sent a reply this ferry cannot read: {e}"))
    }
}

/// Sends one request (with `Authorization: Bearer` when given a token) and
/// reads the whole reply.
pub fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&Secret>) -> Result<Reply, String> {
    let not_running = |e: std::io::Error| {
        format!(
            "cannot reach ferry's admin API at http://{addr} ({e}): is ferry running with this config? \
             Start it with `ferry run --config FILE`, or check [admin] listen"
        )
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(not_running)?;
    let timeout = Some(Duration::from_secs(90));
    stream.set_read_timeout(timeout).map_err(not_running)?;
    stream.set_write_timeout(timeout).map_err(not_running)?;
    let authorization = token.map_or(String::new(), |token| {
        format!("Authorization: Bearer {}\r\n", token.expose())
    });
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).map_err(not_running)?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the reply of http://{addr}{path}: {e}"))?;
    parse_reply(&raw).ok_or_else(|| format!("http://{addr}{path} sent a reply that is not ferry's admin API"))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let code: u16 = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).ok()?
    };
    Some(Reply { code, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The `ferry status` table for a `/v1/status` reply.
pub fn render_status(view: &ProcessView, now_ms: u64) -> String {
    let mut out = format!(
        "ferry {} (pid {}), up {}, {}\nconfig {}  data_dir {}{}\n\n",
        view.version,
        view.pid,
        format_age(view.uptime_secs as f64),
        match &view.not_ready {
            None => "ready".to_string(),
            Some(why) => format!("NOT READY: {why}"),
        },
        view.config,
        view.data_dir,
        view.shard
            .as_ref()
            .map_or(String::new(), |shard| format!("  {}", shard.describe())),
    );
    let mut rows = vec![[
        "LINK",
        "STATE",
        "OUT QUEUED",
        "OUT OLDEST",
        "IN QUEUED",
        "IN OLDEST",
        "RESTARTS",
        "PACE",
        "LAST ERROR",
    ]
    .map(String::from)];
    for link in &view.links {
        let queue = |direction: Direction| link.queues.iter().find(|q| q.direction == direction);
        let depth = |direction| match queue(direction) {
            None => "-".to_string(),
            Some(q) if q.messages == 0 => "0".to_string(),
            Some(q) => {
                let held = if q.held_by_store_budget {
                    ", held: store budget"
                } else {
                    ""
                };
                format!("{} ({}{held})", q.messages, format_bytes(q.bytes))
            }
        };
        let oldest = |direction| queue(direction).map_or("-".to_string(), |q| format_age(q.oldest_age_secs));
        let mut state = link.state.as_str().to_string();
        if let Some(at) = link.restart_at_ms {
            state.push_str(&format!(
                " (in {})",
                format_age(at.saturating_sub(now_ms) as f64 / 1000.0)
            ));
        } else if link.state == State::Connecting {
            let next = link.connections.iter().filter_map(|c| c.state.next_attempt_ms).min();
            if let Some(at) = next {
                state.push_str(&format!(
                    " (retry in {})",
                    format_age((at.saturating_sub(now_ms) as f64 / 1000.0).max(0.5))
                ));
            }
        }
        let last_error = match (&link.last_error, link.last_error_ms) {
            (Some(e), Some(at)) => format!(
                "{} ago: {e}",
                format_age((now_ms.saturating_sub(at) as f64 / 1000.0).max(1.0))
            ),
            (Some(e), None) => e.to_string(),
            _ => "-".to_string(),
        };
        rows.push([
            link.name.clone(),
            state,
            depth(Direction::Out),
            oldest(Direction::Out),
            depth(Direction::In),
            oldest(Direction::In),
            link.restarts.to_string(),
            match describe_pace(&link.pace.now) {
                pace if link.pace.now != link.pace.config => format!("{pace} (run-time)"),
                pace => pace,
            },
            last_error,
        ]);
    }
    out.push_str(&render_table(&rows));
    if view.links.is_empty() {
        out.push_str("(no links configured)\n");
    }
    out
}

/// "500/s", "1.0 MiB/s", "500/s, 1.0 MiB/s", or "off".
pub fn describe_pace(rates: &Rates) -> String {
    let parts: Vec<String> = [
        rates.drain_rate.map(|r| format!("{r}/s")),
        rates.drain_bytes_rate.map(|r| format!("{}/s", format_bytes(r))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "off".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_with_and_without_chunking_parse() {
        let plain =
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"error\":\"no\"}";
        let r = parse_reply(plain).unwrap();
        assert_eq!(r.code, 404);
        assert_eq!(r.error_text(), "no");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        let r = parse_reply(chunked).unwrap();
        assert!(r.ok());
        assert_eq!(r.body["a"], 1);
        assert!(parse_reply(b"garbage").is_none());
    }

    #[test]
    fn the_status_table_shows_each_link_on_one_line() {
        // The JSON the server sends, read back as the CLI reads it.
        let queue = |direction, messages, bytes, oldest_age_secs| {
            serde_json::json!({"direction": direction, "messages": messages, "bytes": bytes,
                "oldest_age_secs": oldest_age_secs, "received": 0, "forwarded": 0, "dropped": 0})
        };
        let view = serde_json::json!({
            "version": "0.1.0", "pid": 7, "uptime_secs": 75, "config": "f.toml", "data_dir": "/d",
            "ready": true, "not_ready": null,
            "links": [
                {"name": "edge1", "state": "connected", "mode": "running", "enabled": true, "restart_at_ms": null,
                 "restarts": 0, "last_error": null, "last_error_ms": null, "connections": [],
                 "queues": [queue("out", 0, 0, 0.0), queue("in", 0, 0, 0.0)]},
                {"name": "edge2", "state": "connecting", "mode": "running", "enabled": true, "restart_at_ms": null,
                 "restarts": 1, "last_error": "out edge drain: refused", "last_error_ms": 9_000,
                 "pace": {"drain_rate": 500, "drain_bytes_rate": null,
                    "config": {"drain_rate": null, "drain_bytes_rate": null}},
                 "connections": [{"direction": "out", "side": "edge", "role": "drain", "up": false,
                    "since_ms": 9_000, "next_attempt_ms": 12_000, "last_error": "refused", "last_error_ms": 9_000}],
                 "queues": [queue("out", 20000, 3_000_000, 72.0)]}
            ]
        });
        let view: ProcessView = serde_json::from_value(view).expect("a status view");
        let table = render_status(&view, 10_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ferry 0.1.0 (pid 7), up 1m 15s, ready"), "{table}");
        assert!(lines[3].starts_with("LINK"), "{table}");
        assert!(
            lines[4].starts_with("edge1") && lines[4].contains("connected"),
            "{table}"
        );
        assert!(
            lines[5].contains("connecting (retry in 2s)")
                && lines[5].contains("20000 (")
                && lines[5].contains("1m 12s")
                && lines[5].contains("500/s (run-time)"),
            "{table}"
        );
        assert!(lines[5].ends_with("1s ago: out edge drain: refused"), "{table}");
    }
}
