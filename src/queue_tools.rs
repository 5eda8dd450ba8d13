//! `ferry queue stats|peek|export|purge`: the queues of a ferry that is not
//! running, for an operator who wants to know what is waiting, look at it,
//! save it, or delete it.
//!
//! They open the store like `ferry run` does, so they are refused while a
//! ferry holds the directory (sled's lock), and never create a store where
//! there is none.

use std::io::Write;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::json;

use crate::human::{format_age, format_bytes, render_table};
use crate::config::{Config, Direction};
use crate::link::queue_name;
use crate::metrics::now_ms;
use crate::store::{DropReason, Entry, Queue, QueueLimits, Store, StoreError};

/// Entries read from the store at a time by export.
const PAGE: usize = 1_000;

/// Opens the store of `config` for an offline tool.
pub fn open(config: &Config) -> anyhow::Result<Store> {
    let dir = &config.data_dir;
    if !dir.join("store").exists() {
        bail!(
            "{}: there is no store here yet (ferry has not run with this data_dir); nothing is queued",
            dir.display()
        );
    }
    Store::open(dir).map_err(|e| match e {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "{}: ferry is running with this data_dir (the store is locked). Stop it first \
             (systemctl stop ferry), or use `ferry status` for live numbers",
            dir.display()
        ),
        other => anyhow::Error::new(other),
    })
}

/// The queue of `link` and `direction`, which must exist in the store.
fn existing_queue(store: &Store, link: &str, direction: Direction) -> anyhow::Result<Queue> {
    let name = queue_name(link, direction);
    let names = store.queue_names();
    if !names.contains(&name) {
        let known = if names.is_empty() { "(none)".to_string() } else { names.join(", ") };
        bail!("there is no queue {name:?} in the store; the queues are: {known}");
    }
    Ok(store.queue(&name, QueueLimits::UNBOUNDED)?)
}

/// The directions to work on: the one asked for, or both that exist.
fn directions(store: &Store, link: &str, asked: Option<Direction>) -> anyhow::Result<Vec<Direction>> {
    if let Some(d) = asked {
        return Ok(vec![d]);
    }
    let names = store.queue_names();
    let found: Vec<Direction> =
        [Direction::Out, Direction::In].into_iter().filter(|d| names.contains(&queue_name(link, *d))).collect();
    if found.is_empty() {
        let known = if names.is_empty() { "(none)".to_string() } else { names.join(", ") };
        bail!("link {link:?} has no queues in the store; the queues are: {known}");
    }
    Ok(found)
}

fn age_of(at_ms: Option<u64>, now: u64) -> String {
    at_ms.map_or("-".to_string(), |at| format_age((now.saturating_sub(at) as f64 / 1000.0).max(0.001)))
}

