//! The client side of the admin API, for `ferry status`, `ferry link ...`
//! and `ferry reload`: one HTTP/1.1 request on loopback, and the table a
//! person reads at a glance.
//!
//! A hand-written request over `std::net::TcpStream` is enough here (one
//! request, `Connection: close`, JSON back) and keeps an HTTP client stack
//! out of the binary.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::cli::render::{format_age, format_bytes, render_table};
use crate::config::Config;

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
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| self.body.to_string(), str::to_string)
    }
}

/// Sends one request and reads the whole reply.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Reply, String> {
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
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
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
pub fn render_status(view: &Value, now_ms: u64) -> String {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "ferry {} (pid {}), up {}, {}\nconfig {}  data_dir {}\n\n",
        text(view, "version"),
        num(view, "pid"),
        format_age(num(view, "uptime_secs") as f64),
        match view.get("not_ready").and_then(Value::as_str) {
            None => "ready".to_string(),
            Some(why) => format!("NOT READY: {why}"),
        },
        text(view, "config"),
        text(view, "data_dir"),
    );
    let empty = Vec::new();
    let links = view.get("links").and_then(Value::as_array).unwrap_or(&empty);
    let mut rows = vec![[
        "LINK",
        "STATE",
        "OUT QUEUED",
        "OUT OLDEST",
        "IN QUEUED",
        "IN OLDEST",
        "RESTARTS",
        "LAST ERROR",
    ]
    .map(String::from)];
    for link in links {
        let queue = |direction: &str| {
            link.get("queues")
                .and_then(Value::as_array)
                .and_then(|qs| qs.iter().find(|q| text(q, "direction") == direction))
        };
        let depth = |direction: &str| match queue(direction) {
            None => "-".to_string(),
            Some(q) if num(q, "messages") == 0 => "0".to_string(),
            Some(q) => format!("{} ({})", num(q, "messages"), format_bytes(num(q, "bytes"))),
        };
        let oldest = |direction: &str| {
            queue(direction).map_or("-".to_string(), |q| {
                format_age(q.get("oldest_age_secs").and_then(Value::as_f64).unwrap_or(0.0))
            })
        };
        let mut state = text(link, "state");
        if let Some(at) = link.get("restart_at_ms").and_then(Value::as_u64) {
            state.push_str(&format!(
                " (in {})",
                format_age(at.saturating_sub(now_ms) as f64 / 1000.0)
            ));
        } else if state == "connecting" {
            let next = link
                .get("connections")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("next_attempt_ms").and_then(Value::as_u64))
                .min();
            if let Some(at) = next {
                state.push_str(&format!(
                    " (retry in {})",
                    format_age((at.saturating_sub(now_ms) as f64 / 1000.0).max(0.5))
                ));
            }
        }
        let last_error = match (
            link.get("last_error").and_then(Value::as_str),
            link.get("last_error_ms").and_then(Value::as_u64),
        ) {
            (Some(e), Some(at)) => format!(
                "{} ago: {e}",
                format_age((now_ms.saturating_sub(at) as f64 / 1000.0).max(1.0))
            ),
            (Some(e), None) => e.to_string(),
            _ => "-".to_string(),
        };
        rows.push([
            text(link, "name"),
            state,
            depth("out"),
            oldest("out"),
            depth("in"),
            oldest("in"),
            num(link, "restarts").to_string(),
            last_error,
        ]);
    }
    out.push_str(&render_table(&rows));
    if links.is_empty() {
        out.push_str("(no links configured)\n");
    }
    out
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
        let view = serde_json::json!({
            "version": "0.1.0", "pid": 7, "uptime_secs": 75, "config": "f.toml", "data_dir": "/d",
            "ready": true, "not_ready": null,
            "links": [
                {"name": "edge1", "state": "connected", "restarts": 0, "last_error": null,
                 "queues": [{"direction": "out", "messages": 0, "bytes": 0, "oldest_age_secs": 0.0},
                            {"direction": "in", "messages": 0, "bytes": 0, "oldest_age_secs": 0.0}]},
                {"name": "edge2", "state": "connecting", "restarts": 1, "last_error": "out edge drain: refused",
                 "last_error_ms": 9_000, "connections": [{"next_attempt_ms": 12_000}],
                 "queues": [{"direction": "out", "messages": 20000, "bytes": 3_000_000, "oldest_age_secs": 72.0}]}
            ]
        });
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
                && lines[5].contains("1m 12s"),
            "{table}"
        );
        assert!(lines[5].ends_with("1s ago: out edge drain: refused"), "{table}");
    }
}