/// `ferry queue stats`: one line per queue.
pub fn stats(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let store = open(config)?;
    let now = now_ms();
    let mut rows = Vec::new();
    for name in store.queue_names() {
        let queue = store.queue(&name, QueueLimits::UNBOUNDED)?;
        let (depth, totals) = queue.stats();
        let link = name.rsplit_once('/').map_or(name.as_str(), |(l, _)| l);
        let configured = config.links.iter().any(|l| l.name == link);
        rows.push(json!({
            "queue": name,
            "in_config": configured,
            "messages": depth.messages,
            "bytes": depth.bytes,
            "oldest_received_at_ms": queue.oldest_received_at_ms(),
            "newest_received_at_ms": queue.newest_received_at_ms(),
            "received": totals.received,
            "forwarded": totals.forwarded,
            "dropped": DropReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(totals.dropped(*r)))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    if as_json {
        return Ok(format!("{:#}\n", serde_json::Value::Array(rows)));
    }
    let mut table = vec![["QUEUE", "MESSAGES", "BYTES", "OLDEST", "NEWEST", "RECEIVED", "FORWARDED", "DROPPED"].map(String::from)];
    for r in &rows {
        let mut name = r["queue"].as_str().unwrap_or("").to_string();
        if r["in_config"] == false {
            name.push_str(" (not in config)");
        }
        let dropped: u64 = r["dropped"].as_object().map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        table.push([
            name,
            r["messages"].to_string(),
            format_bytes(r["bytes"].as_u64().unwrap_or(0)),
            age_of(r["oldest_received_at_ms"].as_u64(), now),
            age_of(r["newest_received_at_ms"].as_u64(), now),
            r["received"].to_string(),
            r["forwarded"].to_string(),
            dropped.to_string(),
        ]);
    }
    let mut out = format!("store {}\n", store.path().display());
    out.push_str(&render_table(&table));
    if rows.is_empty() {
        out.push_str("(no queues)\n");
    }
    Ok(out)
}

/// `ferry queue peek`: the oldest `n` messages of one queue.
pub fn peek(config: &Config, link: &str, direction: Direction, n: usize) -> anyhow::Result<String> {
    let store = open(config)?;
    let queue = existing_queue(&store, link, direction)?;
    let depth = queue.depth();
    let entries = queue.read(0, n)?;
    let now = now_ms();
    let mut out = format!(
        "{}: {} messages ({}); the oldest {}:\n",
        queue.name(),
        depth.messages,
        format_bytes(depth.bytes),
        entries.len()
    );
    let mut table = vec![["SEQ", "AGE", "QOS", "RETAIN", "SIZE", "TOPIC", "PAYLOAD"].map(String::from)];
    for Entry { seq, record } in &entries {
        table.push([
            seq.to_string(),
            age_of(Some(record.received_at_ms), now),
            record.qos.to_string(),
            if record.retain { "yes" } else { "no" }.to_string(),
            format_bytes(record.payload.len() as u64),
            record.topic.clone(),
            preview(&record.payload),
        ]);
    }
    out.push_str(&render_table(&table));
    Ok(out)
}

/// A short, printable view of a payload: text quoted, anything else
/// (invalid UTF-8, control characters) as hex.
pub fn preview(payload: &[u8]) -> String {
    const CHARS: usize = 40;
    let printable = |text: &str| !text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    match std::str::from_utf8(payload) {
        Ok(text) if printable(text) => {
            let shown: String = text.chars().take(CHARS).collect();
            let more = if text.chars().count() > CHARS { "…" } else { "" };
            format!("{shown:?}{more}")
        }
        _ => {
            let hex: String = payload.iter().take(16).map(|b| format!("{b:02x}")).collect();
            let more = if payload.len() > 16 { "…" } else { "" };
            format!("hex {hex}{more}")
        }
    }
}

/// `ferry queue export`: every message as one JSON line, oldest first,
/// streamed page by page. Returns how many were written.
pub fn export(config: &Config, link: &str, direction: Option<Direction>, out: &mut impl Write) -> anyhow::Result<u64> {
    let store = open(config)?;
    let mut written = 0;
    for direction in directions(&store, link, direction)? {
        let queue = existing_queue(&store, link, direction)?;
        let mut from = 0;
        loop {
            let page = queue.read(from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for Entry { seq, record } in page {
                let line = json!({
                    "link": link,
                    "direction": direction,
                    "seq": seq,
                    "topic": record.topic,
                    "qos": record.qos,
                    "retain": record.retain,
                    "received_at_ms": record.received_at_ms,
                    "payload_base64": base64::engine::general_purpose::STANDARD.encode(&record.payload),
                    "properties": record.properties,
                });
                writeln!(out, "{line}").context("writing the export")?;
                written += 1;
            }
        }
    }
    out.flush().context("writing the export")?;
    Ok(written)
}

/// `ferry queue purge`: deletes a link's queued messages (counted as
/// dropped, reason `purged`), or only says what it would delete.
pub fn purge(config: &Config, link: &str, direction: Option<Direction>, really: bool) -> anyhow::Result<String> {
    let store = open(config)?;
    let mut out = String::new();
    let mut total = 0;
    for direction in directions(&store, link, direction)? {
        let queue = existing_queue(&store, link, direction)?;
        let depth = queue.depth();
        if really {
            let purged = queue.purge()?;
            out.push_str(&format!("{}: purged {purged} messages ({})\n", queue.name(), format_bytes(depth.bytes)));
            total += purged;
        } else {
            out.push_str(&format!("{}: would purge {} messages ({})\n", queue.name(), depth.messages, format_bytes(depth.bytes)));
        }
    }
    if really {
        store.checkpoint().context("committing the purge")?;
        out.push_str(&format!("{total} messages deleted; counted in ferry_messages_dropped_total{{reason=\"purged\"}}\n"));
    } else {
        out.push_str("nothing deleted: run again with --yes to delete these messages for good\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_short_and_printable() {
        assert_eq!(preview(b"hello"), "\"hello\"");
        assert_eq!(preview("a\nb".as_bytes()), "\"a\\nb\"");
        let long = "x".repeat(100);
        assert_eq!(preview(long.as_bytes()), format!("{:?}…", "x".repeat(40)));
        assert_eq!(preview(&[0xff, 0x00, 0x10]), "hex ff0010");
        assert_eq!(preview(&[0xff; 20]), format!("hex {}…", "ff".repeat(16)));
        assert_eq!(preview(&[0, 0, 1]), "hex 000001");
    }
}
